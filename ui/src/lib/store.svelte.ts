// Application state shared by the screens (Svelte 5 runes), and the actions
// that call the backend. Screens stay thin; everything testable lives here
// or in the pure modules next to it.
import { open, save } from '@tauri-apps/plugin-dialog';
import * as api from './api';
import type { AudioUsage, DatasetScan, GeneratedSample, IpcError, ModelInfo, ModelKind, RecordingsScan, RunEstimate, TrainingEvent } from './api';
import { type Transcription, applyTranscriptionEvent, idleTranscription } from './transcription';
import { type ConfigKey, type RunConfig, defaultConfig, fromObject, validate, validateDrafts } from './config';
import { type RunState, applyEvent, initialRunState, isActive } from './run';
import { type LrFind, applyLrFindEvent, idleLrFind } from './lrfind';

export type Tab = 'newvoice' | 'voices' | 'dataset' | 'model' | 'parameters' | 'run' | 'samples' | 'history';

export interface ModelSlot {
  path: string | null;
  info: ModelInfo | null;
  error: IpcError | null;
  loading: boolean;
}

const emptySlot = (): ModelSlot => ({ path: null, info: null, error: null, loading: false });

export interface Notice {
  id: number;
  level: 'info' | 'error';
  text: string;
}

export class AppStore {
  tab = $state<Tab>('dataset');
  dataset = $state<DatasetScan | null>(null);
  datasetError = $state<IpcError | null>(null);
  scanning = $state(false);
  /** The audio the config would train on (after trimming and cutting), once measured. */
  usage = $state<AudioUsage | null>(null);
  /** Why training would refuse the dataset with this config. */
  usageError = $state<IpcError | null>(null);
  measuring = $state(false);
  #usageRequest = 0;
  /** Who speaks the dataset's recordings (`dataset_speakers`), once read. */
  speakers = $state<api.DatasetSpeakers | null>(null);
  speakersError = $state<IpcError | null>(null);
  /** The learning-rate finder of the Parameters screen. */
  lrFind = $state<LrFind>(idleLrFind());
  /** A folder of raw recordings (no transcripts yet), when one was dropped or chosen. */
  recordings = $state<RecordingsScan | null>(null);
  /** The Whisper transcription of `recordings` (or of a dataset's untranscribed clips). */
  transcription = $state<Transcription>(idleTranscription());
  models = $state<Record<ModelKind, ModelSlot>>({ csm: emptySlot(), mimi: emptySlot(), tokenizer: emptySlot() });
  config = $state<RunConfig>(defaultConfig());
  /** Text typed into Parameters fields and not taken yet (kept across tabs). */
  drafts = $state<Partial<Record<ConfigKey, string>>>({});
  estimate = $state<RunEstimate | null>(null);
  run = $state.raw<RunState>(initialRunState());
  generated = $state<GeneratedSample[]>([]);
  outputDevice = $state<string | null>(null);
  /** An adapter the Samples screen starts with ("Use this voice"). */
  preselectedAdapter = $state<string | null>(null);
  notices = $state<Notice[]>([]);
  #noticeId = 0;
  #raw: RunState = this.run;

  get errors() {
    const errors = { ...validate(this.config), ...validateDrafts(this.drafts) };
    // The core refuses voice scores on a dataset with several speakers: say so before Start.
    const speakers = this.speakers?.speakers ?? [];
    if (this.config.voice && speakers.length > 1 && errors.voice === undefined) {
      errors.voice = `Voice scores compare samples with one speaker's voice; this dataset has ${speakers.length} speakers (${speakers.map((s) => s.name).join(', ')}): turn voice scores off, or train one speaker's folder`;
    }
    return errors;
  }

  get running(): boolean {
    return isActive(this.run.status);
  }

  notify(text: string, level: Notice['level'] = 'info'): void {
    const id = ++this.#noticeId;
    this.notices.push({ id, level, text });
    setTimeout(() => this.dismiss(id), level === 'error' ? 8000 : 4000);
  }

  dismiss(id: number): void {
    this.notices = this.notices.filter((n) => n.id !== id);
  }

  // ------------------------------------------------------------ dataset

