// End-to-end test of the real CSM Studio binary (WebKitGTK) through
// tauri-driver. Run by scripts/test-app.sh under Xvfb, which sets:
//   CSM_APP_BIN       the app binary (built with ui/dist embedded)
//   CSM_E2E_RUNS      the app's default runs folder (under XDG_DATA_HOME)
//   CSM_E2E_SINK      the raw f32 file the ALSA `default` PCM writes (~/.asoundrc)
//   CSM_E2E_SHOTS     where screenshots go (docs/images)
// Flow: demo model + dataset (no native dialogs) -> parameters -> a REAL
// training run (step counter advances, loss chart draws) -> stop -> play
// audio through cpal into the ALSA file sink -> a generation's progress bar,
// stopped -> a generated sample, played -> History.
import { remote } from 'webdriverio';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

const bin = process.env.CSM_APP_BIN;
const runsDir = process.env.CSM_E2E_RUNS;
const sink = process.env.CSM_E2E_SINK;
const shots = process.env.CSM_E2E_SHOTS;
for (const [k, v] of Object.entries({ CSM_APP_BIN: bin, CSM_E2E_RUNS: runsDir, CSM_E2E_SINK: sink, CSM_E2E_SHOTS: shots })) {
  if (!v) throw new Error(`${k} is not set`);
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
  await shot('app-history.png');
  log('PASS');
} finally {
  await browser.deleteSession().catch(() => {});
}
