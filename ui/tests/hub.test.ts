import { describe, expect, it } from 'vitest';
import { fireEvent, render, screen, within } from '@testing-library/svelte';
import type { Channel } from '@tauri-apps/api/core';
import Model from '../src/screens/Model.svelte';
import { app } from '../src/lib/store.svelte';
import type { BundleInfo, CachedModel, DownloadEvent, HubStatus } from '../src/lib/api';
import { flush, ipc } from './helpers';

const status: HubStatus = {
  endpoint: 'https://huggingface.co',
  cacheDir: '/home/u/.cache/huggingface/hub',
  tokenSource: null,
  tokenPath: '/home/u/.cache/huggingface/token',
  offline: false,
};

const bundle = (cached: boolean): BundleInfo => ({
  name: 'csm-1b',
  description: 'Sesame CSM-1B (gated), the Mimi codec and the Llama 3.2 tokenizer',
  files: [
    { role: 'model', repo: 'sesame/csm-1b', file: 'model.safetensors', cached: cached ? '/c/m' : null },
    { role: 'codec', repo: 'kyutai/moshiko-pytorch-bf16', file: 'tokenizer-e351c8d8-checkpoint125.safetensors', cached: null },
  ],
});

const partial: CachedModel = {
  repo: 'sesame/csm-1b',
  kind: 'model',
  sizeBytes: 2_000,
  partialBytes: 3e9,
  refs: ['main'],
  files: ['config.json'],
};

const snapshot = '/home/u/.cache/huggingface/hub/models--sesame--csm-1b/snapshots/abc';

describe('Model screen: hub downloads', () => {
  it('downloads CSM-1B with per-file progress and selects it', async () => {
    let channel: Channel<DownloadEvent> | null = null;
    let finish: (v: unknown) => void = () => {};
    const log = ipc({
      hub_status: () => status,
      list_bundles: () => [bundle(false)],
      list_cached_models: () => [partial],
      download_bundle: (a) => {
        channel = a.onEvent as Channel<DownloadEvent>;
        return new Promise((resolve) => (finish = resolve));
      },
      cancel_download: () => null,
      inspect_model: (a) => ({ path: a.path, kind: a.kind, format: 'safetensors', sizeBytes: 1, dtype: null, parameters: null, details: {} }),
    });
    render(Model);
    await flush();
    const card = screen.getByTestId('hub');
    expect(card.textContent).toContain(status.cacheDir);
    expect(card.textContent).toContain('2.8 GB partial');
    await fireEvent.click(within(card).getByRole('button', { name: 'Resume CSM-1B download' }));
    await flush();
    expect(log.of('download_bundle')[0]).toMatchObject({ name: 'csm-1b' });
    channel!.onmessage({ event: 'progress', data: { repo: 'sesame/csm-1b', file: 'model.safetensors', done: 3e9, total: 6e9 } });
    channel!.onmessage({ event: 'cached', data: { repo: 'unsloth/Llama-3.2-1B', file: 'tokenizer.json', size: 9e6 } });
    await flush();
    const bar = within(card).getByRole('progressbar', { name: 'sesame/csm-1b/model.safetensors' });
    expect(bar.getAttribute('aria-valuenow')).toBe('3000000000');
    expect(card.textContent).toContain('resumed at');
    expect(card.textContent).toContain('already downloaded');

    await fireEvent.click(within(card).getByRole('button', { name: 'Cancel' }));
    expect(log.of('cancel_download')).toHaveLength(1);

    finish({ modelPath: snapshot, mimiPath: '/c/mimi.safetensors', tokenizerPath: '/c/tokenizer.json' });
    await flush(10);
    expect(app.config).toMatchObject({ model_path: snapshot, mimi_path: '/c/mimi.safetensors', tokenizer_path: '/c/tokenizer.json' });
    expect(app.notices.at(-1)?.text).toBe('CSM-1B downloaded and selected');
  });

  it('shows a gated-repo error and saves a token only with consent', async () => {
    const log = ipc({
      hub_status: () => status,
      list_bundles: () => [bundle(false)],
      list_cached_models: () => [],
      download_bundle: () =>
        Promise.reject({ kind: 'download', message: 'access to sesame/csm-1b was refused (HTTP 401: GatedRepo): it is gated or private. Open https://huggingface.co/sesame/csm-1b …' }),
      save_hub_token: () => status.tokenPath,
    });
    render(Model);
    await flush();
    const card = screen.getByTestId('hub');
    await fireEvent.click(within(card).getByRole('button', { name: 'Download CSM-1B' }));
    await flush(10);
    expect(within(card).getByRole('alert').textContent).toContain('https://huggingface.co/sesame/csm-1b');

    await fireEvent.input(within(card).getByLabelText('Hugging Face token'), { target: { value: 'hf_abc' } });
    const save = within(card).getByRole('button', { name: 'Save token' }) as HTMLButtonElement;
    expect(save.disabled).toBe(true);
    await fireEvent.click(within(card).getByRole('checkbox'));
    expect(save.disabled).toBe(false);
    await fireEvent.click(save);
    await flush();
    expect(log.of('save_hub_token')).toEqual([{ token: 'hf_abc' }]);
  });

  it('lists cached models and deletes one after confirmation', async () => {
    let cached = [{ ...partial, partialBytes: 0, sizeBytes: 6.2e9, files: ['config.json', 'model.safetensors'] }];
    const log = ipc({
      hub_status: () => status,
      list_bundles: () => [bundle(true)],
      list_cached_models: () => cached,
      delete_cached_model: () => {
        cached = [];
        return 6.2e9;
      },
    });
    render(Model);
    await flush();
    const card = screen.getByTestId('hub');
    const table = within(card).getByRole('table', { name: 'Cached models' });
    expect(table.textContent).toContain('sesame/csm-1b');
    expect(table.textContent).toContain('5.8 GB');
    await fireEvent.click(within(card).getByRole('button', { name: 'Delete sesame/csm-1b' }));
    await fireEvent.click(within(screen.getByRole('alertdialog')).getByRole('button', { name: 'Delete' }));
    await flush(10);
    expect(log.of('delete_cached_model')).toEqual([{ repo: 'sesame/csm-1b' }]);
    expect(card.textContent).toContain('Nothing cached yet.');
  });
});
