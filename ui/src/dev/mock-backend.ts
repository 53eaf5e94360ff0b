// Browser-only preview backend: `VITE_MOCK_IPC=1 npm run dev` (or build) runs the UI
// without Tauri, against this simulation of the docs/ipc.md contract. Never part
// of the app build: main.ts imports it only when VITE_MOCK_IPC is set.
import { mockIPC, mockWindows } from '@tauri-apps/api/mocks';
import type { Channel } from '@tauri-apps/api/core';
import type { FlowEvent, FlowStage, FlowUnit, NewVoiceRequest, VoiceEntry, VoiceOutcome } from '../lib/api';
import type { DatasetItem, DatasetScan, DatasetSpeakers, LrFindEvent, LrFindOptions, LrFindReport, LrPoint, SpeakersFile, GeneratedSample, GenerateRequest, GenerationEvent, RecordingsScan, RunSummary, TrainingEvent, TranscribeRequest, TranscriptionEvent } from '../lib/api';
import { defaultConfig } from '../lib/config';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

function scan(root: string): DatasetScan {
  const r = rng(7);
  const items: DatasetItem[] = Array.from({ length: 24 }, (_, i) => {
    const file = `clip_${String(i + 1).padStart(3, '0')}.wav`;
    const dur = 2 + r() * 9;
    const missing = i === 5;
    const problems: DatasetItem['problems'] = [];
    if (missing) problems.push({ kind: 'missingTranscript', message: `no transcripts/clip_006.txt` });
    if (i === 11) problems.push({ kind: 'clipping', message: '0.8% of samples at full scale' });
    if (i === 17) problems.push({ kind: 'tooLong', message: '34.1 s > 30 s limit' });
    return {
      file,
      path: `${root}/audio/${file}`,
      durationSecs: i === 17 ? 34.1 : dur,
      sampleRate: i % 7 === 3 ? 44100 : 24000,
      channels: 1,
      transcriptPath: missing ? null : `${root}/transcripts/${file.replace('.wav', '.txt')}`,
      transcript: missing ? null : `Sample sentence number ${i + 1}, read in a calm and even voice for the fine-tuning set.`,
      hasAlignment: false,
      alignmentStale: false,
      problems,
    };
  });
  const seconds = items.reduce((a, b) => a + (b.durationSecs ?? 0), 0);
  return {
    root,
    audioDir: `${root}/audio`,
    transcriptDir: `${root}/transcripts`,
    alignmentDir: null,
    items,
    totals: { files: items.length, seconds, withTranscript: 23, withProblems: 3, usable: 23 },
    speakerFolders: [],
    speakersFile: null,
  };
}

/** `dataset_speakers`: one speaker until a speakers.json is saved (kept in memory). */
let savedSpeakers: SpeakersFile | null = null;

function speakersView(): DatasetSpeakers {
  const file = savedSpeakers;
  const names = [...new Set(Object.values(file?.recordings ?? {}).map(String))].sort();
  const fixed = file?.speakers ?? {};
  const ids = new Map<string, number>();
  for (const n of names) if (fixed[n] !== undefined) ids.set(n, fixed[n]);
  let next = 0;
  for (const n of names) {
    if (ids.has(n)) continue;
    while ([...ids.values()].includes(next)) next++;
    ids.set(n, next);
  }
  const speakers = [...ids.entries()].map(([name, id]) => ({ name, id })).sort((a, b) => a.id - b.id);
  return {
    layout: file ? 'speakersFile' : 'oneSpeaker',
    speakersFile: '/data/voice/speakers.json',
    fileExists: file !== null,
    file,
    speakers: file ? speakers : [],
    recordings: file ? Object.entries(file.recordings ?? {}).map(([id, who]) => ({ id, speaker: ids.get(String(who)) ?? null, speakers: [ids.get(String(who)) ?? 0] })) : [],
    error: null,
  };
}

/** Like the backend: loading, then one point per step of the range test; the report at the end. */
let lrFindStop: (() => void) | null = null;

