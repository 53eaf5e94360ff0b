import { describe, expect, it } from 'vitest';
import { fireEvent, render, screen, within } from '@testing-library/svelte';
import { emit } from '@tauri-apps/api/event';
import type { Channel } from '@tauri-apps/api/core';
import App from '../src/App.svelte';
import Dataset from '../src/screens/Dataset.svelte';
import { app } from '../src/lib/store.svelte';
import type { DatasetScan, RecordingsScan, TranscriptionEvent, TranscriptionSummary } from '../src/lib/api';
import { type Transcription, applyTranscriptionEvent, idleTranscription } from '../src/lib/transcription';
import { flush, ipc, scanFixture } from './helpers';
import fixture from '../../docs/ipc-fixtures/transcription-events.json';

const RAW = '/home/me/voice-memos';
const OUT = `${RAW}/dataset`;

function recordings(transcribed: string[] = []): RecordingsScan {
  const rec = (file: string, over: Partial<RecordingsScan['items'][number]> = {}) => ({
    file,
    path: `${RAW}/${file}`,
    durationSecs: 61.5,
    sampleRate: 44100,
    channels: 2,
    codec: 'mp3',
    error: null,
    transcribed: transcribed.includes(file.replace(/\.[^.]+$/, '')),
    ...over,
  });
  const items = [
    rec('memo1.mp3'),
    rec('memo2.m4a', { codec: 'aac', durationSecs: 30 }),
    rec('broken.mp3', { durationSecs: null, sampleRate: null, channels: null, codec: null, error: `${RAW}/broken.mp3: cannot decode audio: not audio` }),
  ];
  return { dir: RAW, outputDir: OUT, items, seconds: 91.5, transcribed: items.filter((i) => i.transcribed).length };
}

/** The dataset the transcription made (two clips, aligned). */
function madeDataset(): DatasetScan {
  const base = scanFixture();
  const items = ['memo1', 'memo2'].map((n, i) => ({
    ...base.items[0]!,
    file: `${n}.wav`,
    path: `${OUT}/audio/${n}.wav`,
    transcriptPath: `${OUT}/transcripts/${n}.txt`,
    transcript: i === 0 ? 'hello there' : 'second memo',
    hasAlignment: true,
  }));
  return {
    root: OUT,
    audioDir: `${OUT}/audio`,
    transcriptDir: `${OUT}/transcripts`,
    alignmentDir: `${OUT}/alignments`,
    items,
    totals: { files: 2, seconds: 91.5, withTranscript: 2, withProblems: 0, usable: 2 },
    speakerFolders: [],
    speakersFile: null,
  };
}

describe('transcription state', () => {
  it('reduces the shared wire-format fixture (docs/ipc-fixtures/transcription-events.json)', () => {
    let t: Transcription = { ...idleTranscription(), status: 'running' };
    for (const e of fixture as TranscriptionEvent[]) t = applyTranscriptionEvent(t, e);
    expect(t).toMatchObject({ model: 'whisper-tiny', phase: 'transcribing', files: 2, skipped: 1, totalSecs: 90.5, etaSecs: 12.1 });
    expect(t.results.map((r) => [r.name, r.ok])).toEqual([
      ['memo1', true],
      ['memo2', false],
    ]);
  });

  it('follows the events: model, files, overall and per-file seconds, results', () => {
    const events: TranscriptionEvent[] = [
      { event: 'loading', data: { model: 'openai/whisper-tiny' } },
      { event: 'downloading', data: { repo: 'openai/whisper-tiny', file: 'model.safetensors', done: 10, total: 100 } },
      { event: 'started', data: { files: 2, totalSecs: 90, skipped: 1 } },
      { event: 'fileStarted', data: { name: 'a', index: 0, durationSecs: 60 } },
      { event: 'progress', data: { name: 'a', fileDoneSecs: 30, fileSecs: 60, doneSecs: 30, totalSecs: 90, elapsedSecs: 3, etaSecs: 6 } },
      { event: 'fileDone', data: { name: 'a', text: 'hi' } },
      { event: 'fileFailed', data: { name: 'b', error: 'b.mp3: not audio' } },
    ];
    let t: Transcription = { ...idleTranscription(), status: 'running' };
    const seen = events.map((e) => (t = applyTranscriptionEvent(t, e)));
    expect(seen[1]!.download).toEqual({ repo: 'openai/whisper-tiny', file: 'model.safetensors', done: 10, total: 100 });
    expect(seen[2]).toMatchObject({ phase: 'transcribing', download: null, files: 2, skipped: 1, totalSecs: 90 });
    expect(seen[4]).toMatchObject({ doneSecs: 30, etaSecs: 6, current: { name: 'a', doneSecs: 30, secs: 60 } });
    // A finished file counts whole, even if its last window was reported short.
    expect(seen[5]).toMatchObject({ doneSecs: 60, current: null });
    expect(t.results).toEqual([
      { name: 'a', ok: true, detail: 'hi' },
      { name: 'b', ok: false, detail: 'b.mp3: not audio' },
    ]);
  });
});

