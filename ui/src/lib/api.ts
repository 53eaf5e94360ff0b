// The one place the UI talks to the Rust side. Every command and type here is
// documented in docs/ipc.md; the Rust implementation follows that document.
import { Channel, invoke } from '@tauri-apps/api/core';
import type { RunConfig } from './config';

// ---------------------------------------------------------------- errors

/** Every command rejects with this shape (Rust: `#[serde(tag = "kind", content = "message")]`). */
export type ErrorKind =
  | 'io'
  | 'notFound'
  | 'invalidInput'
  | 'unsupportedFormat'
  | 'modelLoad'
  | 'noAudioDevice'
  | 'audio'
  | 'alreadyRunning'
  | 'notRunning'
  | 'training'
  | 'generation'
  | 'cancelled'
  | 'alreadyExists'
  | 'download'
  | 'accessDenied'
  | 'internal';

export interface IpcError {
  kind: ErrorKind;
  message: string;
  /** `accessDenied` only: the repo's page on the hub, where its licence is accepted. */
  url?: string;
}

export function isIpcError(e: unknown): e is IpcError {
  return (
    typeof e === 'object' &&
    e !== null &&
    typeof (e as IpcError).kind === 'string' &&
    typeof (e as IpcError).message === 'string'
  );
}

/** Turns anything a command rejected with into an `IpcError`. */
export function toIpcError(e: unknown): IpcError {
  if (isIpcError(e)) return e;
  if (e instanceof Error) return { kind: 'internal', message: e.message };
  return { kind: 'internal', message: String(e) };
}

async function call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    throw toIpcError(e);
  }
}

// ---------------------------------------------------------------- app

export interface AppInfo {
  /** csm-app crate version. */
  version: string;
  /** Version of the MLX library the core was built against, e.g. "0.32.2". */
  mlxVersion: string;
  /** "metal" on Apple Silicon, "cpu" (or "cuda") elsewhere. */
  backend: 'metal' | 'cpu' | 'cuda';
  os: string;
  arch: string;
}

export const appInfo = () => call<AppInfo>('app_info');

/** The BLAS kernels of the app's process (OpenBLAS on Linux), checked at start-up. */
export interface BlasStatus {
  /** OpenBLAS kernel set (`Haswell`, `SkylakeX`, `Prescott`...); null when the BLAS is not OpenBLAS. */
  kernels: string | null;
  /** CPU model name, where the OS says. */
  cpu: string | null;
  /** `narrow`: narrower kernels than the CPU supports run (the banner shows `warning`). */
  origin: 'fits' | 'setByApp' | 'narrow' | 'notOpenblas';
  /** `narrow`: the kernel set that fits the CPU (an `OPENBLAS_CORETYPE` value). */
  recommended: string | null;
  warning: string | null;
}

export const blasStatus = () => call<BlasStatus>('blas_status');

// ---------------------------------------------------------------- dataset

export type ProblemKind =
  | 'missingTranscript'
  | 'emptyTranscript'
  | 'tooLong'
  | 'clipping'
  | 'silence'
  | 'unreadable'
  | 'resampled'
  /** Alignment file missing (when an alignment folder is used) or unusable; not blocking. */
  | 'alignment';

export interface Problem {
  kind: ProblemKind;
  /** Human-readable detail, e.g. "42.3 s > 30 s limit". */
  message: string;
}

export interface DatasetItem {
  /** Path relative to the audio directory, e.g. "utt_001.wav". */
  file: string;
  /** Absolute path of the audio file. */
  path: string;
  /** null when the file could not be decoded. */
  durationSecs: number | null;
  sampleRate: number | null;
  channels: number | null;
  /** Absolute path of the matching transcript, null when missing. */
  transcriptPath: string | null;
  /** Transcript text (trimmed), null when missing. */
  transcript: string | null;
  /** True when an alignment file exists for this clip. */
  hasAlignment: boolean;
  /**
   * Its alignment no longer matched an edited transcript and was moved to
   * `alignments/stale/`: the clip is used without word timings.
   */
  alignmentStale: boolean;
  problems: Problem[];
}

export interface DatasetScan {
  /** Folder the user chose (or the common parent of dropped folders). */
  root: string;
  audioDir: string;
  transcriptDir: string;
  alignmentDir: string | null;
  items: DatasetItem[];
  totals: {
    files: number;
    /** Sum of readable durations. */
    seconds: number;
    withTranscript: number;
    withProblems: number;
    /** Clips the trainer can use (no missing/empty transcript, readable). */
    usable: number;
  };
  /**
   * The speakers' folders when `root` holds one folder per speaker (`root/NAME/audio`...);
   * rows are then named `NAME/<file>` and `audioDir`/`transcriptDir` are `root`. Empty for
   * one folder of recordings.
   */
  speakerFolders: string[];
  /** `speakers.json` in the dataset folder, when there is one. */
  speakersFile: string | null;
}

