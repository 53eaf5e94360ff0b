// E2E step of e2e.mjs: New voice (issue 21), from a dropped folder of raw
// recordings to the voice's card, against the mock hub.
//
// Four MP3 recordings without transcripts (espeak-ng, encoded by ffmpeg)
// are dropped on the New voice screen for real (the XDND drag of
// raw-recordings.mjs). The journey uses the csm-1b bundle, which the mock
// hub serves as the demo model (step 9 deleted its tokenizer repo from the
// cache, so the download stage fetches it again), the tiny random Whisper
// fixture cached by step 10, and resemblyzer's real weights as the cached
// speaker-encoder bundle (step 4). The tokenizer's transfer is held by the
// mock hub so that the review opens, and a transcript is saved, while the
// download stage still runs; then it is released, and the journey trains
// a few steps with voice scores and ends on the card (base vs best
// similarity and WER, A/B player). The Voices screen lists the voice; it
// is renamed (voice.json checked) and deleted after confirmation (folder
// gone).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { dropFolder } from './raw-recordings.mjs';

const SENTENCES = [
  'The river runs quietly past the old mill at the edge of the village. Nobody has worked there for years.',
  'On clear evenings you can see the lights of the harbour from the top of the hill, far away to the west.',
  'She packed a small bag, locked the front door and walked down to the station before the sun came up.',
  'Every spring the garden fills with tulips, and the neighbours stop by the fence to talk about the weather.',
];

/** Four MP3 recordings (22.05 kHz mono), no transcripts. */
function recordings(root) {
  const raw = join(root, 'new-voice-recordings');
  mkdirSync(raw, { recursive: true });
  SENTENCES.forEach((text, i) => {
    const wav = join(root, `new-voice-${i}.wav`);
    execFileSync('espeak-ng', ['-v', 'en', '-s', '160', '-w', wav, text]);
    execFileSync('ffmpeg', ['-v', 'error', '-y', '-i', wav, '-ac', '1', '-ar', '22050', '-codec:a', 'libmp3lame', '-b:a', '64k', join(raw, `take${i + 1}.mp3`)]);
  });
  return raw;
}

