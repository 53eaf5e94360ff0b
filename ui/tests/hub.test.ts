import { afterEach, describe, expect, it, vi } from 'vitest';
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
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('downloads CSM-1B with per-file progress and selects it', async () => {
    let now = 1_000_000;
    vi.spyOn(Date, 'now').mockImplementation(() => now);
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
    // Every file of the bundle is listed from the start.
    const items = () => within(card).getByRole('list', { name: 'Download progress' }).querySelectorAll('li');
    expect([...items()].map((li) => li.dataset.state)).toEqual(['queued', 'queued']);
    expect(items()[1]!.textContent).toContain('queued');
    channel!.onmessage({ event: 'progress', data: { repo: 'sesame/csm-1b', file: 'model.safetensors', done: 3e9, total: 6e9 } });
    // Speed over the last seconds: 2 MiB in 2 s.
    now += 1000;
    channel!.onmessage({ event: 'progress', data: { repo: 'sesame/csm-1b', file: 'model.safetensors', done: 3e9 + 1048576, total: 6e9 } });
    now += 1000;
    channel!.onmessage({ event: 'progress', data: { repo: 'sesame/csm-1b', file: 'model.safetensors', done: 3e9 + 2097152, total: 6e9 } });
    await flush();
    expect(items()[0]!.textContent).toContain('1.0 MB/s');
    // (6e9 - 3e9 - 2 MiB) / 1 MiB/s = 2859 s.
    expect(items()[0]!.textContent).toContain('1.0 MB/s, 47m 39s left');
    expect(within(card).getByTestId('hub-overall').textContent).toContain('of 5.6 GB');
    channel!.onmessage({ event: 'cached', data: { repo: 'unsloth/Llama-3.2-1B', file: 'tokenizer.json', size: 9e6 } });
    await flush();
    const bar = within(card).getByRole('progressbar', { name: 'sesame/csm-1b/model.safetensors' });
    expect(bar.getAttribute('aria-valuenow')).toBe(String(3e9 + 2097152));
    expect(card.textContent).toContain('resumed at');
    expect(card.textContent).toContain('already downloaded');

    await fireEvent.click(within(card).getByRole('button', { name: 'Cancel' }));
    expect(log.of('cancel_download')).toHaveLength(1);
    await flush();
    expect((within(card).getByRole('button', { name: 'Cancelling…' }) as HTMLButtonElement).disabled).toBe(true);

    finish({ modelPath: snapshot, mimiPath: '/c/mimi.safetensors', tokenizerPath: '/c/tokenizer.json', files: [] });
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
        Promise.reject({
          kind: 'accessDenied',
          message: 'sesame/csm-1b is gated or private (HTTP 401: GatedRepo) and no token was sent. Sign in on the hub, accept its licence at https://huggingface.co/sesame/csm-1b, …',
          url: 'https://huggingface.co/sesame/csm-1b',
        }),
      save_hub_token: () => status.tokenPath,
    });
    render(Model);
    await flush();
    const card = screen.getByTestId('hub');
    await fireEvent.click(within(card).getByRole('button', { name: 'Download CSM-1B' }));
    await flush(10);
    const alert = within(card).getByTestId('hub-access');
    expect(alert.getAttribute('role')).toBe('alert');
    expect(alert.textContent).toContain('Access refused.');
    expect(alert.querySelector('code')!.textContent).toBe('https://huggingface.co/sesame/csm-1b');
    // The token field is where to go next.
    expect(document.activeElement).toBe(within(card).getByLabelText('Hugging Face token'));

    await fireEvent.input(within(card).getByLabelText('Hugging Face token'), { target: { value: 'hf_abc' } });
    const save = within(card).getByRole('button', { name: 'Save token' }) as HTMLButtonElement;
    expect(save.disabled).toBe(true);
    await fireEvent.click(within(card).getByRole('checkbox'));
    expect(save.disabled).toBe(false);
    await fireEvent.click(save);
    await flush();
    expect(log.of('save_hub_token')).toEqual([{ token: 'hf_abc' }]);
    expect(within(card).queryByTestId('hub-access')).toBeNull();
    expect(within(card).getByTestId('hub-note').textContent).toBe('Token saved. Download again to use it.');
  });

  it('says so when HF_TOKEN overrides a saved token', async () => {
    ipc({
      hub_status: () => ({ ...status, tokenSource: '$HF_TOKEN' }),
      list_bundles: () => [bundle(false)],
      list_cached_models: () => [],
    });
    render(Model);
    await flush();
    expect(screen.getByTestId('hub').textContent).toContain('$HF_TOKEN takes precedence over a saved token');
  });

  it('a cancelled download is a note that resume continues, not an error', async () => {
    ipc({
      hub_status: () => status,
      list_bundles: () => [bundle(false)],
      list_cached_models: () => [partial],
      download_bundle: () => Promise.reject({ kind: 'cancelled', message: 'download of sesame/csm-1b/model.safetensors cancelled' }),
    });
    render(Model);
    await flush();
    const card = screen.getByTestId('hub');
    await fireEvent.click(within(card).getByRole('button', { name: 'Resume CSM-1B download' }));
    await flush(10);
    expect(within(card).queryByRole('alert')).toBeNull();
    expect(within(card).getByTestId('hub-note').textContent).toContain('"Resume CSM-1B download" continues where it stopped');
    expect(within(card).getByRole('button', { name: 'Resume CSM-1B download' })).toBeTruthy();
  });

  it('a bundle without model slots (a later role) downloads without touching them', async () => {
    const whisper: BundleInfo = {
      name: 'whisper-tiny',
      description: 'Whisper tiny',
      files: [{ role: 'whisper', repo: 'openai/whisper-tiny', file: 'model.safetensors', cached: null }],
    };
    const log = ipc({
      hub_status: () => status,
      list_bundles: () => [bundle(false), whisper],
      list_cached_models: () => [],
      download_bundle: () => ({
        modelPath: null,
        mimiPath: null,
        tokenizerPath: null,
        files: [{ role: 'whisper', repo: 'openai/whisper-tiny', file: 'model.safetensors', path: '/c/w/model.safetensors' }],
      }),
    });
    render(Model);
    await flush();
    const card = screen.getByTestId('hub');
    expect(within(card).getByTestId('bundle-whisper-tiny').textContent).toContain('Whisper tiny · 0 of 1 files in the cache');
    // Bundles that fill no model slot are folded under "Other models".
    expect(within(card).getByTestId('bundle-whisper-tiny').closest('details')?.querySelector('summary')?.textContent).toBe('Other models (1): whisper-tiny');
    expect(within(card).getByTestId('bundle-csm-1b').closest('details')).toBeNull();
    await fireEvent.click(within(card).getByRole('button', { name: 'Download whisper-tiny' }));
    await flush(10);
    expect(log.of('download_bundle')).toEqual([expect.objectContaining({ name: 'whisper-tiny' })]);
    expect(log.of('inspect_model')).toEqual([]);
    expect(app.notices.at(-1)?.text).toBe(`whisper-tiny downloaded into ${status.cacheDir}`);
  });

  it('lists cached models and packages, and deletes after confirmation (warning when a slot points into it)', async () => {
    const pkg: CachedModel = { repo: 'pypi:resemblyzer==0.1.4', kind: 'package', sizeBytes: 17_090_379, partialBytes: 0, refs: [], files: ['pretrained.pt'] };
    let cached: CachedModel[] = [{ ...partial, partialBytes: 0, sizeBytes: 6.2e9, files: ['config.json', 'model.safetensors'] }, pkg];
    const log = ipc({
      hub_status: () => status,
      list_bundles: () => [bundle(true)],
      list_cached_models: () => cached,
      delete_cached_model: (a) => {
        cached = cached.filter((c) => c.repo !== a.repo);
        return 6.2e9;
      },
    });
    app.models.csm.path = snapshot;
    render(Model);
    await flush();
    const card = screen.getByTestId('hub');
    const table = within(card).getByRole('table', { name: 'Cached models' });
    expect(table.textContent).toMatch(/sesame\/csm-1b\s\(selected\)/);
    expect(table.textContent).toContain('5.8 GB');
    expect(table.textContent).toMatch(/pypi:resemblyzer==0\.1\.4\s\(package\)/);
    await fireEvent.click(within(card).getByRole('button', { name: 'Delete sesame/csm-1b' }));
    const dialog = screen.getByRole('alertdialog');
    expect(dialog.textContent).toContain('The model slots point into it');
    await fireEvent.click(within(dialog).getByRole('button', { name: 'Delete' }));
    await flush(10);
    expect(log.of('delete_cached_model')).toEqual([{ repo: 'sesame/csm-1b' }]);
    expect(table.textContent).not.toContain('sesame/csm-1b');

    await fireEvent.click(within(card).getByRole('button', { name: 'Delete pypi:resemblyzer==0.1.4' }));
    expect(screen.getByRole('alertdialog').textContent).not.toContain('The model slots point into it');
    await fireEvent.click(within(screen.getByRole('alertdialog')).getByRole('button', { name: 'Delete' }));
    await flush(10);
    expect(log.of('delete_cached_model')).toEqual([{ repo: 'sesame/csm-1b' }, { repo: 'pypi:resemblyzer==0.1.4' }]);
    expect(card.textContent).toContain('Nothing cached yet.');
  });
});
