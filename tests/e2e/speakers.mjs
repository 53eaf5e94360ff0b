// E2E step of e2e.mjs: a dataset with two speakers, trained and read back
// (issue 20). Also runs on its own: `node speakers.mjs` inside run.sh
// (scripts/test-app.sh --e2e speakers.mjs), with its own session.
//
// Two espeak-ng voices, one folder each (DATA/alice, DATA/bob: audio/ +
// transcripts/), are dropped on the window for real (raw-recordings.mjs's
// XDND drag) after the demo model is chosen. The Dataset screen's Speakers
// card lists both speakers with the core's counts; bob's id is set to 7 and
// saved, and speakers.json is checked on disk. The command line on Parameters
// reads the folder as --data-dir. A short run on the demo model trains both
// speakers (config.json holds their ids), and the Run screen's per-speaker
// validation table shows each speaker's loss as metrics.jsonl has it; History
// shows the same, read back from the run folder.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dropFolder } from './raw-recordings.mjs';

const SENTENCES = [
  'The river was quiet in the morning.',
  'We carried the boxes up the stairs.',
  'She opened the window to let the air in.',
  'The train left the station on time.',
];

/** DATA/<speaker>/{audio,transcripts} for two espeak-ng voices, four recordings each. */
function twoVoices(root) {
  const data = join(root, 'two-voices');
  for (const [speaker, voice] of [['alice', 'en-us'], ['bob', 'en-us+f3']]) {
    mkdirSync(join(data, speaker, 'audio'), { recursive: true });
    mkdirSync(join(data, speaker, 'transcripts'), { recursive: true });
    SENTENCES.forEach((text, i) => {
      const name = `00${i + 1}`;
      execFileSync('espeak-ng', ['-v', voice, '-s', '150', '-w', join(data, speaker, 'audio', `${name}.wav`), text]);
      writeFileSync(join(data, speaker, 'transcripts', `${name}.txt`), `${text}\n`);
    });
  }
  return data;
}

/** fmtNum's rendering (ui/src/lib/format.ts) of a loss read from metrics.jsonl. */
const shown = (v) => (v === null || v === undefined ? '—' : String(Number(Number(v).toPrecision(4))));

/** The validation records of a run folder's metrics.jsonl (the core's `TrainEvent` serde form). */
function validations(runDir) {
  return readFileSync(join(runDir, 'metrics.jsonl'), 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l))
    .filter((r) => r.event === 'validation')
    .map((r) => r.data);
}

/** Each speaker's row as SpeakerValidation.svelte should show it, from the file's records. */
function expectedRows(vals) {
  const rows = new Map();
  for (const v of vals) {
    for (const s of v.speakers ?? []) {
      const r = rows.get(s.speaker) ?? { best: null, bestStep: null };
      const loss = typeof s.loss === 'number' && Number.isFinite(s.loss) ? s.loss : null;
      Object.assign(r, { id: s.id, examples: s.examples, last: loss, lastStep: v.step });
      if (loss !== null && (r.best === null || loss < r.best)) Object.assign(r, { best: loss, bestStep: v.step });
      rows.set(s.speaker, r);
    }
  }
  return [...rows].map(([name, r]) =>
    [name, r.id, r.examples, `${shown(r.last)} (step ${r.lastStep})`, r.bestStep === null ? '—' : `${shown(r.best)} (step ${r.bestStep})`].join(' | '),
  );
}

