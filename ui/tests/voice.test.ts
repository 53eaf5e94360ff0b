import { beforeEach, describe, expect, it } from 'vitest';
import { fireEvent, render, screen, within } from '@testing-library/svelte';
import { emit } from '@tauri-apps/api/event';
import type { Channel } from '@tauri-apps/api/core';
import App from '../src/App.svelte';
import Voices from '../src/screens/Voices.svelte';
import { app } from '../src/lib/store.svelte';
import { voices } from '../src/lib/voices.svelte';
import { type Journey, abPairs, applyFlowEvent, endRunning, idleJourney, improved, progressText, scoreRows, stateLine, usableAdapter } from '../src/lib/voice';
import type { FlowEvent, NewVoiceRequest, VoiceEntry, VoiceReport } from '../src/lib/api';
import { flush, ipc, scanFixture } from './helpers';

function voice(over: Partial<VoiceEntry> = {}): VoiceEntry {
  const dir = '/app/voices/ann';
  const sample = (step: number, prompt: number, similarity: number) => ({
    step,
    prompt,
    text: `Prompt ${prompt}.`,
    path: `${dir}/run/samples/step_${String(step).padStart(7, '0')}/prompt_${prompt}.wav`,
    similarity,
    wer: 0.5,
    durationSecs: 1.5,
  });
  return {
    id: 'ann',
    dir,
    name: 'Ann',
    speakerName: null,
    rawDir: '/data/raw',
    createdUnixS: 1_780_000_000,
    updatedUnixS: 1_780_000_100,
    stages: (['download', 'transcribe', 'dataset', 'train', 'summary'] as const).map((stage) => ({ stage, status: 'done' as const, seconds: 3 })),
    complete: true,
    dataset: { recordings: 3, minutesIn: 1.5, minutesUsed: 1.25, utterances: 9 },
    steps: 6,
    scores: {
      base: { step: 0, similarity: 0.41, wer: 0.9, cer: 0.7, healthWarnings: 0 },
      best: { step: 4, similarity: 0.62, wer: 0.95, cer: 0.8, healthWarnings: 1 },
      last: { step: 6, similarity: 0.55, wer: 0.9, cer: 0.7, healthWarnings: 0 },
    },
    adapters: [
      { kind: 'best', step: 4, path: `${dir}/run/adapters_best.safetensors` },
      { kind: 'final', step: 6, path: `${dir}/run/adapters.safetensors` },
      { kind: 'checkpoint', step: 6, path: `${dir}/run/checkpoint_step_0000006.safetensors` },
    ],
    samples: [sample(0, 1, 0.4), sample(0, 2, 0.42), sample(4, 1, 0.6), sample(4, 2, 0.64)],
    models: { modelPath: '/hub/csm-1b', mimiPath: '/hub/mimi.safetensors', tokenizerPath: null, speakerId: 0 },
    ...over,
  };
}

const report = (step: number, similarity: number): VoiceReport => ({
  step,
  checkpoint: step ? `/c/${step}` : null,
  summary: { similarity, wer: 0.5, cer: 0.25, healthWarnings: 0, samples: 1 },
  samples: [],
  bestStep: step ? step : null,
  newBest: step > 0,
});

beforeEach(() => {
  voices.journey = idleJourney();
  voices.reset();
  voices.review = true;
  voices.model = 'bundle';
  voices.whisper = 'whisper-large-v3-turbo';
  voices.steps = null;
  voices.saveEvery = null;
  voices.library = null;
});

