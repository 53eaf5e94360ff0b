// `csm finetune-lora` flags as data: defaults, help, presets, validation,
// the equivalent command line, and the run config JSON. `RunConfig` is the
// JSON of the core's `TrainConfig` (serde, snake_case): what the backend
// takes, what a run's config.json holds and what `--config` reads.

export const TARGET_MODULES = [
  'q_proj',
  'k_proj',
  'v_proj',
  'o_proj',
  'gate_proj',
  'up_proj',
  'down_proj',
] as const;
export type TargetModule = (typeof TARGET_MODULES)[number];

export const SAVE_MODES = ['lora', 'full', 'both'] as const;
export const LOG_LEVELS = ['debug', 'info', 'warning', 'error', 'critical'] as const;
export const LR_SCHEDULES = ['constant', 'cosine', 'linear'] as const;
export const LONG_UNALIGNED = ['refuse', 'skip'] as const;

/** Layers of one stack: every one, none, or these indices. */
export type LayerSet = 'all' | 'none' | { some: number[] };
/** Which layers get adapters, per stack (`--target-layers`). */
export interface TargetLayers {
  backbone: LayerSet;
  decoder: LayerSet;
}

export interface RunConfig {
  model_path: string;
  output_dir: string;
  audio_dir: string;
  transcript_dir: string;
  alignment_dir: string | null;
  mimi_path: string | null;
  tokenizer_path: string | null;
  speaker_id: number;
  max_seq_len: number;
  context_turns: number;
  context_loss: boolean;
  trim_silence: boolean;
  edge_pad_secs: number;
  min_utterance_secs: number;
  target_utterance_secs: number;
  max_utterance_secs: number;
  max_unaligned_secs: number;
  long_unaligned: (typeof LONG_UNALIGNED)[number];
  lora_r: number;
  lora_alpha: number;
  lora_dropout: number;
  target_modules: TargetModule[];
  /** Shown and typed as "all" or e.g. "backbone:0-15,decoder:0-3" (see `layersToArg`). */
  target_layers: TargetLayers;
  lora_bias: boolean;
  learning_rate: number;
  lr_schedule: (typeof LR_SCHEDULES)[number];
  warmup_steps: number;
  semantic_weight: number;
  acoustic_weight: number;
  decoder_fraction: number;
  weight_decay: number;
  batch_size: number;
  grad_accum: number;
  epochs: number;
  max_grad_norm: number;
  val_split: number;
  val_every: number;
  save_every: number;
  save_mode: (typeof SAVE_MODES)[number];
  resume_from: string | null;
  generate_samples: boolean;
  sample_prompt: string;
  seed: number;
  log_level: (typeof LOG_LEVELS)[number];
  debug: boolean;
  /** Voice scores (`TrainConfig::voice`); absent or null: off. */
  voice?: VoiceSettings | null;
  /**
   * A dataset folder holding one folder per speaker (`--data-dir`); it replaces
   * `audio_dir`, `transcript_dir` and `alignment_dir`, which are then empty. Absent or null: unused.
   */
  data_dir?: string | null;
  /** `speakers.json` saying who speaks each recording (`--speakers`). Absent or null: none. */
  speakers_file?: string | null;
  /** Fixed CSM ids of speaker names (`--speaker-map`); a run fills in the rest. */
  speakers?: Record<string, number>;
}

/** The dataset keys that are not flags of the form (set by the Dataset screen, kept on import). */
const SPEAKER_KEYS = ['data_dir', 'speakers_file', 'speakers'] as const;

function parseSpeakerKey(key: (typeof SPEAKER_KEYS)[number], v: unknown): string | null | Record<string, number> {
  if (key === 'speakers') {
    const ok = typeof v === 'object' && v !== null && !Array.isArray(v) &&
      Object.values(v).every((id) => Number.isInteger(id) && (id as number) >= 0);
    if (!ok) throw new ConfigParseError(`speakers: expected {"name": id, ...}, got ${JSON.stringify(v)}`);
    return { ...(v as Record<string, number>) };
  }
  if (v !== null && typeof v !== 'string') throw new ConfigParseError(`${key}: expected a string or null, got ${JSON.stringify(v)}`);
  return v;
}

/** The core's `VoiceConfig` (docs/voice-scores.md). */
export interface VoiceSettings {
  /** `speaker-encoder` (the cached hub bundle) or resemblyzer's `pretrained.pt`. */
  speaker_encoder: string;
  /** A Whisper model folder for WER/CER; null: no transcription. */
  whisper_model: string | null;
  /** What each scoring speaks. */
  prompts: string[];
}

/**
 * The core's `VOICE_PROMPTS`, in order: docs/ipc-fixtures/voice-prompts.json, which a Rust test
 * and a UI test both compare with their lists.
 */
