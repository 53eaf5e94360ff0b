// The Dataset screen's speakers: the user's draft of names, ids and
// assignments, turned into `speakers.json` (the core's `SpeakersFile`, which
// the backend checks and writes), and the rows shown per speaker. Counts and
// minutes come from the core's report (`AudioUsage.speakers`), never from here.
import type { AudioUsage, DatasetSpeakers, SpeakersFile, ValidationData } from './api';

/** What the user edits before saving `speakers.json`. */
export interface SpeakersDraft {
  /** Speaker names, in the order shown. */
  names: string[];
  /** Fixed CSM ids by name; null: the run picks one. */
  ids: Record<string, number | null>;
  /** Recording id -> speaker name (one folder of recordings only; '' = nobody yet). */
  assign: Record<string, string>;
}

/** A recording id of a scan row: the file name without its extension (`alice/001.wav` -> `alice/001`). */
export function recordingId(file: string): string {
  return file.replace(/\.[^./]+$/, '');
}

/** The draft of what is on disk: the file's names, ids and assignments (a folder per speaker: its folders). */
export function draftFrom(view: DatasetSpeakers, recordings: string[], folders: string[]): SpeakersDraft {
  const file = view.file ?? {};
  const fixed = file.speakers ?? {};
  const names: string[] = [];
  const add = (n: string) => {
    const name = n.trim();
    if (name !== '' && !names.includes(name)) names.push(name);
  };
  if (view.layout === 'speakerFolders') folders.forEach(add);
  for (const s of view.speakers) add(s.name);
  for (const who of Object.values(file.recordings ?? {})) add(String(who));
  Object.keys(fixed).forEach(add);
  const ids: Record<string, number | null> = {};
  for (const n of names) ids[n] = fixed[n] ?? null;
  const assign: Record<string, string> = {};
  if (view.layout !== 'speakerFolders') {
    for (const r of recordings) {
      const who = file.recordings?.[r];
      assign[r] = who === undefined ? '' : String(who).trim();
    }
  }
  return { names, ids, assign };
}

/** A first draft for a one-speaker folder: two speakers, every recording the first's. */
export function newDraft(recordings: string[]): SpeakersDraft {
  return {
    names: ['A', 'B'],
    ids: { A: null, B: null },
    assign: Object.fromEntries(recordings.map((r) => [r, 'A'])),
  };
}

/** Renames a speaker everywhere (its id and its recordings follow it). */
export function renameSpeaker(d: SpeakersDraft, from: string, to: string): SpeakersDraft {
  const ids: Record<string, number | null> = {};
  for (const [n, id] of Object.entries(d.ids)) ids[n === from ? to : n] = id;
  return {
    names: d.names.map((n) => (n === from ? to : n)),
    ids,
    assign: Object.fromEntries(Object.entries(d.assign).map(([r, n]) => [r, n === from ? to : n])),
  };
}

/** Adds a speaker with an unused name (`C`, `D`, ... then `speaker 5`...). */
export function addSpeaker(d: SpeakersDraft): SpeakersDraft {
  let name = '';
  for (let i = 0; name === '' || d.names.includes(name); i++) {
    name = i < 26 ? String.fromCharCode(65 + i) : `speaker ${i + 1}`;
  }
  return { ...d, names: [...d.names, name], ids: { ...d.ids, [name]: null } };
}

/** Removes a speaker that speaks no recording. */
export function removeSpeaker(d: SpeakersDraft, name: string): SpeakersDraft {
  if (Object.values(d.assign).includes(name)) return d;
  const ids = { ...d.ids };
  delete ids[name];
  return { ...d, names: d.names.filter((n) => n !== name), ids };
}

/** What would keep the draft from being saved (the backend checks again, against the files). */
export function draftErrors(d: SpeakersDraft): string[] {
  const errors: string[] = [];
  if (d.names.some((n) => n.trim() === '')) errors.push('Every speaker needs a name');
  const dup = d.names.filter((n, i) => d.names.indexOf(n) !== i);
  if (dup.length > 0) errors.push(`Two speakers are named ${JSON.stringify(dup[0])}`);
  const seen = new Map<number, string>();
  for (const n of new Set(d.names)) {
    const id = d.ids[n];
    if (id === null || id === undefined) continue;
    if (!Number.isInteger(id) || id < 0) errors.push(`The id of ${n} must be a whole number ≥ 0`);
    else if (seen.has(id)) errors.push(`${seen.get(id)} and ${n} both have id ${id}`);
    else seen.set(id, n);
  }
  const nobody = Object.entries(d.assign).filter(([, n]) => n === '' || !d.names.includes(n));
  if (nobody.length > 0) {
    const shown = nobody.slice(0, 3).map(([r]) => r).join(', ');
    errors.push(`${nobody.length} recording${nobody.length === 1 ? ' has' : 's have'} no speaker (${shown}${nobody.length > 3 ? ', …' : ''})`);
  }
  return errors;
}