describe('the New voice stage list', () => {
  it('folds the dataset stage into training and the summary into listening, with progress and ETA', () => {
    let j: Journey = { ...idleJourney(), status: 'running' };
    const ev = (e: FlowEvent) => (j = applyFlowEvent(j, e));
    ev({ event: 'stageStarted', data: { stage: 'download', detail: 'models' } });
    ev({ event: 'stageProgress', data: { stage: 'download', done: 5e6, total: 2e7, unit: 'bytes', eta_s: 12, item: 'sesame/csm-1b/model.safetensors' } });
    expect(j.steps.download).toMatchObject({ status: 'running', etaSecs: 12, item: 'sesame/csm-1b/model.safetensors' });
    expect(progressText(j.steps.download)).toBe('5.0 of 20.0 MB');
    ev({ event: 'stageFinished', data: { stage: 'download', end: 'done', seconds: 4, note: '1 bundle fetched' } });
    expect(j.steps.download).toMatchObject({ status: 'done', etaSecs: null, note: '1 bundle fetched', seconds: 4 });
    ev({ event: 'stageFinished', data: { stage: 'transcribe', end: 'skipped', seconds: 0, note: 'done by an earlier run' } });
    expect(j.steps.transcribe.status).toBe('skipped');
    // The second call (after the review) finds the download done: it stays done, with its note.
    ev({ event: 'stageStarted', data: { stage: 'download', detail: 'models' } });
    ev({ event: 'stageFinished', data: { stage: 'download', end: 'skipped', seconds: 0, note: 'every model cached' } });
    expect(j.steps.download).toMatchObject({ status: 'done', note: '1 bundle fetched' });
    ev({ event: 'stageStarted', data: { stage: 'dataset', detail: 'cutting' } });
    ev({ event: 'stageFinished', data: { stage: 'dataset', end: 'done', seconds: 2, note: '9 utterances' } });
    expect(j.steps.train.status).toBe('running');
    ev({ event: 'settings', data: { choices: [{ name: 'lora_r', value: 16, chosen_by: 'recipe', reason: 'few minutes of audio' }] } });
    ev({ event: 'stageStarted', data: { stage: 'train', detail: 'training' } });
    ev({ event: 'stageProgress', data: { stage: 'train', done: 3, total: 8, unit: 'steps', eta_s: 30, item: null } });
    expect(progressText(j.steps.train)).toBe('step 3 of 8');
    ev({ event: 'train', data: { event: 'voiceScores', data: report(0, 0.4) } });
    ev({ event: 'train', data: { event: 'voiceScores', data: report(4, 0.5) } });
    ev({ event: 'train', data: { event: 'voiceScores', data: report(4, 0.6) } });
    expect(j.voice.map((r) => [r.step, r.summary.similarity])).toEqual([[0, 0.4], [4, 0.6]]);
    ev({ event: 'stageFinished', data: { stage: 'train', end: 'done', seconds: 40, note: '8 steps' } });
    expect(j.steps.train).toMatchObject({ status: 'done', seconds: 42 });
    ev({ event: 'stageStarted', data: { stage: 'summary', detail: 'summary' } });
    ev({ event: 'finished', data: { summary: {} as never } });
    expect(j.steps.listen.status).toBe('done');
    expect(j.settings).toHaveLength(1);
  });

  it('marks the running stage failed or stopped', () => {
    let j = applyFlowEvent({ ...idleJourney(), status: 'running' }, { event: 'stageStarted', data: { stage: 'transcribe', detail: '' } });
    j = endRunning(j, 'cancelled', { kind: 'cancelled', message: 'stopped during the transcribe stage' });
    expect(j.status).toBe('cancelled');
    expect(j.steps.transcribe.status).toBe('cancelled');
    expect(j.steps.download.status).toBe('pending');
  });
});

describe('a voice card', () => {
  it('compares the base model with the best checkpoint and pairs their samples', () => {
    const v = voice();
    const [sim, wer] = scoreRows(v);
    expect([sim?.base, sim?.best, improved(sim!)]).toEqual([0.41, 0.62, true]);
    expect([wer?.format(wer.best ?? null), improved(wer!)]).toEqual(['95.0%', false]);
    expect(abPairs(v).map((p) => [p.prompt, p.a.step, p.b.step])).toEqual([[1, 0, 4], [2, 0, 4]]);
    expect(usableAdapter(v)).toBe('/app/voices/ann/run/adapters_best.safetensors');
    expect(usableAdapter(voice({ adapters: [{ kind: 'final', step: 6, path: '/f' }] }))).toBe('/f');
    expect(usableAdapter(voice({ adapters: [] }))).toBeNull();
    expect(scoreRows(voice({ scores: null }))).toEqual([]);
  });

  it('says where an unfinished voice stopped', () => {
    const stages = voice().stages.map((s) => (s.stage === 'train' ? { ...s, status: 'cancelled' as const } : s.stage === 'summary' ? { ...s, status: 'pending' as const } : s));
    expect(stateLine(voice({ complete: false, stages }))).toBe('stopped in train');
    expect(stateLine(voice())).toBe('ready');
  });
});