function simulateLrFind(options: LrFindOptions | null, ch: Channel<LrFindEvent>): Promise<unknown> {
  const o = options ?? { minLr: 1e-7, maxLr: 1, steps: 100, smoothing: 0.9, divergeFactor: 4 };
  ch.onmessage({ event: 'phase', data: { phase: 'loading', message: 'model /models/csm-1b', done: null, total: null } });
  const points: LrPoint[] = [];
  return new Promise((resolve) => {
    let avg = 0;
    const finish = (stop: LrFindReport['stop']) => {
      clearInterval(timer);
      lrFindStop = null;
      // The mock's curve falls fastest near 1e-3.
      const suggested = points.length >= 5 ? (points.reduce((a, p) => (Math.abs(Math.log10(p.lr) + 3) < Math.abs(Math.log10(a.lr) + 3) ? p : a)).lr) : null;
      resolve({ report: { suggestedLr: suggested, minLossLr: suggested, points, stop, options: o, configLr: 2e-4, trainableParams: 1_234_567 }, reportPath: '/runs/lr_find.json' });
    };
    const timer = setInterval(() => {
      const i = points.length;
      if (i >= o.steps) return finish('completed');
      const lr = o.minLr * (o.maxLr / o.minLr) ** (i / (o.steps - 1));
      const x = Math.log10(lr);
      const loss = 6 - 2.5 / (1 + Math.exp(-(x + 3) * 2)) + (x > -1 ? (x + 1) * 8 : 0);
      avg = o.smoothing * avg + (1 - o.smoothing) * loss;
      const smoothed = avg / (1 - o.smoothing ** (i + 1));
      const p = { step: i + 1, lr, loss, smoothed };
      points.push(p);
      ch.onmessage({ event: 'point', data: p });
    }, 40);
    lrFindStop = () => finish('cancelled');
  });
}

function recordings(dir: string): RecordingsScan {
  const items = ['interview-part1.mp3', 'interview-part2.mp3', 'voice-memo.m4a'].map((file, i) => ({
    file,
    path: `${dir}/${file}`,
    durationSecs: [754.2, 612.9, 48.3][i] ?? null,
    sampleRate: 44100,
    channels: 2,
    codec: file.endsWith('.m4a') ? 'aac' : 'mp3',
    error: null,
    transcribed: false,
  }));
  return { dir, outputDir: `${dir}/dataset`, items, seconds: 1415.4, transcribed: 0 };
}

let transcriptionStop: (() => void) | null = null;

/** Like the backend: loading, then one progress event per 30 s window of each file. */
function simulateTranscription(req: TranscribeRequest, ch: Channel<TranscriptionEvent>): Promise<unknown> {
  const rec = recordings(req.audioDir).items;
  const total = rec.reduce((a, r) => a + (r.durationSecs ?? 0), 0);
  ch.onmessage({ event: 'loading', data: { model: req.whisperModel } });
  ch.onmessage({ event: 'started', data: { files: rec.length, totalSecs: total, skipped: 0 } });
  return new Promise((resolve, reject) => {
    let file = 0;
    let inFile = 0;
    let before = 0;
    const t0 = Date.now();
    const timer = setInterval(() => {
      const r = rec[file];
      if (!r) {
        clearInterval(timer);
        resolve({ outputDir: req.outputDir, transcribed: rec.map((x) => x.file.replace(/\.[^.]+$/, '')), skipped: [], failed: [], audioSecs: total });
        return;
      }
      const secs = r.durationSecs ?? 0;
      const name = r.file.replace(/\.[^.]+$/, '');
      if (inFile === 0) ch.onmessage({ event: 'fileStarted', data: { name, index: file, durationSecs: secs } });
      inFile = Math.min(secs, inFile + 30);
      const done = before + inFile;
      const elapsed = (Date.now() - t0) / 1000;
      ch.onmessage({ event: 'progress', data: { name, fileDoneSecs: inFile, fileSecs: secs, doneSecs: done, totalSecs: total, elapsedSecs: elapsed, etaSecs: (elapsed * (total - done)) / done } });
      if (inFile >= secs) {
        ch.onmessage({ event: 'fileDone', data: { name, text: 'So the first thing we did was record everything in one long take.' } });
        before += secs;
        inFile = 0;
        file++;
      }
    }, 150);
    transcriptionStop = () => {
      clearInterval(timer);
      reject({ kind: 'cancelled', message: `transcription cancelled after ${file} of ${rec.length} recordings were written` });
    };
  });
}

let timer: ReturnType<typeof setInterval> | undefined;
let stopRequested = false;

