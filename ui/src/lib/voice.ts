// The New voice screen's state: the stage list reduced from csm-flow's
// FlowEvents (pure, so it is unit-tested without a backend), and what a
// voice card shows of a library entry.
import type { FlowEvent, FlowStage, FlowUnit, IpcError, SettingChoice, VoiceEntry, VoiceReport, VoiceSampleEntry } from './api';

/** The steps the screen lists; `review` is the app's own, `dataset` folds into `train`, `summary` into `listen`. */
export type StepId = 'download' | 'transcribe' | 'review' | 'train' | 'listen';
export const STEPS: { id: StepId; label: string }[] = [
  { id: 'download', label: 'Download the models' },
  { id: 'transcribe', label: 'Transcribe the recordings' },
  { id: 'review', label: 'Review the transcripts' },
  { id: 'train', label: 'Train with voice scores' },
  { id: 'listen', label: 'Listen' },
];

export type StepStatus = 'pending' | 'running' | 'waiting' | 'done' | 'skipped' | 'failed' | 'cancelled';

export interface StepState {
  status: StepStatus;
  /** What it does now (the stage's detail, then its last message). */
  detail: string | null;
  done: number;
  total: number;
  unit: FlowUnit | null;
  etaSecs: number | null;
  item: string | null;
  /** How it ended. */
  note: string | null;
  seconds: number;
  /** It did its work in this journey (a later call reports it skipped: still done). */
  ran: boolean;
}

export type JourneyStatus = 'idle' | 'running' | 'review' | 'finished' | 'failed' | 'cancelled';

export interface Journey {
  status: JourneyStatus;
  steps: Record<StepId, StepState>;
  /** The settings the recipe chose. */
  settings: SettingChoice[];
  /** Voice scores as they come (one per scoring, the later one of a step kept). */
  voice: VoiceReport[];
  /** The last lines of the stages' messages. */
  messages: string[];
  /** The voice folder (once known) and its dataset folder. */
  voiceDir: string | null;
  datasetDir: string | null;
  /** The voice at the end (or at the review). */
  result: VoiceEntry | null;
  error: IpcError | null;
}

const step = (): StepState => ({ status: 'pending', detail: null, done: 0, total: 0, unit: null, etaSecs: null, item: null, note: null, seconds: 0, ran: false });

export function idleJourney(): Journey {
  return {
    status: 'idle',
    steps: { download: step(), transcribe: step(), review: step(), train: step(), listen: step() },
    settings: [],
    voice: [],
    messages: [],
    voiceDir: null,
    datasetDir: null,
    result: null,
    error: null,
  };
}

/** The step a flow stage shows under. */
export function stepOf(stage: FlowStage): StepId {
  switch (stage) {
    case 'download':
      return 'download';
    case 'transcribe':
      return 'transcribe';
    case 'dataset':
    case 'train':
      return 'train';
    case 'summary':
      return 'listen';
  }
}

const MAX_MESSAGES = 40;

/** The journey after `e` (a new object; `j` is left as it was). */
export function applyFlowEvent(j: Journey, e: FlowEvent): Journey {
  const with_ = (id: StepId, s: Partial<StepState>): Journey => ({ ...j, steps: { ...j.steps, [id]: { ...j.steps[id], ...s } } });
  switch (e.event) {
    case 'opened':
      return { ...j, voiceDir: e.data.voice_dir, datasetDir: e.data.dataset_dir };
    case 'stageStarted': {
      const id = stepOf(e.data.stage);
      // The dataset stage starts `train`; training starts afresh its counts.
      return with_(id, { status: 'running', detail: e.data.detail, done: 0, total: 0, unit: null, etaSecs: null, item: null, note: j.steps[id].ran ? j.steps[id].note : null });
    }
    case 'stageProgress': {
      const d = e.data;
      return with_(stepOf(d.stage), { status: 'running', done: d.done, total: d.total, unit: d.unit, etaSecs: d.eta_s, item: d.item });
    }
    case 'message': {
      const messages = [...j.messages, e.data.text].slice(-MAX_MESSAGES);
      return { ...with_(stepOf(e.data.stage), { detail: e.data.text }), messages };
    }
    case 'settings':
      return { ...j, settings: e.data.choices };
    case 'train': {
      const t = e.data;
      if (t.event !== 'voiceScores') return j;
      const r = t.data as VoiceReport;
      return { ...j, voice: [...j.voice.filter((v) => v.step !== r.step), r].sort((a, b) => a.step - b.step) };
    }
    case 'stageFinished': {
      const id = stepOf(e.data.stage);
      const s = j.steps[id];
      // `dataset` finishing leaves `train` running (training follows).
      if (e.data.stage === 'dataset') return with_(id, { note: e.data.note, seconds: s.seconds + e.data.seconds });
      // The call after the review finds download and transcription done: they stay done.
      const ran = s.ran || e.data.end === 'done';
      const status: StepStatus = ran ? 'done' : 'skipped';
      const note = e.data.end === 'skipped' && s.ran ? s.note : e.data.note;
      return with_(id, { status, note, etaSecs: null, seconds: s.seconds + e.data.seconds, ran });
    }
    case 'finished':
      return with_('listen', { status: 'done' });
  }
}

