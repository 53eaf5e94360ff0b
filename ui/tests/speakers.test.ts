import { describe, expect, it } from 'vitest';
import { fireEvent, render, screen, within } from '@testing-library/svelte';
import Dataset from '../src/screens/Dataset.svelte';
import { app } from '../src/lib/store.svelte';
import type { AudioUsage, DatasetSpeakers, SpeakersFile } from '../src/lib/api';
import { type RunConfig, toCommand, validate, fromObject, defaultConfig } from '../src/lib/config';
import {
  addSpeaker,
  draftErrors,
  draftFrom,
  newDraft,
  recordingId,
  removeSpeaker,
  renameSpeaker,
  speakerRows,
  speakerValidationSeries,
  toFile,
} from '../src/lib/speakers';
import { flush, ipc, scanFixture } from './helpers';

const oneSpeaker: DatasetSpeakers = {
  layout: 'oneSpeaker',
  speakersFile: '/data/voice/speakers.json',
  fileExists: false,
  file: null,
  speakers: [],
  recordings: [],
  error: null,
};

describe('speakers draft', () => {
  it('names recordings by stem, with the speaker folder', () => {
    expect(recordingId('a.wav')).toBe('a');
    expect(recordingId('alice/001.flac')).toBe('alice/001');
    expect(recordingId('v1.2/x')).toBe('v1.2/x');
  });

  it('starts a one-speaker folder with two speakers, every recording the first', () => {
    const d = newDraft(['a', 'b']);
    expect(d).toEqual({ names: ['A', 'B'], ids: { A: null, B: null }, assign: { a: 'A', b: 'A' } });
    expect(draftErrors(d)).toEqual([]);
    expect(toFile(d)).toEqual({ recordings: { a: 'A', b: 'A' } });
  });

  it('renames, adds and removes speakers, keeping ids and assignments', () => {
    let d = newDraft(['a', 'b', 'c']);
    d.assign.b = 'B';
    d.ids.B = 3;
    d = renameSpeaker(d, 'B', 'bob');
    expect(d.names).toEqual(['A', 'bob']);
    expect(d.ids).toEqual({ A: null, bob: 3 });
    expect(d.assign).toEqual({ a: 'A', b: 'bob', c: 'A' });
    d = addSpeaker(d);
    expect(d.names).toEqual(['A', 'bob', 'B']);
    expect(removeSpeaker(d, 'bob')).toBe(d); // still speaks b
    d = removeSpeaker(d, 'B');
    expect(d.names).toEqual(['A', 'bob']);
    expect(toFile(d)).toEqual({ speakers: { bob: 3 }, recordings: { a: 'A', b: 'bob', c: 'A' } });
  });

  it('reports what keeps a draft from being saved', () => {
    const d = newDraft(['a', 'b', 'c', 'd', 'e']);
    d.ids = { A: 1, B: 1 };
    d.assign.b = '';
    d.assign.c = 'gone';
    d.names.push('A');
    expect(draftErrors(d)).toEqual([
      'Two speakers are named "A"',
      'A and B both have id 1',
      '2 recordings have no speaker (b, c)',
    ]);
    expect(draftErrors({ names: [' '], ids: {}, assign: {} })).toEqual(['Every speaker needs a name']);
  });

  it('reads the draft back from speakers.json, or a folder per speaker', () => {
    const file: SpeakersFile = { speakers: { bob: 5 }, recordings: { a: 'alice', b: 'bob', c: 2 } };
    const view: DatasetSpeakers = {
      ...oneSpeaker,
      layout: 'speakersFile',
      fileExists: true,
      file,
      speakers: [{ name: 'alice', id: 0 }, { name: '2', id: 2 }, { name: 'bob', id: 5 }],
    };
    const d = draftFrom(view, ['a', 'b', 'c', 'd'], []);
    expect(d.names).toEqual(['alice', '2', 'bob']);
    expect(d.ids).toEqual({ alice: null, '2': null, bob: 5 });
    expect(d.assign).toEqual({ a: 'alice', b: 'bob', c: '2', d: '' });
    const folders = draftFrom({ ...oneSpeaker, layout: 'speakerFolders', speakers: [] }, ['alice/1'], ['alice', 'bob']);
    expect(folders).toEqual({ names: ['alice', 'bob'], ids: { alice: null, bob: null }, assign: {} });
    expect(toFile(folders)).toEqual({});
  });

  it("takes each speaker's counts from the core's usage, by id", () => {
    const view: DatasetSpeakers = { ...oneSpeaker, layout: 'speakerFolders', speakers: [{ name: 'alice', id: 0 }, { name: 'bob', id: 4 }] };
    const usage = {
      speakers: [
        { speaker: { name: 'bob', id: 4 }, recordings: 3, conversations: 1, utterances: 7, seconds: 90, train_utterances: 6, validation_utterances: 1, train_seconds: 80, validation_seconds: 10 },
      ],
    } as unknown as AudioUsage;
    expect(speakerRows(view, usage)).toEqual([
      { name: 'alice', id: 0, recordings: null, conversations: null, utterances: null, minutes: null, trainUtterances: null, validationUtterances: null },
      { name: 'bob', id: 4, recordings: 3, conversations: 1, utterances: 7, minutes: 1.5, trainUtterances: 6, validationUtterances: 1 },
    ]);
  });

  it('turns per-speaker validation into one series a speaker, aligned by pass', () => {
    const sp = (speaker: string, loss: number | null) => ({ speaker, id: 0, loss, semanticLoss: 1, acousticLoss: 1, examples: 1 });
    const series = speakerValidationSeries([
      { step: 2, loss: 4, semanticLoss: 2, acousticLoss: 2, speakers: [sp('alice', 4.5), sp('bob', 3.5)] },
      { step: 4, loss: 3, semanticLoss: 2, acousticLoss: 1 },
      { step: 6, loss: 3, semanticLoss: 2, acousticLoss: 1, speakers: [sp('bob', NaN), sp('alice', 3)] },
    ]);
    expect(series).toEqual([
      { label: 'val alice', values: [4.5, null, 3] },
      { label: 'val bob', values: [3.5, null, null] },
    ]);
    expect(speakerValidationSeries([{ step: 1, loss: 1, semanticLoss: 1, acousticLoss: 0 }])).toEqual([]);
  });
});