export const VOICE_PROMPTS: readonly string[] = [
  "The morning train was late, so we walked along the river instead.",
  "Could you bring me the blue folder from the kitchen table?",
  "Six thousand people gathered in the square to hear the news.",
  "I honestly did not expect the weather to change so quickly.",
  "Please remember to water the plants before you leave on Friday.",
  "Her brother fixed the old bicycle with a bit of wire and patience.",
  "Why would anyone paint a lighthouse bright purple?",
  "We measured the room twice, and the sofa still did not fit.",
];
/** The speaker-encoder value that stands for the cached `speaker-encoder` bundle. */
export const SPEAKER_ENCODER_BUNDLE = 'speaker-encoder';
/** Prompts spoken per scoring unless told otherwise (`DEFAULT_VOICE_PROMPTS`). */
export const DEFAULT_VOICE_PROMPTS = 3;

/** Voice scores on with `speaker_encoder`, no Whisper and the first `k` built-in prompts. */
export function voiceSettings(speakerEncoder: string, k = DEFAULT_VOICE_PROMPTS): VoiceSettings {
  return { speaker_encoder: speakerEncoder, whisper_model: null, prompts: VOICE_PROMPTS.slice(0, k) };
}

function parseVoice(v: unknown): VoiceSettings | null {
  if (v === null) return null;
  const bad = () => new ConfigParseError(`voice: expected {speaker_encoder, whisper_model, prompts} or null, got ${JSON.stringify(v)}`);
  if (typeof v !== 'object' || Array.isArray(v)) throw bad();
  const o = v as Record<string, unknown>;
  const known = ['speaker_encoder', 'whisper_model', 'prompts'];
  if (Object.keys(o).some((k) => !known.includes(k))) throw bad();
  if (typeof o.speaker_encoder !== 'string') throw bad();
  const whisper = o.whisper_model ?? null;
  if (whisper !== null && typeof whisper !== 'string') throw bad();
  const prompts = o.prompts ?? VOICE_PROMPTS.slice(0, DEFAULT_VOICE_PROMPTS);
  if (!Array.isArray(prompts) || !prompts.every((p) => typeof p === 'string')) throw bad();
  return { speaker_encoder: o.speaker_encoder, whisper_model: whisper, prompts: prompts as string[] };
}

export type ConfigKey = keyof RunConfig;

export const DEFAULT_CONFIG: RunConfig = {
  model_path: '',
  output_dir: '',
  audio_dir: '',
  transcript_dir: '',
  alignment_dir: null,
  mimi_path: null,
  tokenizer_path: null,
  speaker_id: 0,
  max_seq_len: 2048,
  context_turns: 2,
  context_loss: false,
  trim_silence: true,
  edge_pad_secs: 0.2,
  min_utterance_secs: 3,
  target_utterance_secs: 10,
  max_utterance_secs: 12,
  max_unaligned_secs: 12,
  long_unaligned: 'refuse',
  lora_r: 8,
  lora_alpha: 16,
  lora_dropout: 0.0,
  target_modules: ['q_proj', 'v_proj'],
  target_layers: { backbone: 'all', decoder: 'all' },
  lora_bias: false,
  learning_rate: 2e-4,
  lr_schedule: 'cosine',
  warmup_steps: 20,
  semantic_weight: 1.0,
  acoustic_weight: 1.0,
  decoder_fraction: 0.0625,
  weight_decay: 0.01,
  batch_size: 2,
  grad_accum: 1,
  epochs: 5,
  max_grad_norm: 1.0,
  val_split: 0.1,
  val_every: 50,
  save_every: 100,
  save_mode: 'lora',
  resume_from: null,
  generate_samples: false,
  sample_prompt: 'Hello! This is my fine-tuned voice speaking.',
  seed: 42,
  log_level: 'info',
  debug: false,
};

export function defaultConfig(): RunConfig {
  return structuredClone(DEFAULT_CONFIG);
}

export type FieldType = 'path' | 'dir' | 'int' | 'float' | 'bool' | 'enum' | 'modules' | 'layers' | 'text';

export interface FieldSpec {
  key: ConfigKey;
  flag: string;
  label: string;
  type: FieldType;
  group: 'basic' | 'advanced';
  section: 'Data' | 'Segmenting' | 'Model' | 'LoRA' | 'Optimization' | 'Schedule' | 'Checkpoints & samples' | 'Logging';
  help: string;
  /** A bool whose flag turns it off (`--no-trim-silence`). */
  negated?: boolean;
  required?: boolean;
  min?: number;
  max?: number;
  step?: number;
  options?: readonly string[];
  unit?: string;
}

