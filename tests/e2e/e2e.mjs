// End-to-end test of the real CSM Studio binary (WebKitGTK) through
// tauri-driver. Run by scripts/test-app.sh under Xvfb, which sets:
//   CSM_APP_BIN       the app binary (built with ui/dist embedded)
//   CSM_E2E_RUNS      the app's default runs folder (under XDG_DATA_HOME)
//   CSM_E2E_SINK      the raw f32 file the ALSA `default` PCM writes (~/.asoundrc)
//   CSM_E2E_SHOTS     where screenshots go (docs/images)
// and tests/e2e/run.sh:
//   CSM_E2E_HUB_PORT  the port of the mock hub (mock-hub.mjs, started here)
//   HF_ENDPOINT       http://127.0.0.1:$CSM_E2E_HUB_PORT, read by the app
//   HF_HOME           the app's private hub cache ($HF_HOME/hub) and token file
// Flow: demo model + dataset (no native dialogs) -> the mock hub serves the
// demo model's files as the csm-1b bundle's repos (sesame/csm-1b gated) ->
// Model screen: download refused (licence page + token field), token saved
// with consent, download with per-file progress, cancel mid-file, resume
// (only the rest is fetched) -> the downloaded model fills the slots ->
// parameters -> a REAL training run from the hub cache (step counter
// advances, loss chart draws) -> stop -> play audio through cpal into the
// ALSA file sink -> a generation's progress bar, stopped -> a generated
// sample, played -> History -> a cached repo deleted after confirmation ->
// Dataset: a folder of raw MP3/M4A recordings dropped on the window (a real
// XDND drag from drag-source.py), transcribed with the tiny Whisper fixture
// from the hub cache, one text edited, one recording dropped, files checked
// on disk (raw-recordings.mjs) -> New voice: four raw MP3s dropped, the
// journey (download from the mock hub, transcription, proofreading, a few
// training steps with voice scores) to the voice card; Voices: renamed,
// deleted (new-voice.mjs). Between the last two: two speakers, a folder per
// speaker, an id set in the Speakers card, a short run, per-speaker
// validation on Run and in History (speakers.mjs; it also runs on its own).
import { remote } from 'webdriverio';
import { createHash } from 'node:crypto';
import { copyFileSync, createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { MockHub } from './mock-hub.mjs';
import { rawRecordingsStep } from './raw-recordings.mjs';
import { newVoiceStep } from './new-voice.mjs';
import { speakersStep } from './speakers.mjs';

const bin = process.env.CSM_APP_BIN;
const runsDir = process.env.CSM_E2E_RUNS;
const sink = process.env.CSM_E2E_SINK;
const shots = process.env.CSM_E2E_SHOTS;
const hubPort = process.env.CSM_E2E_HUB_PORT;
const endpoint = process.env.HF_ENDPOINT;
const hfHome = process.env.HF_HOME;
for (const [k, v] of Object.entries({
  CSM_APP_BIN: bin,
  CSM_E2E_RUNS: runsDir,
  CSM_E2E_SINK: sink,
  CSM_E2E_SHOTS: shots,
  CSM_E2E_HUB_PORT: hubPort,
  HF_ENDPOINT: endpoint,
  HF_HOME: hfHome,
})) {
  if (!v) throw new Error(`${k} is not set`);
}
const hubCache = join(hfHome, 'hub');
const TOKEN = 'hf_e2e_mock_token';

const t0 = Date.now();
const log = (m) => console.log(`[e2e ${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}`);
const fail = (m) => {
  throw new Error(m);
};

const hub = await MockHub.start(Number(hubPort));
if (hub.url !== endpoint) throw new Error(`the mock hub is at ${hub.url}, HF_ENDPOINT is ${endpoint}`);

const browser = await remote({
  hostname: '127.0.0.1',
  port: 4444,
  logLevel: 'warn',
  connectionRetryTimeout: 120_000,
  capabilities: { 'tauri:options': { application: bin } },
});

async function tab(name) {
  const b = await browser.$(`button.tab*=${name}`);
  await b.waitForClickable({ timeout: 30_000 });
  await b.click();
}

async function shot(name) {
  await browser.pause(400);
  await browser.saveScreenshot(join(shots, name));
  log(`screenshot ${name}`);
}

async function text(testid) {
  const el = await browser.$(`[data-testid="${testid}"]`);
  return (await el.isExisting()) ? el.getText() : '';
}

/** Canvas pixels with any alpha in the chart's plot canvas. */
async function inkedPixels(testid) {
  return browser.execute((id) => {
    const c = document.querySelector(`[data-testid="${id}"] canvas`);
    if (!c) return -1;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  }, testid);
}

async function sha256File(path) {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk);
  return h.digest('hex');
}

