import { describe, expect, it } from 'vitest';
import {
  ConfigParseError,
  DEFAULT_CONFIG,
  FIELDS,
  PRESETS,
  type RunConfig,
  applyPreset,
  defaultConfig,
  derive,
  fromJson,
  matchingPreset,
  toCommand,
  toJson,
  valCount,
  validTargetLayers,
  validate,
} from '../src/lib/config';

function filled(over: Partial<RunConfig> = {}): RunConfig {
  return { ...defaultConfig(), model_path: '/m/csm', output_dir: '/runs/a', audio_dir: '/d/audio', transcript_dir: '/d/transcripts', ...over };
}

describe('flag table', () => {
  it('covers every config key exactly once', () => {
    const keys = FIELDS.map((f) => f.key).sort();
    expect(keys).toEqual(Object.keys(DEFAULT_CONFIG).sort());
    expect(new Set(FIELDS.map((f) => f.flag)).size).toBe(FIELDS.length);
  });

  it('names flags after the snake_case keys', () => {
    for (const f of FIELDS) expect(f.flag).toBe(`--${f.key.replace(/_/g, '-')}`);
  });

  it('has the CLI defaults', () => {
    expect(DEFAULT_CONFIG).toMatchObject({
      speaker_id: 0, max_seq_len: 2048, context_turns: 2, lora_r: 8, lora_alpha: 16, lora_dropout: 0,
      target_modules: ['q_proj', 'v_proj'], target_layers: 'all', learning_rate: 2e-4, semantic_weight: 1,
      acoustic_weight: 1, weight_decay: 0.01, batch_size: 2, epochs: 5, max_grad_norm: 1, val_split: 0.1,
      val_every: 50, save_every: 100, save_mode: 'lora', log_level: 'info', decoder_fraction: 0.0625,
      grad_accum: 1, lr_schedule: 'cosine', warmup_steps: 20, seed: 42, context_loss: false,
    });
  });
});

describe('validate', () => {
  it('requires the paths', () => {
    const e = validate(defaultConfig());
    expect(Object.keys(e).sort()).toEqual(['audio_dir', 'model_path', 'output_dir', 'transcript_dir']);
  });

  it('accepts a filled default config', () => {
    expect(validate(filled())).toEqual({});
  });

  it('checks ranges, integers and numbers', () => {
    const e = validate(filled({ lora_r: 0, batch_size: 1.5, learning_rate: NaN, val_split: 0.9, decoder_fraction: 0 }));
    expect(e.lora_r).toMatch(/≥ 1/);
    expect(e.batch_size).toMatch(/whole/);
    expect(e.learning_rate).toMatch(/number/);
    expect(e.val_split).toMatch(/≤ 0.5/);
    expect(e.decoder_fraction).toBeDefined();
  });

  it('needs a module and a prompt when sampling', () => {
    const e = validate(filled({ target_modules: [], generate_samples: true, sample_prompt: '  ' }));
    expect(e.target_modules).toBeDefined();
    expect(e.sample_prompt).toBeDefined();
  });

  it('parses target layers', () => {
    expect(validTargetLayers('all')).toBe(true);
    expect(validTargetLayers('backbone:0-15,decoder:0-3')).toBe(true);
    expect(validTargetLayers('backbone:3')).toBe(true);
    expect(validTargetLayers('backbone:5-2')).toBe(false);
    expect(validTargetLayers('encoder:1')).toBe(false);
    expect(validate(filled({ target_layers: '0-3' })).target_layers).toBeDefined();
  });
});