/**
 * Scans dropped or picked folders. Accepts `audio/` + `transcripts/` (+ `alignments/`)
 * given separately, or one parent folder holding them.
 */
export const scanDataset = (paths: string[]) => call<DatasetScan>('scan_dataset', { paths });

/** The audio of one recording that training uses (the core's `RecordingUsage`, snake_case). */
export interface RecordingUsage {
  /** File stem. */
  recording_id: string;
  /** Whole duration. */
  seconds_in: number;
  /** Seconds in its utterances after trimming and cutting (0 when skipped). */
  seconds_used: number;
  utterances: number;
}

/** The audio a run trains and validates on (the core's `AudioUsage`, snake_case). */
export interface AudioUsage {
  /** One row per recording read, in name order. */
  recordings: RecordingUsage[];
  recordings_used: number;
  seconds_in: number;
  seconds_used: number;
  utterances: number;
  train_utterances: number;
  validation_utterances: number;
  train_seconds: number;
  validation_seconds: number;
  /** Skipped recordings, over-long utterances and other notes. */
  warnings: string[];
  /** Per speaker, by id, when the dataset has several (absent otherwise). */
  speakers?: SpeakerUsage[];
}

/** A speaker: name and CSM id (the core's `Speaker`). */
export interface Speaker {
  name: string;
  id: number;
}

/** One speaker's share of the audio used (the core's `SpeakerUsage`, snake_case). */
export interface SpeakerUsage {
  speaker: Speaker;
  /** Recordings with at least one of its utterances. */
  recordings: number;
  /** Of those, conversations (several speakers). */
  conversations: number;
  utterances: number;
  seconds: number;
  train_utterances: number;
  validation_utterances: number;
  train_seconds: number;
  validation_seconds: number;
}

/**
 * Loads the config's dataset as training would (segmenting settings, split, seed) and
 * reports the audio used. Reads every clip: slower than `scanDataset`.
 */
export const datasetUsage = (config: RunConfig) => call<AudioUsage>('dataset_usage', { config });

/** `speakers.json` (the core's `SpeakersFile`): fixed ids of names, and who speaks each recording (by name or id). */
export interface SpeakersFile {
  speakers?: Record<string, number>;
  recordings?: Record<string, string | number>;
}

/** Who speaks the dataset's recordings, as a run would resolve them (`dataset_speakers`). */
export interface DatasetSpeakers {
  layout: 'oneSpeaker' | 'speakersFile' | 'speakerFolders';
  /** Where `speakers.json` is, or would be saved. */
  speakersFile: string;
  fileExists: boolean;
  /** Its contents, when it exists and reads. */
  file: SpeakersFile | null;
  /** The names-to-ids table a run would use, by id (empty for one speaker or on `error`). */
  speakers: Speaker[];
  recordings: { id: string; speaker: number | null; speakers: number[] }[];
  /** Why a run would refuse the speakers (names the file and key). */
  error: string | null;
}

export const datasetSpeakers = (config: RunConfig) => call<DatasetSpeakers>('dataset_speakers', { config });
/** Checks `file` against the dataset and writes it as its `speakers.json` (atomically); nothing is written when refused. */
export const saveSpeakers = (config: RunConfig, file: SpeakersFile) =>
  call<DatasetSpeakers>('save_speakers', { config, file });

// ---------------------------------------------------------------- raw recordings, transcription

/** One audio file of a folder of raw recordings. */
export interface Recording {
  file: string;
  path: string;
  /** From the file's header; null when it does not say (some MP3s) or the file is unreadable. */
  durationSecs: number | null;
  sampleRate: number | null;
  channels: number | null;
  /** `pcm`, `flac`, `mp3`, `aac`, ... */
  codec: string | null;
  /** Why it cannot be read, or null. */
  error: string | null;
  /** `outputDir/transcripts/NAME.txt` exists (a new run skips it). */
  transcribed: boolean;
}

export interface RecordingsScan {
  dir: string;
  /** Where the dataset goes: `dir/dataset` unless another folder was given. */
  outputDir: string;
  items: Recording[];
  /** Seconds of the files whose length is known. */
  seconds: number;
  transcribed: number;
}

