import { describe, expect, it } from 'vitest';
import { applyEvent, initialRunState, isActive, progress, voiceSeries } from '../src/lib/run';
import { step } from './helpers';
import type { TrainingEvent } from '../src/lib/api';
import fixture from '../../docs/ipc-fixtures/training-events.json';

describe('run reducer', () => {
  it('follows a whole run', () => {
    const s = initialRunState();
    applyEvent(s, { event: 'started', data: { runId: 'r1', runDir: '/runs/r1', totalSteps: 100, stepsPerEpoch: 20, trainExamples: 40, valExamples: 4 } });
    expect(s.status).toBe('running');
    expect(isActive(s.status)).toBe(true);
    applyEvent(s, { event: 'phase', data: { phase: 'encoding', message: 'Encoding clips with Mimi', done: 3, total: 44 } });
    expect(s.phaseProgress).toEqual({ done: 3, total: 44 });
    for (let i = 1; i <= 50; i++) applyEvent(s, step(i));
    expect(s.series.step).toHaveLength(50);
    expect(progress(s)).toBeCloseTo(0.5);
    applyEvent(s, { event: 'validation', data: { step: 50, loss: 4.2, semanticLoss: 2.5, acousticLoss: 1.7 } });
    applyEvent(s, { event: 'validation', data: { step: 100, loss: 4.4, semanticLoss: 2.6, acousticLoss: 1.8 } });
    expect(s.bestValLoss).toBe(4.2);
    applyEvent(s, { event: 'checkpoint', data: { step: 100, path: '/runs/r1/checkpoints/step-100', mode: 'lora' } });
    applyEvent(s, { event: 'sample', data: { step: 100, path: '/runs/r1/samples/step-100.wav', text: 'hi', durationSecs: 1.2 } });
    applyEvent(s, { event: 'finished', data: { status: 'completed', step: 100, elapsedSecs: 200, bestValLoss: 4.2, adapterPath: '/runs/r1/adapter.safetensors' } });
    expect(s.status).toBe('completed');
    expect(isActive(s.status)).toBe(false);
    expect(s.checkpoints).toHaveLength(1);
    expect(s.samples[0]?.step).toBe(100);
    expect(s.adapterPath).toBe('/runs/r1/adapter.safetensors');
    expect(s.warnings).toEqual([]);
  });

  it('flags NaN once and keeps the series aligned', () => {
    const s = initialRunState();
    applyEvent(s, step(1));
    applyEvent(s, step(2, { loss: NaN, gradNorm: Infinity }));
    applyEvent(s, step(3, { loss: NaN }));
    expect(s.series.loss).toEqual([4.99, null, null]);
    expect(s.series.gradNorm[1]).toBeNull();
    expect(s.warnings.filter((w) => w.kind === 'nan')).toHaveLength(1);
  });

  it('flags divergence', () => {
    const s = initialRunState();
    for (let i = 1; i <= 25; i++) applyEvent(s, step(i, { loss: 2 }));
    applyEvent(s, step(26, { loss: 9 }));
    expect(s.warnings.map((w) => w.kind)).toEqual(['divergence']);
  });

  it('lists a checkpoint saved twice (stop right after a periodic save) once', () => {
    const s = initialRunState();
    const ckpt = { event: 'checkpoint' as const, data: { step: 6, path: '/r/checkpoint_step_0000006.safetensors', mode: 'lora' as const } };
    applyEvent(s, { ...ckpt, data: { ...ckpt.data, step: 3, path: '/r/checkpoint_step_0000003.safetensors' } });
    applyEvent(s, ckpt);
    applyEvent(s, ckpt);
    expect(s.checkpoints.map((c) => c.step)).toEqual([3, 6]);
  });

  it('records backend warnings and failures', () => {
    const s = initialRunState();
    applyEvent(s, { event: 'warning', data: { step: 7, kind: 'gradSpike', message: 'grad norm 80' } });
    applyEvent(s, { event: 'failed', data: { step: 7, error: { kind: 'training', message: 'out of memory' } } });
    expect(s.warnings[0]?.kind).toBe('gradSpike');
    expect(s.status).toBe('failed');
    expect(s.error?.message).toBe('out of memory');
  });
});

describe('wire format', () => {
  it('treats null losses (serde_json NaN) as NaN', () => {
    const s = initialRunState();
    applyEvent(s, step(1, { loss: null, gradNorm: null }));
    applyEvent(s, { event: 'validation', data: { step: 1, loss: null, semanticLoss: null, acousticLoss: null } });
    expect(s.series.loss).toEqual([null]);
    expect(s.bestValLoss).toBeNull();
    expect(s.warnings[0]?.message).toBe('Loss is NaN or inf at step 1');
  });
});

describe('shared wire fixture (docs/ipc-fixtures, also checked by the Rust contract test)', () => {
  it('reduces every event the backend will send', () => {
    const events = fixture as TrainingEvent[];
    const s = initialRunState();
    for (const ev of events.slice(0, -1)) applyEvent(s, ev);
    expect(s).toMatchObject({ status: 'completed', runId: '20261125-141500', totalSteps: 250, bestValLoss: 4.5, adapterPath: '/runs/20261125-141500/adapter.safetensors' });
    expect(s.series.loss).toEqual([6.5, null]);
    expect(s.warnings.map((w) => w.kind)).toEqual(['nan']);
    expect(s.checkpoints[0]?.mode).toBe('lora');
    expect(s.voiceSetup?.prompts).toEqual(['Hello there.', 'Why not?']);
    expect(s.voice.map((r) => r.step)).toEqual([0, 100]);
    expect(s.voice[1]?.samples[1]?.stopReason).toBe('lengthLimit');
    const last = events.at(-1);
    if (last) applyEvent(s, last);
    expect(s.error).toEqual({ kind: 'training', message: 'MLX: out of memory allocating 2.1 GB' });
  });
});

describe('Voice chart data', () => {
  const report = (step: number, similarity: number | null, wer: number | null, bestStep: number | null = null) => ({
    event: 'voiceScores' as const,
    data: {
      step,
      checkpoint: step === 0 ? null : `/r/checkpoints/checkpoint_step_${step}.safetensors`,
      summary: { similarity, wer, cer: wer, healthWarnings: 0, samples: 1 },
      samples: [],
      bestStep,
      newBest: bestStep === step,
    },
  });

  it('puts the base model line under every scored step, in step order', () => {
    const s = initialRunState();
    for (const ev of [report(0, 0.5, 0.3), report(20, 0.7, 0.1, 20), report(10, 0.6, null, 10)]) applyEvent(s, ev);
    const v = voiceSeries(s.voice);
    expect(v.step).toEqual([0, 10, 20]);
    expect(v.similarity).toEqual([0.5, 0.6, 0.7]);
    expect(v.wer).toEqual([0.3, null, 0.1]);
    expect(v.baseSimilarity).toEqual([0.5, 0.5, 0.5]);
    expect(v.baseWer).toEqual([0.3, 0.3, 0.3]);
    expect(v.bestStep).toBe(20);
  });

  it('keeps the later report of a step scored twice (resumed run) and has no base line without step 0', () => {
    const s = initialRunState();
    applyEvent(s, report(10, 0.6, null));
    applyEvent(s, report(10, 0.65, null));
    const v = voiceSeries(s.voice);
    expect(v.step).toEqual([10]);
    expect(v.similarity).toEqual([0.65]);
    expect(v.baseSimilarity).toEqual([null]);
    expect(v.wer).toEqual([null]);
    expect(voiceSeries([]).step).toEqual([]);
  });
});
