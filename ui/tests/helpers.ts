import { mockIPC, mockWindows } from '@tauri-apps/api/mocks';
import type { Channel } from '@tauri-apps/api/core';
import type { DatasetScan, TrainingEvent } from '../src/lib/api';
import { tick } from 'svelte';

export type Handler = (args: Record<string, unknown>) => unknown;

export interface IpcLog {
  calls: { cmd: string; args: Record<string, unknown> }[];
  /** The Channel passed to the last start_training call. */
  channel: Channel<TrainingEvent> | null;
  of(cmd: string): Record<string, unknown>[];
}

/** Mocks IPC with per-command handlers; unknown commands reject like a missing Rust command. */
export function ipc(handlers: Record<string, Handler>): IpcLog {
  mockWindows('main');
  const log: IpcLog = {
    calls: [],
    channel: null,
    of: (cmd) => log.calls.filter((c) => c.cmd === cmd).map((c) => c.args),
  };
  mockIPC(
    (cmd, raw) => {
      const args = (raw ?? {}) as Record<string, unknown>;
      log.calls.push({ cmd, args });
      if (cmd === 'start_training') log.channel = args.onEvent as Channel<TrainingEvent>;
      const h = handlers[cmd];
      if (!h) return Promise.reject({ kind: 'internal', message: `command ${cmd} not found` });
      return h(args);
    },
    { shouldMockEvents: true },
  );
  return log;
}

/** Delivers an event as the Rust side would through the channel. */
export function send(log: IpcLog, ev: TrainingEvent): void {
  if (!log.channel) throw new Error('no training channel yet');
  log.channel.onmessage(ev);
}

export async function flush(times = 5): Promise<void> {
  for (let i = 0; i < times; i++) {
    await Promise.resolve();
    await tick();
  }
}

export function scanFixture(): DatasetScan {
  const item = (file: string, over: Partial<DatasetScan['items'][number]> = {}) => ({
    file,
    path: `/data/voice/audio/${file}`,
    durationSecs: 4.2,
    sampleRate: 24000,
    channels: 1,
    transcriptPath: `/data/voice/transcripts/${file.replace('.wav', '.txt')}`,
    transcript: `Transcript of ${file}`,
    hasAlignment: false,
    alignmentStale: false,
    problems: [],
    ...over,
  });
  const items = [
    item('a.wav'),
    item('b.wav'),
    item('c.wav', { transcriptPath: null, transcript: null, problems: [{ kind: 'missingTranscript', message: 'no c.txt' }] }),
    item('d.wav', { durationSecs: 42, problems: [{ kind: 'tooLong', message: '42.0 s > 30 s' }] }),
    ...Array.from({ length: 8 }, (_, i) => item(`x${i}.wav`)),
  ];
  return {
    root: '/data/voice',
    audioDir: '/data/voice/audio',
    transcriptDir: '/data/voice/transcripts',
    alignmentDir: null,
    items,
    totals: { files: items.length, seconds: 4.2 * 11 + 42, withTranscript: 11, withProblems: 2, usable: 11 },
    speakerFolders: [],
    speakersFile: null,
  };
}

export function step(n: number, over: Partial<Extract<TrainingEvent, { event: 'step' }>['data']> = {}): TrainingEvent {
  return {
    event: 'step',
    data: {
      step: n,
      totalSteps: 100,
      epoch: n / 20,
      loss: 5 - n * 0.01,
      semanticLoss: 3 - n * 0.01,
      acousticLoss: 2,
      lr: 2e-4,
      gradNorm: 1.5,
      framesPerSec: 250,
      memoryBytes: 3 * 1024 ** 3,
      elapsedSecs: n * 2,
      etaSecs: (100 - n) * 2,
      ...over,
    },
  };
}