function simulate(ch: Channel<TrainingEvent>, total = 240): void {
  const send = (e: TrainingEvent) => ch.onmessage(e);
  const r = rng(3);
  send({ event: 'started', data: { runId: 'demo-run', runDir: '/runs/demo-run', totalSteps: total, stepsPerEpoch: 48, trainExamples: 21, valExamples: 2 } });
  send({ event: 'phase', data: { phase: 'loading', message: 'Loading CSM 1B (bfloat16)', done: null, total: null } });
  let step = 0;
  let enc = 0;
  stopRequested = false;
  timer = setInterval(() => {
    if (enc < 23) {
      enc += 4;
      send({ event: 'phase', data: { phase: 'encoding', message: 'Encoding audio with Mimi', done: Math.min(enc, 23), total: 23 } });
      if (enc >= 23) send({ event: 'phase', data: { phase: 'training', message: null, done: null, total: null } });
      return;
    }
    for (let k = 0; k < 3 && step < total; k++) {
      step++;
      const base = 2.2 + 4 * Math.exp(-step / 45);
      const loss = base + (r() - 0.5) * 0.6;
      const lr = 2e-4 * (step < 20 ? step / 20 : 0.5 * (1 + Math.cos((Math.PI * (step - 20)) / (total - 20))));
      send({ event: 'step', data: { step, totalSteps: total, epoch: step / 48, loss, semanticLoss: loss * 0.55, acousticLoss: loss * 0.45, lr, gradNorm: 0.6 + r() * 0.8, framesPerSec: 310 + r() * 30, memoryBytes: 5.4e9 + r() * 2e8, elapsedSecs: step * 1.9, etaSecs: (total - step) * 1.9 } });
      if (step % 50 === 0) send({ event: 'validation', data: { step, loss: base + 0.15, semanticLoss: (base + 0.15) * 0.55, acousticLoss: (base + 0.15) * 0.45 } });
      if (step % 100 === 0) {
        send({ event: 'checkpoint', data: { step, path: `/runs/demo-run/checkpoints/step-${step}`, mode: 'lora' } });
        send({ event: 'sample', data: { step, path: `/runs/demo-run/samples/step-${step}.wav`, text: 'Hello from the fine-tuned voice.', durationSecs: 2.4 } });
      }
    }
    if (stopRequested || step >= total) {
      clearInterval(timer);
      send({ event: 'phase', data: { phase: 'saving', message: 'Saving adapter', done: null, total: null } });
      send({ event: 'finished', data: { status: stopRequested ? 'stopped' : 'completed', step, elapsedSecs: step * 1.9, bestValLoss: 2.41, adapterPath: '/runs/demo-run/adapter.safetensors' } });
    }
  }, 120);
}

// ---------------------------------------------------------------- new voice (simulated journey)

const mockVoices: VoiceEntry[] = [];
let voiceStop: (() => void) | null = null;

function mockVoice(req: NewVoiceRequest, dir: string, complete: boolean): VoiceEntry {
  const sample = (step: number, prompt: number) => ({ step, prompt, text: 'Hello from the fine-tuned voice.', path: `${dir}/run/samples/step_${String(step).padStart(7, '0')}/prompt_${prompt}.wav`, similarity: step ? 0.71 : 0.52, wer: step ? 0.08 : 0.11, durationSecs: 2.4 });
  return {
    id: dir.split('/').at(-1) ?? 'voice',
    dir,
    name: req.name,
    speakerName: null,
    rawDir: req.rawDir,
    createdUnixS: Math.floor(Date.now() / 1000),
    updatedUnixS: Math.floor(Date.now() / 1000),
    stages: (['download', 'transcribe', 'dataset', 'train', 'summary'] as const).map((stage, i) => ({ stage, status: complete || i < 2 ? ('done' as const) : ('pending' as const), seconds: complete || i < 2 ? 30 : 0 })),
    complete,
    dataset: complete ? { recordings: 3, minutesIn: 23.6, minutesUsed: 21.9, utterances: 142 } : null,
    steps: complete ? 300 : null,
    scores: complete ? { base: { step: 0, similarity: 0.52, wer: 0.11, cer: 0.05, healthWarnings: 0 }, best: { step: 240, similarity: 0.71, wer: 0.08, cer: 0.03, healthWarnings: 0 }, last: { step: 300, similarity: 0.69, wer: 0.09, cer: 0.04, healthWarnings: 0 } } : null,
    adapters: complete ? [{ kind: 'best', step: 240, path: `${dir}/run/adapters_best.safetensors` }, { kind: 'final', step: 300, path: `${dir}/run/adapters.safetensors` }] : [],
    samples: complete ? [sample(0, 1), sample(240, 1)] : [],
    models: { modelPath: '/models/csm-1b', mimiPath: null, tokenizerPath: null, speakerId: 0 },
  };
}