/** Lists the audio files (any format the app decodes) directly in `dir`. */
export const scanRecordings = (dir: string, outputDir: string | null = null) =>
  call<RecordingsScan>('scan_recordings', { dir, outputDir });

/** A Whisper model: csm-hub's Whisper bundles (default first) and every other Whisper repo in the Hugging Face cache. */
export interface WhisperModel {
  repo: string;
  /** Its csm-hub bundle (`whisper-tiny`), also accepted as the model name. */
  bundle: string | null;
  description: string | null;
  /** Snapshot folder when all files are cached (no download needed). */
  path: string | null;
  sizeBytes: number;
}

export const whisperModels = () => call<WhisperModel[]>('whisper_models');

export interface TranscribeRequest {
  audioDir: string;
  /** Dataset folder: `audio/` (24 kHz mono WAV), `transcripts/`, `alignments/` are written in it. */
  outputDir: string;
  /** A Whisper folder (transformers layout), a bundle (`whisper-tiny`) or a hub id (`openai/whisper-small`). */
  whisperModel: string;
  /** Language code, or null to detect it per recording. */
  language: string | null;
  /** 0 is greedy with no fallback; null = 0 with openai-whisper's fallback up to 1.0. */
  temperature: number | null;
  /** Replace existing outputs (by default recordings with a transcript are skipped). */
  overwrite: boolean;
}

/** Progress of `transcribeRecordings` (Rust: `#[serde(tag = "event", content = "data")]`). */
export type TranscriptionEvent =
  | { event: 'loading'; data: { model: string } }
  | { event: 'downloading'; data: { repo: string; file: string; done: number; total: number | null } }
  | { event: 'started'; data: { files: number; totalSecs: number; skipped: number } }
  | { event: 'fileStarted'; data: { name: string; index: number; durationSecs: number } }
  | {
      event: 'progress';
      data: {
        name: string;
        fileDoneSecs: number;
        fileSecs: number;
        doneSecs: number;
        totalSecs: number;
        elapsedSecs: number;
        etaSecs: number | null;
      };
    }
  | { event: 'fileDone'; data: { name: string; text: string } }
  | { event: 'fileFailed'; data: { name: string; error: string } };

export interface TranscriptionSummary {
  outputDir: string;
  transcribed: string[];
  skipped: string[];
  failed: { file: string; reason: string }[];
  audioSecs: number;
}

/**
 * Transcribes a folder into the dataset layout `csm transcribe` writes. Rejects with
 * `cancelled` after `cancelTranscription` (finished recordings stay; a new run continues).
 */
export function transcribeRecordings(
  request: TranscribeRequest,
  onEvent: (e: TranscriptionEvent) => void,
): Promise<TranscriptionSummary> {
  const channel = new Channel<TranscriptionEvent>();
  channel.onmessage = onEvent;
  return call<TranscriptionSummary>('transcribe_recordings', { request, onEvent: channel });
}

export const cancelTranscription = () => call<void>('cancel_transcription');

// ---------------------------------------------------------------- proofreading

/** The folders of a scanned dataset (as `scanDataset` returned them). */
export interface DatasetFolders {
  audioDir: string;
  transcriptDir: string;
  alignmentDir: string | null;
}

/** What saving did to the word alignment of the recording. */
export type AlignmentState = 'none' | 'kept' | 'madeStale' | 'restored' | 'stale' | 'unreadable';

export interface SavedTranscript {
  path: string;
  text: string;
  alignment: AlignmentState;
}

/** A recording moved to the `excluded/` folders (never deleted). */
export interface ExcludedRecording {
  id: string;
  /** Where its files are now. */
  files: string[];
}

/** Saves a transcript (atomically); `id` is the audio file's stem. */
export const saveTranscript = (folders: DatasetFolders, id: string, text: string) =>
  call<SavedTranscript>('save_transcript', { folders, id, text });
export const excludeRecording = (folders: DatasetFolders, id: string) =>
  call<ExcludedRecording>('exclude_recording', { folders, id });
export const restoreRecording = (folders: DatasetFolders, id: string) =>
  call<string[]>('restore_recording', { folders, id });
export const listExcluded = (folders: DatasetFolders) => call<ExcludedRecording[]>('list_excluded', { folders });

// ---------------------------------------------------------------- models

export type ModelKind = 'csm' | 'mimi' | 'tokenizer';

export interface ModelInfo {
  path: string;
  kind: ModelKind;
  /** e.g. "safetensors", "safetensors (sharded)", "tokenizer.json". */
  format: string;
  sizeBytes: number;
  /** e.g. "bfloat16", "float32", mixed: "bfloat16 + float32"; null for tokenizers. */
  dtype: string | null;
  /** Parameter count, null for tokenizers. */
  parameters: number | null;
  /** Extra key/value facts (backbone flavor, vocab size, codebooks, ...). */
  details: Record<string, string>;
}