/** The one snapshot folder of `repo` in the app's hub cache. */
function snapshotOf(repo) {
  const dir = join(hubCache, `models--${repo.replace('/', '--')}`, 'snapshots');
  const commits = existsSync(dir) ? readdirSync(dir) : [];
  if (commits.length !== 1) fail(`expected one snapshot in ${dir}, found ${commits.join(', ') || 'none'}`);
  return join(dir, commits[0]);
}

async function setField(key, value) {
  const input = await browser.$(`#f-${key}`);
  await input.waitForExist({ timeout: 10_000 });
  await input.clearValue();
  await input.setValue(String(value));
}

try {
  await (await browser.$('button.tab')).waitForExist({ timeout: 60_000 });
  log('app mounted');

  // 1. Model: the bundled demo (built in the app data dir on first use).
  await tab('Model');
  await (await browser.$('button*=Use demo model')).click();
  await browser.waitUntil(async () => (await text('model-csm')).includes('safetensors'), {
    timeout: 600_000,
    interval: 1000,
    timeoutMsg: 'the demo model was not inspected',
  });
  await browser.waitUntil(async () => (await text('model-mimi')).match(/param/i) !== null, { timeout: 120_000 });
  log('demo model loaded');

  // 1b. The hub: the demo model's files as the csm-1b bundle's repos, the
  // model repo gated as sesame/csm-1b is. The app downloads them into its
  // hub cache and trains from there (step 5).
  const demoModel = join(dirname(runsDir), 'demo', 'model');
  const weights = join(demoModel, 'model.safetensors');
  await hub.serve('sesame/csm-1b', 'model.safetensors', weights);
  await hub.serve('sesame/csm-1b', 'config.json', join(demoModel, 'config.json'), { lfs: false });
  await hub.serve('kyutai/moshiko-pytorch-bf16', 'tokenizer-e351c8d8-checkpoint125.safetensors', join(demoModel, 'mimi.safetensors'));
  await hub.serve('unsloth/Llama-3.2-1B', 'tokenizer.json', join(demoModel, 'tokenizer.json'));
  hub.gate('sesame/csm-1b', TOKEN);
  const weightsSize = statSync(weights).size;
  const bundleRow = await browser.$('[data-testid="bundle-csm-1b"]');
  const hubText = () => browser.$('[data-testid="hub"]').getText();

  // Refused without a token: the message names the licence page, and the token field takes the focus.
  await (await bundleRow.$('button=Download CSM-1B')).click();
  const access = await browser.$('[data-testid="hub-access"]');
  await access.waitForDisplayed({ timeout: 30_000, timeoutMsg: `no access-denied message: ${await hubText()}` });
  const accessText = await access.getText();
  if (!accessText.includes(`${endpoint}/sesame/csm-1b`)) fail(`the gated message does not name the licence page: ${accessText}`);
  const tokenField = await browser.$('input[aria-label="Hugging Face token"]');
  if (!(await tokenField.isFocused())) fail('the token field is not focused after the refusal');
  if (existsSync(join(hubCache, 'models--sesame--csm-1b', 'snapshots'))) fail('the refused repo left files in the cache');
  log(`gated: ${accessText.replace(/\s+/g, ' ').slice(0, 160)}`);

  // The token, saved only with consent, where huggingface-cli login keeps it.
  await tokenField.setValue(TOKEN);
  const saveToken = await browser.$('button=Save token');
  if (await saveToken.isEnabled()) fail('"Save token" is enabled before the consent box is ticked');
  await (await browser.$('[data-testid="hub"] form input[type="checkbox"]')).click();
  await saveToken.click();
  const tokenFile = join(hfHome, 'token');
  await browser.waitUntil(() => existsSync(tokenFile), { timeout: 10_000, timeoutMsg: `no token file at ${tokenFile}` });
  const mode = statSync(tokenFile).mode & 0o777;
  if (readFileSync(tokenFile, 'utf8') !== TOKEN || mode !== 0o600) fail(`${tokenFile}: mode ${mode.toString(8)}, content ${readFileSync(tokenFile, 'utf8')}`);
  log(`token saved to ${tokenFile} (mode 600)`);

  // Download (throttled by the mock) with per-file progress and speed; cancel mid-file.
  hub.throttle(20);
  await (await bundleRow.$('button=Download CSM-1B')).click();
  const weightsBar = await browser.$('[aria-label="sesame/csm-1b/model.safetensors"]');
  const barValue = async () => Number((await weightsBar.getAttribute('aria-valuenow').catch(() => '0')) ?? 0);
  await browser.waitUntil(async () => (await barValue()) >= 1 << 20 && /B\/s, .* left/.test(await hubText()), {
    timeout: 60_000,
    interval: 200,
    timeoutMsg: `no download progress with speed and ETA: ${await hubText()}`,
  });
  await shot('app-model-download.png');
  await (await bundleRow.$('button=Cancel')).click();
  const note = await browser.$('[data-testid="hub-note"]');
  await browser.waitUntil(async () => (await note.isExisting()) && (await note.getText()).includes('Download cancelled'), {
    timeout: 30_000,
    timeoutMsg: `the download did not stop: ${await hubText()}`,
  });
  await browser.waitUntil(() => (hub.served.get('model.safetensors') ?? []).length === 1, { timeout: 10_000, timeoutMsg: 'the mock did not see the cancelled transfer end' });
  const blobs = join(hubCache, 'models--sesame--csm-1b', 'blobs');
  const partials = readdirSync(blobs).filter((f) => f.endsWith('.incomplete'));
  if (partials.length !== 1) fail(`expected one partial blob in ${blobs}, found ${readdirSync(blobs).join(', ')}`);
  const kept = statSync(join(blobs, partials[0])).size;
  const firstServed = hub.served.get('model.safetensors')[0];
  if (!(kept >= 1 << 20 && kept < weightsSize && firstServed >= kept)) fail(`partial ${kept} of ${weightsSize} bytes, ${firstServed} served`);
  if (existsSync(join(hubCache, 'models--sesame--csm-1b', 'snapshots')) && readdirSync(snapshotOf('sesame/csm-1b')).includes('model.safetensors'))
    fail('a cancelled file reached its snapshot path');
  log(`cancelled: ${kept} of ${weightsSize} bytes kept in blobs/${partials[0]}`);

  // Resume at full speed: only the rest is fetched; the bundle fills the model slots.
  hub.throttle(0);
  const resume = await bundleRow.$('button=Resume CSM-1B download');
  await resume.waitForClickable({ timeout: 10_000, timeoutMsg: `no resume button: ${await hubText()}` });
  await resume.click();
  await browser.waitUntil(
    async () => {
      const csm = await text('model-csm');
      const mimi = await text('model-mimi');
      return csm.includes('models--sesame--csm-1b/snapshots/') && csm.includes('Format') && mimi.includes('models--kyutai--moshiko-pytorch-bf16/snapshots/') && /param/i.test(mimi);
    },
    { timeout: 300_000, interval: 1000, timeoutMsg: `the downloaded bundle was not selected: ${await hubText()}` },
  );
  const served = hub.served.get('model.safetensors');
  if (served.length !== 2 || served[1] !== weightsSize - kept) fail(`resume served ${served.join(' + ')} bytes; expected ${kept} kept + ${weightsSize - kept}`);
  if (!hub.requests.some((r) => r.server === 'cdn' && r.range === `bytes=${kept}-`)) fail(`no Range: bytes=${kept}- request`);
  if (hub.requests.some((r) => r.server === 'cdn' && r.authorization)) fail('the token was sent to the CDN');
  if (!hub.requests.some((r) => r.server === 'hub' && r.authorization === `Bearer ${TOKEN}`)) fail('the saved token was not sent to the hub');
  if (readdirSync(blobs).some((f) => f.endsWith('.incomplete'))) fail(`a partial file is left in ${blobs}`);
  const got = join(snapshotOf('sesame/csm-1b'), 'model.safetensors');
  if ((await sha256File(got)) !== (await sha256File(weights))) fail(`${got} differs from the served file`);
  log(`resumed from byte ${kept}: ${served[1]} more bytes fetched; ${got} matches (sha256)`);
  await shot('app-model.png');

  // 2. Dataset: the demo clips, scanned by the backend.
  await tab('Dataset');
  await browser.waitUntil(async () => (await browser.$$('[data-testid="dataset-table"] tbody tr')).length >= 5, {
    timeout: 120_000,
    timeoutMsg: 'the dataset table did not fill',
  });
  log(`dataset: ${await text('dataset-totals')}`);
  await shot('app-dataset.png');

  // 3. Play a clip through cpal into the ALSA file sink.
  // ALSA's null PCM is not paced in real time, so the file grows fast: read the
  // first 4 MB and stop playback right away.
  const before = existsSync(sink) ? statSync(sink).size : 0;
  await (await browser.$('button[aria-label^="Play "]')).click();
  await browser.waitUntil(() => existsSync(sink) && statSync(sink).size > before + 4096, {
    timeout: 30_000,
    timeoutMsg: `nothing was written to the ALSA sink ${sink}`,
  });
  await (await browser.$('button[aria-label^="Stop "]')).click().catch(() => {});
  const raw = readFileSync(sink).subarray(0, 4 << 20);
  const f32 = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + Math.floor(raw.length / 4) * 4));
  let loud = 0;
  for (const x of f32) if (Math.abs(x) > 0.01 && Math.abs(x) <= 1) loud++;
  if (loud < 1000) fail(`the ALSA sink holds ${f32.length} samples but only ${loud} are not silent`);
  log(`playback: ${f32.length} samples in the sink, ${loud} non-silent`);

  // 4. Parameters: output folder (typed; it is the app's own runs folder) and a long run.
  await tab('Parameters');
  await setField('output_dir', runsDir);
  await setField('epochs', 40);
  // Voice scores (issue 18) with resemblyzer's real weights as the cached
  // speaker-encoder bundle (scripts/fetch-test-speaker-encoder.sh fetched them;
  // placed where csm-hub keeps the file it extracts from the PyPI wheel), one
  // prompt, a checkpoint (and so a scoring) every 3 steps.
  const encoderSrc = join(dirname(dirname(process.env.CSM_APP_BIN)), 'test-data', 'resemblyzer-pretrained.pt');
  // 4a. The learning-rate finder (issue 20) on the demo, 12 steps: the chart
  // draws, a suggestion is made and "Use this LR" sets the field; the runs
  // folder gets lr_find.json and nothing else. The rate is put back after.
  const lrBefore = await (await browser.$('#f-learning_rate')).getValue();
  const lrSteps = await browser.$('#lr-steps');
  await lrSteps.clearValue();
  await lrSteps.setValue('12');
  await (await browser.$('[data-testid="lr-find"]')).click();
  await browser.waitUntil(
    async () => {
      const err = await text('lr-find-error');
      if (err) fail(`lr-find failed: ${err}`);
      return (await text('lr-suggestion')) !== '';
    },
    { timeout: 600_000, interval: 1000, timeoutMsg: `lr-find did not finish: ${await text('lr-find-status')}` },
  );
  const lrInk = await inkedPixels('chart-lr');
  const suggestion = await text('lr-suggestion');
  log(`lr-find: ${suggestion.replace(/\s+/g, ' ')}; chart ink ${lrInk}`);
  if (!(lrInk > 50)) fail(`the learning-rate chart did not draw (${lrInk} inked pixels)`);
  const suggested = suggestion.match(/Suggested: ([0-9.e+-]+)/);
  if (!suggested) fail(`no suggested rate: ${suggestion}`);
  await (await browser.$('[data-testid="lr-use"]')).click();
  const lrNow = Number(await (await browser.$('#f-learning_rate')).getValue());
  if (Math.abs(lrNow - Number(suggested[1])) > 1e-12) fail(`"Use this LR" set ${lrNow}, the suggestion is ${suggested[1]}`);
  const runsListing = readdirSync(runsDir);
  if (runsListing.join(',') !== 'lr_find.json') fail(`lr-find left ${runsListing.join(', ')} in ${runsDir}; expected lr_find.json only`);
  await shot('app-lr-find.png');
  await setField('learning_rate', lrBefore);
  if (!existsSync(encoderSrc)) fail(`${encoderSrc} is missing: run scripts/fetch-test-speaker-encoder.sh`);
  const encoderDir = join(hfHome, 'assets', 'csm', 'pypi--resemblyzer', '0.1.4');
  mkdirSync(encoderDir, { recursive: true });
  copyFileSync(encoderSrc, join(encoderDir, 'pretrained.pt'));
  const search = await browser.$('input[aria-label="Search parameters"]');
  await search.setValue('--save-every');
  await setField('save_every', 3);
  await search.clearValue();
  await (await browser.$('#f-voice')).click();
  await setField('voice-prompts', 1);
  if (!(await text('command')).includes('--speaker-encoder speaker-encoder --voice-prompts 1')) {
    fail(`the command line lacks the voice flags: ${await text('command')}`);
  }
  await shot('app-parameters.png');

  // 5. Run: a real training run; the step counter advances and the loss chart draws.
  await tab('Run');
  const emptyInk = await inkedPixels('chart-loss');
  await (await browser.$('button*=Start training')).click();
  let firstStep = null;
  await browser.waitUntil(
    async () => {
      if ((await text('run-status')).toLowerCase() === 'failed') fail(`the run failed: ${await text('run-error')}`);
      const m = (await text('stat-step')).match(/(\d+)\s*\/\s*(\d+)/);
      if (!m) return false;
      firstStep ??= Number(m[1]);
      return Number(m[1]) >= firstStep + 3;
    },
    { timeout: 600_000, interval: 500, timeoutMsg: `the step counter did not advance: ${await text('run-error')}` },
  );
  const ink = await inkedPixels('chart-loss');
  log(`training: ${await text('stat-step')}, loss ${await text('stat-loss')}, chart ink ${emptyInk} -> ${ink}`);
  if (!(ink > emptyInk + 50)) fail(`the loss chart did not draw (inked pixels ${emptyInk} -> ${ink})`);
  // The Voice chart: the base model (step 0) and a checkpoint scored.
  await browser.waitUntil(
    async () => {
      if ((await text('run-status')).toLowerCase() === 'failed') fail(`the run failed: ${await text('run-error')}`);
      const m = (await text('voice-summary').catch(() => '')).match(/Voice at step (\d+)/);
      return m !== null && Number(m[1]) > 0;
    },
    { timeout: 600_000, interval: 1000, timeoutMsg: 'no checkpoint was voice-scored' },
  );
  const voiceInk = await inkedPixels('chart-voice');
  log(`voice scores: ${await text('voice-summary')} (chart ink ${voiceInk})`);
  if (!(voiceInk > 50)) fail(`the Voice chart did not draw (inked pixels ${voiceInk})`);
  await shot('app-run.png');

  // 6. Stop (with confirmation): checkpoint, then "stopped".
  await (await browser.$('button.danger*=Stop')).click();
  const confirm = await browser.$('[role="alertdialog"] .actions button:last-child');
  await confirm.waitForClickable({ timeout: 10_000 });
  await confirm.click();
  await browser.waitUntil(async () => (await text('run-status')).toLowerCase() === 'stopped', {
    timeout: 300_000,
    timeoutMsg: `the run did not stop: ${await text('run-status')}`,
  });
  log('run stopped');
  // It trained from the hub cache.
  const runDirs = readdirSync(runsDir).filter((d) => existsSync(join(runsDir, d, 'config.json')));
  if (runDirs.length !== 1) fail(`expected one run in ${runsDir}, found ${runDirs.join(', ')}`);
  const runConfig = JSON.parse(readFileSync(join(runsDir, runDirs[0], 'config.json'), 'utf8'));
  for (const [key, repo] of [
    ['model_path', 'sesame/csm-1b'],
    ['mimi_path', 'kyutai/moshiko-pytorch-bf16'],
    ['tokenizer_path', 'unsloth/Llama-3.2-1B'],
  ]) {
    if (!String(runConfig[key]).startsWith(snapshotOf(repo))) fail(`the run's ${key} is ${runConfig[key]}, not in ${snapshotOf(repo)}`);
  }
  log(`the run trained from the hub cache (${runConfig.model_path})`);
  if (runConfig.voice?.speaker_encoder !== join(encoderDir, 'pretrained.pt')) {
    fail(`the run's voice.speaker_encoder is ${runConfig.voice?.speaker_encoder}, not the cached bundle's file`);
  }

  // 7. Samples: a generation streams its progress and can be stopped (no sample);
  // then generate with the latest checkpoint and play it into the sink.
  await tab('Samples');
  const framesDone = async () =>
    Number((await browser.$('[aria-label="Generation progress"]').getAttribute('aria-valuenow').catch(() => '0')) ?? 0);
  await (await browser.$('button.primary=Generate')).click();
  await browser.waitUntil(async () => (await framesDone()) >= 3, {
    timeout: 120_000,
    interval: 200,
    timeoutMsg: `no generation progress arrived: ${await browser.$('main').getText().catch(() => '')}`,
  });
  await shot('app-samples-progress.png');
  await (await browser.$('button=Stop generating')).click();
  await browser.waitUntil(async () => (await browser.$('main').getText()).includes('Stopped: generation cancelled'), {
    timeout: 60_000,
    timeoutMsg: `the generation did not stop: ${await browser.$('main').getText().catch(() => '')}`,
  });
  if ((await browser.$$('[data-testid="sample"]')).length > 0) fail('a cancelled generation produced a sample');
  log('generation progress shown, generation cancelled');
  await (await browser.$('button.primary=Generate')).click();
  await browser.waitUntil(async () => (await browser.$$('[data-testid="sample"]')).length > 0, {
    timeout: 300_000,
    interval: 1000,
    timeoutMsg: `no sample was generated: ${await browser.$('main').getText().catch(() => '')}`,
  });
  log('sample generated');
  const sinkBefore = statSync(sink).size;
  await (await browser.$('[data-testid="sample"] button[aria-label^="Play"]')).click();
  await browser.waitUntil(() => statSync(sink).size > sinkBefore + 4096, {
    timeout: 30_000,
    timeoutMsg: 'the generated sample was not played into the ALSA sink',
  });
  await (await browser.$('[data-testid="sample"] button[aria-label="Stop"]')).click().catch(() => {});
  log('generated sample played');
  await shot('app-samples.png');

  // 8. History: the stopped run, read back from metrics.jsonl.
  await tab('History');
  await browser.waitUntil(async () => (await text('history-table')).toLowerCase().includes('stopped'), {
    timeout: 30_000,
    timeoutMsg: 'the run is not in History',
  });
  await (await browser.$('button=Voice')).click();
  await (await browser.$('[data-testid="history-voice"]')).waitForExist({ timeout: 30_000 });
  log(`History rebuilt the Voice chart (ink ${await inkedPixels('history-voice')})`);
  await shot('app-history.png');

  // 9. Model: delete a cached repo after confirmation (the dialog warns that a slot points into it).
  await tab('Model');
  await (await browser.$('button[aria-label="Delete unsloth/Llama-3.2-1B"]')).click();
  const dialog = await browser.$('[role="alertdialog"]');
  await dialog.waitForDisplayed({ timeout: 10_000 });
  if (!(await dialog.getText()).includes('The model slots point into it')) fail(`the delete confirmation does not warn: ${await dialog.getText()}`);
  await (await browser.$('[role="alertdialog"] .actions button:last-child')).click();
  const tokRepo = join(hubCache, 'models--unsloth--Llama-3.2-1B');
  await browser.waitUntil(async () => !existsSync(tokRepo) && !(await browser.$('[aria-label="Cached models"]').getText()).includes('unsloth/Llama-3.2-1B'), {
    timeout: 30_000,
    timeoutMsg: `unsloth/Llama-3.2-1B was not deleted: ${await hubText()}`,
  });
  log(`cached repo deleted (${tokRepo})`);

  // 10. Dataset: a folder of raw recordings dropped on the window (a real
  // XDND drag), transcribed with the cached tiny Whisper, one text edited,
  // one recording dropped; files checked on disk (raw-recordings.mjs).
  await rawRecordingsStep({ browser, tab, shot, log, fail, hfHome, work: process.env.WORK ?? dirname(runsDir) });

  // 10a. Two speakers (issue 20): a folder per speaker dropped, bob's id set
  // in the Speakers card (speakers.json), a short run on the demo model, each
  // speaker's validation loss on Run and in History as metrics.jsonl has it.
  await speakersStep({ browser, tab, shot, log, fail, work: process.env.WORK ?? dirname(runsDir), runsDir, demoModel: join(dirname(runsDir), 'demo', 'model') });

  // 10b. New voice: raw recordings dropped -> the voice's card; Voices: rename, delete (new-voice.mjs).
  await newVoiceStep({ browser, tab, shot, log, fail, hub, dataDir: dirname(runsDir), work: process.env.WORK ?? dirname(runsDir) });
  log('PASS');
} finally {
  await browser.deleteSession().catch(() => {});
  await hub.close();
}