export const FIELDS: FieldSpec[] = [
  // Data
  { key: 'audio_dir', flag: '--audio-dir', label: 'Audio folder', type: 'dir', group: 'basic', section: 'Data', required: true, help: 'Folder with the training clips (wav/flac/mp3).' },
  { key: 'transcript_dir', flag: '--transcript-dir', label: 'Transcript folder', type: 'dir', group: 'basic', section: 'Data', required: true, help: 'Folder with one .txt transcript per clip, same base name.' },
  { key: 'alignment_dir', flag: '--alignment-dir', label: 'Alignment folder', type: 'dir', group: 'advanced', section: 'Data', help: 'Optional word alignments used to cut long clips into turns.' },
  { key: 'speaker_id', flag: '--speaker-id', label: 'Speaker id', type: 'int', group: 'basic', section: 'Data', min: 0, max: 255, help: 'Speaker id prepended to every turn; use the same id when generating.' },
  { key: 'max_seq_len', flag: '--max-seq-len', label: 'Max sequence length', type: 'int', group: 'advanced', section: 'Data', min: 16, max: 65536, unit: 'frames', help: 'Longest training sequence in Mimi frames (12.5 frames/s); longer examples are truncated.' },
  { key: 'context_turns', flag: '--context-turns', label: 'Context turns', type: 'int', group: 'advanced', section: 'Data', min: 0, max: 16, help: 'Previous clips fed as conversational context before each target clip.' },
  { key: 'context_loss', flag: '--context-loss', label: 'Loss on context turns', type: 'bool', group: 'advanced', section: 'Data', help: 'Context turns carry loss too (by default only the target turn does).' },
  { key: 'val_split', flag: '--val-split', label: 'Validation split', type: 'float', group: 'basic', section: 'Data', min: 0, max: 0.5, step: 0.01, help: 'Fraction of clips held out for validation loss.' },
  // Segmenting
  { key: 'trim_silence', flag: '--no-trim-silence', negated: true, label: 'Trim silence', type: 'bool', group: 'advanced', section: 'Segmenting', help: 'Trim the leading and trailing silence of clips without word alignments down to the edge padding, so the model does not learn to open and close turns with long pauses. Off: clips are used as they are (e.g. to compare losses with a tool that reads the file as is).' },
  { key: 'edge_pad_secs', flag: '--edge-pad-secs', label: 'Edge padding', type: 'float', group: 'advanced', section: 'Segmenting', min: 0, max: 5, step: 0.05, unit: 's', help: 'Silence kept before the first and after the last sound of a trimmed clip, or the first and last word of a cut one.' },
  { key: 'min_utterance_secs', flag: '--min-utterance-secs', label: 'Min utterance', type: 'float', group: 'advanced', section: 'Segmenting', min: 0, max: 120, unit: 's', help: 'Clips with word alignments are cut at pauses into utterances; none shorter than this unless the speech between two usable pauses is.' },
  { key: 'target_utterance_secs', flag: '--target-utterance-secs', label: 'Target utterance', type: 'float', group: 'advanced', section: 'Segmenting', min: 0, max: 120, unit: 's', help: 'Preferred utterance length when cutting aligned clips; CSM trains best on clips of about 10 s. Between min and max.' },
  { key: 'max_utterance_secs', flag: '--max-utterance-secs', label: 'Max utterance', type: 'float', group: 'advanced', section: 'Segmenting', min: 0.1, max: 300, unit: 's', help: 'Longest utterance wanted when cutting aligned clips; exceeded (with a warning) only where speech has no pause.' },
  { key: 'max_unaligned_secs', flag: '--max-unaligned-secs', label: 'Max unaligned clip', type: 'float', group: 'advanced', section: 'Segmenting', min: 0, max: 3600, unit: 's', help: 'Longest clip used whole when it has no word alignment: without word times it cannot be cut safely.' },
  { key: 'long_unaligned', flag: '--long-unaligned', label: 'Longer unaligned clips', type: 'enum', group: 'advanced', section: 'Segmenting', options: LONG_UNALIGNED, help: 'What to do with a longer clip that has no alignment: refuse (stop with an error naming it) or skip it with a warning.' },
  // Model
  { key: 'model_path', flag: '--model-path', label: 'CSM checkpoint', type: 'path', group: 'basic', section: 'Model', required: true, help: 'CSM model weights (a .safetensors file or a folder).' },
  { key: 'mimi_path', flag: '--mimi-path', label: 'Mimi weights', type: 'path', group: 'advanced', section: 'Model', help: 'Mimi audio codec weights; default: looked up next to the model.' },
  { key: 'tokenizer_path', flag: '--tokenizer-path', label: 'Tokenizer', type: 'path', group: 'advanced', section: 'Model', help: 'Llama 3.2 tokenizer.json; default: looked up next to the model.' },
  // LoRA
  { key: 'lora_r', flag: '--lora-r', label: 'LoRA rank', type: 'int', group: 'basic', section: 'LoRA', min: 1, max: 512, help: 'Rank of the low-rank update; higher = more capacity and memory.' },
  { key: 'lora_alpha', flag: '--lora-alpha', label: 'LoRA alpha', type: 'float', group: 'basic', section: 'LoRA', min: 0, max: 4096, help: 'Scale of the update is alpha / r.' },
  { key: 'lora_dropout', flag: '--lora-dropout', label: 'LoRA dropout', type: 'float', group: 'advanced', section: 'LoRA', min: 0, max: 0.9, step: 0.01, help: 'Dropout on the LoRA input during training.' },
  { key: 'target_modules', flag: '--target-modules', label: 'Target modules', type: 'modules', group: 'basic', section: 'LoRA', options: TARGET_MODULES, help: 'Linear layers that get LoRA adapters.' },
  { key: 'target_layers', flag: '--target-layers', label: 'Target layers', type: 'layers', group: 'advanced', section: 'LoRA', help: 'Which transformer layers get adapters: "all", or per stack e.g. backbone:0-15,decoder:0-3 (a stack not named gets none; "none", single indices and ranges joined by + work too, e.g. backbone:0-3+12-15).' },
  { key: 'lora_bias', flag: '--lora-bias', label: 'Train biases', type: 'bool', group: 'advanced', section: 'LoRA', help: 'Also train the bias terms of the adapted layers.' },
  // Optimization
  { key: 'learning_rate', flag: '--learning-rate', label: 'Learning rate', type: 'float', group: 'basic', section: 'Optimization', min: 0, max: 1, help: 'Peak AdamW learning rate.' },
  { key: 'batch_size', flag: '--batch-size', label: 'Batch size', type: 'int', group: 'basic', section: 'Optimization', min: 1, max: 256, help: 'Examples per micro-batch.' },
  { key: 'grad_accum', flag: '--grad-accum', label: 'Gradient accumulation', type: 'int', group: 'advanced', section: 'Optimization', min: 1, max: 256, help: 'Micro-batches per optimizer step (effective batch = batch size × this).' },
  { key: 'epochs', flag: '--epochs', label: 'Epochs', type: 'int', group: 'basic', section: 'Optimization', min: 1, max: 1000, help: 'Passes over the training split.' },
  { key: 'weight_decay', flag: '--weight-decay', label: 'Weight decay', type: 'float', group: 'advanced', section: 'Optimization', min: 0, max: 1, help: 'AdamW decoupled weight decay.' },
  { key: 'max_grad_norm', flag: '--max-grad-norm', label: 'Max grad norm', type: 'float', group: 'advanced', section: 'Optimization', min: 0, max: 1000, help: 'Clip the global gradient norm to this value (0 = off).' },
  { key: 'semantic_weight', flag: '--semantic-weight', label: 'Semantic loss weight', type: 'float', group: 'advanced', section: 'Optimization', min: 0, max: 100, help: 'Weight of the codebook-0 (backbone) loss.' },
  { key: 'acoustic_weight', flag: '--acoustic-weight', label: 'Acoustic loss weight', type: 'float', group: 'advanced', section: 'Optimization', min: 0, max: 100, help: 'Weight of the codebooks 1..31 (decoder) loss.' },
  { key: 'decoder_fraction', flag: '--decoder-fraction', label: 'Decoder frame fraction', type: 'float', group: 'advanced', section: 'Optimization', min: 0.001, max: 1, help: "Fraction of frames the decoder is trained on (0.0625 = Sesame's 1/16; 1.0 = all frames)." },
  { key: 'seed', flag: '--seed', label: 'Seed', type: 'int', group: 'advanced', section: 'Optimization', min: 0, max: 4294967295, help: 'Random seed for the split, shuffling, dropout and frame sampling.' },
  // Schedule
  { key: 'lr_schedule', flag: '--lr-schedule', label: 'LR schedule', type: 'enum', group: 'advanced', section: 'Schedule', options: LR_SCHEDULES, help: 'Learning-rate decay after warm-up.' },
  { key: 'warmup_steps', flag: '--warmup-steps', label: 'Warm-up steps', type: 'int', group: 'advanced', section: 'Schedule', min: 0, max: 100000, help: 'Linear warm-up from 0 to the learning rate.' },
  { key: 'val_every', flag: '--val-every', label: 'Validate every', type: 'int', group: 'advanced', section: 'Schedule', min: 1, max: 1000000, unit: 'steps', help: 'Compute validation loss every N steps.' },
  // Checkpoints & samples
  { key: 'output_dir', flag: '--output-dir', label: 'Output folder', type: 'dir', group: 'basic', section: 'Checkpoints & samples', required: true, help: 'Where checkpoints, metrics and samples of this run are written.' },
  { key: 'save_every', flag: '--save-every', label: 'Save every', type: 'int', group: 'advanced', section: 'Checkpoints & samples', min: 1, max: 1000000, unit: 'steps', help: 'Write a checkpoint every N steps.' },
  { key: 'save_mode', flag: '--save-mode', label: 'Save mode', type: 'enum', group: 'advanced', section: 'Checkpoints & samples', options: SAVE_MODES, help: 'lora: adapter only; full: merged weights; both.' },
  { key: 'resume_from', flag: '--resume-from', label: 'Resume from', type: 'dir', group: 'advanced', section: 'Checkpoints & samples', help: 'Checkpoint folder to continue training from.' },
  { key: 'generate_samples', flag: '--generate-samples', label: 'Generate samples', type: 'bool', group: 'basic', section: 'Checkpoints & samples', help: 'Generate an audio sample at each checkpoint.' },
  { key: 'sample_prompt', flag: '--sample-prompt', label: 'Sample prompt', type: 'text', group: 'basic', section: 'Checkpoints & samples', help: 'Text spoken in the checkpoint samples.' },
  // Logging
  { key: 'log_level', flag: '--log-level', label: 'Log level', type: 'enum', group: 'advanced', section: 'Logging', options: LOG_LEVELS, help: 'Verbosity of the run log.' },
  { key: 'debug', flag: '--debug', label: 'Debug', type: 'bool', group: 'advanced', section: 'Logging', help: 'Extra checks and per-step diagnostics (slower).' },
];