describe('New voice screen', () => {
  it('takes a dropped folder, stops for proofreading, trains, and ends on the voice card', async () => {
    let channel: Channel<FlowEvent> | null = null;
    let finish: ((v: unknown) => void) | null = null;
    const scan = scanFixture();
    const log = ipc({
      app_info: () => ({ version: '0', mlxVersion: '0', backend: 'cpu', os: 'linux', arch: 'x86_64' }),
      blas_status: () => ({ kernels: null, cpu: null, origin: 'notOpenblas', recommended: null, warning: null }),
      whisper_models: () => [
        { repo: 'openai/whisper-large-v3-turbo', bundle: 'whisper-large-v3-turbo', description: null, path: null, sizeBytes: 0 },
        { repo: 'openai/whisper-tiny', bundle: 'whisper-tiny', description: null, path: '/hub/whisper-tiny', sizeBytes: 1 },
      ],
      scan_recordings: (a) => ({ dir: a.dir, outputDir: `${a.dir as string}/dataset`, items: [{ file: 'a.mp3', path: '/data/my-voice/a.mp3', durationSecs: 60, sampleRate: 44100, channels: 2, codec: 'mp3', error: null, transcribed: false }], seconds: 60, transcribed: 0 }),
      start_voice: (a) => {
        channel = a.onEvent as Channel<FlowEvent>;
        return new Promise((r) => (finish = r));
      },
      scan_dataset: () => scan,
      list_excluded: () => [],
      audio_peaks: () => [0.1, 0.2],
      voice_library: () => ({ dir: '/app/voices', voices: [voice()], unreadable: [] }),
      inspect_model: (a) => ({ path: a.path, kind: a.kind, format: 'safetensors', sizeBytes: 1, dtype: 'float32', parameters: 1, details: {} }),
    });
    app.tab = 'newvoice';
    render(App);
    await flush();
    await emit('tauri://drag-drop', { paths: ['/data/my-voice'], position: { x: 1, y: 1 } });
    await flush(10);
    expect(log.of('scan_recordings')[0]).toEqual({ dir: '/data/my-voice', outputDir: null });
    expect(app.tab).toBe('newvoice');
    expect((screen.getByLabelText('Voice name') as HTMLInputElement).value).toBe('my voice');
    // The cached Whisper is proposed.
    expect((screen.getByLabelText('Whisper model') as HTMLSelectElement).value).toBe('/hub/whisper-tiny');

    await fireEvent.click(screen.getByRole('button', { name: 'Make the voice' }));
    await flush();
    const first = log.of('start_voice')[0]?.request as NewVoiceRequest;
    expect(first).toMatchObject({ rawDir: '/data/my-voice', name: 'my voice', voiceDir: null, model: 'csm-1b', whisper: '/hub/whisper-tiny', speakerEncoder: 'speaker-encoder', stopAfter: 'transcribe' });
    channel!.onmessage({ event: 'stageStarted', data: { stage: 'download', detail: 'models' } });
    channel!.onmessage({ event: 'stageProgress', data: { stage: 'download', done: 1e6, total: 4e6, unit: 'bytes', eta_s: 90, item: 'unsloth/Llama-3.2-1B/tokenizer.json' } });
    await flush();
    const dl = screen.getByTestId('voice-stage-download');
    expect(dl.dataset.status).toBe('running');
    expect(dl.textContent).toContain('1m 30s left');
    expect(within(dl).getByRole('progressbar').getAttribute('aria-valuenow')).toBe('1000000');
    channel!.onmessage({ event: 'stageFinished', data: { stage: 'download', end: 'done', seconds: 3, note: 'fetched' } });
    channel!.onmessage({ event: 'stageFinished', data: { stage: 'transcribe', end: 'done', seconds: 5, note: '1 transcribed' } });
    finish!({ finished: false, stoppedAfter: 'transcribe', voice: voice({ complete: false, scores: null, adapters: [], samples: [] }), datasetDir: '/app/voices/ann/dataset' });
    await flush(10);
    expect(screen.getByTestId('voice-stage-review').dataset.status).toBe('waiting');
    expect(log.of('scan_dataset')[0]).toEqual({ paths: ['/app/voices/ann/dataset'] });
    expect(screen.getAllByTestId('utterance').length).toBeGreaterThan(0);

    await fireEvent.click(screen.getByRole('button', { name: 'Done: train the voice' }));
    await flush();
    const second = log.of('start_voice')[1]?.request as NewVoiceRequest;
    expect(second).toMatchObject({ voiceDir: '/app/voices/ann', stopAfter: null });
    expect(screen.getByTestId('voice-stage-review').dataset.status).toBe('done');
    channel!.onmessage({ event: 'stageStarted', data: { stage: 'train', detail: 'training' } });
    channel!.onmessage({ event: 'train', data: { event: 'voiceScores', data: report(0, 0.41) } });
    await flush();
    expect(screen.getByTestId('voice-live-scores').textContent).toContain('base similarity 0.410');
    channel!.onmessage({ event: 'stageFinished', data: { stage: 'train', end: 'done', seconds: 30, note: '6 steps' } });
    channel!.onmessage({ event: 'finished', data: { summary: {} as never } });
    finish!({ finished: true, stoppedAfter: null, voice: voice(), datasetDir: '/app/voices/ann/dataset' });
    await flush(10);
    const card = screen.getByTestId('voice-card');
    expect(within(card).getByTestId('voice-scores-table').textContent).toContain('0.620');
    expect(within(card).getAllByRole('button', { name: /^Play A · base model/ })).toHaveLength(2);

    // "Use this voice": the Samples screen with the voice's model and best adapter.
    await fireEvent.click(within(card).getByRole('button', { name: 'Use this voice' }));
    await flush();
    expect(app.tab).toBe('samples');
    expect(app.preselectedAdapter).toBe('/app/voices/ann/run/adapters_best.safetensors');
    expect(app.config.model_path).toBe('/hub/csm-1b');
    expect(app.config.mimi_path).toBe('/hub/mimi.safetensors');
    expect(app.config.tokenizer_path).toBeNull();
  });

  it('opens the review when transcription ends while the models still download, and trains once they are in', async () => {
    let channel: Channel<FlowEvent> | null = null;
    const finishes: ((v: unknown) => void)[] = [];
    const scan = scanFixture();
    const log = ipc({
      whisper_models: () => [],
      scan_recordings: (a) => ({ dir: a.dir, outputDir: '', items: [{ file: 'a.wav', path: '/r/a.wav', durationSecs: 5, sampleRate: 24000, channels: 1, codec: 'pcm', error: null, transcribed: false }], seconds: 5, transcribed: 0 }),
      start_voice: (a) => {
        channel = a.onEvent as Channel<FlowEvent>;
        return new Promise((r) => finishes.push(r));
      },
      scan_dataset: () => scan,
      list_excluded: () => [],
      audio_peaks: () => [0.1, 0.2],
      voice_library: () => ({ dir: '/app/voices', voices: [], unreadable: [] }),
    });
    const NewVoice = (await import('../src/screens/NewVoice.svelte')).default;
    render(NewVoice);
    await voices.setFolder(['/r']);
    await flush();
    await fireEvent.click(screen.getByRole('button', { name: 'Make the voice' }));
    await flush();
    const send = (e: FlowEvent) => channel!.onmessage(e);
    send({ event: 'opened', data: { voice_dir: '/app/voices/ann', dataset_dir: '/app/voices/ann/dataset' } });
    send({ event: 'stageStarted', data: { stage: 'download', detail: 'models' } });
    send({ event: 'message', data: { stage: 'download', text: 'downloading csm-1b while the recordings are transcribed' } });
    send({ event: 'stageStarted', data: { stage: 'transcribe', detail: 'whisper' } });
    send({ event: 'stageProgress', data: { stage: 'download', done: 1e9, total: 6e9, unit: 'bytes', eta_s: 600, item: 'sesame/csm-1b/model.safetensors' } });
    send({ event: 'stageProgress', data: { stage: 'transcribe', done: 30, total: 60, unit: 'audio_seconds', eta_s: 20, item: 'a' } });
    await flush();
    // Both stages run at once.
    expect(screen.getByTestId('voice-stage-download').dataset.status).toBe('running');
    expect(screen.getByTestId('voice-stage-transcribe').dataset.status).toBe('running');
    send({ event: 'stageFinished', data: { stage: 'transcribe', end: 'done', seconds: 40, note: '1 transcribed' } });
    await flush(10);
    // The review is open on the voice's dataset, the call still downloading.
    expect(screen.getByTestId('voice-stage-review').dataset.status).toBe('waiting');
    expect(screen.getByTestId('voice-stage-download').dataset.status).toBe('running');
    expect(log.of('scan_dataset')[0]).toEqual({ paths: ['/app/voices/ann/dataset'] });
    expect(screen.getAllByTestId('utterance').length).toBeGreaterThan(0);
    expect(screen.getByTestId('voice-review-downloading')).toBeTruthy();
    expect(screen.getByRole('button', { name: 'Stop' })).toBeTruthy();
    // Done before the download is: training waits for the first call.
    await fireEvent.click(screen.getByRole('button', { name: 'Done: train the voice' }));
    await flush();
    expect(log.of('start_voice')).toHaveLength(1);
    expect(screen.getByTestId('voice-stage-review').dataset.status).toBe('done');
    send({ event: 'stageFinished', data: { stage: 'download', end: 'done', seconds: 700, note: 'downloaded csm-1b' } });
    finishes[0]!({ finished: false, stoppedAfter: 'transcribe', voice: voice({ complete: false, scores: null, adapters: [], samples: [] }), datasetDir: '/app/voices/ann/dataset' });
    await flush(10);
    expect(log.of('start_voice')).toHaveLength(2);
    expect(log.of('start_voice')[1]?.request as NewVoiceRequest).toMatchObject({ voiceDir: '/app/voices/ann', stopAfter: null });
    expect(screen.getByTestId('voice-stage-download').dataset.status).toBe('done');
    expect(voices.journey.status).toBe('running');
    finishes[1]!({ finished: true, stoppedAfter: null, voice: voice(), datasetDir: '/app/voices/ann/dataset' });
    await flush(10);
    expect(voices.journey.status).toBe('finished');
  });

  it('shows why the journey failed and offers to continue it', async () => {
    const log = ipc({
      whisper_models: () => [],
      scan_recordings: (a) => ({ dir: a.dir, outputDir: '', items: [{ file: 'a.wav', path: '/r/a.wav', durationSecs: 5, sampleRate: 24000, channels: 1, codec: 'pcm', error: null, transcribed: false }], seconds: 5, transcribed: 0 }),
      start_voice: () => Promise.reject({ kind: 'download', message: 'downloading csm-1b: connection refused' }),
      // The folder the failed journey left, and an older finished voice of the same recordings.
      voice_library: () => ({
        dir: '/v',
        voices: [voice({ dir: '/v/r', name: 'r', rawDir: '/r', complete: false, createdUnixS: 2 }), voice({ dir: '/v/old', name: 'r', rawDir: '/r', complete: true, createdUnixS: 1 })],
        unreadable: [],
      }),
    });
    const NewVoice = (await import('../src/screens/NewVoice.svelte')).default;
    render(NewVoice);
    await voices.setFolder(['/r']);
    voices.review = false;
    await flush();
    await fireEvent.click(screen.getByRole('button', { name: 'Make the voice' }));
    await flush(10);
    expect(screen.getByTestId('new-voice-error').textContent).toContain('connection refused');
    expect(screen.getByTestId('voice-stage-review').dataset.status).toBe('skipped');
    // "Continue" goes on in the folder the journey started.
    await fireEvent.click(screen.getByRole('button', { name: 'Continue where it stopped' }));
    await flush(10);
    expect((log.of('start_voice')[1]?.request as NewVoiceRequest).voiceDir).toBe('/v/r');
  });
});

