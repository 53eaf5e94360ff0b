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
  layersToArg,
  matchingPreset,
  parseTargetLayers,
  toCommand,
  toJson,
  valCount,
  validate,
  validateDrafts,
} from '../src/lib/config';
import trainConfigDefault from '../../docs/ipc-fixtures/train-config-default.json';
import voicePrompts from '../../docs/ipc-fixtures/voice-prompts.json';
import { VOICE_PROMPTS, fromObject, voiceSettings } from '../src/lib/config';

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
    for (const f of FIELDS) expect(f.flag).toBe(`--${f.negated ? 'no-' : ''}${f.key.replace(/_/g, '-')}`);
  });

  it("is TrainConfig's JSON with its defaults (docs/ipc-fixtures, checked against the Rust type too)", () => {
    // The form starts with no output folder; the core's default names one.
    expect({ ...DEFAULT_CONFIG, output_dir: trainConfigDefault.output_dir }).toEqual(trainConfigDefault);
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

  it('parses target layers as the CLI does, and prints them back', () => {
    expect(parseTargetLayers('all')).toEqual({ backbone: 'all', decoder: 'all' });
    const t = parseTargetLayers('backbone:8-10+15, decoder:none');
    expect(t).toEqual({ backbone: { some: [8, 9, 10, 15] }, decoder: 'none' });
    expect(layersToArg(t!)).toBe('backbone:8-10+15,decoder:none');
    expect(parseTargetLayers(layersToArg(t!))).toEqual(t);
    // A stack that is not named gets nothing.
    expect(parseTargetLayers('decoder:all')).toEqual({ backbone: 'none', decoder: 'all' });
    for (const bad of ['0-3', 'backbone:5-2', 'encoder:1', 'backbone:x', '']) {
      expect(parseTargetLayers(bad), bad).toBeNull();
    }
  });

  it('checks target layers and the utterance lengths', () => {
    expect(validate(filled({ target_layers: { backbone: 'none', decoder: 'none' } })).target_layers).toMatch(/no layer/);
    expect(validateDrafts({ target_layers: 'backbone:' }).target_layers).toBeDefined();
    expect(validateDrafts({ target_layers: 'backbone:0-3' })).toEqual({});
    const e = validate(filled({ min_utterance_secs: 8, target_utterance_secs: 5, max_utterance_secs: 12 }));
    expect(e.target_utterance_secs).toMatch(/between/);
    expect(validate(filled({ min_utterance_secs: 13 })).min_utterance_secs).toMatch(/max/);
    expect(validate(filled({ edge_pad_secs: -1 })).edge_pad_secs).toMatch(/≥ 0/);
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

  it('turns trimming off with --no-trim-silence and prints target layers', () => {
    expect(toCommand(filled())).not.toContain('trim-silence');
    const cmd = toCommand(filled({ trim_silence: false, long_unaligned: 'skip', max_utterance_secs: 15, target_layers: { backbone: { some: [0, 1, 2, 3] }, decoder: 'all' } }));
    expect(cmd).toContain('--no-trim-silence');
    expect(cmd).toContain('--long-unaligned skip');
    expect(cmd).toContain('--max-utterance-secs 15');
    expect(cmd).toContain('--target-layers backbone:0-3,decoder:all');
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

  it('reads older exports: target layers as text, no sample prompt', () => {
    const { config } = fromJson('{"target_layers": "backbone:0-3", "sample_prompt": null}');
    expect(config.target_layers).toEqual({ backbone: { some: [0, 1, 2, 3] }, decoder: 'none' });
    expect(config.sample_prompt).toBe(DEFAULT_CONFIG.sample_prompt);
    expect(() => fromJson('{"target_layers": "layers 1-3"}')).toThrow(/target_layers/);
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

describe('voice scores', () => {
  it("has the core's prompts (docs/ipc-fixtures, checked against the Rust constant too)", () => {
    expect(VOICE_PROMPTS).toEqual(voicePrompts);
  });

  it('are off by default and need an encoder when on', () => {
    expect(DEFAULT_CONFIG.voice).toBeUndefined();
    expect(validate(filled({ voice: voiceSettings('') })).voice).toMatch(/speaker encoder/);
    expect(validate(filled({ voice: voiceSettings('speaker-encoder') }))).toEqual({});
  });

  it('give the CLI flags', () => {
    expect(toCommand(filled({ voice: voiceSettings('speaker-encoder') }))).toContain('--speaker-encoder speaker-encoder');
    const five = toCommand(filled({ voice: { ...voiceSettings('/e/pretrained.pt', 5), whisper_model: '/w/tiny' } }));
    expect(five).toContain('--whisper-model /w/tiny --voice-prompts 5');
    const own = toCommand(filled({ voice: { ...voiceSettings('/e.pt'), prompts: ['Hi there.'] } }));
    expect(own).toContain("--voice-prompt 'Hi there.'");
  });

  it('read back from a run config (missing prompts are the default three)', () => {
    const { config, unknown } = fromObject({ voice: { speaker_encoder: '/e.pt' } });
    expect(unknown).toEqual([]);
    expect(config.voice).toEqual(voiceSettings('/e.pt'));
    expect(fromObject({ voice: null }).config.voice).toBeNull();
    expect(() => fromObject({ voice: { speaker_encoder: 3 } })).toThrow(/voice/);
  });
});