export const FIELD_BY_KEY: Record<ConfigKey, FieldSpec> = Object.fromEntries(
  FIELDS.map((f) => [f.key, f]),
) as Record<ConfigKey, FieldSpec>;

// ---------------------------------------------------------------- presets

export interface Preset {
  id: 'quick' | 'balanced' | 'quality';
  name: string;
  description: string;
  values: Partial<RunConfig>;
}

export const PRESETS: Preset[] = [
  {
    id: 'quick',
    name: 'Quick test',
    description: 'One short epoch, small rank: checks that everything runs (minutes).',
    values: { epochs: 1, lora_r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'], max_seq_len: 1024, val_every: 10, save_every: 50, generate_samples: false, learning_rate: 2e-4, warmup_steps: 5 },
  },
  {
    id: 'balanced',
    name: 'Balanced',
    description: 'The defaults: rank 8 on q/v projections, 5 epochs.',
    values: { epochs: 5, lora_r: 8, lora_alpha: 16, target_modules: ['q_proj', 'v_proj'], max_seq_len: 2048, val_every: 50, save_every: 100, generate_samples: true, learning_rate: 2e-4, warmup_steps: 20 },
  },
  {
    id: 'quality',
    name: 'Best quality',
    description: 'Rank 32 on all projections, more epochs, lower LR: slower, more memory.',
    values: { epochs: 10, lora_r: 32, lora_alpha: 64, target_modules: [...TARGET_MODULES], max_seq_len: 2048, val_every: 50, save_every: 100, generate_samples: true, learning_rate: 1e-4, warmup_steps: 50 },
  },
];

/** Applies a preset's values; presets that turn samples on also fill an empty prompt. */
export function applyPreset(config: RunConfig, preset: Preset): RunConfig {
  const v = preset.values;
  const next = { ...config, ...v, target_modules: [...(v.target_modules ?? config.target_modules)] };
  if (next.generate_samples && !next.sample_prompt.trim()) next.sample_prompt = DEFAULT_CONFIG.sample_prompt;
  return next;
}

/** The preset whose values all match `config`, if any. */
export function matchingPreset(config: RunConfig): Preset | null {
  return (
    PRESETS.find((p) =>
      Object.entries(p.values).every(([k, v]) => sameValue(config[k as ConfigKey], v)),
    ) ?? null
  );
}

function sameValue(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && [...a].sort().join() === [...b].sort().join();
  }
  if (typeof a === 'object' && a !== null) return JSON.stringify(a) === JSON.stringify(b);
  return a === b;
}

