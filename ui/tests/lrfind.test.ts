import { describe, expect, it } from 'vitest';
import { fireEvent, render, screen } from '@testing-library/svelte';
import type { Channel } from '@tauri-apps/api/core';
import Parameters from '../src/screens/Parameters.svelte';
import { app } from '../src/lib/store.svelte';
import type { LrFindEvent, LrFindReport, LrPoint } from '../src/lib/api';
import { type LrFind, applyLrFindEvent, fmtLr, idleLrFind, lrChart, stopText } from '../src/lib/lrfind';
import { flush, ipc } from './helpers';

const point = (step: number, lr: number, loss: number, smoothed = loss): LrPoint => ({ step, lr, loss, smoothed });

function report(points: LrPoint[], suggestedLr: number | null, stop: LrFindReport['stop'] = 'completed'): LrFindReport {
  return {
    suggestedLr,
    minLossLr: suggestedLr,
    points,
    stop,
    options: { minLr: 1e-7, maxLr: 1, steps: points.length, smoothing: 0.9, divergeFactor: 4 },
    configLr: 2e-4,
    trainableParams: 1000,
  };
}

describe('learning-rate finder state', () => {
  it('follows phases and points', () => {
    let s: LrFind = { ...idleLrFind(12), status: 'running' };
    s = applyLrFindEvent(s, { event: 'phase', data: { phase: 'encoding', message: 'encoding', done: 2, total: 5 } });
    expect(s.progress).toEqual({ done: 2, total: 5 });
    s = applyLrFindEvent(s, { event: 'point', data: point(1, 1e-7, 5) });
    s = applyLrFindEvent(s, { event: 'warning', data: { message: 'x.wav skipped' } });
    expect(s.points).toHaveLength(1);
    expect(s.progress).toEqual({ done: 1, total: 12 });
    expect(s.warnings).toEqual(['x.wav skipped']);
  });

  it('draws the losses against the learning rate and marks the suggestion with one dot', () => {
    const pts = [point(1, 1e-4, 5, 5), point(2, 1e-3, 4, 4.6), point(3, 1e-2, NaN, NaN)];
    expect(lrChart(pts, 1e-3)).toEqual({
      x: [1e-4, 1e-3, 1e-2],
      loss: [5, 4, null],
      smoothed: [5, 4.6, null],
      suggestion: [null, 4.6, null],
    });
    expect(lrChart(pts, null).suggestion).toEqual([null, null, null]);
  });

  it('writes learning rates and the stop reason in words', () => {
    expect(fmtLr(0.0017123)).toBe('1.71e-3');
    expect(stopText(report([point(1, 1, 1)], null, 'diverged'))).toBe('stopped after 1 steps: the loss diverged');
  });
});

describe('Parameters screen learning-rate finder', () => {
  function fill(): void {
    app.config.model_path = '/models/csm';
    app.config.output_dir = '/runs';
    app.config.audio_dir = '/d/audio';
    app.config.transcript_dir = '/d/transcripts';
  }

  it('runs the test, draws it and uses the suggested LR', async () => {
    let channel: Channel<LrFindEvent> | null = null;
    let resolve: (v: unknown) => void = () => {};
    const log = ipc({
      estimate_run: () => ({ secsPerStep: null, peakMemoryBytes: null }),
      find_learning_rate: (a) => {
        channel = a.onEvent as Channel<LrFindEvent>;
        return new Promise((r) => (resolve = r));
      },
    });
    fill();
    render(Parameters);
    await fireEvent.input(screen.getByLabelText('Steps'), { target: { value: '12' } });
    await fireEvent.click(screen.getByTestId('lr-find'));
    await flush();
    expect(log.of('find_learning_rate')[0]).toMatchObject({
      config: { model_path: '/models/csm', learning_rate: 2e-4 },
      options: { steps: 12, minLr: 1e-7, maxLr: 1 },
    });
    const pts = [point(1, 1e-4, 5), point(2, 1e-3, 4), point(3, 1e-2, 3.5), point(4, 1e-1, 9)];
    for (const p of pts) channel!.onmessage({ event: 'point', data: p });
    await flush();
    expect(screen.getByTestId('lr-find-status').textContent).toContain('step 4 / 12');
    expect(screen.getByTestId('chart-lr')).toBeTruthy();
    resolve({ report: report(pts, 1.23456e-3), reportPath: '/runs/lr_find.json' });
    await flush();
    expect(screen.getByTestId('lr-suggestion').textContent).toContain('Suggested: 1.23e-3');
    expect(screen.getByTestId('lr-suggestion').textContent).toContain('/runs/lr_find.json');
    await fireEvent.click(screen.getByTestId('lr-use'));
    expect(app.config.learning_rate).toBe(0.00123);
    expect((screen.getByLabelText(/^Learning rate/, { selector: 'input' }) as HTMLInputElement).value).toBe('0.00123');
  });

  it('stops on request and shows errors', async () => {
    const log = ipc({
      estimate_run: () => ({ secsPerStep: null, peakMemoryBytes: null }),
      find_learning_rate: () => Promise.reject({ kind: 'alreadyRunning', message: 'run r1 is training' }),
      cancel_lr_find: () => null,
    });
    fill();
    render(Parameters);
    await fireEvent.click(screen.getByTestId('lr-find'));
    await flush();
    expect(screen.getByTestId('lr-find-error').textContent).toContain('alreadyRunning: run r1 is training');
    app.lrFind = { ...app.lrFind, status: 'running', error: null };
    await flush();
    await fireEvent.click(screen.getByRole('button', { name: 'Stop' }));
    expect(log.of('cancel_lr_find')).toHaveLength(1);
  });

  it('needs the model and data first', () => {
    ipc({ estimate_run: () => ({ secsPerStep: null, peakMemoryBytes: null }) });
    render(Parameters);
    expect((screen.getByTestId('lr-find') as HTMLButtonElement).disabled).toBe(true);
  });
});