describe('raw recordings on the Dataset screen', () => {
  it('a dropped folder of recordings is transcribed with progress, then proofread', async () => {
    let channel: Channel<TranscriptionEvent> | null = null;
    let finish: (s: TranscriptionSummary) => void = () => {};
    let done = false;
    const log = ipc({
      app_info: () => ({ version: '0.1.0', mlxVersion: '0.32.2', backend: 'cpu', os: 'linux', arch: 'x86_64' }),
      blas_status: () => ({ kernels: 'Haswell', cpu: 'x', origin: 'fits', recommended: null, warning: null }),
      scan_dataset: (a) =>
        done && (a.paths as string[])[0] === OUT
          ? madeDataset()
          : Promise.reject({ kind: 'invalidInput', message: `no transcripts folder given with ${RAW}` }),
      scan_recordings: () => recordings(done ? ['memo1', 'memo2'] : []),
      whisper_models: () => [
        { repo: 'openai/whisper-large-v3-turbo', bundle: 'whisper-large-v3-turbo', description: 'Whisper large-v3-turbo', path: null, sizeBytes: 0 },
        { repo: 'openai/whisper-tiny', bundle: 'whisper-tiny', description: 'Whisper tiny', path: '/cache/whisper-tiny', sizeBytes: 151_000_000 },
      ],
      transcribe_recordings: (a) => {
        channel = a.onEvent as Channel<TranscriptionEvent>;
        return new Promise((resolve) => (finish = resolve));
      },
      list_excluded: () => [],
      audio_peaks: () => [0.1, 0.5, 0.2],
      dataset_usage: () => Promise.reject({ kind: 'invalidInput', message: 'not measured here' }),
    });
    render(App);
    await flush();
    await emit('tauri://drag-drop', { paths: [RAW], position: { x: 5, y: 5 } });
    await flush(10);
    expect(log.of('scan_recordings')[0]).toEqual({ dir: RAW, outputDir: null });
    expect(screen.queryByTestId('dataset-error')).toBeNull();
    const table = screen.getByTestId('recordings-table');
    expect(table.querySelectorAll('tbody tr')).toHaveLength(3);
    expect(within(table).getByText('unreadable')).toBeTruthy();
    expect(screen.getByTestId('transcription-output').textContent).toBe(OUT);

    // The cached model is proposed; English, greedy.
    const model = screen.getByLabelText('Whisper model') as HTMLInputElement;
    expect(model.value).toBe('openai/whisper-tiny');
    await fireEvent.change(screen.getByLabelText('Language'), { target: { value: 'en' } });
    await fireEvent.change(screen.getByLabelText('Temperature'), { target: { value: '0' } });
    await fireEvent.click(screen.getByRole('button', { name: 'Transcribe 2 recordings' }));
    await flush();
    expect(log.of('transcribe_recordings')[0]).toMatchObject({
      request: { audioDir: RAW, outputDir: OUT, whisperModel: 'openai/whisper-tiny', language: 'en', temperature: 0, overwrite: false },
    });
    const send = (e: TranscriptionEvent) => channel!.onmessage(e);
    send({ event: 'loading', data: { model: 'openai/whisper-tiny' } });
    send({ event: 'started', data: { files: 3, totalSecs: 91.5, skipped: 0 } });
    send({ event: 'fileStarted', data: { name: 'memo1', index: 0, durationSecs: 61.5 } });
    send({ event: 'progress', data: { name: 'memo1', fileDoneSecs: 30, fileSecs: 61.5, doneSecs: 30, totalSecs: 91.5, elapsedSecs: 12, etaSecs: 24.6 } });
    await flush();
    const status = screen.getByTestId('transcription-status').textContent!.replace(/\s+/g, ' ');
    expect(status).toContain('File 1 of 3: memo1 (0:30.0 of 1:01.5)');
    expect(status).toContain('0.5 of 1.5 audio minutes, 25s left');
    expect(screen.getByRole('progressbar', { name: 'Transcription progress' }).getAttribute('aria-valuenow')).toBe('30');
    expect(screen.getByRole('button', { name: 'Stop transcribing' })).toBeTruthy();
    send({ event: 'fileDone', data: { name: 'memo1', text: 'hello there' } });
    send({ event: 'fileFailed', data: { name: 'broken', error: 'broken.mp3: cannot decode audio' } });
    await flush();
    expect(screen.getByTestId('transcription-results').textContent).toContain('broken.mp3: cannot decode audio');

    done = true;
    finish({ outputDir: OUT, transcribed: ['memo1', 'memo2'], skipped: [], failed: [{ file: 'broken.mp3', reason: 'not audio' }], audioSecs: 91.5 });
    await flush(15);
    // The new dataset is scanned and opens in the proofreading view.
    expect(log.of('scan_recordings').at(-1)).toEqual({ dir: RAW, outputDir: OUT });
    expect(log.of('scan_dataset').at(-1)).toEqual({ paths: [OUT] });
    expect(screen.getAllByTestId('utterance')).toHaveLength(2);
    expect(app.config.audio_dir).toBe(`${OUT}/audio`);
    expect(app.notices.at(-1)?.text).toBe('Transcribed 2 recording(s); 1 failed');
  });

  it('stops a transcription and says what was kept', async () => {
    let reject: (e: unknown) => void = () => {};
    const log = ipc({
      scan_dataset: () => Promise.reject({ kind: 'invalidInput', message: 'no transcripts' }),
      scan_recordings: () => recordings(),
      whisper_models: () => [],
      transcribe_recordings: () => new Promise((_, r) => (reject = r)),
      cancel_transcription: () => {
        reject({ kind: 'cancelled', message: 'transcription cancelled after 0 of 3 recordings were written' });
        return null;
      },
    });
    render(Dataset);
    await app.scan([RAW]);
    await flush();
    await fireEvent.click(screen.getByLabelText(/Overwrite/));
    await fireEvent.click(screen.getByRole('button', { name: 'Transcribe all recordings' }));
    await flush();
    expect(log.of('transcribe_recordings')[0]).toMatchObject({ request: { overwrite: true, language: null, temperature: null } });
    await fireEvent.click(screen.getByRole('button', { name: 'Stop transcribing' }));
    await flush(10);
    expect(log.of('cancel_transcription')).toHaveLength(1);
    expect(app.transcription.status).toBe('cancelled');
    expect(screen.getByRole('alert').textContent).toContain('cancelled after 0 of 3');
  });

  it('a folder that is neither a dataset nor recordings shows the scan error', async () => {
    ipc({
      scan_dataset: () => Promise.reject({ kind: 'invalidInput', message: '/x holds neither audio nor transcripts' }),
      scan_recordings: () => Promise.reject({ kind: 'invalidInput', message: '/x holds no audio files' }),
    });
    render(Dataset);
    await app.scan(['/x']);
    await flush();
    expect(screen.getByTestId('dataset-error').textContent).toBe('/x holds neither audio nor transcripts');
    expect(screen.queryByTestId('recordings')).toBeNull();
  });

  it('offers to transcribe a dataset’s own clips in place, without overwriting', async () => {
    const log = ipc({ scan_dataset: () => scanFixture(), whisper_models: () => [], transcribe_recordings: () => new Promise(() => {}) });
    render(Dataset);
    await app.scan(['/data/voice']);
    await flush();
    const box = screen.getByTestId('recordings');
    expect(box.textContent).toContain('1 recording has no transcript');
    expect(within(box).queryByLabelText(/Overwrite/)).toBeNull();
    await fireEvent.click(within(box).getByRole('button', { name: 'Transcribe 1 recording' }));
    await flush();
    expect(log.of('transcribe_recordings')[0]).toMatchObject({
      request: { audioDir: '/data/voice/audio', outputDir: '/data/voice', overwrite: false },
    });
  });
});