// ---------------------------------------------------------------- target layers

const STACKS = ['backbone', 'decoder'] as const;

function layerSetToArg(set: LayerSet): string {
  if (typeof set === 'string') return set;
  // Consecutive indices as ranges: [0,1,2,3,8] -> "0-3+8".
  const parts: string[] = [];
  const v = [...set.some].sort((x, y) => x - y);
  for (let i = 0; i < v.length; ) {
    let j = i;
    while (j + 1 < v.length && v[j + 1] === v[j]! + 1) j++;
    parts.push(j > i ? `${v[i]}-${v[j]}` : `${v[i]}`);
    i = j + 1;
  }
  return parts.join('+');
}

/** `--target-layers` text of a layer selection ("all", or "backbone:0-3,decoder:none"). */
export function layersToArg(t: TargetLayers): string {
  if (t.backbone === 'all' && t.decoder === 'all') return 'all';
  return STACKS.map((stack) => `${stack}:${layerSetToArg(t[stack])}`).join(',');
}

function parseLayerSet(spec: string): LayerSet | null {
  const s = spec.trim().toLowerCase();
  if (s === 'all' || s === 'none') return s;
  const out = new Set<number>();
  for (const item of s.split('+')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(item.trim());
    if (!m) return null;
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (a > b) return null;
    for (let i = a; i <= b; i++) out.add(i);
  }
  return { some: [...out].sort((x, y) => x - y) };
}