describe('config with speakers', () => {
  const filled = (over: Partial<RunConfig>): RunConfig => ({ ...defaultConfig(), model_path: '/m', output_dir: '/runs', ...over });

  it('takes a folder per speaker instead of the audio and transcript folders', () => {
    const c = filled({ data_dir: '/voices', speakers: { alice: 0, bob: 1 } });
    expect(validate(c)).toEqual({});
    expect(toCommand(c)).toContain("--data-dir /voices --speaker-map alice=0,bob=1");
    expect(toCommand(c)).not.toContain('--audio-dir');
    expect(validate({ ...c, audio_dir: '/a' }).audio_dir).toMatch(/folder per speaker/);
    const one = filled({ audio_dir: '/d/audio', transcript_dir: '/d/t', speakers_file: '/d/speakers.json' });
    expect(toCommand(one)).toContain('--speakers /d/speakers.json');
  });

  it("reads a run's config.json with its speakers", () => {
    const { config, unknown } = fromObject({ data_dir: '/voices', speakers: { alice: 0 }, speakers_file: null });
    expect(unknown).toEqual([]);
    expect(config).toMatchObject({ data_dir: '/voices', speakers: { alice: 0 }, speakers_file: null });
    expect(() => fromObject({ speakers: { alice: -1 } })).toThrow(/speakers/);
  });
});

