// Live run state, built from TrainingEvents by a pure reducer so it can be
// tested without a backend or a DOM.
import type {
  IpcError,
  Phase,
  RunSample,
  StepData,
  TrainingEvent,
  ValidationData,
  VoiceReport,
  VoiceSetup,
  WarningKind,
} from './api';

export type RunStatus = 'idle' | 'starting' | 'running' | 'stopping' | 'completed' | 'stopped' | 'failed';

export interface RunWarning {
  step: number | null;
  kind: WarningKind;
  message: string;
}

/** Columnar series, ready for uPlot. */
export interface Series {
  step: number[];
  loss: (number | null)[];
  semantic: (number | null)[];
  acoustic: (number | null)[];
  lr: number[];
  gradNorm: (number | null)[];
}

export interface RunState {
  status: RunStatus;
  runId: string | null;
  runDir: string | null;
  phase: Phase | null;
  phaseMessage: string | null;
  phaseProgress: { done: number; total: number } | null;
  totalSteps: number;
  stepsPerEpoch: number;
  last: StepData | null;
  series: Series;
  validation: ValidationData[];
  bestValLoss: number | null;
  /** Validation passes since the best one (overtraining hint). */
  evalsSinceBest: number;
  checkpoints: { step: number; path: string; mode: 'lora' | 'full' }[];
  samples: RunSample[];
  /** Voice-score set-up, when scores are on. */
  voiceSetup: VoiceSetup | null;
  /** Voice scores by step (the base model is step 0). */
  voice: VoiceReport[];
  warnings: RunWarning[];
  error: IpcError | null;
  adapterPath: string | null;
  elapsedSecs: number;
}

export function emptySeries(): Series {
  return { step: [], loss: [], semantic: [], acoustic: [], lr: [], gradNorm: [] };
}

export function initialRunState(): RunState {
  return {
    status: 'idle',
    runId: null,
    runDir: null,
    phase: null,
    phaseMessage: null,
    phaseProgress: null,
    totalSteps: 0,
    stepsPerEpoch: 0,
    last: null,
    series: emptySeries(),
    validation: [],
    bestValLoss: null,
    evalsSinceBest: 0,
    checkpoints: [],
    samples: [],
    voiceSetup: null,
    voice: [],
    warnings: [],
    error: null,
    adapterPath: null,
    elapsedSecs: 0,
  };
}

const finite = (v: number | null): number | null => (v !== null && Number.isFinite(v) ? v : null);

/** Loss above this multiple of the running minimum (after 20 steps) is flagged as divergence. */
export const DIVERGENCE_FACTOR = 4;

/** Applies one event; mutates and returns `s` (cheap for thousands of steps). */
export function applyEvent(s: RunState, ev: TrainingEvent): RunState {
  switch (ev.event) {
    case 'started':
      s.status = 'running';
      s.runId = ev.data.runId;
      s.runDir = ev.data.runDir;
      s.totalSteps = ev.data.totalSteps;
      s.stepsPerEpoch = ev.data.stepsPerEpoch;
      break;
    case 'phase':
      s.phase = ev.data.phase;
      s.phaseMessage = ev.data.message;
      s.phaseProgress =
        ev.data.done !== null && ev.data.total !== null ? { done: ev.data.done, total: ev.data.total } : null;
      break;
    case 'step': {
      const d = ev.data;
      s.last = d;
      s.totalSteps = d.totalSteps;
      s.elapsedSecs = d.elapsedSecs;
      s.series.step.push(d.step);
      s.series.loss.push(finite(d.loss));
      s.series.semantic.push(finite(d.semanticLoss));
      s.series.acoustic.push(finite(d.acousticLoss));
      s.series.lr.push(d.lr);
      s.series.gradNorm.push(finite(d.gradNorm));
      checkHealth(s, d);
      break;
    }
    case 'validation':
      s.validation.push(ev.data);
      {
        const loss = finite(ev.data.loss);
        if (loss !== null && (s.bestValLoss === null || loss < s.bestValLoss)) {
          s.bestValLoss = loss;
          s.evalsSinceBest = 0;
        } else {
          s.evalsSinceBest++;
        }
      }
      break;
    case 'checkpoint':
      // A run stopped right after a periodic checkpoint saves that step again: one entry per file.
      s.checkpoints = s.checkpoints.filter((c) => c.path !== ev.data.path);
      s.checkpoints.push(ev.data);
      break;
    case 'sample':
      s.samples.push(ev.data);
      break;
    case 'voiceSetup':
      s.voiceSetup = ev.data;
      break;
    case 'voiceScores':
      s.voice = addVoiceReport(s.voice, ev.data);
      break;
    case 'warning': {
      // The backend's message replaces the UI's own guess for the same step and kind.
      const w = ev.data;
      s.warnings = s.warnings.filter((x) => !(x.kind === w.kind && x.step === w.step));
      s.warnings.push(w);
      break;
    }
    case 'finished':
      s.status = ev.data.status;
      s.phase = null;
      s.phaseProgress = null;
      s.elapsedSecs = ev.data.elapsedSecs;
      s.adapterPath = ev.data.adapterPath;
      if (ev.data.bestValLoss !== null) s.bestValLoss = ev.data.bestValLoss;
      break;
    case 'failed':
      s.status = 'failed';
      s.phase = null;
      s.error = ev.data.error;
      break;
  }
  return s;
}