/**
 * Parses `--target-layers` as the CLI does: "all", or a comma list of
 * STACK:SPEC (SPEC: all, none, an index, a range, several joined by +);
 * a stack not named gets no adapters. `null` when it does not parse.
 */
export function parseTargetLayers(text: string): TargetLayers | null {
  const s = text.trim();
  if (s.toLowerCase() === 'all') return { backbone: 'all', decoder: 'all' };
  const out: TargetLayers = { backbone: 'none', decoder: 'none' };
  const parts = s.split(',').map((p) => p.trim()).filter(Boolean);
  if (parts.length === 0) return null;
  for (const part of parts) {
    const [stack, spec, ...rest] = part.split(':');
    const name = stack?.trim().toLowerCase();
    if (spec === undefined || rest.length > 0 || (name !== 'backbone' && name !== 'decoder')) return null;
    const set = parseLayerSet(spec);
    if (set === null) return null;
    out[name] = set;
  }
  return out;
}

export const LAYERS_HINT = 'Use "all" or e.g. backbone:0-15,decoder:0-3';

/** Whether `v` is a layer selection in TrainConfig's JSON form. */
function isTargetLayers(v: unknown): v is TargetLayers {
  const isSet = (s: unknown) =>
    s === 'all' ||
    s === 'none' ||
    (typeof s === 'object' && s !== null && Array.isArray((s as { some?: unknown }).some) &&
      (s as { some: unknown[] }).some.every((i) => Number.isInteger(i) && (i as number) >= 0));
  return typeof v === 'object' && v !== null && isSet((v as TargetLayers).backbone) && isSet((v as TargetLayers).decoder);
}

// ---------------------------------------------------------------- validation

/** Field errors (key -> message); empty when the config can be run. */
export function validate(c: RunConfig): Partial<Record<ConfigKey, string>> {
  const errors: Partial<Record<ConfigKey, string>> = {};
  // A folder per speaker (`data_dir`) replaces the audio and transcript folders.
  const byDataDir = (k: ConfigKey) => Boolean(c.data_dir) && (k === 'audio_dir' || k === 'transcript_dir');
  for (const f of FIELDS) {
    const v = c[f.key];
    if (f.required && !byDataDir(f.key) && (typeof v !== 'string' || v.trim() === '')) {
      errors[f.key] = 'Required';
      continue;
    }
    if (f.type === 'int' || f.type === 'float') {
      if (typeof v !== 'number' || !Number.isFinite(v)) {
        errors[f.key] = 'Enter a number';
      } else if (f.type === 'int' && !Number.isInteger(v)) {
        errors[f.key] = 'Must be a whole number';
      } else if (f.min !== undefined && v < f.min) {
        errors[f.key] = `Must be ≥ ${f.min}`;
      } else if (f.max !== undefined && v > f.max) {
        errors[f.key] = `Must be ≤ ${f.max}`;
      }
    }
  }
  if (!errors.learning_rate && c.learning_rate <= 0) errors.learning_rate = 'Must be > 0';
  if (!errors.decoder_fraction && c.decoder_fraction <= 0) errors.decoder_fraction = 'Must be > 0';
  if (c.target_modules.length === 0) errors.target_modules = 'Pick at least one module';
  if (c.voice) {
    if (c.voice.speaker_encoder.trim() === '') {
      errors.voice = 'Voice scores need a speaker encoder: the downloaded speaker-encoder bundle or a pretrained.pt file';
    } else if (c.voice.prompts.length === 0 || c.voice.prompts.some((p) => p.trim() === '')) {
      errors.voice = 'Voice scores need at least one non-empty prompt';
    }
  }
  if (c.data_dir && (c.audio_dir || c.transcript_dir || c.alignment_dir)) {
    errors.audio_dir = 'The dataset is a folder per speaker (--data-dir); leave the audio, transcript and alignment folders empty';
  }
  if (!isTargetLayers(c.target_layers)) {
    errors.target_layers = LAYERS_HINT;
  } else if (c.target_layers.backbone === 'none' && c.target_layers.decoder === 'none') {
    errors.target_layers = 'Selects no layer at all';
  }
  const secs = (k: ConfigKey) => errors[k] === undefined;
  if (secs('min_utterance_secs') && secs('max_utterance_secs') && c.min_utterance_secs > c.max_utterance_secs) {
    errors.min_utterance_secs = 'Must be ≤ the max utterance';
  }
  if (
    secs('target_utterance_secs') && secs('min_utterance_secs') && secs('max_utterance_secs') &&
    (c.target_utterance_secs < c.min_utterance_secs || c.target_utterance_secs > c.max_utterance_secs)
  ) {
    errors.target_utterance_secs = 'Must lie between the min and max utterance';
  }
  if (c.generate_samples && !c.sample_prompt.trim()) {
    errors.sample_prompt = 'Needed when samples are generated';
  }
  if (!errors.warmup_steps && c.lr_schedule === 'constant' && c.warmup_steps > 0) {
    // Allowed, and meaningful: warm-up then flat.
  }
  return errors;
}