export async function speakersStep({ browser, tab, shot, log, fail, work, runsDir, demoModel }) {
  const text = async (testid) => {
    const el = await browser.$(`[data-testid="${testid}"]`);
    return (await el.isExisting()) ? el.getText() : '';
  };
  const setField = async (key, value) => {
    const input = await browser.$(`#f-${key}`);
    await input.waitForExist({ timeout: 10_000 });
    await input.clearValue();
    await input.setValue(String(value));
  };
  /** Cell texts of a table's body rows, ' | ' between cells. */
  const tableRows = (testid) =>
    browser.execute(
      (id) =>
        [...document.querySelectorAll(`[data-testid="${id}"] tbody tr`)].map((tr) =>
          [...tr.querySelectorAll('td')].map((td) => td.textContent.replace(/\s+/g, ' ').trim()).join(' | '),
        ),
      testid,
    );

  // The demo model (its Mimi and tokenizer too): a tiny model trains in seconds.
  await tab('Model');
  await (await browser.$('button*=Use demo model')).click();
  await browser.waitUntil(
    async () => {
      const slots = await Promise.all(['model-csm', 'model-mimi', 'model-tokenizer'].map(text));
      return slots.every((t) => t.includes(demoModel) && t.includes('Format') && !t.includes('Inspecting'));
    },
    { timeout: 600_000, interval: 1000, timeoutMsg: `the demo model was not selected: ${await text('model-csm')}` },
  );
  log('speakers: demo model selected');

  // Parameters first, so the dataset report splits as the run will: half the
  // recordings for validation, a short run validated every 2 steps, no voice
  // scores (the core refuses them with several speakers).
  await tab('Parameters');
  await setField('output_dir', runsDir);
  await setField('epochs', 2);
  await setField('batch_size', 1);
  await setField('val_split', 0.5);
  const search = await browser.$('input[aria-label="Search parameters"]');
  await search.setValue('--val-every');
  await setField('val_every', 2);
  await search.clearValue();
  const voice = await browser.$('#f-voice');
  if (await voice.isSelected()) await voice.click();
  if ((await text('command')).includes('--speaker-encoder')) fail(`voice scores are still on: ${await text('command')}`);

  const data = twoVoices(work);
  await tab('Dataset');
  await dropFolder(data, log);
  const table = () => browser.$('[data-testid="speakers-table"]');
  const rowTexts = async () => ((await (await table()).isExisting()) ? tableRows('speakers-table') : []);
  // The counts come from the core's usage report once the audio is measured.
  await browser.waitUntil(
    async () => {
      const rows = await rowTexts();
      return rows.length === 2 && rows.every((r) => !r.includes('—'));
    },
    { timeout: 120_000, interval: 500, timeoutMsg: `no speakers with counts: ${await text('speakers')}` },
  );
  let rows = await rowTexts();
  log(`speakers: ${rows.join(' || ')}`);
  if (!rows[0].startsWith('alice | 0 | 4 | 4 |') || !rows[1].startsWith('bob | 1 | 4 | 4 |')) {
    fail(`expected alice and bob with ids 0 and 1, 4 recordings and 4 utterances each: ${rows.join(' || ')}`);
  }
  await (await browser.$('[data-testid="speakers-edit"]')).click();
  const bobId = await browser.$('input[aria-label="Id of bob"]');
  await bobId.waitForExist({ timeout: 10_000 });
  await bobId.setValue('7');
  await (await browser.$('[data-testid="speakers-save"]')).click();
  const file = join(data, 'speakers.json');
  await browser.waitUntil(() => existsSync(file), { timeout: 30_000, timeoutMsg: `no ${file}: ${await text('speakers')}` });
  const saved = JSON.parse(readFileSync(file, 'utf8'));
  if (JSON.stringify(saved) !== JSON.stringify({ speakers: { bob: 7 } })) fail(`${file} holds ${JSON.stringify(saved)}`);
  await browser.waitUntil(async () => (await rowTexts()).some((r) => r.startsWith('bob | 7 | 4 | 4 |')), {
    timeout: 60_000,
    interval: 500,
    timeoutMsg: `bob's new id is not shown with his counts: ${(await rowTexts()).join(' || ')}`,
  });
  rows = await rowTexts();
  log(`saved ${file}: ${JSON.stringify(saved)}; ${rows.join(' || ')}`);
  // Train / val utterances: both speakers must have validation utterances, or
  // the per-speaker validation below could not show both.
  const valOf = (r) => Number(r.split(' | ').at(-1).split('/')[1]);
  if (!rows.every((r) => valOf(r) >= 1)) fail(`a speaker has no validation utterance: ${rows.join(' || ')}`);
  await shot('app-speakers.png');

  await tab('Parameters');
  const command = await text('command');
  if (!command.includes(`--data-dir ${data}`)) fail(`the command line does not read the folder as --data-dir: ${command}`);
  // Voice scores are one speaker's: turned on, the form says why the run would
  // be refused and Start is blocked; turned off again, Start is back.
  const startButton = await browser.$('button=Start training');
  // Looked up again: the Parameters screen was rendered anew since `voice`.
  const voiceToggle = await browser.$('#f-voice');
  await voiceToggle.click();
  const voiceBox = await browser.$('[data-testid="voice-settings"]');
  await browser.waitUntil(async () => (await voiceBox.getText()).includes('this dataset has 2 speakers (alice, bob)'), {
    timeout: 10_000,
    timeoutMsg: `no refusal of voice scores with two speakers: ${await voiceBox.getText()}`,
  });
  if (await startButton.isEnabled()) fail('Start is enabled with voice scores on and two speakers');
  await voiceToggle.click();
  await browser.waitUntil(async () => startButton.isEnabled(), { timeout: 10_000, timeoutMsg: `Start stays blocked with voice scores off: ${await voiceBox.getText()}` });
  if ((await text('command')).includes('--speaker-encoder')) fail(`voice scores are still on: ${await text('command')}`);
  log('speakers: voice scores with two speakers block Start until turned off');

  // A run with both speakers.
  const before = new Set(existsSync(runsDir) ? readdirSync(runsDir) : []);
  await tab('Run');
  await (await browser.$('button*=Start training')).click();
  await browser.waitUntil(
    async () => {
      const status = (await text('run-status')).toLowerCase();
      if (status === 'failed') fail(`the two-speaker run failed: ${await text('run-error')}`);
      return status === 'completed';
    },
    { timeout: 600_000, interval: 1000, timeoutMsg: `the two-speaker run did not complete: ${await text('run-status')} ${await text('run-error')}` },
  );
  const created = readdirSync(runsDir).filter((d) => !before.has(d) && existsSync(join(runsDir, d, 'config.json')));
  if (created.length !== 1) fail(`expected one new run in ${runsDir}, found ${created.join(', ') || 'none'}`);
  const runId = created[0];
  const runDir = join(runsDir, runId);
  const config = JSON.parse(readFileSync(join(runDir, 'config.json'), 'utf8'));
  if (JSON.stringify(config.speakers) !== JSON.stringify({ alice: 0, bob: 7 })) fail(`the run's config.json has speakers ${JSON.stringify(config.speakers)}, not alice 0 and bob 7`);
  const vals = validations(runDir);
  const last = vals.at(-1);
  const names = (last?.speakers ?? []).map((s) => `${s.speaker}=${s.id}`).join(',');
  if (names !== 'alice=0,bob=7') fail(`the last validation in ${runDir}/metrics.jsonl has speakers ${names || 'none'}`);
  if (!last.speakers.every((s) => Number.isFinite(s.loss) && s.examples >= 1)) fail(`per-speaker validation without a finite loss: ${JSON.stringify(last.speakers)}`);
  const expected = expectedRows(vals);
  log(`two-speaker run ${runId}: ${vals.length} validation passes; metrics.jsonl: ${expected.join(' || ')}`);

  // The Run screen: the validation chart has a line per speaker, the table the file's numbers.
  const onRun = await tableRows('speaker-validation');
  if (JSON.stringify(onRun) !== JSON.stringify(expected)) fail(`the Run screen's per-speaker validation is ${onRun.join(' || ')}; metrics.jsonl says ${expected.join(' || ')}`);
  const legend = await (await browser.$('[data-testid="chart-val"]')).getText();
  if (!legend.includes('val alice') || !legend.includes('val bob')) fail(`the validation chart has no line per speaker: ${legend}`);
  await shot('app-run-speakers.png');

  // History: the same numbers, read back from the run folder.
  await tab('History');
  const row = await browser.$(`//table[@data-testid="history-table"]//tr[.//b[text()="${runId}"]]`);
  await row.waitForExist({ timeout: 30_000, timeoutMsg: `${runId} is not in History` });
  await (await row.$('button=Validation')).click();
  await (await browser.$('[data-testid="history-speaker-validation"]')).waitForExist({
    timeout: 30_000,
    timeoutMsg: `History shows no per-speaker validation for ${runId}: ${await (await browser.$('main')).getText()}`,
  });
  const inHistory = await tableRows('history-speaker-validation');
  if (JSON.stringify(inHistory) !== JSON.stringify(expected)) fail(`History's per-speaker validation is ${inHistory.join(' || ')}; metrics.jsonl says ${expected.join(' || ')}`);
  const histLegend = await (await browser.$('[data-testid="history-validation"]')).getText();
  if (!histLegend.includes('val alice') || !histLegend.includes('val bob')) fail(`History's validation chart has no line per speaker: ${histLegend}`);
  log(`History: ${inHistory.join(' || ')}`);
  await shot('app-history-speakers.png');
}