/** Inspects a checkpoint file or folder. Rejects with `modelLoad`/`unsupportedFormat` and the exact load error. */
export const inspectModel = (path: string, kind: ModelKind) =>
  call<ModelInfo>('inspect_model', { path, kind });

export interface DemoAssets {
  modelPath: string;
  mimiPath: string;
  tokenizerPath: string;
  audioDir: string;
  transcriptDir: string;
  alignmentDir: string | null;
}

/** Locates (and if needed unpacks) the bundled tiny demo model and dataset. */
export const demoAssets = () => call<DemoAssets>('demo_assets');

// ---------------------------------------------------------------- hub downloads

/** Where the Hugging Face hub and its shared cache are (`HF_*` variables, as Python's huggingface_hub reads them). */
export interface HubStatus {
  endpoint: string;
  cacheDir: string;
  /** Where the token comes from (`$HF_TOKEN`, the token file), or null when none is set. */
  tokenSource: string | null;
  /** Where `saveHubToken` writes (`$HF_HOME/token`, as `huggingface-cli login`). */
  tokenPath: string;
  offline: boolean;
}

/** What a bundle file is for; roles csm-hub adds later arrive as their camelCase names. */
export type BundleRole = 'model' | 'codec' | 'tokenizer' | (string & {});

export interface BundleFileInfo {
  role: BundleRole;
  repo: string;
  file: string;
  /** Local path when already in the cache. */
  cached: string | null;
}

export interface BundleInfo {
  /** e.g. `csm-1b`. */
  name: string;
  description: string;
  files: BundleFileInfo[];
}

export interface DownloadedFile {
  role: BundleRole;
  repo: string;
  file: string;
  /** Its snapshot path in the cache. */
  path: string;
}

/** A downloaded bundle: paths for the model slots (null when it has no file of that role) and every file. */
export interface DownloadedBundle {
  /** Snapshot folder of its `model` files. */
  modelPath: string | null;
  mimiPath: string | null;
  tokenizerPath: string | null;
  files: DownloadedFile[];
}

/** Per-file progress of `downloadBundle` (Rust: `#[serde(tag = "event", content = "data")]`). */
export type DownloadEvent =
  | { event: 'cached'; data: { repo: string; file: string; size: number } }
  | { event: 'waiting'; data: { repo: string; file: string } }
  | { event: 'progress'; data: { repo: string; file: string; done: number; total: number | null } }
  | { event: 'retrying'; data: { repo: string; file: string; reason: string } }
  | { event: 'verifying'; data: { repo: string; file: string } }
  | { event: 'finished'; data: { repo: string; file: string; size: number } };

/** A repo of the hub cache, or (`kind: 'package'`, `repo: 'pypi:project==version'`) a release whose file came from a wheel. */
export interface CachedModel {
  repo: string;
  kind: 'model' | 'dataset' | 'space' | 'package';
  sizeBytes: number;
  /** Bytes of interrupted downloads (the next download resumes them). */
  partialBytes: number;
  refs: string[];
  files: string[];
}

export const hubStatus = () => call<HubStatus>('hub_status');
export const listBundles = () => call<BundleInfo[]>('list_bundles');
/** Downloads (or resumes) a bundle into the hub cache; rejects with `cancelled` after `cancelDownload`. */
export function downloadBundle(name: string, onEvent: (e: DownloadEvent) => void): Promise<DownloadedBundle> {
  const channel = new Channel<DownloadEvent>();
  channel.onmessage = onEvent;
  return call<DownloadedBundle>('download_bundle', { name, onEvent: channel });
}
export const cancelDownload = () => call<void>('cancel_download');
export const listCachedModels = () => call<CachedModel[]>('list_cached_models');
/** Resolves to the bytes freed. */
export const deleteCachedModel = (repo: string) => call<number>('delete_cached_model', { repo });
/** Saves the token where `huggingface-cli login` does; call only with the user's consent. */
export const saveHubToken = (token: string) => call<string>('save_hub_token', { token });

// ---------------------------------------------------------------- config files

/** Reads a run config JSON file; resolves to the raw parsed object (validated by the UI). */
export const readConfigFile = (path: string) => call<unknown>('read_config_file', { path });

/** Writes `config` as pretty JSON to `path`. */
export const writeConfigFile = (path: string, config: RunConfig) =>
  call<void>('write_config_file', { path, config });

// ---------------------------------------------------------------- estimates