describe('proofreading', () => {
  it('saves an edit, says the alignment went stale, drops and restores a recording', async () => {
    let scan = madeDataset();
    let excluded: { id: string; files: string[] }[] = [];
    const log = ipc({
      scan_dataset: () => scan,
      list_excluded: () => excluded,
      audio_peaks: () => [0.2, 0.9],
      dataset_usage: () => Promise.reject({ kind: 'invalidInput', message: 'n/a' }),
      save_transcript: (a) => {
        scan = {
          ...scan,
          items: scan.items.map((i) => (i.file === 'memo1.wav' ? { ...i, transcript: a.text as string, hasAlignment: false, alignmentStale: true } : i)),
        };
        return { path: `${OUT}/transcripts/memo1.txt`, text: a.text, alignment: 'madeStale' };
      },
      exclude_recording: (a) => {
        excluded = [{ id: a.id as string, files: [`${OUT}/audio/excluded/${a.id as string}.wav`] }];
        scan = { ...scan, items: scan.items.filter((i) => i.file !== `${a.id as string}.wav`) };
        return excluded[0];
      },
      restore_recording: () => {
        excluded = [];
        scan = madeDataset();
        return [`${OUT}/audio/memo2.wav`];
      },
    });
    render(Dataset);
    await app.scan([OUT]);
    await flush();
    await fireEvent.click(screen.getByRole('tab', { name: 'Proofread' }));
    await flush();
    expect(log.of('audio_peaks').map((a) => a.path)).toEqual([`${OUT}/audio/memo1.wav`, `${OUT}/audio/memo2.wav`]);
    const row = () => screen.getAllByTestId('utterance').find((u) => u.dataset.file === 'memo1.wav')!;
    expect(within(row()).getByText('aligned')).toBeTruthy();
    const save = within(row()).getByRole('button', { name: 'Save' }) as HTMLButtonElement;
    expect(save.disabled).toBe(true);
    await fireEvent.input(within(row()).getByLabelText('Text of memo1.wav'), { target: { value: 'Hello, where?' } });
    expect(save.disabled).toBe(false);
    await fireEvent.click(save);
    await flush(10);
    expect(log.of('save_transcript')[0]).toEqual({
      folders: { audioDir: `${OUT}/audio`, transcriptDir: `${OUT}/transcripts`, alignmentDir: `${OUT}/alignments` },
      id: 'memo1',
      text: 'Hello, where?',
    });
    expect(row().textContent).toContain('moved to alignments/stale/');
    expect(within(row()).getByText('alignment stale')).toBeTruthy();
    expect((within(row()).getByLabelText('Text of memo1.wav') as HTMLTextAreaElement).value).toBe('Hello, where?');

    await fireEvent.click(screen.getByRole('button', { name: 'Drop memo2.wav' }));
    await flush(10);
    expect(log.of('exclude_recording')[0]).toMatchObject({ id: 'memo2' });
    expect(screen.getAllByTestId('utterance')).toHaveLength(1);
    expect(screen.getByTestId('excluded').textContent).toContain('memo2');
    await fireEvent.click(screen.getByRole('button', { name: 'Restore memo2' }));
    await flush(10);
    expect(log.of('restore_recording')[0]).toMatchObject({ id: 'memo2' });
    expect(screen.getAllByTestId('utterance')).toHaveLength(2);
    expect(screen.queryByTestId('excluded')).toBeNull();
  });

  it('shows why a save was refused and keeps the edit', async () => {
    ipc({
      scan_dataset: () => madeDataset(),
      list_excluded: () => [],
      audio_peaks: () => [],
      save_transcript: () => Promise.reject({ kind: 'io', message: `${OUT}/transcripts: permission denied` }),
    });
    render(Dataset);
    await app.scan([OUT]);
    await flush();
    await fireEvent.click(screen.getByRole('tab', { name: 'Proofread' }));
    await flush();
    const box = screen.getByLabelText('Text of memo2.wav') as HTMLTextAreaElement;
    await fireEvent.input(box, { target: { value: 'changed' } });
    await fireEvent.click(within(box.closest('[data-testid="utterance"]') as HTMLElement).getByRole('button', { name: 'Save' }));
    await flush();
    expect(screen.getByRole('alert').textContent).toBe(`Not saved: ${OUT}/transcripts: permission denied`);
    expect(box.value).toBe('changed');
  });
});

describe('BLAS warning at start-up', () => {
  it('shows the backend warning until dismissed', async () => {
    const warning = 'OpenBLAS runs its Prescott kernels, but Intel Xeon supports the faster Cooperlake set';
    ipc({ blas_status: () => ({ kernels: 'Prescott', cpu: 'Intel Xeon', origin: 'narrow', recommended: 'Cooperlake', warning }) });
    render(App);
    await flush();
    expect(screen.getByTestId('blas-warning').textContent).toContain(warning);
    await fireEvent.click(screen.getByRole('button', { name: 'Dismiss the BLAS warning' }));
    expect(screen.queryByTestId('blas-warning')).toBeNull();
  });

  it('shows nothing when the kernels fit', async () => {
    const log = ipc({ blas_status: () => ({ kernels: 'Haswell', cpu: 'x', origin: 'fits', recommended: null, warning: null }) });
    render(App);
    await flush();
    expect(log.of('blas_status')).toHaveLength(1);
    expect(screen.queryByTestId('blas-warning')).toBeNull();
  });
});
