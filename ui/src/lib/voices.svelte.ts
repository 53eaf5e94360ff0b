// New voice and the voice library: state (Svelte 5 runes) and the actions
// that call the backend. The stage list itself is the pure reducer in voice.ts.
import { save } from '@tauri-apps/plugin-dialog';
import * as api from './api';
import type { DatasetScan, IpcError, NewVoiceRequest, RecordingsScan, VoiceEntry, VoiceLibrary, WhisperModel } from './api';
import { app } from './store.svelte';
import { type Journey, applyFlowEvent, endRunning, idleJourney, usableAdapter } from './voice';

/** The CSM-1B bundle, downloaded when missing. */
export const CSM_BUNDLE = 'csm-1b';
/** resemblyzer's speaker encoder bundle (from PyPI), downloaded when missing. */
export const SPEAKER_ENCODER = 'speaker-encoder';
/** The Whisper bundle proposed when none is cached. */
export const DEFAULT_WHISPER = 'whisper-large-v3-turbo';

/** The value a Whisper model takes in the request: its cached folder, else its bundle; null: neither. */
export function whisperValue(m: WhisperModel): string | null {
  return m.path ?? m.bundle;
}

/** The folder name as a voice name ("my-recordings" -> "my recordings"). */
export function nameFromFolder(dir: string): string {
  const base = dir.replace(/[/\\]+$/, '').split(/[/\\]/).at(-1) ?? '';
  return base.replace(/[-_]+/g, ' ').trim();
}

export class VoiceStore {
  /** The folder of recordings (dropped or chosen) and what it holds. */
  rawDir = $state<string | null>(null);
  recordings = $state<RecordingsScan | null>(null);
  rawError = $state<IpcError | null>(null);
  name = $state('');
  /** Stop after transcribing so the texts can be proofread. */
  review = $state(true);
  /** `csm-1b` (the bundle) or `slots` (the model chosen on the Model screen). */
  model = $state<'bundle' | 'slots'>('bundle');
  whisper = $state<string>(DEFAULT_WHISPER);
  whisperModels = $state<WhisperModel[]>([]);
  language = $state<string | null>(null);
  temperature = $state<number | null>(null);
  steps = $state<number | null>(null);
  saveEvery = $state<number | null>(null);
  voicePrompts = $state<number | null>(null);
  journey = $state.raw<Journey>(idleJourney());
  /** The voice's dataset, for proofreading. */
  reviewScan = $state<DatasetScan | null>(null);
  reviewError = $state<IpcError | null>(null);
  /** A `start_voice` call is in flight (the review may be open beside it while the models download). */
  calling = $state(false);
  /** The call in flight, and whether the user has finished (or skipped) the review during it. */
  #call: Promise<void> | null = null;
  #reviewed = false;
  library = $state<VoiceLibrary | null>(null);
  libraryError = $state<IpcError | null>(null);
  busy = $state(false);

  /** A journey is under way: a stage runs, or the models still download beside the review. */
  get running(): boolean {
    return this.journey.status === 'running' || this.calling;
  }

  /** Folders dropped on the window (or chosen): the first is the recordings. */
  async setFolder(paths: string[]): Promise<void> {
    const [dir] = paths;
    if (dir === undefined || this.running) return;
    this.rawDir = dir;
    this.rawError = null;
    this.recordings = null;
    this.journey = idleJourney();
    this.reviewScan = null;
    if (!this.name.trim()) this.name = nameFromFolder(dir);
    try {
      this.recordings = await api.scanRecordings(dir, null);
    } catch (e) {
      this.rawError = api.toIpcError(e);
    }
  }

  async loadWhisperModels(): Promise<void> {
    try {
      const models = await api.whisperModels();
      this.whisperModels = models.filter((m) => whisperValue(m) !== null);
      // A cached model runs without a download: prefer one.
      const cached = this.whisperModels.find((m) => m.path !== null);
      if (cached && this.whisper === DEFAULT_WHISPER) this.whisper = whisperValue(cached) ?? DEFAULT_WHISPER;
    } catch {
      this.whisperModels = [];
    }
  }