/**
 * Like the backend (csm-flow's stages): Whisper downloads first; then the
 * other models download beside transcription, so the review can open while
 * the download stage still runs; the call returns once both are done. The
 * dataset, training and summary stages follow one after another.
 */
function simulateVoice(req: NewVoiceRequest, ch: Channel<FlowEvent>): Promise<VoiceOutcome> {
  const dir = req.voiceDir ?? `/home/me/.local/share/dev.csmstudio.app/voices/${req.name.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  const send = (e: FlowEvent) => ch.onmessage(e);
  type Track = { stage: FlowStage; unit: FlowUnit; total: number; done: number; perTick: number; t0: number; started: boolean; finished: boolean };
  const track = (stage: FlowStage, unit: FlowUnit, total: number, ticks: number): Track => ({ stage, unit, total, done: 0, perTick: total / ticks, t0: 0, started: false, finished: false });
  const whisperBytes = 1.6e9;
  // Each phase runs its tracks side by side; the next phase starts when all are done.
  const download = track('download', 'bytes', 6.2e9, 40);
  const phases: Track[][] = req.voiceDir
    ? [[track('dataset', 'recordings', 3, 6)], [track('train', 'steps', 300, 24)], [track('summary', 'steps', 0, 1)]]
    : [[download], [download, track('transcribe', 'audio_seconds', 1415, 16)], [track('dataset', 'recordings', 3, 6)], [track('train', 'steps', 300, 24)], [track('summary', 'steps', 0, 1)]];
  const lastPhase = req.stopAfter === 'transcribe' && !req.voiceDir ? 1 : phases.length - 1;
  send({ event: 'opened', data: { voice_dir: dir, dataset_dir: `${dir}/dataset` } });
  return new Promise((resolve, reject) => {
    let phase = 0;
    const timer = setInterval(() => {
      const now = Date.now();
      const tracks = phases[phase] ?? [];
      const whisperPhase = !req.voiceDir && phase === 0;
      for (const t of tracks) {
        if (t.finished) continue;
        // The first phase is Whisper's part of the download only.
        const cap = whisperPhase ? whisperBytes : t.total;
        if (!t.started) {
          t.started = true;
          t.t0 = now;
          send({ event: 'stageStarted', data: { stage: t.stage, detail: `The ${t.stage} stage` } });
        }
        t.done = Math.min(cap, t.done + t.perTick);
        const elapsed = (now - t.t0) / 1000;
        if (t.total > 0) send({ event: 'stageProgress', data: { stage: t.stage, done: t.done, total: t.total, unit: t.unit, eta_s: (elapsed * (t.total - t.done)) / Math.max(t.done, 1), item: null } });
        if (t.stage === 'train' && t.done >= t.total) {
          send({ event: 'train', data: { event: 'voiceScores', data: { step: 0, checkpoint: null, summary: { similarity: 0.52, wer: 0.11, cer: 0.05, healthWarnings: 0, samples: 1 }, samples: [], bestStep: null, newBest: false } } });
        }
        if (t.done >= t.total) {
          t.finished = true;
          send({ event: 'stageFinished', data: { stage: t.stage, end: 'done', seconds: elapsed, note: `${t.stage} done` } });
        }
      }
      const phaseDone = whisperPhase ? download.done >= whisperBytes : tracks.every((t) => t.finished);
      if (!phaseDone) return;
      phase++;
      if (phase <= lastPhase) return;
      clearInterval(timer);
      const complete = lastPhase === phases.length - 1;
      const voice = mockVoice(req, dir, complete);
      if (complete) mockVoices.splice(0, mockVoices.length, ...mockVoices.filter((v) => v.dir !== dir), voice);
      voiceStop = null;
      resolve({ finished: complete, stoppedAfter: complete ? null : 'transcribe', voice, datasetDir: `${dir}/dataset` });
    }, 120);
    voiceStop = () => {
      clearInterval(timer);
      voiceStop = null;
      const running = (phases[phase] ?? []).filter((t) => t.started && !t.finished).map((t) => t.stage);
      reject({ kind: 'cancelled', message: `stopped during the ${running.join(' and ') || 'summary'} stage; run again to continue` });
    };
  });
}

function runs(): RunSummary[] {
  const config = { ...defaultConfig(), model_path: '/models/csm-1b', output_dir: '/runs', audio_dir: '/data/voice/audio', transcript_dir: '/data/voice/transcripts' };
  return [
    { id: 'r2', name: 'voice-r16', dir: '/runs/voice-r16', status: 'completed', startedAt: '2026-11-24T18:02:00Z', durationSecs: 2710, step: 240, totalSteps: 240, bestValLoss: 2.38, finalLoss: 2.3, config: { ...config, lora_r: 16, lora_alpha: 32 }, checkpoints: [{ step: 100, path: '/runs/voice-r16/checkpoints/step-100' }, { step: 240, path: '/runs/voice-r16/checkpoints/step-240' }] },
    { id: 'r1', name: 'voice-r8', dir: '/runs/voice-r8', status: 'stopped', startedAt: '2026-11-24T15:40:00Z', durationSecs: 1302, step: 131, totalSteps: 240, bestValLoss: 2.61, finalLoss: 2.55, config, checkpoints: [{ step: 131, path: '/runs/voice-r8/checkpoints/step-131' }] },
  ];
}

const generationStops = new Set<() => void>();

function cancelGenerations(): void {
  for (const stop of generationStops) stop();
}

/** Like the backend: a loading phase, one progress event per frame (about 12 frames/s), then the sample. */
function simulateGeneration(req: GenerateRequest, ch: Channel<GenerationEvent>): Promise<GeneratedSample> {
  const r = rng(req.seed + (req.checkpoint ? 1 : 0));
  const maxFrames = Math.round(req.maxAudioSecs * 12.5);
  const frames = Math.min(maxFrames, 30 + Math.floor(r() * 10));
  const t0 = Date.now();
  ch.onmessage({ event: 'phase', data: { phase: 'loading' } });
  return new Promise((resolve, reject) => {
    let done = 0;
    const timer = setInterval(() => {
      if (done === 0) ch.onmessage({ event: 'phase', data: { phase: 'generating' } });
      done += 1;
      ch.onmessage({ event: 'progress', data: { frames: done, maxFrames, audioSecs: done * 0.08, elapsedSecs: (Date.now() - t0) / 1000 } });
      if (done < frames) return;
      finish();
      const peaks = Array.from({ length: 400 }, (_, i) => Math.abs(Math.sin(i / 9)) * (0.3 + r() * 0.6));
      resolve({ id: `${Date.now()}-${req.checkpoint ?? 'base'}`, path: `/tmp/${Date.now()}.wav`, sampleRate: 24000, durationSecs: frames * 0.08, peaks, checkpoint: req.checkpoint, seed: req.seed, text: req.text });
    }, 80);
    const stop = () => {
      finish();
      reject({ kind: 'cancelled', message: `generation cancelled after ${done} of ${maxFrames} frames; no file was written` });
    };
    const finish = () => {
      clearInterval(timer);
      generationStops.delete(stop);
    };
    generationStops.add(stop);
  });
}

export function install(): void {
  mockWindows('main');
  mockIPC(
    (cmd, raw) => {
      const a = (raw ?? {}) as Record<string, unknown>;
      switch (cmd) {
        case 'app_info':
          return { version: '0.1.0', mlxVersion: '0.32.2', backend: 'cpu', os: 'linux', arch: 'x86_64' };
        case 'plugin:dialog|open': {
          const o = a.options as { directory?: boolean; multiple?: boolean } | undefined;
          if (!o?.directory) return '/models/csm-1b/model.safetensors';
          return o.multiple ? ['/data/voice'] : '/exports';
        }
        case 'plugin:dialog|save':
          return '/tmp/out.json';
        case 'plugin:dialog|message':
          return 'Quit';
        case 'scan_dataset':
          if ((a.paths as string[] | undefined)?.[0]?.includes('memos')) return Promise.reject({ kind: 'invalidInput', message: 'no transcripts folder' });
          return scan('/data/voice');
        case 'dataset_speakers':
          return speakersView();
        case 'save_speakers':
          savedSpeakers = a.file as SpeakersFile;
          return speakersView();
        case 'find_learning_rate':
          return simulateLrFind(a.options as LrFindOptions | null, a.onEvent as Channel<LrFindEvent>);
        case 'cancel_lr_find':
          lrFindStop?.();
          return null;
        case 'blas_status':
          return { kernels: 'Haswell', cpu: 'AMD EPYC', origin: 'fits', recommended: null, warning: null };
        case 'scan_recordings':
          return recordings(a.dir as string);
        case 'whisper_models':
          return [
            { repo: 'openai/whisper-large-v3-turbo', bundle: 'whisper-large-v3-turbo', description: 'Whisper large-v3-turbo, multilingual speech recognition (about 1.6 GB)', path: null, sizeBytes: 0 },
            { repo: 'openai/whisper-small', bundle: 'whisper-small', description: 'Whisper small, multilingual speech recognition (about 970 MB)', path: '/home/me/.cache/huggingface/hub/models--openai--whisper-small/snapshots/a1', sizeBytes: 967_000_000 },
          ];
        case 'transcribe_recordings':
          return simulateTranscription(a.request as TranscribeRequest, a.onEvent as Channel<TranscriptionEvent>);
        case 'cancel_transcription':
          transcriptionStop?.();
          return null;
        case 'list_excluded':
          return [];
        case 'audio_peaks':
          return Array.from({ length: Number(a.buckets) || 200 }, (_, i) => Math.abs(Math.sin(i / 7)) * 0.7);
        case 'save_transcript':
          return { path: '/data/voice/transcripts/x.txt', text: a.text, alignment: 'kept' };
        case 'exclude_recording':
          return { id: a.id, files: [`/data/voice/audio/excluded/${a.id as string}.wav`] };
        case 'restore_recording':
          return [];
        case 'demo_assets':
          return { modelPath: '/demo/csm-tiny', mimiPath: '/demo/mimi.safetensors', tokenizerPath: '/demo/tokenizer.json', audioDir: '/demo/voice/audio', transcriptDir: '/demo/voice/transcripts', alignmentDir: null };
        case 'inspect_model':
          return a.kind === 'tokenizer'
            ? { path: a.path, kind: a.kind, format: 'tokenizer.json', sizeBytes: 9_085_698, dtype: null, parameters: null, details: { vocab: '128256' } }
            : { path: a.path, kind: a.kind, format: 'safetensors', sizeBytes: a.kind === 'csm' ? 6.2e9 : 3.9e8, dtype: 'bfloat16', parameters: a.kind === 'csm' ? 1_550_000_000 : 96_000_000, details: a.kind === 'csm' ? { backbone: 'llama-1B', decoder: 'llama-100M', codebooks: '32' } : { codebooks: '32', 'frame rate': '12.5 Hz' } };
        case 'estimate_run':
          return { secsPerStep: 1.9, peakMemoryBytes: 6.1e9 };
        case 'start_training':
          simulate(a.onEvent as Channel<TrainingEvent>);
          return 'demo-run';
        case 'stop_training':
          stopRequested = true;
          return null;
        case 'list_output_devices':
          return [{ id: 'coreaudio:default', name: 'MacBook Pro Speakers', isDefault: true }];
        case 'play_audio':
          return { durationSecs: 2.4 };
        case 'stop_audio':
        case 'reveal_path':
        case 'write_config_file':
          return null;
        case 'generate_sample':
          return simulateGeneration(a.request as GenerateRequest, a.onProgress as Channel<GenerationEvent>);
        case 'cancel_generation':
          cancelGenerations();
          return null;
        case 'start_voice':
          return simulateVoice(a.request as NewVoiceRequest, a.onEvent as Channel<FlowEvent>);
        case 'cancel_voice': {
          const running = voiceStop !== null;
          voiceStop?.();
          return running;
        }
        case 'voice_library':
          return { dir: '/home/me/.local/share/dev.csmstudio.app/voices', voices: [...mockVoices].reverse(), unreadable: [] };
        case 'rename_voice': {
          const v = mockVoices.find((x) => x.dir === a.dir);
          if (!v) return Promise.reject({ kind: 'invalidInput', message: `${a.dir as string} is not a voice of the library` });
          v.name = String(a.name).trim();
          return v;
        }
        case 'delete_voice':
          mockVoices.splice(0, mockVoices.length, ...mockVoices.filter((x) => x.dir !== a.dir));
          return null;
        case 'export_voice':
          return { path: a.dest, adapter: mockVoices.find((x) => x.dir === a.dir)?.adapters[0], peftCopied: false, entries: [] };
        case 'export_adapter':
          return `${a.dest as string}/${a.runId as string}`;
        case 'list_runs':
          return runs();
        case 'run_metrics': {
          const r = rng(a.runId === 'r1' ? 1 : 2);
          const steps = Array.from({ length: 240 }, (_, i) => {
            const loss = 2.2 + 4 * Math.exp(-(i + 1) / (a.runId === 'r1' ? 60 : 45)) + (r() - 0.5) * 0.5;
            return { step: i + 1, totalSteps: 240, epoch: (i + 1) / 48, loss, semanticLoss: loss / 2, acousticLoss: loss / 2, lr: 2e-4, gradNorm: 1, framesPerSec: 300, memoryBytes: 5e9, elapsedSecs: i * 2, etaSecs: 0 };
          });
          // r2 trained two speakers: each one's validation loss, as the core reports it.
          const speakers = (loss: number) =>
            a.runId === 'r1' ? {} : { speakers: [{ speaker: 'alice', id: 0, loss: loss + 0.1, semanticLoss: 1.3, acousticLoss: 1.2, examples: 2 }, { speaker: 'bob', id: 1, loss: loss - 0.1, semanticLoss: 1.2, acousticLoss: 1.0, examples: 2 }] };
          return { steps, validation: [50, 100, 150, 200].map((s) => ({ step: s, loss: 2.4 + 3 * Math.exp(-s / 50), semanticLoss: 1.3, acousticLoss: 1.1, ...speakers(2.4 + 3 * Math.exp(-s / 50)) })), samples: [] };
        }
        case 'hub_status':
          return { endpoint: 'https://huggingface.co', cacheDir: '/home/me/.cache/huggingface/hub', tokenSource: null, tokenPath: '/home/me/.cache/huggingface/token', offline: false };
        case 'list_bundles':
          return [
            {
              name: 'csm-1b',
              description: 'Sesame CSM-1B (gated), the Mimi codec and the Llama 3.2 tokenizer',
              files: [
                { role: 'model', repo: 'sesame/csm-1b', file: 'model.safetensors', cached: null },
                { role: 'model', repo: 'sesame/csm-1b', file: 'config.json', cached: null },
                { role: 'codec', repo: 'kyutai/moshiko-pytorch-bf16', file: 'tokenizer-e351c8d8-checkpoint125.safetensors', cached: null },
                { role: 'tokenizer', repo: 'unsloth/Llama-3.2-1B', file: 'tokenizer.json', cached: '/home/me/.cache/huggingface/hub/models--unsloth--Llama-3.2-1B/snapshots/a1b2/tokenizer.json' },
              ],
            },
          ];
        case 'list_cached_models':
          return [{ repo: 'unsloth/Llama-3.2-1B', kind: 'model', sizeBytes: 9_085_698, partialBytes: 0, refs: ['main'], files: ['tokenizer.json'] }];
        case 'download_bundle':
          return Promise.reject({ kind: 'download', message: 'mock backend: downloads need the app' });
        case 'cancel_download':
        case 'save_hub_token':
        case 'delete_cached_model':
          return null;
        default:
          return Promise.reject({ kind: 'internal', message: `mock backend: no ${cmd}` });
      }
    },
    { shouldMockEvents: true },
  );
}

/** `#run`, `#parameters`, ... in the URL: open that screen with data loaded (for screenshots). */
export async function preview(hash: string): Promise<void> {
  const { app } = await import('../lib/store.svelte');
  const tab = hash.replace('#', '');
  if (!tab) return;
  await app.scan(['/data/voice']);
  await Promise.all([
    app.setModel('csm', '/models/csm-1b/model.safetensors'),
    app.setModel('mimi', '/models/csm-1b/mimi.safetensors'),
    app.setModel('tokenizer', '/models/csm-1b/tokenizer.json'),
  ]);
  app.config.output_dir = '/runs';
  if (tab === 'run' || tab === 'samples') {
    await app.startRun();
  }
  if (tab === 'parameters-error') {
    app.config.learning_rate = Number.NaN;
    app.config.lora_r = 0;
  }
  app.tab = (tab === 'parameters-error' ? 'parameters' : tab) as typeof app.tab;
}