// On its own: a session of its own, the step, and nothing else.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { remote } = await import('webdriverio');
  const bin = process.env.CSM_APP_BIN;
  const runsDir = process.env.CSM_E2E_RUNS;
  const shots = process.env.CSM_E2E_SHOTS;
  const work = process.env.WORK;
  for (const [k, v] of Object.entries({ CSM_APP_BIN: bin, CSM_E2E_RUNS: runsDir, CSM_E2E_SHOTS: shots, WORK: work })) {
    if (!v) throw new Error(`${k} is not set (run it through scripts/test-app.sh --e2e speakers.mjs)`);
  }
  const t0 = Date.now();
  const log = (m) => console.log(`[e2e ${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}`);
  const fail = (m) => {
    throw new Error(m);
  };
  const browser = await remote({
    hostname: '127.0.0.1',
    port: 4444,
    logLevel: 'warn',
    connectionRetryTimeout: 120_000,
    capabilities: { 'tauri:options': { application: bin } },
  });
  const tab = async (name) => {
    const b = await browser.$(`button.tab*=${name}`);
    await b.waitForClickable({ timeout: 30_000 });
    await b.click();
  };
  const shot = async (name) => {
    await browser.pause(400);
    await browser.saveScreenshot(join(shots, name));
    log(`screenshot ${name}`);
  };
  try {
    await (await browser.$('button.tab')).waitForExist({ timeout: 60_000 });
    await speakersStep({ browser, tab, shot, log, fail, work, runsDir, demoModel: join(dirname(runsDir), 'demo', 'model') });
    log('PASS');
  } finally {
    await browser.deleteSession().catch(() => {});
  }
}