export interface RunEstimate {
  /** Measured or modeled seconds per optimizer step for this config on this machine. */
  secsPerStep: number | null;
  /** Expected peak memory in bytes. */
  peakMemoryBytes: number | null;
}

export const estimateRun = (config: RunConfig) => call<RunEstimate>('estimate_run', { config });

// ---------------------------------------------------------------- training

export type Phase = 'loading' | 'encoding' | 'training' | 'validating' | 'saving';

/** Loss and grad-norm fields are null on the wire when non-finite (serde_json writes NaN as null). */
export interface StepData {
  step: number;
  totalSteps: number;
  epoch: number;
  loss: number | null;
  semanticLoss: number | null;
  acousticLoss: number | null;
  lr: number;
  gradNorm: number | null;
  framesPerSec: number;
  memoryBytes: number;
  elapsedSecs: number;
  etaSecs: number | null;
}

export interface ValidationData {
  step: number;
  loss: number | null;
  semanticLoss: number | null;
  acousticLoss: number | null;
  /** Each speaker's part, by id, when the dataset has several (absent otherwise). */
  speakers?: SpeakerValidation[];
}

/** One speaker's validation loss (the core's `SpeakerValReport`). */
export interface SpeakerValidation {
  speaker: string;
  id: number;
  loss: number | null;
  semanticLoss: number | null;
  acousticLoss: number | null;
  examples: number;
}

export type WarningKind = 'nan' | 'divergence' | 'gradSpike' | 'other';

/** Mirrors Rust `#[serde(rename_all = "camelCase", tag = "event", content = "data")] enum TrainingEvent`. */
export type TrainingEvent =
  | {
      event: 'started';
      data: {
        runId: string;
        runDir: string;
        totalSteps: number;
        stepsPerEpoch: number;
        trainExamples: number;
        valExamples: number;
      };
    }
  | { event: 'phase'; data: { phase: Phase; message: string | null; done: number | null; total: number | null } }
  | { event: 'step'; data: StepData }
  | { event: 'validation'; data: ValidationData }
  | { event: 'checkpoint'; data: { step: number; path: string; mode: 'lora' | 'full' } }
  | { event: 'sample'; data: RunSample }
  | { event: 'voiceSetup'; data: VoiceSetup }
  | { event: 'voiceScores'; data: VoiceReport }
  | { event: 'warning'; data: { step: number | null; kind: WarningKind; message: string } }
  | {
      event: 'finished';
      data: {
        status: 'completed' | 'stopped';
        step: number;
        elapsedSecs: number;
        bestValLoss: number | null;
        adapterPath: string | null;
      };
    }
  | { event: 'failed'; data: { step: number | null; error: IpcError } };

/** The core's `VoiceSetupReport`: what voice scores are measured against (docs/voice-scores.md). */
export interface VoiceSetup {
  heldOutRecording: string;
  heldOutUtterance: number;
  heldOutSecs: number;
  contextText: string;
  /** What each scoring speaks, in order (`prompt` 1, 2, ...). */
  prompts: string[];
  referenceRecordings: number;
  referenceCharsPerSec: number | null;
  /** Whether samples are transcribed (WER/CER). */
  transcribed: boolean;
}

/** Why a generation ended; `eos` is the healthy end. */
export type StopReason = 'eos' | 'lengthLimit' | 'silence' | 'maxAudio';

/** The core's `VoiceSample`: one spoken prompt and its scores. */
export interface VoiceSample {
  prompt: number;
  text: string;
  /** 24 kHz WAV. */
  path: string;
  transcript: string | null;
  /** Cosine similarity to the speaker; null when nothing could be embedded. */
  similarity: number | null;
  wer: number | null;
  cer: number | null;
  stopReason: StopReason;
  durationSecs: number;
  leadingSilenceSecs: number;
  trailingSilenceSecs: number;
  longestPauseSecs: number;
  clippedFraction: number;
  charsPerSec: number | null;
  rateRatio: number | null;
  /** Health warnings, one sentence each. */
  warnings: string[];
}

/** The core's `VoiceReport`: the base model (step 0) or a checkpoint, scored. */
export interface VoiceReport {
  step: number;
  checkpoint: string | null;
  summary: {
    similarity: number | null;
    wer: number | null;
    cer: number | null;
    healthWarnings: number;
    samples: number;
  };
  samples: VoiceSample[];
  bestStep: number | null;
  newBest: boolean;
}

export interface RunSample {
  step: number;
  path: string;
  text: string;
  durationSecs: number;
}