/** Errors of text typed into fields that the config cannot hold yet (target layers that do not parse). */
export function validateDrafts(drafts: Partial<Record<ConfigKey, string>>): Partial<Record<ConfigKey, string>> {
  const errors: Partial<Record<ConfigKey, string>> = {};
  for (const f of FIELDS) {
    const d = drafts[f.key];
    if (f.type === 'layers' && d !== undefined && parseTargetLayers(d) === null) errors[f.key] = LAYERS_HINT;
  }
  return errors;
}

// ---------------------------------------------------------------- derived

export interface Derived {
  trainExamples: number;
  valExamples: number;
  stepsPerEpoch: number;
  totalSteps: number;
  estimatedSecs: number | null;
}

/** Validation clips held out for `n` clips; mirrors the trainer (at least one when split > 0 and n > 1). */
export function valCount(n: number, valSplit: number): number {
  if (n < 2 || valSplit <= 0) return 0;
  return Math.min(n - 1, Math.max(1, Math.round(n * valSplit)));
}

/** Steps are optimizer steps: ceil(ceil(train / batch) / grad_accum) per epoch. */
export function derive(c: RunConfig, clips: number, secsPerStep: number | null): Derived {
  const valExamples = valCount(clips, c.val_split);
  const trainExamples = clips - valExamples;
  const batches = c.batch_size > 0 ? Math.ceil(trainExamples / c.batch_size) : 0;
  const stepsPerEpoch = c.grad_accum > 0 ? Math.ceil(batches / c.grad_accum) : 0;
  const totalSteps = stepsPerEpoch * Math.max(0, Math.floor(c.epochs));
  return {
    trainExamples,
    valExamples,
    stepsPerEpoch,
    totalSteps,
    estimatedSecs: secsPerStep === null ? null : secsPerStep * totalSteps,
  };
}

// ---------------------------------------------------------------- command line