  request(stopAfter: NewVoiceRequest['stopAfter']): NewVoiceRequest {
    const slots = this.model === 'slots';
    return {
      rawDir: this.rawDir ?? '',
      name: this.name.trim(),
      voiceDir: this.journey.voiceDir,
      model: slots ? app.config.model_path : CSM_BUNDLE,
      mimi: slots ? app.config.mimi_path : null,
      tokenizer: slots ? app.config.tokenizer_path : null,
      whisper: this.whisper,
      speakerEncoder: SPEAKER_ENCODER,
      language: this.language,
      temperature: this.temperature,
      steps: this.steps,
      saveEvery: this.saveEvery,
      voicePrompts: this.voicePrompts,
      stopAfter,
    };
  }

  /** Starts the journey: to the transcripts (review on) or to the end. */
  async start(): Promise<void> {
    if (this.running || !this.rawDir || !this.name.trim()) return;
    const j = idleJourney();
    j.status = 'running';
    if (!this.review) j.steps.review = { ...j.steps.review, status: 'skipped', note: 'skipped' };
    this.journey = j;
    this.#reviewed = false;
    await this.#run(this.review ? 'transcribe' : null);
  }

  /**
   * After proofreading (or skipping it): on to training and the card. The
   * review opens once transcription ends, while the first call may still be
   * downloading the models; training starts when that call is over.
   */
  async continueAfterReview(skipped = false): Promise<void> {
    if (this.journey.status !== 'review') return;
    const review = this.journey.steps.review;
    this.journey = {
      ...this.journey,
      status: 'running',
      steps: { ...this.journey.steps, review: { ...review, status: skipped ? 'skipped' : 'done', note: skipped ? 'skipped' : 'proofread' } },
    };
    this.#reviewed = true;
    if (this.#call) {
      await this.#call;
      // It failed or was stopped: its error is shown, and "Continue" goes on.
      if (this.journey.status !== 'running') return;
    }
    await this.#run(null);
  }

