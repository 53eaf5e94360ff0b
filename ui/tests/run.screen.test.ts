import { describe, expect, it } from 'vitest';
import { fireEvent, render, screen } from '@testing-library/svelte';
import uPlot from 'uplot';
import { emit } from '@tauri-apps/api/event';
import Run from '../src/screens/Run.svelte';
import App from '../src/App.svelte';
import { app } from '../src/lib/store.svelte';
import { flush, ipc, send, step } from './helpers';

interface Fake {
  opts: { series: { label?: string }[] };
  data: (number | null)[][];
}
const plots = () => (uPlot as unknown as { instances: Fake[] }).instances;
const plotWith = (label: string) => plots().find((p) => p.opts.series.some((s) => s.label === label));

function fill(): void {
  Object.assign(app.config, { model_path: '/m', output_dir: '/runs', audio_dir: '/a', transcript_dir: '/t' });
}

async function started() {
  const log = ipc({ start_training: () => 'run-7', stop_training: () => null });
  fill();
  render(Run);
  await fireEvent.click(screen.getByRole('button', { name: 'Start training' }));
  await flush();
  send(log, { event: 'started', data: { runId: 'run-7', runDir: '/runs/run-7', totalSteps: 100, stepsPerEpoch: 20, trainExamples: 40, valExamples: 4 } });
  await flush();
  return log;
}

