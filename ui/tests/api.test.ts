import { describe, expect, it } from 'vitest';
import * as api from '../src/lib/api';
import { defaultConfig } from '../src/lib/config';
import { ipc, send, step } from './helpers';

describe('api module', () => {
  it('passes camelCase args to snake_case commands', async () => {
    const log = ipc({
      scan_dataset: () => ({}),
      inspect_model: () => ({}),
      play_audio: () => ({ durationSecs: 1 }),
      export_adapter: () => '/out/a.safetensors',
    });
    await api.scanDataset(['/a', '/b']);
    await api.inspectModel('/m', 'mimi');
    await api.playAudio('/x.wav', null);
    expect(await api.exportAdapter('r1', null, '/out/a.safetensors')).toBe('/out/a.safetensors');
    expect(log.calls.map((c) => c.cmd)).toEqual(['scan_dataset', 'inspect_model', 'play_audio', 'export_adapter']);
    expect(log.of('scan_dataset')[0]).toEqual({ paths: ['/a', '/b'] });
    expect(log.of('inspect_model')[0]).toEqual({ path: '/m', kind: 'mimi' });
    expect(log.of('play_audio')[0]).toEqual({ path: '/x.wav', deviceId: null });
    expect(log.of('export_adapter')[0]).toEqual({ runId: 'r1', checkpoint: null, dest: '/out/a.safetensors' });
  });

  it('rejects with {kind, message}', async () => {
    ipc({ inspect_model: () => Promise.reject({ kind: 'modelLoad', message: 'missing tensor backbone.layers.0.attn.q_proj.weight' }) });
    await expect(api.inspectModel('/m', 'csm')).rejects.toEqual({ kind: 'modelLoad', message: 'missing tensor backbone.layers.0.attn.q_proj.weight' });
  });

  it('normalises string rejections', async () => {
    ipc({ app_info: () => Promise.reject('boom') });
    await expect(api.appInfo()).rejects.toEqual({ kind: 'internal', message: 'boom' });
  });

  it('streams training events through a Channel', async () => {
    const log = ipc({ start_training: () => 'run-1' });
    const got: api.TrainingEvent[] = [];
    const config = defaultConfig();
    expect(await api.startTraining(config, (e) => got.push(e))).toBe('run-1');
    expect(log.of('start_training')[0]?.config).toEqual(config);
    send(log, step(1));
    send(log, { event: 'finished', data: { status: 'completed', step: 1, elapsedSecs: 2, bestValLoss: null, adapterPath: null } });
    expect(got.map((e) => e.event)).toEqual(['step', 'finished']);
    // Serialised as the Tauri channel reference Rust deserialises.
    expect(JSON.stringify({ c: log.channel })).toMatch(/"__CHANNEL__:\d+"/);
  });
});