  /** The review, open (transcripts written; the models may still download). */
  #openReview(): void {
    this.journey = {
      ...this.journey,
      status: 'review',
      steps: { ...this.journey.steps, review: { ...this.journey.steps.review, status: 'waiting' } },
    };
    void this.rescanReview();
  }

  async #run(stopAfter: NewVoiceRequest['stopAfter']): Promise<void> {
    const call = this.#startVoice(stopAfter);
    this.#call = call;
    this.calling = true;
    try {
      await call;
    } finally {
      if (this.#call === call) {
        this.#call = null;
        this.calling = false;
      }
    }
  }

  async #startVoice(stopAfter: NewVoiceRequest['stopAfter']): Promise<void> {
    try {
      const out = await api.startVoice(this.request(stopAfter), (e) => {
        this.journey = applyFlowEvent(this.journey, e);
        // Transcripts written: proofreading opens now, the downloads go on.
        if (stopAfter === 'transcribe' && e.event === 'stageFinished' && e.data.stage === 'transcribe' && this.journey.status === 'running' && !this.#reviewed) {
          this.#openReview();
        }
      });
      this.journey = { ...this.journey, voiceDir: out.voice.dir, datasetDir: out.datasetDir, result: out.voice };
      if (!out.finished && out.stoppedAfter === 'transcribe') {
        // Open already (or done: continueAfterReview goes on from here).
        if (this.journey.status === 'running' && !this.#reviewed) this.#openReview();
        else if (this.journey.status === 'review' && !this.reviewScan) await this.rescanReview();
      } else {
        this.journey = { ...this.journey, status: 'finished' };
        app.notify(`The voice “${out.voice.name}” is ready`);
        void this.refreshLibrary();
      }
    } catch (e) {
      const error = api.toIpcError(e);
      this.journey = endRunning(this.journey, error.kind === 'cancelled' ? 'cancelled' : 'failed', error);
      // The voice's folder exists once the journey started: find it, so
      // "Continue where it stopped" goes on in it.
      await this.refreshLibrary();
      if (!this.journey.voiceDir) {
        const raw = (this.rawDir ?? '').replace(/[/\\]+$/, '');
        const mine = (this.library?.voices ?? []).filter((v) => !v.complete && v.rawDir === raw && v.name === this.name.trim());
        const newest = mine.sort((a, b) => b.createdUnixS - a.createdUnixS)[0];
        if (newest) this.journey = { ...this.journey, voiceDir: newest.dir, datasetDir: `${newest.dir}/dataset` };
      }
    }
  }

  async cancel(): Promise<void> {
    try {
      await api.cancelVoice();
    } catch (e) {
      app.notify(`Could not stop: ${api.toIpcError(e).message}`, 'error');
    }
  }

  /** Continues a stopped or failed journey in the same voice folder. */
  async resume(): Promise<void> {
    if (this.running || !this.journey.voiceDir) return;
    this.journey = { ...endRunning(this.journey, 'failed', null), status: 'running', error: null };
    await this.#run(null);
  }

  /** Reads the voice's dataset again (after a proofreading edit). */
  rescanReview = async (): Promise<void> => {
    const dir = this.journey.datasetDir;
    if (!dir) return;
    try {
      this.reviewScan = await api.scanDataset([dir]);
      this.reviewError = null;
    } catch (e) {
      this.reviewError = api.toIpcError(e);
    }
  };

  /** Starts over with another folder. */
  reset(): void {
    if (this.running) return;
    this.rawDir = null;
    this.recordings = null;
    this.rawError = null;
    this.name = '';
    this.journey = idleJourney();
    this.reviewScan = null;
    this.reviewError = null;
  }

  // ------------------------------------------------------------ library

  async refreshLibrary(): Promise<void> {
    try {
      this.library = await api.voiceLibrary();
      this.libraryError = null;
    } catch (e) {
      this.libraryError = api.toIpcError(e);
    }
  }

  async rename(v: VoiceEntry, name: string): Promise<boolean> {
    try {
      const renamed = await api.renameVoice(v.dir, name);
      if (this.journey.result?.dir === v.dir) this.journey = { ...this.journey, result: renamed };
      await this.refreshLibrary();
      return true;
    } catch (e) {
      app.notify(`Could not rename: ${api.toIpcError(e).message}`, 'error');
      return false;
    }
  }

  async remove(v: VoiceEntry): Promise<void> {
    try {
      await api.deleteVoice(v.dir);
      app.notify(`Deleted the voice “${v.name}”`);
      if (this.journey.result?.dir === v.dir && !this.running) this.journey = idleJourney();
      await this.refreshLibrary();
    } catch (e) {
      app.notify(`Could not delete: ${api.toIpcError(e).message}`, 'error');
    }
  }

  /** Asks where to save the zip (the dialog asks before replacing a file), then writes it. */
  async exportZip(v: VoiceEntry): Promise<string | null> {
    const dest = await save({ defaultPath: `${v.id}.zip`, title: `Export the voice “${v.name}”`, filters: [{ name: 'Zip', extensions: ['zip'] }] });
    if (!dest) return null;
    this.busy = true;
    try {
      const out = await api.exportVoice(v.dir, dest);
      app.notify(`Exported to ${out.path}`);
      return out.path;
    } catch (e) {
      app.notify(`Could not export: ${api.toIpcError(e).message}`, 'error');
      return null;
    } finally {
      this.busy = false;
    }
  }

  /** Opens the Samples screen with the voice's model and its best adapter chosen. */
  async use(v: VoiceEntry): Promise<void> {
    const adapter = usableAdapter(v);
    if (!v.models || !adapter) {
      app.notify(`“${v.name}” has no trained adapter yet`, 'error');
      return;
    }
    app.preselectedAdapter = adapter;
    app.config.speaker_id = v.models.speakerId;
    app.tab = 'samples';
    const m = v.models;
    await Promise.all([
      app.setModel('csm', m.modelPath),
      m.mimiPath ? app.setModel('mimi', m.mimiPath) : Promise.resolve(),
      m.tokenizerPath ? app.setModel('tokenizer', m.tokenizerPath) : Promise.resolve(),
    ]);
    if (!m.mimiPath) app.config.mimi_path = null;
    if (!m.tokenizerPath) app.config.tokenizer_path = null;
  }
}

export const voices = new VoiceStore();