export async function newVoiceStep({ browser, tab, shot, log, fail, hub, dataDir, work }) {
  const raw = recordings(work);
  const text = async (testid) => {
    const el = await browser.$(`[data-testid="${testid}"]`);
    return (await el.isExisting()) ? el.getText() : '';
  };
  const stage = async (id) => (await browser.$(`[data-testid="voice-stage-${id}"]`).getAttribute('data-status').catch(() => null)) ?? '';
  const failed = async () => {
    const err = await text('new-voice-error');
    if (err) fail(`the journey failed: ${err}`);
  };

  await tab('New voice');
  await dropFolder(raw, log);
  await browser.waitUntil(async () => (await text('new-voice-recordings')).startsWith('4 files'), {
    timeout: 60_000,
    timeoutMsg: `the dropped folder was not taken: ${await browser.$('main').getText().catch(() => '')}`,
  });
  const name = await browser.$('input[aria-label="Voice name"]');
  if ((await name.getValue()) !== 'new voice recordings') fail(`the name was not proposed from the folder: ${await name.getValue()}`);
  await name.clearValue();
  await name.setValue('E2E voice');
  const whisper = await browser.$('select[aria-label="Whisper model"]');
  await browser.waitUntil(async () => (await whisper.getValue()).includes('models--openai--whisper-tiny'), {
    timeout: 30_000,
    timeoutMsg: `the cached Whisper was not proposed: ${await whisper.getValue()}`,
  });
  await (await browser.$('summary=More settings')).click();
  await (await browser.$('select[aria-label="Language"]')).selectByAttribute('value', 'en');
  await (await browser.$('select[aria-label="Whisper temperature"]')).selectByAttribute('value', '0');
  for (const [label, value] of [['Training steps', 4], ['Score every', 2], ['Prompts scored', 1]]) {
    await (await browser.$(`input[aria-label="${label}"]`)).setValue(String(value));
  }
  const tokenizerGets = (hub.served.get('tokenizer.json') ?? []).length;
  // The tokenizer's transfer is held (a byte a second) until the proofreading
  // below is done: the CSM download is in progress all along, whatever the
  // speed of this machine.
  hub.hold('tokenizer.json');
  await (await browser.$('button=Make the voice')).click();

  // Whisper (cached) first, then transcription beside the download of the
  // tokenizer repo deleted in step 9; the review opens while it downloads.
  await browser.waitUntil(
    async () => {
      await failed();
      return (await stage('review')) === 'waiting' && (await browser.$$('[data-testid="voice-review"] [data-testid="utterance"]')).length === 4;
    },
    { timeout: 600_000, interval: 1000, timeoutMsg: `the journey did not stop for the review: ${await text('voice-stages')}` },
  );
  if ((await stage('transcribe')) !== 'done') fail(`transcribe is ${await stage('transcribe')}, not done`);
  if ((await stage('download')) !== 'running') fail(`download is ${await stage('download')} at the review, not running beside it`);
  if (!(await browser.$('[data-testid="voice-review-downloading"]').isExisting())) fail('the review does not say the models are still downloading');
  const voiceDir = join(dataDir, 'voices', 'e2e-voice');
  for (const f of ['voice.json', 'dataset/audio/take1.wav', 'dataset/transcripts/take4.txt']) {
    if (!existsSync(join(voiceDir, f))) fail(`${f} is missing in ${voiceDir}`);
  }
  log(`New voice: transcribed; review open while the download runs (${(await text('voice-stage-download')).replace(/\s+/g, ' ')})`);
  await shot('app-new-voice-review.png');

  // Proofread one text during the download, then train once it is in.
  const row = await browser.$('[data-testid="voice-review"] [data-testid="utterance"][data-file="take1.wav"]');
  await (await row.$('textarea')).setValue(SENTENCES[0]);
  await (await row.$('button=Save')).click();
  const txt = join(voiceDir, 'dataset', 'transcripts', 'take1.txt');
  await browser.waitUntil(() => readFileSync(txt, 'utf8').trim() === SENTENCES[0], { timeout: 30_000, timeoutMsg: 'the proofread text was not saved' });
  if ((await stage('download')) !== 'running') fail(`download is ${await stage('download')} after the edit, not running`);
  const state = JSON.parse(readFileSync(join(voiceDir, 'voice.json'), 'utf8'));
  if (state.stages?.download?.status !== 'running' || state.stages?.transcribe?.status !== 'done') fail(`voice.json: ${JSON.stringify(state.stages)}`);
  log('New voice: a transcript proofread and saved while the download stage runs');
  hub.release('tokenizer.json');
  await (await browser.$('button=Done: train the voice')).click();
  const card = await browser.$('[data-testid="voice-card"]');
  await browser.waitUntil(
    async () => {
      await failed();
      return card.isExisting();
    },
    { timeout: 900_000, interval: 2000, timeoutMsg: `no voice card: ${await text('voice-stages')}` },
  );
  const scores = await text('voice-scores-table');
  const sims = [...scores.matchAll(/Similarity to the speaker.*?(\d\.\d{3}).*?(\d\.\d{3})/gs)];
  if (sims.length !== 1) fail(`the card has no base and best similarity: ${scores}`);
  if (!/Word error rate.*%.*%/s.test(scores)) fail(`the card has no base and best WER: ${scores}`);
  const summary = JSON.parse(readFileSync(join(voiceDir, 'summary.json'), 'utf8'));
  if (summary.best?.similarity === undefined || summary.base?.similarity === undefined) fail(`summary.json has no base/best scores: ${JSON.stringify(summary)}`);
  if (!existsSync(join(voiceDir, 'run', 'adapters_best.safetensors'))) fail('no adapters_best.safetensors');
  if ((await browser.$$('[data-testid="voice-card-ab"] button')).length < 2) fail('the card has no A/B player');
  for (const s of ['download', 'transcribe', 'review', 'train', 'listen']) if ((await stage(s)) !== 'done') fail(`${s} is ${await stage(s)} at the end`);
  if ((hub.served.get('tokenizer.json') ?? []).length <= tokenizerGets) fail('the download stage did not fetch the deleted tokenizer again');
  log(`voice card: ${scores.replace(/\s+/g, ' ')} (best step ${summary.best.step})`);
  await shot('app-new-voice.png');

  // The library: the voice, renamed, then deleted after confirmation.
  await tab('Voices');
  const libCard = await browser.$('[data-testid="voice-library"] [data-testid="voice-card"][data-voice="e2e-voice"]');
  await libCard.waitForExist({ timeout: 30_000, timeoutMsg: 'the voice is not in the library' });
  await (await libCard.$('button=Rename…')).click();
  const newName = await browser.$('input[aria-label="New voice name"]');
  await newName.clearValue();
  await newName.setValue('E2E voice, renamed');
  // A text selector (button=...) cannot follow a CSS one: look it up inside the form.
  await (await (await browser.$('[data-testid="rename-voice"]')).$('button=Rename')).click();
  await browser.waitUntil(() => JSON.parse(readFileSync(join(voiceDir, 'voice.json'), 'utf8')).name === 'E2E voice, renamed', {
    timeout: 30_000,
    timeoutMsg: 'voice.json was not renamed',
  });
  await browser.waitUntil(async () => (await libCard.getText()).includes('E2E voice, renamed'), { timeout: 10_000, timeoutMsg: 'the card kept the old name' });
  await shot('app-voices.png');
  await (await libCard.$('button=Delete…')).click();
  const dialog = await browser.$('[role="alertdialog"]');
  await dialog.waitForDisplayed({ timeout: 10_000 });
  if (!(await dialog.getText()).includes(raw)) fail(`the delete confirmation does not say the recordings stay: ${await dialog.getText()}`);
  await (await browser.$('[role="alertdialog"] .actions button:last-child')).click();
  await browser.waitUntil(() => !existsSync(voiceDir), { timeout: 30_000, timeoutMsg: `${voiceDir} was not deleted` });
  if (readdirSync(raw).length !== 4) fail('deleting the voice touched the raw recordings');
  log('Voices: renamed (voice.json) and deleted; the raw recordings stay');
}
