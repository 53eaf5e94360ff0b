// The state of one Whisper transcription, reduced from the backend's
// TranscriptionEvents (pure, so it is unit-tested without a backend).
import type { IpcError, TranscriptionEvent, TranscriptionSummary } from './api';

export type TranscriptionStatus = 'idle' | 'running' | 'done' | 'cancelled' | 'failed';

export interface FileResult {
  name: string;
  ok: boolean;
  /** The transcript (ok) or why it failed. */
  detail: string;
}

export interface Transcription {
  status: TranscriptionStatus;
  /** The model as requested. */
  model: string;
  /** `loading` until `started`: finding, downloading, loading the model. */
  phase: 'loading' | 'transcribing';
  /** Model download in progress: file and bytes. */
  download: { repo: string; file: string; done: number; total: number | null } | null;
  files: number;
  skipped: number;
  totalSecs: number;
  doneSecs: number;
  etaSecs: number | null;
  elapsedSecs: number;
  /** The recording being transcribed. */
  current: { name: string; index: number; doneSecs: number; secs: number } | null;
  results: FileResult[];
  summary: TranscriptionSummary | null;
  error: IpcError | null;
}

export function idleTranscription(): Transcription {
  return {
    status: 'idle',
    model: '',
    phase: 'loading',
    download: null,
    files: 0,
    skipped: 0,
    totalSecs: 0,
    doneSecs: 0,
    etaSecs: null,
    elapsedSecs: 0,
    current: null,
    results: [],
    summary: null,
    error: null,
  };
}

/** The state after `e` (a new object; the old one is left as it was). */
export function applyTranscriptionEvent(t: Transcription, e: TranscriptionEvent): Transcription {
  switch (e.event) {
    case 'loading':
      return { ...t, phase: 'loading', model: e.data.model };
    case 'downloading':
      return { ...t, download: { ...e.data } };
    case 'started':
      return {
        ...t,
        phase: 'transcribing',
        download: null,
        files: e.data.files,
        skipped: e.data.skipped,
        totalSecs: e.data.totalSecs,
      };
    case 'fileStarted':
      return { ...t, current: { name: e.data.name, index: e.data.index, doneSecs: 0, secs: e.data.durationSecs } };
    case 'progress':
      return {
        ...t,
        doneSecs: e.data.doneSecs,
        // The headers may not state every length (some MP3s): the decoded one wins.
        totalSecs: Math.max(t.totalSecs, e.data.totalSecs, e.data.doneSecs),
        etaSecs: e.data.etaSecs,
        elapsedSecs: e.data.elapsedSecs,
        current: t.current && { ...t.current, doneSecs: e.data.fileDoneSecs, secs: e.data.fileSecs },
      };
    case 'fileDone':
      return {
        ...t,
        doneSecs: t.current ? Math.max(t.doneSecs, t.doneSecs - t.current.doneSecs + t.current.secs) : t.doneSecs,
        current: null,
        results: [...t.results, { name: e.data.name, ok: true, detail: e.data.text }],
      };
    case 'fileFailed':
      return {
        ...t,
        current: t.current?.name === e.data.name ? null : t.current,
        results: [...t.results, { name: e.data.name, ok: false, detail: e.data.error }],
      };
  }
}