describe('Dataset screen speakers', () => {
  it('names two speakers of one folder and saves them, then shows their counts', async () => {
    let saved: SpeakersFile | null = null;
    const two: DatasetSpeakers = {
      ...oneSpeaker,
      layout: 'speakersFile',
      fileExists: true,
      speakers: [{ name: 'A', id: 0 }, { name: 'bob', id: 1 }],
    };
    const log = ipc({
      scan_dataset: () => scanFixture(),
      dataset_usage: (a) => ({
        recordings: [], recordings_used: 1, seconds_in: 60, seconds_used: 60, utterances: 11, train_utterances: 9,
        validation_utterances: 2, train_seconds: 50, validation_seconds: 10, warnings: [],
        ...((a.config as RunConfig).speakers_file
          ? { speakers: [{ speaker: { name: 'bob', id: 1 }, recordings: 1, conversations: 0, utterances: 1, seconds: 30, train_utterances: 1, validation_utterances: 0, train_seconds: 30, validation_seconds: 0 }] }
          : {}),
      }),
      dataset_speakers: () => (saved ? { ...two, file: saved } : oneSpeaker),
      save_speakers: (a) => {
        saved = a.file as SpeakersFile;
        return { ...two, file: saved };
      },
    });
    render(Dataset);
    await app.scan(['/data/voice']);
    await flush();
    const card = () => screen.getByTestId('speakers');
    expect(card().textContent).toContain('One speaker');
    await fireEvent.click(within(card()).getByTestId('speakers-edit'));
    await fireEvent.change(screen.getByLabelText('Name of speaker 2'), { target: { value: 'bob' } });
    await fireEvent.change(screen.getByLabelText('Speaker of b'), { target: { value: 'bob' } });
    await fireEvent.input(screen.getByLabelText('Id of bob'), { target: { value: '1' } });
    await fireEvent.click(screen.getByTestId('speakers-save'));
    await flush();
    // Recordings without a transcript (c.wav) are no recordings of the dataset.
    expect(saved).toEqual({
      speakers: { bob: 1 },
      recordings: { a: 'A', b: 'bob', d: 'A', ...Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`x${i}`, 'A'])) },
    });
    expect(log.of('save_speakers')[0]).toMatchObject({ config: { audio_dir: '/data/voice/audio' } });
    expect(app.config.speakers_file).toBe('/data/voice/speakers.json');
    await app.refreshUsage();
    await flush();
    const bob = within(screen.getByTestId('speakers-table')).getByText('bob').closest('tr')!;
    expect([...bob.querySelectorAll('td')].map((td) => td.textContent)).toEqual(['bob', '1', '1', '1', '0.5', '1 / 0']);
  });

  it('shows why saving was refused and keeps the draft', async () => {
    ipc({
      scan_dataset: () => scanFixture(),
      dataset_usage: () => Promise.reject({ kind: 'invalidInput', message: 'n/a' }),
      dataset_speakers: () => oneSpeaker,
      save_speakers: () => Promise.reject({ kind: 'invalidInput', message: '/data/voice/speakers.json: `recordings.zz`: no such recording' }),
    });
    render(Dataset);
    await app.scan(['/data/voice']);
    await flush();
    await fireEvent.click(screen.getByTestId('speakers-edit'));
    await fireEvent.click(screen.getByTestId('speakers-save'));
    await flush();
    expect(screen.getByTestId('speakers-save-error').textContent).toContain('recordings.zz');
    expect(screen.getByTestId('speakers-draft')).toBeTruthy();
  });

  it('reads a folder per speaker as --data-dir', async () => {
    ipc({
      scan_dataset: () => ({ ...scanFixture(), root: '/voices', audioDir: '/voices', transcriptDir: '/voices', speakerFolders: ['alice', 'bob'] }),
      dataset_usage: () => Promise.reject({ kind: 'invalidInput', message: 'n/a' }),
      dataset_speakers: () => ({ ...oneSpeaker, layout: 'speakerFolders', speakersFile: '/voices/speakers.json', speakers: [{ name: 'alice', id: 0 }, { name: 'bob', id: 1 }] }),
    });
    app.config.speakers_file = '/old/speakers.json';
    render(Dataset);
    await app.scan(['/voices']);
    await flush();
    expect(app.config).toMatchObject({ data_dir: '/voices', audio_dir: '', transcript_dir: '', alignment_dir: null, speakers_file: null });
    expect(within(screen.getByTestId('speakers-table')).getByText('alice')).toBeTruthy();
    expect((screen.getByRole('tab', { name: 'Proofread' }) as HTMLButtonElement).disabled).toBe(true);
  });
});
