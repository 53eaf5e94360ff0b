// E2E step of e2e.mjs: raw recordings to a proofread dataset (issue 17).
//
// A folder of raw recordings (an MP3 and an M4A spoken by espeak-ng and
// encoded by ffmpeg here) is DROPPED on the app for real: a small GTK window
// (drag-source.py) offers it as text/uri-list and xdotool drags it onto the
// app, so Tauri gets an XDND drop (WindowEvent::DragDrop allows the folder,
// the webview gets tauri://drag-drop). The Dataset screen lists the
// recordings and proposes the Whisper in the app's hub cache (the tiny random
// fixture placed there as openai/whisper-tiny; its text is random tokens);
// Transcribe writes DATA/{audio,transcripts,alignments}; then one text is
// edited and saved and one recording dropped, and the files are checked on
// disk.
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const fixtures = join(here, '..', 'fixtures', 'whisper');

/** The tiny80 fixture as openai/whisper-tiny in the hub cache, as huggingface_hub lays it out. */
function cacheWhisper(hfHome) {
  const repo = join(hfHome, 'hub', 'models--openai--whisper-tiny');
  const commit = 'e2e0000000000000000000000000000000000000';
  const snapshot = join(repo, 'snapshots', commit);
  mkdirSync(snapshot, { recursive: true });
  mkdirSync(join(repo, 'refs'), { recursive: true });
  writeFileSync(join(repo, 'refs', 'main'), commit);
  for (const f of readdirSync(join(fixtures, 'tiny80'))) {
    if (f !== 'ref.safetensors') copyFileSync(join(fixtures, 'tiny80', f), join(snapshot, f));
  }
  execFileSync('python3', ['-m', 'zipfile', '-e', join(fixtures, 'multilingual.tiktoken.zip'), snapshot]);
  return snapshot;
}

/** speech1.mp3 (44.1 kHz stereo) and speech2.m4a (AAC), spoken by espeak-ng. */
function rawFolder(root) {
  const raw = join(root, 'raw-recordings');
  mkdirSync(raw, { recursive: true });
  const say = (text, out, codec) => {
    const wav = join(root, `${out}.spoken.wav`);
    execFileSync('espeak-ng', ['-v', 'en', '-s', '165', '-w', wav, text]);
    execFileSync('ffmpeg', ['-v', 'error', '-y', '-i', wav, '-ac', '2', '-ar', '44100', ...codec, join(raw, out)]);
  };
  say('The first recording talks about the weather in the mountains.', 'speech1.mp3', ['-codec:a', 'libmp3lame', '-b:a', '96k']);
  say('A second recording, shorter than the first one.', 'speech2.m4a', ['-codec:a', 'aac', '-b:a', '96k']);
  return raw;
}

/** Channels and rate from a WAV header (fmt chunk). */
function wavFormat(path) {
  const b = readFileSync(path);
  if (b.toString('ascii', 0, 4) !== 'RIFF' || b.toString('ascii', 8, 12) !== 'WAVE') throw new Error(`${path} is not a WAV file`);
  let at = 12;
  while (at + 8 <= b.length) {
    const id = b.toString('ascii', at, at + 4);
    const size = b.readUInt32LE(at + 4);
    if (id === 'fmt ') return { channels: b.readUInt16LE(at + 10), rate: b.readUInt32LE(at + 12), bits: b.readUInt16LE(at + 22) };
    at += 8 + size + (size % 2);
  }
  throw new Error(`${path} has no fmt chunk`);
}