/**
 * Starts a run. Resolves with the run id as soon as the job is accepted; progress and the
 * end of the run arrive on `onEvent`. Rejects with `alreadyRunning` or `invalidInput`.
 */
export function startTraining(
  config: RunConfig,
  onEvent: (ev: TrainingEvent) => void,
): Promise<string> {
  const channel = new Channel<TrainingEvent>();
  channel.onmessage = onEvent;
  return call<string>('start_training', { config, onEvent: channel });
}

/** Asks the run to stop; the backend saves a checkpoint, then sends `finished` with status "stopped". */
export const stopTraining = (runId: string) => call<void>('stop_training', { runId });

// ---------------------------------------------------------------- learning-rate finder

/** The range test's settings (the core's `LrFindOptions`). */
export interface LrFindOptions {
  minLr: number;
  maxLr: number;
  steps: number;
  smoothing: number;
  divergeFactor: number;
}

/** One step of the range test (the core's `LrPoint`). */
export interface LrPoint {
  step: number;
  lr: number;
  loss: number | null;
  smoothed: number | null;
}

/** `lr_find.json` (the core's `LrFindReport`). */
export interface LrFindReport {
  /** Where the smoothed loss falls fastest; null when too few steps ran. */
  suggestedLr: number | null;
  minLossLr: number | null;
  points: LrPoint[];
  stop: 'completed' | 'diverged' | 'cancelled';
  options: LrFindOptions;
  configLr: number;
  trainableParams: number;
}

export type LrFindEvent =
  | { event: 'phase'; data: { phase: Phase; message: string | null; done: number | null; total: number | null } }
  | { event: 'point'; data: LrPoint }
  | { event: 'warning'; data: { message: string } };

/**
 * Runs the learning-rate range test on the config's model and data (`options` null: the
 * core's defaults). Resolves with the report (also when cancelled) and where it was written
 * (`<output_dir>/lr_find.json`, nothing else).
 */
export function findLearningRate(
  config: RunConfig,
  options: LrFindOptions | null,
  onEvent: (e: LrFindEvent) => void,
): Promise<{ report: LrFindReport; reportPath: string }> {
  const channel = new Channel<LrFindEvent>();
  channel.onmessage = onEvent;
  return call('find_learning_rate', { config, options, onEvent: channel });
}
export const cancelLrFind = () => call<void>('cancel_lr_find');

// ---------------------------------------------------------------- generation

export interface GenerateRequest {
  text: string;
  speakerId: number;
  /** Optional context clip (audio path) and its transcript. */
  contextAudio: string | null;
  contextText: string | null;
  /** LoRA adapter/checkpoint path to apply; null = base model. */
  checkpoint: string | null;
  modelPath: string;
  mimiPath: string | null;
  tokenizerPath: string | null;
  seed: number;
  temperature: number;
  topK: number;
  maxAudioSecs: number;
}

export interface GeneratedSample {
  id: string;
  /** WAV file written by the backend. */
  path: string;
  sampleRate: number;
  durationSecs: number;
  /** Peak envelope for drawing: `peaks.length` absolute maxima in [0, 1], evenly spaced. */
  peaks: number[];
  checkpoint: string | null;
  seed: number;
  text: string;
}

/** `loading`: model, codec, tokenizer, adapter; `generating`: frames (then decoding). */
export type GenerationPhase = 'loading' | 'generating';

/** Progress of one `generate_sample` call, on its channel. */
export type GenerationEvent =
  | { event: 'phase'; data: { phase: GenerationPhase } }
  | {
      event: 'progress';
      data: {
        /** Frames generated so far (12.5 per second of audio). */
        frames: number;
        /** At most this many (`maxAudioSecs` × 12.5); generation may end earlier. */
        maxFrames: number;
        audioSecs: number;
        /** Since the call started, model loading included. */
        elapsedSecs: number;
      };
    };

/** Generates one sample; progress arrives on `onProgress`. Rejects with `cancelled` after `cancelGeneration`. */
export function generateSample(
  request: GenerateRequest,
  onProgress: (ev: GenerationEvent) => void = () => {},
): Promise<GeneratedSample> {
  const channel = new Channel<GenerationEvent>();
  channel.onmessage = onProgress;
  return call<GeneratedSample>('generate_sample', { request, onProgress: channel });
}

/** Stops every generation in progress before its next frame (they reject with `cancelled`). */
export const cancelGeneration = () => call<void>('cancel_generation');

// ---------------------------------------------------------------- audio

export interface AudioDevice {
  id: string;
  name: string;
  isDefault: boolean;
}

export const listOutputDevices = () => call<AudioDevice[]>('list_output_devices');

