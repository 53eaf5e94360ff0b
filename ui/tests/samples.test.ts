import { describe, expect, it } from 'vitest';
import { fireEvent, render, screen } from '@testing-library/svelte';
import Samples from '../src/screens/Samples.svelte';
import { app } from '../src/lib/store.svelte';
import { applyEvent } from '../src/lib/run';
import type { Channel } from '@tauri-apps/api/core';
import type { GenerateRequest, GeneratedSample, GenerationEvent } from '../src/lib/api';
import { flush, ipc } from './helpers';
import fixture from '../../docs/ipc-fixtures/training-events.json';
import type { TrainingEvent } from '../src/lib/api';

const devices = [
  { id: 'alsa:null', name: 'Null output', isDefault: false },
  { id: 'alsa:default', name: 'Speakers', isDefault: true },
];

function gen(a: Record<string, unknown>) {
  const r = a.request as GenerateRequest;
  return { id: `g-${r.checkpoint ?? 'base'}`, path: `/tmp/${r.checkpoint ? 'ft' : 'base'}.wav`, sampleRate: 24000, durationSecs: 2.5, peaks: [0.1, 0.5, 0.3], checkpoint: r.checkpoint, seed: r.seed, text: r.text };
}

describe('Samples screen', () => {
  it('lists output devices and picks the default', async () => {
    ipc({ list_output_devices: () => devices });
    render(Samples);
    await flush();
    expect(app.outputDevice).toBe('alsa:default');
    expect((screen.getByLabelText('Output device') as HTMLSelectElement).value).toBe('alsa:default');
  });

  it('says clearly when there is no audio device', async () => {
    ipc({ list_output_devices: () => Promise.reject({ kind: 'noAudioDevice', message: 'no output device' }) });
    render(Samples);
    await flush();
    expect(screen.getByTestId('no-device').textContent).toMatch(/No audio output device found/);
  });

  it('generates with the base model and plays on the chosen device', async () => {
    const log = ipc({ list_output_devices: () => devices, generate_sample: gen, play_audio: () => ({ durationSecs: 2.5 }) });
    app.config.model_path = '/m';
    render(Samples);
    await flush();
    await fireEvent.input(screen.getByLabelText('Prompt text'), { target: { value: 'Testing one two' } });
    await fireEvent.click(screen.getByRole('button', { name: 'Generate' }));
    await flush();
    expect(log.of('generate_sample')[0]?.request).toMatchObject({ text: 'Testing one two', checkpoint: null, modelPath: '/m', seed: 42, speakerId: 0 });
    expect(screen.getAllByTestId('sample')).toHaveLength(1);
    expect(screen.getByLabelText('waveform')).toBeTruthy();
    await fireEvent.click(screen.getByRole('button', { name: 'Play Base model' }));
    await flush();
    expect(log.of('play_audio')[0]).toEqual({ path: '/tmp/base.wav', deviceId: 'alsa:default' });
  });

  it('runs an A/B on the same text and seed against the latest checkpoint', async () => {
    const log = ipc({ list_output_devices: () => devices, generate_sample: gen });
    app.config.model_path = '/m';
    applyEvent(app.run, { event: 'checkpoint', data: { step: 100, path: '/runs/r/ckpt-100', mode: 'lora' } });
    applyEvent(app.run, { event: 'sample', data: { step: 100, path: '/runs/r/samples/100.wav', text: 'hi', durationSecs: 1 } });
    app.run = { ...app.run };
    render(Samples);
    await flush();
    await fireEvent.click(screen.getByRole('button', { name: 'A/B: base vs fine-tuned' }));
    await flush(10);
    const reqs = log.of('generate_sample').map((a) => a.request as GenerateRequest);
    expect(reqs.map((r) => r.checkpoint)).toEqual([null, '/runs/r/ckpt-100']);
    expect(reqs[0]?.seed).toBe(reqs[1]?.seed);
    expect(reqs[0]?.text).toBe(reqs[1]?.text);
    expect(screen.getByTestId('ab').textContent).toContain('A · base model');
    expect(screen.getByTestId('run-samples').textContent).toContain('100');
    // The checkpoint picker follows the latest checkpoint until the user picks one.
    const picker = screen.getByLabelText('Checkpoint') as HTMLSelectElement;
    expect(picker.value).toBe('/runs/r/ckpt-100');
    await fireEvent.change(picker, { target: { value: '' } });
    await fireEvent.click(screen.getByRole('button', { name: 'Generate' }));
    await flush();
    expect((log.of('generate_sample').at(-1)?.request as GenerateRequest).checkpoint).toBeNull();
  });

  it('shows generation errors', async () => {
    ipc({ list_output_devices: () => devices, generate_sample: () => Promise.reject({ kind: 'generation', message: 'checkpoint rank 8 does not match' }) });
    app.config.model_path = '/m';
    render(Samples);
    await fireEvent.click(screen.getByRole('button', { name: 'Generate' }));
    await flush();
    expect(screen.getByRole('alert').textContent).toContain('checkpoint rank 8 does not match');
  });

  /** A generate_sample handler that stays pending until the test settles it. */
  function pending() {
    const calls: { channel: Channel<GenerationEvent>; resolve: (s: GeneratedSample) => void; reject: (e: unknown) => void; args: Record<string, unknown> }[] = [];
    const handler = (a: Record<string, unknown>) =>
      new Promise((resolve, reject) => calls.push({ channel: a.onProgress as Channel<GenerationEvent>, resolve, reject, args: a }));
    return { calls, handler };
  }

  it('shows generation progress from the channel', async () => {
    const gen2 = pending();
    ipc({ list_output_devices: () => devices, generate_sample: gen2.handler });
    app.config.model_path = '/m';
    render(Samples);
    await fireEvent.click(screen.getByRole('button', { name: 'Generate' }));
    await flush();
    const call = gen2.calls[0]!;
    call.channel.onmessage({ event: 'phase', data: { phase: 'loading' } });
    await flush();
    expect(screen.getByTestId('gen-progress').textContent).toMatch(/loading the model/);
    call.channel.onmessage({ event: 'phase', data: { phase: 'generating' } });
    for (const frames of [1, 2, 3]) {
      call.channel.onmessage({ event: 'progress', data: { frames, maxFrames: 250, audioSecs: frames * 0.08, elapsedSecs: 4 + frames } });
    }
    await flush();
    const bar = screen.getByRole('progressbar', { name: 'Generation progress' });
    expect(bar.getAttribute('aria-valuenow')).toBe('3');
    expect(bar.getAttribute('aria-valuemax')).toBe('250');
    const text = screen.getByTestId('gen-progress').textContent ?? '';
    expect(text).toContain('frame 3 / 250');
    expect(text).toContain('0.24 s of audio');
    expect((screen.getByRole('button', { name: 'Generate' }) as HTMLButtonElement).disabled).toBe(true);
    call.resolve(gen(call.args));
    await flush(10);
    expect(screen.queryByTestId('gen-progress')).toBeNull();
    expect(screen.queryByRole('button', { name: 'Stop generating' })).toBeNull();
    expect(screen.getAllByTestId('sample')).toHaveLength(1);
  });

  it('stops an A/B generation: cancel_generation, no error, no second half', async () => {
    const gen2 = pending();
    const log = ipc({ list_output_devices: () => devices, generate_sample: gen2.handler, cancel_generation: () => null });
    app.config.model_path = '/m';
    applyEvent(app.run, { event: 'checkpoint', data: { step: 100, path: '/runs/r/ckpt-100', mode: 'lora' } });
    app.run = { ...app.run };
    render(Samples);
    await fireEvent.click(screen.getByRole('button', { name: 'A/B: base vs fine-tuned' }));
    await flush();
    gen2.calls[0]!.channel.onmessage({ event: 'progress', data: { frames: 4, maxFrames: 250, audioSecs: 0.32, elapsedSecs: 6 } });
    await fireEvent.click(screen.getByRole('button', { name: 'Stop generating' }));
    await flush();
    expect(log.of('cancel_generation')).toHaveLength(1);
    expect(screen.getByRole('button', { name: 'Stopping…' })).toBeTruthy();
    gen2.calls[0]!.reject({ kind: 'cancelled', message: 'generation cancelled after 5 of 250 frames; no file was written' });
    await flush(10);
    expect(log.of('generate_sample')).toHaveLength(1);
    expect(screen.queryByRole('alert')).toBeNull();
    expect(screen.getByText(/Stopped: generation cancelled after 5 of 250 frames/)).toBeTruthy();
    expect(screen.queryByTestId('gen-progress')).toBeNull();
    expect((screen.getByRole('button', { name: 'Generate' }) as HTMLButtonElement).disabled).toBe(false);
    expect(app.generated).toHaveLength(0);
  });

  it('lists the voice-score samples with their scores and health, and pairs base and best', async () => {
    const log = ipc({ list_output_devices: () => devices, play_audio: () => ({ durationSecs: 1.5 }) });
    for (const ev of (fixture as TrainingEvent[]).filter((e) => e.event.startsWith('voice'))) applyEvent(app.run, ev);
    app.run = { ...app.run };
    render(Samples);
    await flush();
    const rows = screen.getByTestId('voice-samples').querySelectorAll('tbody tr');
    expect(rows).toHaveLength(4);
    expect(rows[2]?.textContent).toMatch(/100 ★.*Hello there\..*0\.750.*12\.5%.*6\.3%/);
    expect(rows[3]?.textContent).toMatch(/—.*100\.0%.*length limit/);
    const pairs = screen.getAllByTestId('voice-ab');
    expect(pairs).toHaveLength(2);
    const scores = pairs[0]?.querySelectorAll('[data-testid="voice-scores"]') ?? [];
    expect([...scores].map((x) => x.textContent)).toEqual([
      'similarity 0.500 · WER 25.0% · CER 12.5%',
      'similarity 0.750 · WER 12.5% · CER 6.3%',
    ]);
    await fireEvent.click(screen.getByRole('button', { name: 'Play step 100 prompt 2' }));
    await flush();
    expect(log.of('play_audio')[0]).toEqual({ path: '/runs/20261125-141500/samples/step_0000100/prompt_2.wav', deviceId: 'alsa:default' });
  });
});
