import { describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen, within } from '@testing-library/svelte';
import { emit } from '@tauri-apps/api/event';
import App from '../src/App.svelte';
import Dataset from '../src/screens/Dataset.svelte';
import { app } from '../src/lib/store.svelte';
import { flush, ipc, scanFixture } from './helpers';

const base = { app_info: () => ({ version: '0.1.0', mlxVersion: '0.32.2', backend: 'cpu', os: 'linux', arch: 'x86_64' }) };

describe('dataset drag and drop', () => {
  it('scans folders dropped on the window', async () => {
    const log = ipc({ ...base, scan_dataset: () => scanFixture() });
    render(App);
    await flush();
    app.tab = 'history'; // a drop switches to the Dataset screen
    await emit('tauri://drag-enter', { paths: ['/data/voice'], position: { x: 10, y: 10 } });
    await flush();
    expect(screen.getByTestId('drop-overlay')).toBeTruthy();
    await emit('tauri://drag-drop', { paths: ['/data/voice/audio', '/data/voice/transcripts'], position: { x: 10, y: 10 } });
    await flush();
    expect(screen.queryByTestId('drop-overlay')).toBeNull();
    expect(log.of('scan_dataset')).toEqual([{ paths: ['/data/voice/audio', '/data/voice/transcripts'] }]);
    expect(app.tab).toBe('dataset');
    expect(screen.getByTestId('dataset-table').querySelectorAll('tbody tr')).toHaveLength(12);
    expect(app.config.audio_dir).toBe('/data/voice/audio');
    expect(app.config.transcript_dir).toBe('/data/voice/transcripts');
    expect(screen.getByText('0.32.2', { exact: false })).toBeTruthy();
  });

  it('hides the overlay when the drag leaves', async () => {
    ipc(base);
    render(App);
    await flush();
    await emit('tauri://drag-enter', { paths: ['/x'], position: { x: 0, y: 0 } });
    await flush();
    await emit('tauri://drag-leave', null);
    await flush();
    expect(screen.queryByTestId('drop-overlay')).toBeNull();
  });
});