describe('toCommand', () => {
  it('gives only required flags for defaults', () => {
    expect(toCommand(filled())).toBe(
      'csm finetune-lora --audio-dir /d/audio --transcript-dir /d/transcripts --model-path /m/csm --output-dir /runs/a',
    );
  });

  it('adds non-default flags, booleans and module lists', () => {
    const cmd = toCommand(filled({ lora_r: 16, learning_rate: 1e-4, lora_bias: true, target_modules: ['q_proj', 'k_proj', 'v_proj'], save_mode: 'both', debug: false }));
    expect(cmd).toContain('--lora-r 16');
    expect(cmd).toContain('--learning-rate 0.0001');
    expect(cmd).toContain('--lora-bias');
    expect(cmd).toContain('--target-modules q_proj k_proj v_proj');
    expect(cmd).toContain('--save-mode both');
    expect(cmd).not.toContain('--debug');
    expect(cmd).not.toContain('--epochs');
  });

  it('quotes paths with spaces and quotes', () => {
    const cmd = toCommand(filled({ model_path: "/Users/me/My Models/csm's", sample_prompt: 'Hello there', generate_samples: true }));
    expect(cmd).toContain(`--model-path '/Users/me/My Models/csm'\\''s'`);
    expect(cmd).toContain(`--sample-prompt 'Hello there'`);
    expect(cmd).toContain('--generate-samples');
  });

  it('quotes empty required paths so the line stays well-formed', () => {
    expect(toCommand(defaultConfig())).toContain("--model-path ''");
  });
});

describe('presets', () => {
  it('apply and are recognised', () => {
    const c = filled();
    expect(matchingPreset(c)).toBeNull(); // defaults have generate_samples off, balanced turns it on
    for (const p of PRESETS) {
      const applied = applyPreset(c, p);
      expect(matchingPreset(applied)?.id).toBe(p.id);
      expect(applied.model_path).toBe('/m/csm');
      expect(validate(applied)).toEqual({});
    }
  });

  it('do not share the module array with the preset', () => {
    const q = PRESETS.find((p) => p.id === 'quality');
    if (!q) throw new Error('missing preset');
    const applied = applyPreset(filled(), q);
    applied.target_modules.pop();
    expect(q.values.target_modules).toHaveLength(7);
  });
});

describe('JSON import/export', () => {
  it('round-trips', () => {
    const c = filled({ lora_r: 32, target_modules: ['o_proj'], alignment_dir: '/d/al', sample_prompt: 'hi' });
    const text = toJson(c);
    expect(JSON.parse(text)).toHaveProperty('learning_rate', 2e-4);
    expect(fromJson(text)).toEqual({ config: c, unknown: [] });
  });

  it('fills defaults, accepts kebab-case, reports unknown keys', () => {
    const { config, unknown } = fromJson('{"lora-r": 4, "epochs": "3", "target_modules": "q_proj,k_proj", "wandb": true}');
    expect(config.lora_r).toBe(4);
    expect(config.epochs).toBe(3);
    expect(config.target_modules).toEqual(['q_proj', 'k_proj']);
    expect(config.learning_rate).toBe(2e-4);
    expect(unknown).toEqual(['wandb']);
  });

  it('rejects bad values with the key in the message', () => {
    expect(() => fromJson('{"save_mode": "all"}')).toThrow(/save_mode/);
    expect(() => fromJson('{"lora_r": 1.5}')).toThrow(ConfigParseError);
    expect(() => fromJson('{"target_modules": ["qkv"]}')).toThrow(/target_modules/);
    expect(() => fromJson('[1]')).toThrow(/object/);
    expect(() => fromJson('{nope')).toThrow(/JSON/);
  });
});

describe('derive', () => {
  it('computes the split and steps', () => {
    expect(valCount(100, 0.1)).toBe(10);
    expect(valCount(5, 0.1)).toBe(1);
    expect(valCount(1, 0.1)).toBe(0);
    expect(valCount(10, 0)).toBe(0);
    const d = derive(filled({ batch_size: 4, grad_accum: 2, epochs: 3 }), 100, 1.5);
    expect(d).toEqual({ trainExamples: 90, valExamples: 10, stepsPerEpoch: 12, totalSteps: 36, estimatedSecs: 54 });
    expect(derive(filled(), 10, null).estimatedSecs).toBeNull();
  });
});
