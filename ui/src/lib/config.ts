// `csm finetune-lora` flags as data: defaults, help, presets, validation,
// the equivalent command line, and the run config JSON (snake_case keys).

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
  lora_r: number;
  lora_alpha: number;
  lora_dropout: number;
  target_modules: TargetModule[];
  /** "all" or e.g. "backbone:0-15,decoder:0-3". */
  target_layers: string;
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
  sample_prompt: string | null;
  seed: number;
  log_level: (typeof LOG_LEVELS)[number];
  debug: boolean;
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
  lora_r: 8,
  lora_alpha: 16,
  lora_dropout: 0.0,
  target_modules: ['q_proj', 'v_proj'],
  target_layers: 'all',
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
  sample_prompt: null,
  seed: 42,
  log_level: 'info',
  debug: false,
};

export function defaultConfig(): RunConfig {
  return { ...DEFAULT_CONFIG, target_modules: [...DEFAULT_CONFIG.target_modules] };
}

export type FieldType = 'path' | 'dir' | 'int' | 'float' | 'bool' | 'enum' | 'modules' | 'text';

export interface FieldSpec {
  key: ConfigKey;
  flag: string;
  label: string;
  type: FieldType;
  group: 'basic' | 'advanced';
  section: 'Data' | 'Model' | 'LoRA' | 'Optimization' | 'Schedule' | 'Checkpoints & samples' | 'Logging';
  help: string;
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
  // Model
  { key: 'model_path', flag: '--model-path', label: 'CSM checkpoint', type: 'path', group: 'basic', section: 'Model', required: true, help: 'CSM model weights (a .safetensors file or a folder).' },
  { key: 'mimi_path', flag: '--mimi-path', label: 'Mimi weights', type: 'path', group: 'advanced', section: 'Model', help: 'Mimi audio codec weights; default: looked up next to the model.' },
  { key: 'tokenizer_path', flag: '--tokenizer-path', label: 'Tokenizer', type: 'path', group: 'advanced', section: 'Model', help: 'Llama 3.2 tokenizer.json; default: looked up next to the model.' },
  // LoRA
  { key: 'lora_r', flag: '--lora-r', label: 'LoRA rank', type: 'int', group: 'basic', section: 'LoRA', min: 1, max: 512, help: 'Rank of the low-rank update; higher = more capacity and memory.' },
  { key: 'lora_alpha', flag: '--lora-alpha', label: 'LoRA alpha', type: 'float', group: 'basic', section: 'LoRA', min: 0, max: 4096, help: 'Scale of the update is alpha / r.' },
  { key: 'lora_dropout', flag: '--lora-dropout', label: 'LoRA dropout', type: 'float', group: 'advanced', section: 'LoRA', min: 0, max: 0.9, step: 0.01, help: 'Dropout on the LoRA input during training.' },
  { key: 'target_modules', flag: '--target-modules', label: 'Target modules', type: 'modules', group: 'basic', section: 'LoRA', options: TARGET_MODULES, help: 'Linear layers that get LoRA adapters.' },
  { key: 'target_layers', flag: '--target-layers', label: 'Target layers', type: 'text', group: 'advanced', section: 'LoRA', help: 'Which transformer layers get adapters: "all", or per model e.g. backbone:0-15,decoder:0-3.' },
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

export const DEFAULT_SAMPLE_PROMPT = 'Hello! This is a short sample of my fine-tuned voice.';

/** Applies a preset's values; presets that turn samples on also fill an empty prompt. */
export function applyPreset(config: RunConfig, preset: Preset): RunConfig {
  const v = preset.values;
  const next = { ...config, ...v, target_modules: [...(v.target_modules ?? config.target_modules)] };
  if (next.generate_samples && !(next.sample_prompt ?? '').trim()) next.sample_prompt = DEFAULT_SAMPLE_PROMPT;
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
  return a === b;
}

// ---------------------------------------------------------------- validation

const LAYERS_RE = /^(all|(backbone|decoder):\d+(-\d+)?(,(backbone|decoder):\d+(-\d+)?)*)$/;

export function validTargetLayers(s: string): boolean {
  const v = s.replace(/\s+/g, '');
  if (!LAYERS_RE.test(v)) return false;
  return v === 'all' || v.split(',').every((part) => {
    const range = part.split(':')[1] ?? '';
    const [a, b] = range.split('-').map(Number);
    return b === undefined || (a !== undefined && a <= b);
  });
}

/** Field errors (key -> message); empty when the config can be run. */
export function validate(c: RunConfig): Partial<Record<ConfigKey, string>> {
  const errors: Partial<Record<ConfigKey, string>> = {};
  for (const f of FIELDS) {
    const v = c[f.key];
    if (f.required && (typeof v !== 'string' || v.trim() === '')) {
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
  if (!validTargetLayers(c.target_layers)) {
    errors.target_layers = 'Use "all" or e.g. backbone:0-15,decoder:0-3';
  }
  if (c.generate_samples && !(c.sample_prompt ?? '').trim()) {
    errors.sample_prompt = 'Needed when samples are generated';
  }
  if (!errors.warmup_steps && c.lr_schedule === 'constant' && c.warmup_steps > 0) {
    // Allowed, and meaningful: warm-up then flat.
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

/** `csm finetune-lora ...` with required flags plus every flag that differs from its default. */
export function toCommand(c: RunConfig): string {
  const parts = ['csm', 'finetune-lora'];
  for (const f of FIELDS) {
    const v = c[f.key];
    const d = DEFAULT_CONFIG[f.key];
    if (!f.required && sameValue(v, d)) continue;
    if (v === null || v === '') {
      if (!f.required) continue;
    }
    switch (f.type) {
      case 'bool':
        if (v === true) parts.push(f.flag);
        break;
      case 'modules':
        parts.push(f.flag, ...(v as string[]));
        break;
      case 'int':
      case 'float':
        parts.push(f.flag, fmtNumber(v as number));
        break;
      default:
        parts.push(f.flag, shellQuote(String(v ?? '')));
    }
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
 * Reads a run config object (snake_case keys, as written by `toJson` or the CLI).
 * Missing keys take defaults; unknown keys are reported; kebab-case keys are accepted.
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
      if (v === null) return f.required ? '' : null;
      if (typeof v !== 'string') throw bad('a string');
      return v;
  }
}