/** The draft as `speakers.json`: fixed ids, and (one folder of recordings) who speaks each recording. */
export function toFile(d: SpeakersDraft): SpeakersFile {
  const file: SpeakersFile = {};
  const speakers = Object.fromEntries(
    d.names.flatMap((n) => {
      const id = d.ids[n];
      return id === null || id === undefined ? [] : [[n.trim(), id]];
    }),
  );
  if (Object.keys(speakers).length > 0) file.speakers = speakers;
  const recordings = Object.fromEntries(Object.entries(d.assign).map(([r, n]) => [r, n.trim()]));
  if (Object.keys(recordings).length > 0) file.recordings = recordings;
  return file;
}

/** One speaker as the Dataset screen lists it. */
export interface SpeakerRow {
  name: string;
  /** The id a run would use (null until the speakers resolve). */
  id: number | null;
  /** From the core's usage report (null until measured). */
  recordings: number | null;
  conversations: number | null;
  utterances: number | null;
  minutes: number | null;
  trainUtterances: number | null;
  validationUtterances: number | null;
}

/** The speakers of `view` (its resolved table) with their share of `usage` (the core's counts, by id). */
export function speakerRows(view: DatasetSpeakers, usage: AudioUsage | null): SpeakerRow[] {
  return view.speakers.map((s) => {
    const u = usage?.speakers?.find((x) => x.speaker.id === s.id) ?? null;
    return {
      name: s.name,
      id: s.id,
      recordings: u?.recordings ?? null,
      conversations: u?.conversations ?? null,
      utterances: u?.utterances ?? null,
      minutes: u ? u.seconds / 60 : null,
      trainUtterances: u?.train_utterances ?? null,
      validationUtterances: u?.validation_utterances ?? null,
    };
  });
}

/** Line colours of the speakers' validation series (Run screen and History), in series order. */
export const SPEAKER_COLORS = ['#6b46c1', '#0f7b8a', '#b83280', '#4a5568', '#dd6b20'];

/** Per-speaker validation loss as chart series, one per speaker (by first appearance), aligned with `validation`. */
export function speakerValidationSeries(validation: ValidationData[]): { label: string; values: (number | null)[] }[] {
  const names: string[] = [];
  for (const v of validation) for (const s of v.speakers ?? []) if (!names.includes(s.speaker)) names.push(s.speaker);
  return names.map((name) => ({
    label: `val ${name}`,
    values: validation.map((v) => {
      const loss = v.speakers?.find((s) => s.speaker === name)?.loss ?? null;
      return loss !== null && Number.isFinite(loss) ? loss : null;
    }),
  }));
}

/** One speaker's validation over a run, as the Run and History screens list it. */
export interface SpeakerValidationRow {
  speaker: string;
  id: number;
  /** Its validation examples in the last pass that reported it. */
  examples: number;
  /** Its loss in the last pass that reported it (null: not finite). */
  last: number | null;
  lastStep: number;
  /** Its lowest finite loss and that pass's step (null: none finite). */
  best: number | null;
  bestStep: number | null;
}

/** Each speaker's last and best validation loss (by first appearance); empty for a one-speaker run. */
export function speakerValidationRows(validation: ValidationData[]): SpeakerValidationRow[] {
  const rows: SpeakerValidationRow[] = [];
  const finiteOr = (v: number | null) => (v !== null && Number.isFinite(v) ? v : null);
  for (const v of validation) {
    for (const s of v.speakers ?? []) {
      let row = rows.find((r) => r.speaker === s.speaker);
      if (!row) {
        row = { speaker: s.speaker, id: s.id, examples: 0, last: null, lastStep: v.step, best: null, bestStep: null };
        rows.push(row);
      }
      const loss = finiteOr(s.loss);
      Object.assign(row, { id: s.id, examples: s.examples, last: loss, lastStep: v.step });
      if (loss !== null && (row.best === null || loss < row.best)) Object.assign(row, { best: loss, bestStep: v.step });
    }
  }
  return rows;
}