/** Frontend-side guard in case the backend does not flag NaN/divergence itself. */
function checkHealth(s: RunState, d: StepData): void {
  const has = (kind: WarningKind) => s.warnings.some((w) => w.kind === kind);
  const loss = finite(d.loss);
  if (loss === null) {
    if (!has('nan')) {
      s.warnings.push({ step: d.step, kind: 'nan', message: `Loss is ${d.loss ?? 'NaN or inf'} at step ${d.step}` });
    }
    return;
  }
  const losses = s.series.loss;
  if (losses.length > 20 && !has('divergence')) {
    let min = Infinity;
    for (const v of losses) if (v !== null && v < min) min = v;
    if (Number.isFinite(min) && loss > DIVERGENCE_FACTOR * min) {
      s.warnings.push({
        step: d.step,
        kind: 'divergence',
        message: `Loss ${loss.toFixed(3)} is over ${DIVERGENCE_FACTOR}× its minimum ${min.toFixed(3)}: try a lower learning rate`,
      });
    }
  }
}

/** Validation passes without improvement before the UI suggests stopping. */
export const PATIENCE = 3;

export function isActive(status: RunStatus): boolean {
  return status === 'starting' || status === 'running' || status === 'stopping';
}

/** 0..1 progress of the whole run. */
export function progress(s: RunState): number {
  if (!s.last || s.totalSteps <= 0) return 0;
  return Math.min(1, s.last.step / s.totalSteps);
}

/**
 * `reports` with `r` in its place by step: a step scored again (a resumed run) replaces the
 * earlier report, as `metrics.jsonl` is read back.
 */
export function addVoiceReport(reports: VoiceReport[], r: VoiceReport): VoiceReport[] {
  const out = reports.filter((x) => x.step !== r.step);
  out.push(r);
  out.sort((a, b) => a.step - b.step);
  return out;
}

/** Columns of the Voice chart: one point per scored step. */
export interface VoiceSeries {
  step: number[];
  similarity: (number | null)[];
  /** Word error rate; all null when samples were not transcribed. */
  wer: (number | null)[];
  /** The base model's (step 0) value repeated over every step, as a reference line. */
  baseSimilarity: (number | null)[];
  baseWer: (number | null)[];
  /** Best checkpoint so far (the last report's), if any. */
  bestStep: number | null;
}

/** The Voice chart's data from the reports (live or from `run_metrics`), in step order. */
export function voiceSeries(reports: readonly VoiceReport[]): VoiceSeries {
  const sorted = [...reports].sort((a, b) => a.step - b.step);
  const base = sorted.find((r) => r.step === 0) ?? null;
  const num = (v: number | null | undefined) => (v !== null && v !== undefined && Number.isFinite(v) ? v : null);
  const last = sorted.length > 0 ? sorted[sorted.length - 1] : null;
  return {
    step: sorted.map((r) => r.step),
    similarity: sorted.map((r) => num(r.summary.similarity)),
    wer: sorted.map((r) => num(r.summary.wer)),
    baseSimilarity: sorted.map(() => num(base?.summary.similarity)),
    baseWer: sorted.map(() => num(base?.summary.wer)),
    bestStep: last?.bestStep ?? null,
  };
}