/** Plays a WAV/FLAC/MP3 file; stops whatever was playing. Rejects with `noAudioDevice` when none is usable. */
export const playAudio = (path: string, deviceId: string | null) =>
  call<{ durationSecs: number }>('play_audio', { path, deviceId });

export const stopAudio = () => call<void>('stop_audio');

/** Peak envelope of any audio file (for waveforms of dataset clips and run samples). */
export const audioPeaks = (path: string, buckets: number) =>
  call<number[]>('audio_peaks', { path, buckets });

// ---------------------------------------------------------------- history

export type RunStatus = 'running' | 'completed' | 'stopped' | 'failed';

export interface RunSummary {
  id: string;
  name: string;
  dir: string;
  status: RunStatus;
  /** RFC 3339. */
  startedAt: string;
  durationSecs: number;
  step: number;
  totalSteps: number;
  bestValLoss: number | null;
  finalLoss: number | null;
  /** The resolved config the run was started with. */
  config: RunConfig;
  /** Checkpoint folders, oldest first. */
  checkpoints: { step: number; path: string }[];
}

export interface RunMetrics {
  steps: StepData[];
  validation: ValidationData[];
  samples: RunSample[];
  /** The run's voice-score set-up (null when scores were off). */
  voiceSetup: VoiceSetup | null;
  /** Voice scores, one per scored step, by step. */
  voice: VoiceReport[];
}

/** Runs found under the runs folder (newest first). */
export const listRuns = () => call<RunSummary[]>('list_runs');
export const runMetrics = (runId: string) => call<RunMetrics>('run_metrics', { runId });
/** Opens the system file manager at `path`. */
export const revealPath = (path: string) => call<void>('reveal_path', { path });
/** Copies a run's adapter (latest or given checkpoint) to `dest`; resolves with the written path. */
/**
 * Writes the adapter into a new folder inside `destDir` (`<runId>` or `<runId>-<checkpoint>`),
 * returns that folder; rejects with `alreadyExists` rather than overwrite anything.
 */
export const exportAdapter = (runId: string, checkpoint: string | null, destDir: string) =>
  call<string>('export_adapter', { runId, checkpoint, dest: destDir });

// ---------------------------------------------------------------- new voice, voice library

/** The journey's stages (csm-flow's `Stage`), in order. */
export type FlowStage = 'download' | 'transcribe' | 'dataset' | 'train' | 'summary';
/** Where a stage of a voice stands (`voice.json`). */
export type FlowStageStatus = 'pending' | 'running' | 'done' | 'skipped' | 'cancelled' | 'failed';
/** What a progress count counts. */
export type FlowUnit = 'bytes' | 'audio_seconds' | 'recordings' | 'utterances' | 'steps';

/** A training setting the recipe (or the user) chose, with why (csm-flow's `SettingChoice`). */
export interface SettingChoice {
  name: string;
  value: unknown;
  chosen_by: 'recipe' | 'override';
  reason: string;
}

/** One scoring (csm-flow's `Scores`, in `summary.json`). */
export interface FlowScores {
  step: number;
  similarity: number | null;
  wer: number | null;
  cer: number | null;
  health_warnings: number;
}

/** `summary.json` (csm-flow's `Summary`; paths relative to the voice folder). */
export interface FlowSummary {
  format: string;
  name: string;
  speaker_name: string | null;
  minutes_used: number;
  utterances: number;
  steps: number;
  stage_seconds: Partial<Record<FlowStage, number>>;
  total_seconds: number;
  base: FlowScores | null;
  best: FlowScores | null;
  last: FlowScores | null;
  best_adapter: string | null;
  final_adapter: string | null;
  sample_wav: string | null;
}

/**
 * The core's `TrainEvent` as `metrics.jsonl` holds it (variant camelCase, fields snake_case);
 * the journey forwards every one. Only what the New voice screen reads is typed.
 */
export type CoreTrainEvent =
  | { event: 'step'; data: { step: number; total_steps: number; loss: number | null; eta_secs: number | null } }
  | { event: 'voiceScores'; data: VoiceReport }
  | { event: string; data: unknown };

/** csm-flow's `FlowEvent`, on `start_voice`'s channel (fields snake_case). */
export type FlowEvent =
  | { event: 'opened'; data: { voice_dir: string; dataset_dir: string } }
  | { event: 'stageStarted'; data: { stage: FlowStage; detail: string } }
  | {
      event: 'stageProgress';
      data: { stage: FlowStage; done: number; total: number; unit: FlowUnit; eta_s: number | null; item: string | null };
    }
  | { event: 'message'; data: { stage: FlowStage; text: string } }
  | { event: 'settings'; data: { choices: SettingChoice[] } }
  | { event: 'train'; data: CoreTrainEvent }
  | { event: 'stageFinished'; data: { stage: FlowStage; end: 'done' | 'skipped'; seconds: number; note: string } }
  | { event: 'finished'; data: { summary: FlowSummary } };

