// The Parameters screen's learning-rate finder: the state of the range test
// as its events arrive (`find_learning_rate`), and what the chart draws.
import type { IpcError, LrFindEvent, LrFindReport, LrPoint } from './api';

export interface LrFind {
  status: 'idle' | 'running' | 'done' | 'failed';
  /** What it is doing (loading the model, encoding the audio, the test). */
  message: string | null;
  progress: { done: number; total: number } | null;
  points: LrPoint[];
  /** Steps asked for. */
  steps: number;
  report: LrFindReport | null;
  reportPath: string | null;
  warnings: string[];
  error: IpcError | null;
}

export function idleLrFind(steps = 100): LrFind {
  return { status: 'idle', message: null, progress: null, points: [], steps, report: null, reportPath: null, warnings: [], error: null };
}

export function applyLrFindEvent(s: LrFind, e: LrFindEvent): LrFind {
  switch (e.event) {
    case 'phase':
      return {
        ...s,
        message: e.data.message,
        progress: e.data.done !== null && e.data.total !== null ? { done: e.data.done, total: e.data.total } : null,
      };
    case 'point':
      return { ...s, points: [...s.points, e.data], progress: { done: e.data.step, total: s.steps } };
    case 'warning':
      return { ...s, warnings: [...s.warnings, e.data.message] };
  }
}

const finite = (v: number | null): number | null => (v !== null && Number.isFinite(v) ? v : null);

/** The chart: x = learning rates, the raw and smoothed losses, and the suggestion as one dot. */
export function lrChart(points: LrPoint[], suggested: number | null) {
  return {
    x: points.map((p) => p.lr),
    loss: points.map((p) => finite(p.loss)),
    smoothed: points.map((p) => finite(p.smoothed)),
    suggestion: points.map((p) => (suggested !== null && p.lr === suggested ? finite(p.smoothed) : null)),
  };
}

/** A learning rate as the form shows it (3 significant digits). */
export function fmtLr(lr: number): string {
  return Number(lr.toPrecision(3)).toExponential();
}

/** Why the test ended, in words. */
export function stopText(r: LrFindReport): string {
  switch (r.stop) {
    case 'completed':
      return `all ${r.points.length} steps ran`;
    case 'diverged':
      return `stopped after ${r.points.length} steps: the loss diverged`;
    case 'cancelled':
      return `stopped on request after ${r.points.length} steps`;
  }
}