/** Drags `folder` from a GTK window onto the app's window with xdotool (a real XDND drop). */
export async function dropFolder(folder, log) {
  const src = spawn('/usr/bin/python3', [join(here, 'drag-source.py'), folder, '10', '880'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  src.stdout.on('data', (d) => (out += d));
  src.stderr.on('data', (d) => (out += d));
  try {
    const t = Date.now();
    while (!out.includes('READY')) {
      if (Date.now() - t > 20_000 || src.exitCode !== null) throw new Error(`the drag source did not start: ${out}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const x = (...a) => execFileSync('xdotool', a.map(String));
    x('mousemove', 100, 915, 'mousedown', 1);
    for (const [px, py] of [[110, 910], [140, 890], [220, 780], [400, 600], [620, 420], [640, 400]]) {
      x('mousemove', px, py);
      await new Promise((r) => setTimeout(r, 120));
    }
    await new Promise((r) => setTimeout(r, 300));
    x('mouseup', 1);
    const t2 = Date.now();
    while (!out.includes('DRAG-END') && Date.now() - t2 < 5000) await new Promise((r) => setTimeout(r, 100));
    log(`dropped ${folder} on the window (${out.includes('DRAG-END') ? 'drag ended' : 'no drag-end seen'})`);
  } finally {
    src.kill();
  }
}

export async function rawRecordingsStep({ browser, tab, shot, log, fail, hfHome, work }) {
  const snapshot = cacheWhisper(hfHome);
  const raw = rawFolder(work);
  const data = join(raw, 'dataset');
  log(`raw folder ${raw}; Whisper fixture cached at ${snapshot}`);

  await tab('Dataset');
  await dropFolder(raw, log);
  const rows = () => browser.$$('[data-testid="recordings-table"] tbody tr');
  await browser.waitUntil(async () => (await rows()).length === 2, {
    timeout: 60_000,
    timeoutMsg: `the dropped folder was not listed as recordings: ${await browser.$('main').getText().catch(() => '')}`,
  });
  const model = await browser.$('#whisper-model');
  await browser.waitUntil(async () => (await model.getValue()) === 'openai/whisper-tiny', {
    timeout: 30_000,
    timeoutMsg: `the cached Whisper was not proposed: ${await model.getValue()}`,
  });
  await (await browser.$('#whisper-language')).selectByAttribute('value', 'en');
  await (await browser.$('#whisper-temperature')).selectByAttribute('value', '0');
  await (await browser.$('button=Transcribe 2 recordings')).click();
  const status = await browser.$('[data-testid="transcription-status"]');
  await browser.waitUntil(async () => (await browser.$$('[data-testid="utterance"]')).length === 2, {
    timeout: 300_000,
    interval: 500,
    timeoutMsg: `the transcription did not finish into the proofreading view: ${await browser.$('main').getText().catch(() => '')}`,
  });
  log(`transcribed: ${(await status.getText().catch(() => '')).replace(/\s+/g, ' ')}`);

  // The seed layout, as csm transcribe writes it.
  for (const name of ['speech1', 'speech2']) {
    const wav = join(data, 'audio', `${name}.wav`);
    const fmt = wavFormat(wav);
    if (fmt.channels !== 1 || fmt.rate !== 24000) fail(`${wav}: ${fmt.channels} ch at ${fmt.rate} Hz, not 24 kHz mono`);
    const text = readFileSync(join(data, 'transcripts', `${name}.txt`), 'utf8');
    if (text.trim() === '') fail(`${name}.txt is empty`);
    const al = JSON.parse(readFileSync(join(data, 'alignments', `${name}.json`), 'utf8'));
    const words = (al.segments ?? []).flatMap((s) => s.words ?? []);
    if (words.length === 0 || !words.every((w) => typeof w.start === 'number' && typeof w.end === 'number')) {
      fail(`${name}.json has no timed words`);
    }
  }
  log('dataset layout written: audio/*.wav 24 kHz mono, transcripts, alignments with timed words');
  await shot('app-transcribe.png');

  // Proofread: edit one text and save it.
  const utt = (file) => browser.$(`[data-testid="utterance"][data-file="${file}"]`);
  const edited = 'The first recording, proofread by hand.';
  const box = await (await utt('speech1.wav')).$('textarea');
  await box.setValue(edited);
  await (await (await utt('speech1.wav')).$('button=Save')).click();
  const txt = join(data, 'transcripts', 'speech1.txt');
  await browser.waitUntil(() => readFileSync(txt, 'utf8') === `${edited}\n`, {
    timeout: 30_000,
    timeoutMsg: `speech1.txt was not saved: ${JSON.stringify(readFileSync(txt, 'utf8'))}`,
  });
  // Whisper's (random) words are not these: the alignment is stale, kept aside, and shown.
  // The text is written first, then the alignment moved: wait for both.
  await browser.waitUntil(
    () => existsSync(join(data, 'alignments', 'stale', 'speech1.json')) && !existsSync(join(data, 'alignments', 'speech1.json')),
    { timeout: 30_000, timeoutMsg: 'the edited recording\'s alignment was not moved to alignments/stale/' },
  );
  await browser.waitUntil(async () => (await (await utt('speech1.wav')).getText()).includes('alignment stale'), {
    timeout: 30_000,
    timeoutMsg: 'the proofreading row does not show the stale alignment',
  });
  log('text edited and saved; the alignment is stale (alignments/stale/speech1.json)');

  // Drop one recording: moved to excluded/, never deleted.
  await (await browser.$('button[aria-label="Drop speech2.wav"]')).click();
  await browser.waitUntil(async () => (await browser.$$('[data-testid="utterance"]')).length === 1, {
    timeout: 30_000,
    timeoutMsg: 'the dropped recording is still listed',
  });
  for (const f of ['audio/excluded/speech2.wav', 'transcripts/excluded/speech2.txt', 'alignments/excluded/speech2.json']) {
    if (!existsSync(join(data, f))) fail(`${f} is missing after the drop`);
  }
  if (existsSync(join(data, 'audio', 'speech2.wav'))) fail('audio/speech2.wav is still in the dataset');
  if (!statSync(join(raw, 'speech2.m4a')).isFile()) fail('the raw recording was touched');
  const excluded = await browser.$('[data-testid="excluded"]');
  await excluded.waitForDisplayed({ timeout: 10_000 });
  if (!(await excluded.getText()).includes('speech2')) fail('the dropped recording is not listed as dropped');
  log('speech2 dropped: its files are in the excluded/ folders');
  await shot('app-proofread.png');
}