export interface NewVoiceRequest {
  /** The folder of recordings (dropped or chosen). */
  rawDir: string;
  name: string;
  /** A voice of the library to continue (after proofreading, or a stopped journey); null: new. */
  voiceDir: string | null;
  /** A bundle name (`csm-1b`) or a checkpoint path. */
  model: string;
  mimi: string | null;
  tokenizer: string | null;
  /** A Whisper bundle name or folder. */
  whisper: string;
  /** `speaker-encoder` (the bundle) or resemblyzer's `pretrained.pt`. */
  speakerEncoder: string;
  language: string | null;
  temperature: number | null;
  /** At least this many optimizer steps; null: the recipe's. */
  steps: number | null;
  /** A checkpoint (and a scoring) every this many steps; null: the recipe's. */
  saveEvery: number | null;
  /** Prompts each scoring speaks (the first K built-in ones); null: the default. */
  voicePrompts: number | null;
  /** `transcribe`: stop for proofreading; null: to the end. */
  stopAfter: FlowStage | null;
}

/** csm-flow's library: a voice as the Voices screen shows it. */
export interface VoiceScoreSet {
  step: number;
  similarity: number | null;
  wer: number | null;
  cer: number | null;
  healthWarnings: number;
}

export interface VoiceAdapter {
  kind: 'best' | 'final' | 'checkpoint';
  step: number | null;
  /** mlx_lm weights file; generation takes it as it is. */
  path: string;
}

export interface VoiceSampleEntry {
  /** 0: the base model. */
  step: number;
  prompt: number;
  text: string;
  path: string;
  similarity: number | null;
  wer: number | null;
  durationSecs: number;
}

export interface VoiceEntry {
  /** The folder's name. */
  id: string;
  dir: string;
  name: string;
  speakerName: string | null;
  rawDir: string;
  createdUnixS: number;
  updatedUnixS: number;
  stages: { stage: FlowStage; status: FlowStageStatus; seconds: number }[];
  /** `summary.json` is written. */
  complete: boolean;
  dataset: { recordings: number; minutesIn: number; minutesUsed: number; utterances: number } | null;
  steps: number | null;
  scores: { base: VoiceScoreSet | null; best: VoiceScoreSet | null; last: VoiceScoreSet | null } | null;
  /** Best, final, then checkpoints. */
  adapters: VoiceAdapter[];
  /** The base model's and the best checkpoint's samples. */
  samples: VoiceSampleEntry[];
  models: { modelPath: string; mimiPath: string | null; tokenizerPath: string | null; speakerId: number } | null;
}

export interface VoiceLibrary {
  dir: string;
  voices: VoiceEntry[];
  /** Folders whose voice.json cannot be read, with why. */
  unreadable: { dir: string; error: string }[];
}

export interface VoiceOutcome {
  /** Every stage done (false: stopped after `stoppedAfter`, as asked). */
  finished: boolean;
  stoppedAfter: FlowStage | null;
  voice: VoiceEntry;
  /** The voice's dataset folder (for proofreading). */
  datasetDir: string;
}

export interface VoiceExport {
  path: string;
  adapter: VoiceAdapter;
  /** The PEFT layout was copied from the run (false: written from the adapter). */
  peftCopied: boolean;
  entries: string[];
}

/** Runs the journey; events arrive on `onEvent`. Rejects with `cancelled` after `cancelVoice` (a new call continues). */
export function startVoice(request: NewVoiceRequest, onEvent: (e: FlowEvent) => void): Promise<VoiceOutcome> {
  const channel = new Channel<FlowEvent>();
  channel.onmessage = onEvent;
  return call<VoiceOutcome>('start_voice', { request, onEvent: channel });
}
export const cancelVoice = () => call<boolean>('cancel_voice');
export const voiceLibrary = () => call<VoiceLibrary>('voice_library');
export const renameVoice = (dir: string, name: string) => call<VoiceEntry>('rename_voice', { dir, name });
export const deleteVoice = (dir: string) => call<void>('delete_voice', { dir });
/** Writes the voice's zip at `dest` (chosen in the save dialog). */
export const exportVoice = (dir: string, dest: string) => call<VoiceExport>('export_voice', { dir, dest });