/** Marks the running step (if any) as failed or cancelled. */
export function endRunning(j: Journey, status: 'failed' | 'cancelled', error: IpcError | null): Journey {
  const steps = { ...j.steps };
  for (const { id } of STEPS) {
    const s = steps[id];
    if (s.status === 'running') steps[id] = { ...s, status, etaSecs: null };
  }
  return { ...j, steps, status, error };
}

/** "12.5 of 40.0 MB", "32 of 90 s of audio", "3 of 8 steps". */
export function progressText(s: StepState): string {
  if (!s.unit) return '';
  const n = (v: number, d = 0) => v.toFixed(d);
  switch (s.unit) {
    case 'bytes': {
      const mb = (v: number) => (v / 1e6).toFixed(1);
      return s.total > 0 ? `${mb(s.done)} of ${mb(s.total)} MB` : `${mb(s.done)} MB`;
    }
    case 'audio_seconds':
      return `${n(s.done)} of ${n(s.total)} s of audio`;
    case 'recordings':
      return `${n(s.done)} of ${n(s.total)} recordings`;
    case 'utterances':
      return `${n(s.done)} of ${n(s.total)} utterances encoded`;
    case 'steps':
      return `step ${n(s.done)} of ${n(s.total)}`;
  }
}

/** A score pair for the card: the base model against the best checkpoint. */
export interface ScoreRow {
  label: string;
  base: number | null;
  best: number | null;
  /** Which way is better. */
  better: 'higher' | 'lower';
  format: (v: number | null) => string;
}

const sim = (v: number | null) => (v === null ? '—' : v.toFixed(3));
const pct = (v: number | null) => (v === null ? '—' : `${(v * 100).toFixed(1)}%`);

export function scoreRows(v: VoiceEntry): ScoreRow[] {
  const base = v.scores?.base ?? null;
  const best = v.scores?.best ?? null;
  if (!base && !best) return [];
  return [
    { label: 'Similarity to the speaker', base: base?.similarity ?? null, best: best?.similarity ?? null, better: 'higher', format: sim },
    { label: 'Word error rate', base: base?.wer ?? null, best: best?.wer ?? null, better: 'lower', format: pct },
  ];
}

/** Whether `best` improves on `base` in the row's direction (null: not both known). */
export function improved(r: ScoreRow): boolean | null {
  if (r.base === null || r.best === null) return null;
  return r.better === 'higher' ? r.best > r.base : r.best < r.base;
}

/** Base (step 0) and best samples of the same prompt, side by side. */
export function abPairs(v: VoiceEntry): { prompt: number; text: string; a: VoiceSampleEntry; b: VoiceSampleEntry }[] {
  const bestStep = v.scores?.best?.step ?? null;
  if (bestStep === null || bestStep === 0) return [];
  return v.samples
    .filter((s) => s.step === 0)
    .flatMap((a) => {
      const b = v.samples.find((s) => s.step === bestStep && s.prompt === a.prompt);
      return b ? [{ prompt: a.prompt, text: a.text, a, b }] : [];
    });
}

/** The adapter "Use this voice" picks: the best, else the final one, else the newest checkpoint. */
export function usableAdapter(v: VoiceEntry): string | null {
  return (
    v.adapters.find((a) => a.kind === 'best')?.path ??
    v.adapters.find((a) => a.kind === 'final')?.path ??
    v.adapters.filter((a) => a.kind === 'checkpoint').at(-1)?.path ??
    null
  );
}

/** One line on where an unfinished voice stopped ("stopped in train", "failed in download"). */
export function stateLine(v: VoiceEntry): string {
  if (v.complete) return 'ready';
  const stuck = v.stages.find((s) => s.status === 'failed' || s.status === 'cancelled' || s.status === 'running');
  if (stuck) return `${stuck.status === 'failed' ? 'failed' : 'stopped'} in ${stuck.stage}`;
  const next = v.stages.find((s) => s.status === 'pending');
  return next ? `not finished: ${next.stage} next` : 'not finished';
}