function shellQuote(s: string): string {
  if (s === '') return "''";
  if (/^[A-Za-z0-9_\-./:=,+@%]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function fmtNumber(n: number): string {
  return String(n);
}

/** Folder keys that `data_dir` replaces (left out of the command line beside it). */
function byDataDirKey(c: RunConfig, k: ConfigKey): boolean {
  return Boolean(c.data_dir) && (k === 'audio_dir' || k === 'transcript_dir' || k === 'alignment_dir');
}

/** `csm finetune-lora ...` with required flags plus every flag that differs from its default. */
export function toCommand(c: RunConfig): string {
  const parts = ['csm', 'finetune-lora'];
  if (c.data_dir) parts.push('--data-dir', shellQuote(c.data_dir));
  if (c.speakers_file) parts.push('--speakers', shellQuote(c.speakers_file));
  const map = Object.entries(c.speakers ?? {});
  if (map.length > 0) parts.push('--speaker-map', shellQuote(map.map(([n, id]) => `${n}=${id}`).join(',')));
  for (const f of FIELDS) {
    const v = c[f.key];
    const d = DEFAULT_CONFIG[f.key];
    if (byDataDirKey(c, f.key)) continue;
    if (!f.required && sameValue(v, d)) continue;
    if (v === null || v === '') {
      if (!f.required) continue;
    }
    switch (f.type) {
      case 'bool':
        if (v === !f.negated) parts.push(f.flag);
        break;
      case 'modules':
        parts.push(f.flag, ...(v as string[]));
        break;
      case 'layers':
        parts.push(f.flag, shellQuote(layersToArg(v as TargetLayers)));
        break;
      case 'int':
      case 'float':
        parts.push(f.flag, fmtNumber(v as number));
        break;
      default:
        parts.push(f.flag, shellQuote(String(v ?? '')));
    }
  }
  const voice = c.voice;
  if (voice) {
    parts.push('--speaker-encoder', shellQuote(voice.speaker_encoder));
    if (voice.whisper_model) parts.push('--whisper-model', shellQuote(voice.whisper_model));
    const k = voice.prompts.length;
    const builtin = voice.prompts.every((p, i) => p === VOICE_PROMPTS[i]);
    if (builtin && k !== DEFAULT_VOICE_PROMPTS) parts.push('--voice-prompts', String(k));
    if (!builtin) for (const p of voice.prompts) parts.push('--voice-prompt', shellQuote(p));
  }
  return parts.join(' ');
}

// ---------------------------------------------------------------- JSON import/export

export function toJson(c: RunConfig): string {
  return JSON.stringify(c, null, 2) + '\n';
}

export interface ParsedConfig {
  config: RunConfig;
  /** Keys in the file that are not flags (ignored). */
  unknown: string[];
}

export class ConfigParseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigParseError';
  }
}

/**
 * Reads a run config object (snake_case keys: a run's config.json, an export,
 * or an older export). Missing keys take defaults; unknown keys are reported;
 * kebab-case keys, `target_layers` as text and a `null` sample prompt are accepted.
 */
export function fromObject(raw: unknown): ParsedConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigParseError('Config must be a JSON object');
  }
  const config = defaultConfig();
  const unknown: string[] = [];
  const out = config as unknown as Record<string, unknown>;
  for (const [rawKey, value] of Object.entries(raw as Record<string, unknown>)) {
    const key = rawKey.replace(/-/g, '_') as ConfigKey;
    if (key === 'voice') {
      config.voice = parseVoice(value);
      continue;
    }
    if ((SPEAKER_KEYS as readonly string[]).includes(key)) {
      const k = key as (typeof SPEAKER_KEYS)[number];
      (config as unknown as Record<string, unknown>)[k] = parseSpeakerKey(k, value);
      continue;
    }
    const f = FIELD_BY_KEY[key];
    if (!f) {
      unknown.push(rawKey);
      continue;
    }
    out[key] = coerce(f, value);
  }
  return { config, unknown };
}

export function fromJson(text: string): ParsedConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigParseError(`Not valid JSON: ${(e as Error).message}`);
  }
  return fromObject(raw);
}

function coerce(f: FieldSpec, v: unknown): unknown {
  const bad = (what: string) => new ConfigParseError(`${f.key}: expected ${what}, got ${JSON.stringify(v)}`);
  switch (f.type) {
    case 'int':
    case 'float': {
      const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
      if (typeof n !== 'number' || !Number.isFinite(n)) throw bad('a number');
      if (f.type === 'int' && !Number.isInteger(n)) throw bad('a whole number');
      return n;
    }
    case 'bool':
      if (typeof v !== 'boolean') throw bad('true or false');
      return v;
    case 'enum':
      if (typeof v !== 'string' || !f.options?.includes(v)) throw bad(`one of ${f.options?.join(', ')}`);
      return v;
    case 'layers': {
      // A copy: `v` may be another run's (reactive) config.
      if (isTargetLayers(v)) return JSON.parse(JSON.stringify(v)) as TargetLayers;
      const parsed = typeof v === 'string' ? parseTargetLayers(v) : null;
      if (parsed === null) throw bad('"all", e.g. "backbone:0-15,decoder:0-3", or {"backbone": …, "decoder": …}');
      return parsed;
    }
    case 'modules': {
      const list = typeof v === 'string' ? v.split(/[\s,]+/).filter(Boolean) : v;
      if (!Array.isArray(list) || !list.every((m) => (TARGET_MODULES as readonly unknown[]).includes(m))) {
        throw bad(`a list of ${TARGET_MODULES.join(', ')}`);
      }
      return [...new Set(list as TargetModule[])];
    }
    case 'path':
    case 'dir':
    case 'text':
      // Older exports wrote an unset sample prompt as null.
      if (v === null) return f.required ? '' : f.key === 'sample_prompt' ? DEFAULT_CONFIG.sample_prompt : null;
      if (typeof v !== 'string') throw bad('a string');
      return v;
  }
}