describe('Dataset screen', () => {
  it('picks folders with the dialog and shows totals, split and problems', async () => {
    const log = ipc({ 'plugin:dialog|open': () => ['/data/voice'], scan_dataset: () => scanFixture() });
    render(Dataset);
    await fireEvent.click(screen.getByRole('button', { name: 'Choose folders…' }));
    await flush();
    expect(log.of('plugin:dialog|open')[0]).toMatchObject({ options: { directory: true, multiple: true } });
    expect(log.of('scan_dataset')[0]).toEqual({ paths: ['/data/voice'] });
    const totals = screen.getByTestId('dataset-totals');
    expect(totals.textContent).toContain('12'); // files
    expect(totals.textContent).toContain('1.5'); // minutes: (46.2 + 42) / 60
    expect(screen.getByTestId('split').textContent).toContain('10 / 1');
    expect(screen.getByText('no transcript')).toBeTruthy();
    expect(screen.getByText('too long')).toBeTruthy();
    expect(screen.getByText('missing')).toBeTruthy();
    // Split follows the slider.
    await fireEvent.input(screen.getByLabelText(/Validation split/), { target: { value: '0.3' } });
    expect(screen.getByTestId('split').textContent).toContain('8 / 3');
    // Problem filter.
    await fireEvent.click(screen.getByLabelText('Only files with problems'));
    expect(screen.getByTestId('dataset-table').querySelectorAll('tbody tr')).toHaveLength(2);
  });

  it('measures the audio used with the segmenting settings, again when they change', async () => {
    vi.useFakeTimers();
    const usage = (trim: boolean) => ({
      recordings: [
        { recording_id: 'a', seconds_in: 4.2, seconds_used: trim ? 3.0 : 4.2, utterances: 1 },
        { recording_id: 'd', seconds_in: 42, seconds_used: 0, utterances: 0 },
      ],
      recordings_used: 1,
      seconds_in: 46.2,
      seconds_used: trim ? 3.0 : 4.2,
      utterances: 1,
      train_utterances: 1,
      validation_utterances: 0,
      train_seconds: trim ? 3.0 : 4.2,
      validation_seconds: 0,
      warnings: ['d: 42.0 s without alignment, skipped'],
    });
    const log = ipc({
      scan_dataset: () => scanFixture(),
      dataset_usage: (a) => usage((a.config as { trim_silence: boolean }).trim_silence),
    });
    render(Dataset);
    await app.scan(['/data/voice']);
    await vi.advanceTimersByTimeAsync(400);
    await flush();
    expect(log.of('dataset_usage')).toHaveLength(1);
    expect(log.of('dataset_usage')[0]).toMatchObject({ config: { audio_dir: '/data/voice/audio', trim_silence: true } });
    const box = () => (screen.getByTestId('dataset-usage').textContent ?? '').replace(/\s+/g, ' ');
    expect(box()).toContain('0.1 min of 0.8 min read (6%), in 1 utterance from 1 of 2 recordings');
    expect(box()).toContain('Edge silence is trimmed to 0.2 s');
    expect(box()).toContain('1 note');
    const row = (file: string) => within(screen.getByTestId('dataset-table')).getByText(file).closest('tr')!;
    expect(row('a.wav').textContent).toContain('0:03.0');
    expect(row('d.wav').textContent).toContain('0:00.0');
    app.config.trim_silence = false;
    await vi.advanceTimersByTimeAsync(400);
    await flush();
    expect(log.of('dataset_usage')).toHaveLength(2);
    expect(row('a.wav').textContent).toContain('0:04.2');
    expect(box()).toContain('Edge silence is kept');
    vi.useRealTimers();
  });

  it('says why training would refuse the dataset', async () => {
    vi.useFakeTimers();
    ipc({
      scan_dataset: () => scanFixture(),
      dataset_usage: () => Promise.reject({ kind: 'invalidInput', message: 'd.wav is 42.0 s long and has no alignment' }),
    });
    render(Dataset);
    await app.scan(['/data/voice']);
    await vi.advanceTimersByTimeAsync(400);
    await flush();
    expect(screen.getByTestId('dataset-usage').textContent).toContain(
      'Training would refuse this dataset: d.wav is 42.0 s long and has no alignment',
    );
    vi.useRealTimers();
  });

  it('does nothing when the dialog is cancelled', async () => {
    const log = ipc({ 'plugin:dialog|open': () => null });
    render(Dataset);
    await fireEvent.click(screen.getByRole('button', { name: 'Choose folders…' }));
    await flush();
    expect(log.of('scan_dataset')).toHaveLength(0);
  });

  it('shows scan errors', async () => {
    ipc({ scan_dataset: () => Promise.reject({ kind: 'notFound', message: 'no audio/ folder under /tmp/x' }) });
    render(Dataset);
    await app.scan(['/tmp/x']);
    await flush();
    expect(screen.getByTestId('dataset-error').textContent).toBe('no audio/ folder under /tmp/x');
  });

  it('plays and stops a clip, and explains a missing audio device', async () => {
    let device = true;
    const log = ipc({
      scan_dataset: () => scanFixture(),
      play_audio: () => (device ? { durationSecs: 4.2 } : Promise.reject({ kind: 'noAudioDevice', message: 'Unknown PCM default' })),
      stop_audio: () => null,
    });
    render(Dataset);
    await app.scan(['/data/voice']);
    await flush();
    const row = screen.getByText('a.wav').closest('tr') as HTMLElement;
    await fireEvent.click(within(row).getByRole('button', { name: 'Play a.wav' }));
    await flush();
    expect(log.of('play_audio')[0]).toEqual({ path: '/data/voice/audio/a.wav', deviceId: null });
    await fireEvent.click(within(row).getByRole('button', { name: 'Stop a.wav' }));
    await flush();
    expect(log.of('stop_audio')).toHaveLength(1);
    device = false;
    await fireEvent.click(within(row).getByRole('button', { name: 'Play a.wav' }));
    await flush();
    expect(screen.getByRole('alert').textContent).toMatch(/No audio output device/);
  });
});