  /**
   * Scans dropped or chosen folders: a dataset (audio + transcripts), or else one folder
   * of raw recordings, which the Dataset screen offers to transcribe.
   */
  async scan(paths: string[]): Promise<void> {
    if (paths.length === 0) return;
    this.scanning = true;
    this.datasetError = null;
    this.usage = null;
    this.usageError = null;
    this.recordings = null;
    if (this.transcription.status !== 'running') this.transcription = idleTranscription();
    try {
      await this.#scanDataset(paths);
    } catch (e) {
      const error = api.toIpcError(e);
      this.dataset = null;
      // One folder that is no dataset: raw recordings?
      const [one] = paths;
      const raw = paths.length === 1 && one !== undefined && error.kind === 'invalidInput' ? await this.#scanRaw(one) : false;
      if (!raw) this.datasetError = error;
    } finally {
      this.scanning = false;
    }
  }

  async #scanDataset(paths: string[]): Promise<void> {
    const scan = await api.scanDataset(paths);
    this.dataset = scan;
    if (scan.speakerFolders.length > 0) {
      // A folder per speaker: the run reads it as --data-dir.
      this.config.data_dir = scan.root;
      this.config.audio_dir = '';
      this.config.transcript_dir = '';
      this.config.alignment_dir = null;
      this.config.speakers_file = null;
    } else {
      this.config.data_dir = null;
      this.config.audio_dir = scan.audioDir;
      this.config.transcript_dir = scan.transcriptDir;
      this.config.alignment_dir = scan.alignmentDir;
      this.config.speakers_file = scan.speakersFile;
    }
    await this.refreshSpeakers();
  }

  /** Reads who speaks the dataset's recordings, as a run would resolve them. */
  async refreshSpeakers(): Promise<void> {
    try {
      this.speakers = await api.datasetSpeakers($state.snapshot(this.config) as RunConfig);
      this.speakersError = null;
    } catch (e) {
      this.speakers = null;
      this.speakersError = api.toIpcError(e);
    }
  }

  /** Saves the user's speakers as the dataset's speakers.json; the error, if refused (nothing is written then). */
  async saveSpeakers(file: api.SpeakersFile): Promise<IpcError | null> {
    try {
      const view = await api.saveSpeakers($state.snapshot(this.config) as RunConfig, file);
      if (!this.config.data_dir) this.config.speakers_file = view.speakersFile;
      this.speakers = view;
      this.speakersError = null;
      this.notify(`Speakers saved to ${view.speakersFile}`);
      void this.refreshUsage();
      return null;
    } catch (e) {
      return api.toIpcError(e);
    }
  }

  /** Lists a raw folder (and the dataset made from it so far); false when it holds no recordings. */
  async #scanRaw(dir: string, outputDir: string | null = null): Promise<boolean> {
    let rec: RecordingsScan;
    try {
      rec = await api.scanRecordings(dir, outputDir);
    } catch {
      return false;
    }
    this.recordings = rec;
    if (rec.transcribed > 0) {
      try {
        await this.#scanDataset([rec.outputDir]);
      } catch (e) {
        this.datasetError = api.toIpcError(e);
      }
    }
    return true;
  }

  /** Sends the raw recordings' transcripts to another dataset folder (picked in a dialog). */
  async pickTranscriptionOutput(): Promise<void> {
    const rec = this.recordings;
    if (!rec) return;
    const picked = await open({ directory: true, multiple: false, title: 'Choose the dataset folder' });
    if (typeof picked !== 'string') return;
    this.dataset = null;
    await this.#scanRaw(rec.dir, picked);
  }

  /** Scans the current dataset again (after transcribing or proofreading). */
  async rescanDataset(): Promise<void> {
    const d = this.dataset;
    const paths = d ? [d.audioDir, d.transcriptDir, ...(d.alignmentDir ? [d.alignmentDir] : [])] : [];
    try {
      if (this.recordings) {
        await this.#scanRaw(this.recordings.dir, this.recordings.outputDir);
      } else if (d) {
        const whole = d.speakerFolders.length > 0 || d.audioDir === `${d.root}/audio`;
        await this.#scanDataset(d.root && whole ? [d.root] : paths);
      }
      this.datasetError = null;
    } catch (e) {
      this.datasetError = api.toIpcError(e);
    }
    void this.refreshUsage();
  }

  /**
   * Transcribes with Whisper into the dataset layout; progress arrives in `transcription`.
   * Afterwards the dataset is scanned again, so the new transcripts can be proofread.
   */
  async transcribe(request: api.TranscribeRequest): Promise<void> {
    if (this.transcription.status === 'running') return;
    this.transcription = { ...idleTranscription(), status: 'running', model: request.whisperModel };
    const onEvent = (e: api.TranscriptionEvent) => {
      this.transcription = applyTranscriptionEvent(this.transcription, e);
    };
    try {
      const summary = await api.transcribeRecordings(request, onEvent);
      this.transcription = { ...this.transcription, status: 'done', summary };
      const failed = summary.failed.length;
      this.notify(
        `Transcribed ${summary.transcribed.length} recording(s)` + (failed ? `; ${failed} failed` : ''),
        failed ? 'error' : 'info',
      );
    } catch (e) {
      const error = api.toIpcError(e);
      this.transcription = { ...this.transcription, status: error.kind === 'cancelled' ? 'cancelled' : 'failed', error };
    }
    if (!this.recordings && this.dataset) {
      await this.rescanDataset();
    } else if (this.recordings) {
      this.dataset = null;
      await this.#scanRaw(this.recordings.dir, request.outputDir);
    }
  }

  async cancelTranscription(): Promise<void> {
    try {
      await api.cancelTranscription();
    } catch (e) {
      this.notify(`Could not stop the transcription: ${api.toIpcError(e).message}`, 'error');
    }
  }

  /** Measures the audio the current config would train on; a newer call wins. */
  async refreshUsage(): Promise<void> {
    if (!this.dataset) return;
    const request = ++this.#usageRequest;
    this.measuring = true;
    try {
      const usage = await api.datasetUsage($state.snapshot(this.config) as RunConfig);
      if (request !== this.#usageRequest) return;
      this.usage = usage;
      this.usageError = null;
    } catch (e) {
      if (request !== this.#usageRequest) return;
      this.usage = null;
      this.usageError = api.toIpcError(e);
    } finally {
      if (request === this.#usageRequest) this.measuring = false;
    }
  }

  async pickDatasetFolders(): Promise<void> {
    const picked = await open({ directory: true, multiple: true, title: 'Choose dataset folder(s)' });
    const paths = picked === null ? [] : Array.isArray(picked) ? picked : [picked];
    await this.scan(paths);
  }

  // ------------------------------------------------------------ models

  async setModel(kind: ModelKind, path: string): Promise<void> {
    const slot = this.models[kind];
    slot.path = path;
    slot.loading = true;
    slot.error = null;
    slot.info = null;
    if (kind === 'csm') this.config.model_path = path;
    if (kind === 'mimi') this.config.mimi_path = path;
    if (kind === 'tokenizer') this.config.tokenizer_path = path;
    try {
      const info = await api.inspectModel(path, kind);
      if (slot.path === path) slot.info = info;
    } catch (e) {
      if (slot.path === path) slot.error = api.toIpcError(e);
    } finally {
      if (slot.path === path) slot.loading = false;
    }
  }

  async pickModel(kind: ModelKind, directory: boolean): Promise<void> {
    const filters =
      directory ? undefined
      : kind === 'tokenizer' ? [{ name: 'Tokenizer', extensions: ['json'] }]
      : [{ name: 'Weights', extensions: ['safetensors'] }];
    const picked = await open({ directory, multiple: false, filters });
    if (typeof picked === 'string') await this.setModel(kind, picked);
  }

  async useDemo(): Promise<void> {
    try {
      const d = await api.demoAssets();
      this.config.audio_dir = d.audioDir;
      this.config.transcript_dir = d.transcriptDir;
      this.config.alignment_dir = d.alignmentDir;
      await Promise.all([
        this.setModel('csm', d.modelPath),
        this.setModel('mimi', d.mimiPath),
        this.setModel('tokenizer', d.tokenizerPath),
        this.scan([d.audioDir, d.transcriptDir, ...(d.alignmentDir ? [d.alignmentDir] : [])]),
      ]);
      this.notify('Demo model and dataset loaded');
    } catch (e) {
      this.notify(`Demo assets unavailable: ${api.toIpcError(e).message}`, 'error');
    }
  }

  // ------------------------------------------------------------ config

  /** Replaces the config (e.g. imported or duplicated); returns the unknown keys that were ignored. */
  loadConfig(raw: unknown): string[] {
    const { config, unknown } = fromObject(raw);
    this.config = config;
    this.drafts = {};
    return unknown;
  }

  async importConfig(): Promise<void> {
    const path = await open({ multiple: false, directory: false, filters: [{ name: 'Run config', extensions: ['json'] }] });
    if (typeof path !== 'string') return;
    try {
      const unknown = this.loadConfig(await api.readConfigFile(path));
      this.notify(unknown.length ? `Config imported; ignored unknown keys: ${unknown.join(', ')}` : 'Config imported');
    } catch (e) {
      this.notify(`Could not import ${path}: ${api.toIpcError(e).message}`, 'error');
    }
  }

  async exportConfig(): Promise<void> {
    const path = await save({ defaultPath: 'run-config.json', filters: [{ name: 'Run config', extensions: ['json'] }] });
    if (!path) return;
    try {
      await api.writeConfigFile(path, $state.snapshot(this.config) as RunConfig);
      this.notify(`Config saved to ${path}`);
    } catch (e) {
      this.notify(`Could not save config: ${api.toIpcError(e).message}`, 'error');
    }
  }

  async refreshEstimate(): Promise<void> {
    try {
      this.estimate = await api.estimateRun($state.snapshot(this.config) as RunConfig);
    } catch {
      this.estimate = null;
    }
  }

  // ------------------------------------------------------------ training

  // ------------------------------------------------------------ learning-rate finder

  /** Runs the range test on the current model, data and settings (`steps` steps). */
  async findLearningRate(steps: number): Promise<void> {
    if (this.lrFind.status === 'running') return;
    this.lrFind = { ...idleLrFind(steps), status: 'running' };
    const options = { minLr: 1e-7, maxLr: 1, steps, smoothing: 0.9, divergeFactor: 4 };
    try {
      const { report, reportPath } = await api.findLearningRate($state.snapshot(this.config) as RunConfig, options, (e) => {
        this.lrFind = applyLrFindEvent(this.lrFind, e);
      });
      this.lrFind = { ...this.lrFind, status: 'done', report, reportPath, points: report.points };
    } catch (e) {
      this.lrFind = { ...this.lrFind, status: 'failed', error: api.toIpcError(e) };
    }
  }

  async cancelLrFind(): Promise<void> {
    try {
      await api.cancelLrFind();
    } catch (e) {
      this.notify(`Could not stop the learning-rate finder: ${api.toIpcError(e).message}`, 'error');
    }
  }

  /** Sets the learning rate to the finder's suggestion (3 significant digits). */
  useSuggestedLr(): void {
    const lr = this.lrFind.report?.suggestedLr;
    if (lr === null || lr === undefined) return;
    this.config.learning_rate = Number(lr.toPrecision(3));
    delete this.drafts.learning_rate;
  }

  onTrainingEvent = (ev: TrainingEvent): void => {
    applyEvent(this.#raw, ev);
    this.run = { ...this.#raw };
    if (ev.event === 'finished') {
      this.notify(ev.data.status === 'completed' ? 'Training finished' : 'Training stopped; checkpoint saved');
    } else if (ev.event === 'failed') {
      this.notify(`Training failed: ${ev.data.error.message}`, 'error');
    }
  };

  async startRun(): Promise<boolean> {
    if (this.running) return false;
    if (Object.keys(this.errors).length > 0) {
      this.notify('Fix the highlighted parameters first', 'error');
      this.tab = 'parameters';
      return false;
    }
    this.#raw = initialRunState();
    this.#raw.status = 'starting';
    this.run = { ...this.#raw };
    try {
      const runId = await api.startTraining($state.snapshot(this.config) as RunConfig, this.onTrainingEvent);
      if (this.#raw.runId === null) this.#raw.runId = runId;
      this.run = { ...this.#raw };
      return true;
    } catch (e) {
      this.#raw.status = 'failed';
      this.#raw.error = api.toIpcError(e);
      this.run = { ...this.#raw };
      return false;
    }
  }

  async stopRun(): Promise<void> {
    const id = this.run.runId;
    if (!id || !this.running) return;
    this.#raw.status = 'stopping';
    this.run = { ...this.#raw };
    try {
      await api.stopTraining(id);
    } catch (e) {
      this.notify(`Could not stop: ${api.toIpcError(e).message}`, 'error');
    }
  }

  reset(): void {
    this.tab = 'dataset';
    this.dataset = null;
    this.datasetError = null;
    this.scanning = false;
    this.usage = null;
    this.usageError = null;
    this.measuring = false;
    this.recordings = null;
    this.transcription = idleTranscription();
    this.models = { csm: emptySlot(), mimi: emptySlot(), tokenizer: emptySlot() };
    this.speakers = null;
    this.speakersError = null;
    this.lrFind = idleLrFind();
    this.config = defaultConfig();
    this.drafts = {};
    this.estimate = null;
    this.#raw = initialRunState();
    this.run = this.#raw;
    this.generated = [];
    this.outputDevice = null;
    this.preselectedAdapter = null;
    this.notices = [];
  }
}

export const app = new AppStore();