describe('Voices screen', () => {
  it('renames, deletes after confirmation and exports a voice', async () => {
    const log = ipc({
      voice_library: () => ({ dir: '/app/voices', voices: [voice()], unreadable: [{ dir: '/app/voices/old', error: '/app/voices/old/voice.json: EOF' }] }),
      rename_voice: (a) => voice({ name: a.name as string }),
      delete_voice: () => null,
      'plugin:dialog|save': () => '/exports/ann.zip',
      export_voice: (a) => ({ path: a.dest, adapter: voice().adapters[0], peftCopied: false, entries: [] }),
    });
    render(Voices);
    await flush();
    expect(screen.getAllByTestId('voice-card')).toHaveLength(1);
    expect(screen.getByTestId('voice-facts').textContent).toContain('3 recordings');
    expect(screen.getByTestId('unreadable-voices').textContent).toContain('voice.json: EOF');

    await fireEvent.click(screen.getByRole('button', { name: 'Rename…' }));
    await fireEvent.input(screen.getByLabelText('New voice name'), { target: { value: 'Ann (studio)' } });
    await fireEvent.click(screen.getByRole('button', { name: 'Rename' }));
    await flush();
    expect(log.of('rename_voice')[0]).toEqual({ dir: '/app/voices/ann', name: 'Ann (studio)' });

    await fireEvent.click(screen.getByRole('button', { name: 'Export…' }));
    await flush();
    expect(log.of('export_voice')[0]).toEqual({ dir: '/app/voices/ann', dest: '/exports/ann.zip' });

    await fireEvent.click(screen.getByRole('button', { name: 'Delete…' }));
    const dialog = screen.getByRole('alertdialog');
    expect(dialog.textContent).toContain('/data/raw');
    expect(log.of('delete_voice')).toHaveLength(0);
    await fireEvent.click(within(dialog).getByRole('button', { name: 'Delete' }));
    await flush();
    expect(log.of('delete_voice')[0]).toEqual({ dir: '/app/voices/ann' });
  });
});
