import { describe, expect, it } from 'vitest';
import { fireEvent, render, screen, within } from '@testing-library/svelte';
import Model from '../src/screens/Model.svelte';
import { app } from '../src/lib/store.svelte';
import { flush, ipc, scanFixture } from './helpers';

const csmInfo = {
  path: '/models/csm-1b/model.safetensors',
  kind: 'csm',
  format: 'safetensors',
  sizeBytes: 6.2e9,
  dtype: 'bfloat16',
  parameters: 1_550_000_000,
  details: { backbone: 'llama-1B', decoder: 'llama-100M' },
};

describe('Model screen', () => {
  it('inspects a picked checkpoint and shows format, size and dtype', async () => {
    const log = ipc({ 'plugin:dialog|open': () => csmInfo.path, inspect_model: () => csmInfo });
    render(Model);
    const card = screen.getByTestId('model-csm');
    await fireEvent.click(within(card).getByRole('button', { name: 'Choose file…' }));
    await flush();
    expect(log.of('plugin:dialog|open')[0]).toMatchObject({ options: { directory: false, filters: [{ extensions: ['safetensors'] }] } });
    expect(log.of('inspect_model')[0]).toEqual({ path: csmInfo.path, kind: 'csm' });
    expect(card.textContent).toContain('bfloat16');
    expect(card.textContent).toContain('5.8 GB');
    expect(card.textContent).toContain('llama-1B');
    expect(app.config.model_path).toBe(csmInfo.path);
  });

  it('shows the exact load error', async () => {
    ipc({ inspect_model: () => Promise.reject({ kind: 'modelLoad', message: 'tensor "decoder.layers.3.mlp.w1.weight" has shape [8192, 1024], expected [8192, 2048]' }) });
    render(Model);
    const card = screen.getByTestId('model-mimi');
    await fireEvent.input(within(card).getByLabelText('Mimi codec path'), { target: { value: '/m/mimi.safetensors' } });
    await fireEvent.click(within(card).getByRole('button', { name: 'Inspect' }));
    await flush();
    expect(within(card).getByRole('alert').textContent).toBe(
      'modelLoad: tensor "decoder.layers.3.mlp.w1.weight" has shape [8192, 1024], expected [8192, 2048]',
    );
    expect(app.config.mimi_path).toBe('/m/mimi.safetensors');
  });

  it('loads the demo model and dataset in one click', async () => {
    const log = ipc({
      demo_assets: () => ({ modelPath: '/demo/csm', mimiPath: '/demo/mimi.safetensors', tokenizerPath: '/demo/tokenizer.json', audioDir: '/demo/audio', transcriptDir: '/demo/transcripts', alignmentDir: null }),
      inspect_model: (a) => ({ ...csmInfo, path: a.path, kind: a.kind }),
      scan_dataset: () => scanFixture(),
    });
    render(Model);
    await fireEvent.click(screen.getByRole('button', { name: 'Use demo model + dataset' }));
    await flush(10);
    expect(log.of('inspect_model').map((a) => a.kind).sort()).toEqual(['csm', 'mimi', 'tokenizer']);
    expect(log.of('scan_dataset')[0]).toEqual({ paths: ['/demo/audio', '/demo/transcripts'] });
    expect(app.config).toMatchObject({ model_path: '/demo/csm', mimi_path: '/demo/mimi.safetensors', tokenizer_path: '/demo/tokenizer.json' });
    expect(app.dataset?.items).toHaveLength(12);
    expect(app.notices.at(-1)?.text).toBe('Demo model and dataset loaded');
  });
});