describe('Run screen', () => {
  it('starts with the config and shows live progress', async () => {
    const log = await started();
    expect(log.of('start_training')[0]?.config).toMatchObject({ model_path: '/m', lora_r: 8 });
    expect(screen.getByTestId('run-status').textContent).toBe('running');
    send(log, { event: 'phase', data: { phase: 'encoding', message: 'Encoding audio with Mimi', done: 12, total: 44 } });
    await flush();
    expect(screen.getByTestId('phase-detail').textContent).toContain('(12/44)');
    expect(screen.getByRole('listitem', { current: 'step' }).textContent).toContain('Encoding audio');
    send(log, { event: 'phase', data: { phase: 'training', message: null, done: null, total: null } });
    for (let i = 1; i <= 30; i++) send(log, step(i));
    await flush();
    expect(screen.getByTestId('stat-step').textContent).toBe('30 / 100');
    expect(screen.getByTestId('stat-loss').textContent).toBe('4.7');
    expect(screen.getByTestId('stat-eta').textContent).toBe('2m 20s');
    expect(screen.getByRole('progressbar').getAttribute('aria-valuenow')).toBe('30');
    expect(screen.getByText('3.0 GB')).toBeTruthy();
  });

  it('feeds raw + EMA loss to the chart and toggles components and log scale', async () => {
    const log = await started();
    expect(screen.getByTestId('chart-loss').textContent).toContain('No data yet');
    for (let i = 1; i <= 10; i++) send(log, step(i));
    send(log, { event: 'validation', data: { step: 10, loss: 4.5, semanticLoss: 2.8, acousticLoss: 1.7 } });
    await flush();
    await new Promise((r) => setTimeout(r, 30)); // rAF-throttled setData
    expect(screen.getByTestId('chart-loss').textContent).not.toContain('No data yet');
    expect(screen.getByTestId('chart-lr').textContent).not.toContain('No data yet');
    const loss = plotWith('loss');
    expect(loss?.data[0]).toHaveLength(10);
    expect(loss?.data[1]?.[9]).toBeCloseTo(4.9);
    expect(loss?.opts.series.map((s) => s.label)).toEqual(['step', 'loss', 'loss (EMA 0.6)']);
    expect(plotWith('val loss')?.data[1]).toEqual([4.5]);
    await fireEvent.click(screen.getByLabelText('Semantic / acoustic'));
    await flush();
    expect(plotWith('loss')?.opts.series.map((s) => s.label)).toContain('semantic');
    await fireEvent.input(screen.getByLabelText('Smoothing'), { target: { value: '0' } });
    await flush();
    await new Promise((r) => setTimeout(r, 30));
    const p = plotWith('loss (EMA 0)');
    expect(p?.data[2]).toEqual(p?.data[1]);
    await fireEvent.click(screen.getByLabelText('Log scale'));
    await flush();
    expect((plotWith('loss') as unknown as { opts: { scales: { y: { distr?: number } } } }).opts.scales.y.distr).toBe(3);
  });

  it("draws each speaker's validation loss and lists it by speaker", async () => {
    const log = await started();
    expect(screen.queryByTestId('speaker-validation')).toBeNull();
    const sp = (speaker: string, id: number, loss: number) => ({ speaker, id, loss, semanticLoss: 1, acousticLoss: 1, examples: 1 });
    send(log, { event: 'validation', data: { step: 2, loss: 4, semanticLoss: 2, acousticLoss: 2, speakers: [sp('alice', 0, 4.5), sp('bob', 7, 3.5)] } });
    send(log, { event: 'validation', data: { step: 4, loss: 3.5, semanticLoss: 2, acousticLoss: 1.5, speakers: [sp('alice', 0, 3), sp('bob', 7, 4)] } });
    await flush();
    await new Promise((r) => setTimeout(r, 30)); // rAF-throttled setData
    const val = plotWith('val alice');
    expect(val?.opts.series.map((x) => x.label)).toEqual(['step', 'val loss', 'semantic', 'acoustic', 'val alice', 'val bob']);
    expect(val?.data.slice(4)).toEqual([[4.5, 3], [3.5, 4]]);
    const rows = [...screen.getByTestId('speaker-validation').querySelectorAll('tbody tr')].map((r) =>
      [...r.querySelectorAll('td')].map((td) => (td.textContent ?? '').replace(/\s+/g, ' ').trim()).join(' | '),
    );
    expect(rows).toEqual(['alice | 0 | 1 | 3 (step 4) | 3 (step 4)', 'bob | 7 | 1 | 4 (step 4) | 3.5 (step 2)']);
  });

  it('hints at overfitting when validation stops improving', async () => {
    const log = await started();
    for (const [i, loss] of [3, 2.5, 2.6, 2.7].entries()) {
      send(log, { event: 'validation', data: { step: (i + 1) * 50, loss, semanticLoss: 1, acousticLoss: 1 } });
    }
    await flush();
    expect(screen.queryByTestId('overfit-hint')).toBeNull();
    send(log, { event: 'validation', data: { step: 250, loss: 2.8, semanticLoss: 1, acousticLoss: 1 } });
    await flush();
    expect(screen.getByTestId('overfit-hint').textContent).toContain('not improved for 3 evaluations (best 2.5)');
  });

  it('shows NaN and divergence warnings', async () => {
    const log = await started();
    send(log, step(1, { loss: NaN }));
    send(log, { event: 'warning', data: { step: 2, kind: 'gradSpike', message: 'grad norm 120 > 10× median' } });
    await flush();
    const w = screen.getByTestId('warnings').textContent ?? '';
    expect(w).toContain('NaN loss at step 1');
    expect(w).toContain('Gradient spike at step 2');
  });

  it('asks before stopping, then asks the backend to save and stop', async () => {
    const log = await started();
    await fireEvent.click(screen.getByRole('button', { name: 'Stop' }));
    expect(screen.getByRole('alertdialog').textContent).toContain('saves a checkpoint');
    await fireEvent.click(screen.getByRole('button', { name: 'Cancel' }));
    expect(log.of('stop_training')).toHaveLength(0);
    await fireEvent.click(screen.getByRole('button', { name: 'Stop' }));
    await fireEvent.click(screen.getByRole('button', { name: 'Stop and save' }));
    await flush();
    expect(log.of('stop_training')).toEqual([{ runId: 'run-7' }]);
    expect(screen.getByRole('button', { name: 'Stopping…' })).toBeTruthy();
    send(log, { event: 'checkpoint', data: { step: 31, path: '/runs/run-7/checkpoints/step-31', mode: 'lora' } });
    send(log, { event: 'finished', data: { status: 'stopped', step: 31, elapsedSecs: 62, bestValLoss: null, adapterPath: '/runs/run-7/checkpoints/step-31' } });
    await flush();
    expect(screen.getByTestId('run-status').textContent).toBe('stopped');
    expect(screen.getByText('/runs/run-7/checkpoints/step-31')).toBeTruthy();
  });

  it('shows start errors and failures', async () => {
    ipc({ start_training: () => Promise.reject({ kind: 'alreadyRunning', message: 'a run is already in progress' }) });
    fill();
    render(Run);
    await fireEvent.click(screen.getByRole('button', { name: 'Start training' }));
    await flush();
    expect(screen.getByTestId('run-error').textContent).toBe('alreadyRunning: a run is already in progress');
  });

  it('refuses to start with an invalid config', async () => {
    const log = ipc({});
    render(Run);
    expect((screen.getByRole('button', { name: 'Start training' }) as HTMLButtonElement).disabled).toBe(true);
    expect(await app.startRun()).toBe(false);
    expect(log.of('start_training')).toHaveLength(0);
  });
});

describe('window close guard', () => {
  const base = { app_info: () => Promise.reject('n/a'), start_training: () => 'r', 'plugin:window|destroy': () => null };

  it('closes without asking when idle', async () => {
    const log = ipc(base);
    render(App);
    await flush();
    await emit('tauri://close-requested', null);
    await flush();
    expect(log.of('plugin:dialog|message')).toHaveLength(0);
    expect(log.of('plugin:window|destroy')).toHaveLength(1);
  });

  it('asks while training and stays open on cancel', async () => {
    let answer = 'Keep training';
    const log = ipc({ ...base, 'plugin:dialog|message': () => answer });
    fill();
    render(App);
    await flush();
    await app.startRun();
    await emit('tauri://close-requested', null);
    await flush();
    expect(log.of('plugin:dialog|message')[0]).toMatchObject({ message: expect.stringMatching(/still running/) });
    expect(log.of('plugin:window|destroy')).toHaveLength(0);
    answer = 'Quit';
    await emit('tauri://close-requested', null);
    await flush();
    expect(log.of('plugin:window|destroy')).toHaveLength(1);
  });
});
