//! Datasets with several speakers: their layouts, `speakers.json`, the
//! names-to-ids table, conversations, and a split that holds out each
//! speaker's share.
//!
//! # Layouts ([`DataSource::detect`] tells them apart)
//!
//! ```text
//! DATA/audio/ transcripts/ [alignments/]           one speaker: the run's --speaker-id
//! DATA/audio/ transcripts/ [alignments/] speakers.json
//!                                                  one folder, speakers.json says who speaks
//! DATA/alice/audio/ alice/transcripts/ [alice/alignments/]
//! DATA/bob/audio/   bob/transcripts/   [bob/alignments/]  [speakers.json]
//!                                                  one folder per speaker
//! ```
//!
//! `DATA/audio/` beside speaker folders is refused as a mixed layout, and
//! so is a folder of `DATA` that is no speaker folder (hidden ones aside).
//! In the per-speaker layout a recording's id is `speaker/NAME`.
//!
//! # `speakers.json` ([`SpeakersFile`])
//!
//! ```json
//! {
//!   "speakers": {"alice": 0, "bob": 1},
//!   "recordings": {"001": "alice", "002": "bob", "003": 1}
//! }
//! ```
//!
//! `recordings` (one `audio/` folder only) names the speaker of each
//! recording by name or id; `speakers` fixes the ids of names (optional).
//! Every key of `recordings` must be a recording of the dataset.
//!
//! # Conversations
//!
//! An alignment may name the speaker of each word or segment (`"speaker"`,
//! see [`super::alignment`]); a recording whose words name two speakers is
//! a conversation: it is cut at every change of voice, each turn trains
//! under its own speaker's id, and the turns before it, the other voice's
//! among them, are its context. A label must be a speaker of the dataset
//! (a speaker folder, a name of `speakers.json`, or the id of one); a word
//! without one is the recording's speaker (its folder's, or its
//! `recordings` entry's).
//!
//! # Ids ([`speaker_table`])
//!
//! CSM knows speakers by number (`[0]text`). Names become ids in this
//! order, and the table is written to the run's `config.json`, so a later
//! run (`--config`, `--resume-from`) keeps them:
//!
//! 1. ids given to the run (`--speaker-map`, or a `config.json`'s
//!    `speakers`), then those of `speakers.json`'s `speakers`;
//! 2. a speaker named by a whole number (`3`) has that id;
//! 3. the rest take the smallest free ids, in byte order of their names.
//!
//! # Split
//!
//! Each speaker's recordings are split on their own (and conversations on
//! theirs) as a one-speaker dataset of the same files would be, so every
//! speaker has validation examples once it has two recordings, and the
//! held-out files are those a run on that speaker's folder alone holds out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::alignment::{read_alignment, Alignment};
use super::dataset::{
    load_dataset_with_progress, load_parallel, load_spoken, log_alignment, pair_files,
    split_conversations, Dataset, DatasetLayout, LoadOptions, LoadProgress, PairedFile, SplitUnit,
    UtteranceId,
};
use super::segment::{RecordingSpeakers, Speaker};
use super::{DataError, Result};

/// The file that says who speaks, in the dataset folder.
pub const SPEAKERS_FILE: &str = "speakers.json";

/// A speaker as `speakers.json` names it: by name or by CSM id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SpeakerRef {
    /// A CSM speaker id.
    Id(u32),
    /// A name.
    Name(String),
}

impl SpeakerRef {
    /// The name it stands for (an id `3` is the speaker named `3`).
    pub fn name(&self) -> String {
        match self {
            Self::Id(id) => id.to_string(),
            Self::Name(name) => name.trim().to_string(),
        }
    }
}

/// The contents of `speakers.json` (see the module docs). The app writes it
/// with [`write_speakers_file`] when the user names and assigns speakers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeakersFile {
    /// Fixed ids of speaker names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub speakers: BTreeMap<String, u32>,
    /// Who speaks each recording (its file name without extension).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub recordings: BTreeMap<String, SpeakerRef>,
}

/// Reads `speakers.json`.
///
/// # Errors
/// [`DataError::Io`], and [`DataError::SpeakersJson`] (naming the file,
/// line and column) for JSON that is not this layout.
pub fn read_speakers_file(path: &Path) -> Result<SpeakersFile> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let file: SpeakersFile =
        serde_json::from_slice(&bytes).map_err(|source| DataError::SpeakersJson {
            path: path.to_path_buf(),
            source,
        })?;
    for (recording, who) in &file.recordings {
        if who.name().is_empty() {
            return Err(speaker_error(
                path,
                format!("recordings.{recording}"),
                "the speaker name is empty",
            ));
        }
    }
    Ok(file)
}

/// Writes `speakers.json` atomically (pretty JSON, keys sorted).
///
/// # Errors
/// [`DataError::Io`] naming the file.
pub fn write_speakers_file(path: &Path, file: &SpeakersFile) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(file).map_err(|e| {
        DataError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    json.push(b'\n');
    crate::checkpoint::write::write_atomic(path, &json).map_err(|e| match e {
        crate::checkpoint::CheckpointError::Io { path, source } => DataError::Io { path, source },
        other => DataError::io(path, std::io::Error::other(other.to_string())),
    })
}

fn speaker_error(path: &Path, key: impl Into<String>, reason: impl Into<String>) -> DataError {
    DataError::Speaker {
        path: path.to_path_buf(),
        key: key.into(),
        reason: reason.into(),
    }
}

fn layout_error(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Layout {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// One speaker's folder in the per-speaker layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpeakerFolder {
    /// The speaker: the folder's name.
    pub speaker: String,
    /// Its `audio/`, `transcripts/` and `alignments/`.
    pub layout: DatasetLayout,
}

/// Where a run's recordings are and how they say who speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DataSource {
    /// One folder of recordings of one speaker (the run's `--speaker-id`).
    OneSpeaker {
        /// The folders.
        layout: DatasetLayout,
    },
    /// One folder of recordings; `speakers.json` says who speaks each.
    SpeakersFile {
        /// The folders.
        layout: DatasetLayout,
        /// `speakers.json`.
        speakers_file: PathBuf,
    },
    /// One folder per speaker.
    SpeakerFolders {
        /// The dataset folder.
        root: PathBuf,
        /// The speakers' folders, by name.
        folders: Vec<SpeakerFolder>,
        /// `speakers.json`, for fixed ids and conversation labels.
        speakers_file: Option<PathBuf>,
    },
}

impl DataSource {
    /// Finds the layout of `data_dir` (see the module docs).
    /// `speakers_file` is `--speakers`; without it, `data_dir/speakers.json`
    /// is used when it exists.
    ///
    /// # Errors
    /// [`DataError::MissingDir`] when `data_dir` is not a folder,
    /// [`DataError::Layout`] for a mixed layout, a folder that is no
    /// speaker folder, or neither layout, and [`DataError::Io`] for a
    /// `speakers_file` that is not there.
    pub fn detect(data_dir: &Path, speakers_file: Option<&Path>) -> Result<Self> {
        if !data_dir.is_dir() {
            return Err(DataError::MissingDir {
                path: data_dir.to_path_buf(),
            });
        }
        let speakers_file = match speakers_file {
            Some(p) => Some(existing_file(p)?),
            None => Some(data_dir.join(SPEAKERS_FILE)).filter(|p| p.is_file()),
        };
        let mut speaker_dirs = Vec::new();
        let mut others = Vec::new();
        let entries = std::fs::read_dir(data_dir).map_err(|e| DataError::io(data_dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| DataError::io(data_dir, e))?.path();
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if name.starts_with('.') || !path.is_dir() {
                continue;
            }
            if ["audio", "transcripts", "alignments"].contains(&name.as_str()) {
                continue;
            }
            if path.join("audio").is_dir() {
                speaker_dirs.push((name, path));
            } else {
                others.push(path);
            }
        }
        speaker_dirs.sort();
        others.sort();
        let single = data_dir.join("audio");
        if single.is_dir() {
            if let Some((_, dir)) = speaker_dirs.first() {
                return Err(layout_error(
                    data_dir,
                    format!(
                        "mixed layouts: {} holds one speaker's recordings, and {} is a speaker \
                         folder ({}/audio); use one layout: move audio/, transcripts/ and \
                         alignments/ into a speaker folder, or the speaker folders' recordings \
                         into audio/ with a {SPEAKERS_FILE} saying who speaks each",
                        single.display(),
                        dir.display(),
                        dir.display()
                    ),
                ));
            }
            let layout = DatasetLayout::from_root(data_dir);
            return Ok(match speakers_file {
                Some(speakers_file) => Self::SpeakersFile {
                    layout,
                    speakers_file,
                },
                None => Self::OneSpeaker { layout },
            });
        }
        if speaker_dirs.is_empty() {
            return Err(layout_error(
                data_dir,
                "holds neither audio/ (with transcripts/: one folder of recordings) nor \
                 speaker folders (SPEAKER/audio and SPEAKER/transcripts, one per speaker)",
            ));
        }
        for top in ["transcripts", "alignments"] {
            let dir = data_dir.join(top);
            if dir.is_dir() {
                return Err(layout_error(
                    data_dir,
                    format!(
                        "mixed layouts: {} beside speaker folders; in the per-speaker layout \
                         each speaker folder has its own {top}/",
                        dir.display()
                    ),
                ));
            }
        }
        if let Some(other) = others.first() {
            return Err(layout_error(
                other,
                "is not a speaker folder (it has no audio/ folder); in the per-speaker \
                 layout every folder of the dataset is SPEAKER/audio + SPEAKER/transcripts: \
                 add audio/ or move the folder out",
            ));
        }
        Ok(Self::SpeakerFolders {
            root: data_dir.to_path_buf(),
            folders: speaker_dirs
                .into_iter()
                .map(|(speaker, dir)| SpeakerFolder {
                    speaker,
                    layout: DatasetLayout::from_root(&dir),
                })
                .collect(),
            speakers_file,
        })
    }

    /// The source of explicit folders (`--audio-dir`, `--transcript-dir`,
    /// `--alignment-dir`), with `--speakers` if given.
    ///
    /// # Errors
    /// [`DataError::Io`] for a `speakers_file` that is not there.
    pub fn from_layout(layout: DatasetLayout, speakers_file: Option<&Path>) -> Result<Self> {
        Ok(match speakers_file {
            Some(p) => Self::SpeakersFile {
                layout,
                speakers_file: existing_file(p)?,
            },
            None => Self::OneSpeaker { layout },
        })
    }

    /// Whether recordings may have several speakers (every layout but
    /// [`DataSource::OneSpeaker`]).
    pub fn has_speakers(&self) -> bool {
        !matches!(self, Self::OneSpeaker { .. })
    }

    /// `speakers.json`, if the source has one.
    pub fn speakers_file(&self) -> Option<&Path> {
        match self {
            Self::OneSpeaker { .. } => None,
            Self::SpeakersFile { speakers_file, .. } => Some(speakers_file),
            Self::SpeakerFolders { speakers_file, .. } => speakers_file.as_deref(),
        }
    }

    /// Where its `speakers.json` is, or would be saved: its file, else
    /// [`SPEAKERS_FILE`] in the dataset folder (the folder holding
    /// `audio/`, or the one holding the speaker folders).
    pub fn speakers_file_target(&self) -> PathBuf {
        if let Some(path) = self.speakers_file() {
            return path.to_path_buf();
        }
        match self {
            Self::OneSpeaker { layout } | Self::SpeakersFile { layout, .. } => layout
                .audio_dir
                .parent()
                .unwrap_or(&layout.audio_dir)
                .join(SPEAKERS_FILE),
            Self::SpeakerFolders { root, .. } => root.join(SPEAKERS_FILE),
        }
    }

    /// The folder an empty dataset is reported against.
    fn root(&self) -> &Path {
        match self {
            Self::OneSpeaker { layout } | Self::SpeakersFile { layout, .. } => &layout.audio_dir,
            Self::SpeakerFolders { root, .. } => root,
        }
    }
}

fn existing_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(DataError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the speakers file is not there",
            ),
        ))
    }
}

/// The speakers of `source` with their ids, by id (empty for
/// [`DataSource::OneSpeaker`]). `fixed` are ids the run was given
/// (`--speaker-map`, `config.json`); the order of the rules is in the
/// module docs.
///
/// # Errors
/// Those of [`read_speakers_file`]; [`DataError::Speaker`] when two names
/// get one id or a name gets two, naming `speakers.json` and the key;
/// [`DataError::InvalidOption`] (`--speaker-map`) for clashes among
/// `fixed`.
pub fn speaker_table(source: &DataSource, fixed: &BTreeMap<String, u32>) -> Result<Vec<Speaker>> {
    let file = match source.speakers_file() {
        Some(path) => Some((path, read_speakers_file(path)?)),
        None => None,
    };
    table_of(source, file.as_ref().map(|(p, f)| (*p, f)), fixed)
}

fn table_of(
    source: &DataSource,
    file: Option<(&Path, &SpeakersFile)>,
    fixed: &BTreeMap<String, u32>,
) -> Result<Vec<Speaker>> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    match source {
        DataSource::OneSpeaker { .. } => return Ok(Vec::new()),
        DataSource::SpeakersFile { .. } => {
            if let Some((_, f)) = file {
                names.extend(f.recordings.values().map(SpeakerRef::name));
            }
        }
        DataSource::SpeakerFolders { folders, .. } => {
            names.extend(folders.iter().map(|f| f.speaker.clone()));
        }
    }
    if let Some((_, f)) = file {
        names.extend(f.speakers.keys().map(|k| k.trim().to_string()));
    }
    let mut by_name: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_id: BTreeMap<u32, String> = BTreeMap::new();
    let mut claim = |name: &str, id: u32, clash: &dyn Fn(&str) -> DataError| -> Result<()> {
        match by_id.get(&id) {
            Some(other) if other != name => return Err(clash(other)),
            _ => {}
        }
        by_id.insert(id, name.to_string());
        by_name.insert(name.to_string(), id);
        Ok(())
    };
    let whole = |name: &str| name.parse::<u32>().ok().filter(|id| id.to_string() == name);
    for name in &names {
        let given = fixed.get(name).copied();
        let declared = file.and_then(|(path, f)| {
            let id = f.speakers.get(name).copied().or_else(|| {
                // Keys are matched as trimmed names.
                f.speakers
                    .iter()
                    .find(|(k, _)| k.trim() == name)
                    .map(|(_, v)| *v)
            })?;
            Some((path, id))
        });
        if let Some(w) = whole(name) {
            let bad = given.filter(|&g| g != w).map(|g| ("--speaker-map", g));
            if let Some((path, id)) = declared.filter(|&(_, d)| d != w) {
                return Err(speaker_error(
                    path,
                    format!("speakers.{name}"),
                    format!("a speaker named by a number has that id ({w}), not {id}"),
                ));
            }
            if let Some((flag, g)) = bad {
                return Err(DataError::InvalidOption {
                    name: flag,
                    reason: format!(
                        "speaker `{name}` is named by a number, so its id is {w}, not {g}"
                    ),
                });
            }
        }
        if let (Some(g), Some((path, d))) = (given, declared) {
            if g != d {
                return Err(speaker_error(
                    path,
                    format!("speakers.{name}"),
                    format!(
                        "id {d} here, but the run gives `{name}` id {g} (--speaker-map or its \
                         config.json); make them agree"
                    ),
                ));
            }
        }
        let id = given.or(declared.map(|(_, d)| d)).or_else(|| whole(name));
        let Some(id) = id else { continue };
        match declared {
            Some((path, _)) if given.is_none() => claim(name, id, &|other| {
                speaker_error(
                    path,
                    format!("speakers.{name}"),
                    format!("id {id} is also `{other}`'s; each speaker needs its own id"),
                )
            })?,
            _ => claim(name, id, &|other| DataError::InvalidOption {
                name: "--speaker-map",
                reason: format!("`{name}` and `{other}` both have id {id}"),
            })?,
        }
    }
    let mut next = 0u32;
    for name in &names {
        if by_name.contains_key(name) {
            continue;
        }
        while by_id.contains_key(&next) {
            next += 1;
        }
        by_id.insert(next, name.clone());
        by_name.insert(name.clone(), next);
    }
    Ok(by_id
        .into_iter()
        .map(|(id, name)| Speaker { name, id })
        .collect())
}

/// A recording of a dataset with several speakers, before its audio is
/// read: its files and who speaks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedRecording {
    /// Its id: the file stem, or `speaker/stem` in the per-speaker layout.
    pub id: String,
    /// Its files.
    pub files: PairedFile,
    /// Who speaks the words its alignment does not label (its folder's
    /// speaker, or its `recordings` entry's), if anyone.
    pub speaker: Option<u32>,
    /// Every speaker heard in it, by id, in the order they first speak: one,
    /// or several for a conversation.
    pub speakers: Vec<u32>,
    /// Index of its folder in the source.
    #[serde(skip)]
    folder: usize,
}

/// The speakers and recordings of a dataset with several speakers, checked
/// (files paired, `speakers.json` and alignment labels resolved) without
/// reading audio: what the app's Dataset screen shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpeakerPlan {
    /// The speakers, by id.
    pub speakers: Vec<Speaker>,
    /// The recordings, by id.
    pub recordings: Vec<PlannedRecording>,
}

impl SpeakerPlan {
    /// The speaker of `id`, if it is one of the table.
    pub fn speaker(&self, id: u32) -> Option<&Speaker> {
        self.speakers.iter().find(|s| s.id == id)
    }
}

/// The table and every recording of `source` with its speakers.
///
/// # Errors
/// Those of [`speaker_table`], [`pair_files`] and [`read_alignment`];
/// [`DataError::Speaker`] for a `recordings` key that is no recording
/// (naming `speakers.json` and the key), a recording no one speaks (no
/// `recordings` entry, words without a label), and an alignment label that
/// is not a speaker of the dataset (naming the alignment file and the key
/// of the label); [`DataError::Speaker`] for `recordings` in the
/// per-speaker layout.
pub fn plan(source: &DataSource, fixed: &BTreeMap<String, u32>) -> Result<SpeakerPlan> {
    let file = match source.speakers_file() {
        Some(path) => Some((path, read_speakers_file(path)?)),
        None => None,
    };
    plan_of(source, file.as_ref().map(|(p, f)| (*p, f)), fixed)
}

/// [`plan`] with the contents of `source`'s `speakers.json` given, not
/// read: what a run would make of `file` once it is saved there (the app
/// checks an edit with it before [`write_speakers_file`]). Errors name
/// [`DataSource::speakers_file_target`].
///
/// # Errors
/// As [`plan`], but never for reading `speakers.json`.
pub fn plan_with(
    source: &DataSource,
    file: &SpeakersFile,
    fixed: &BTreeMap<String, u32>,
) -> Result<SpeakerPlan> {
    let path = source.speakers_file_target();
    let source = match source {
        DataSource::OneSpeaker { layout } => DataSource::SpeakersFile {
            layout: layout.clone(),
            speakers_file: path.clone(),
        },
        DataSource::SpeakerFolders { root, folders, .. } => DataSource::SpeakerFolders {
            root: root.clone(),
            folders: folders.clone(),
            speakers_file: Some(path.clone()),
        },
        other => other.clone(),
    };
    plan_of(&source, Some((&path, file)), fixed)
}

fn plan_of(
    source: &DataSource,
    file: Option<(&Path, &SpeakersFile)>,
    fixed: &BTreeMap<String, u32>,
) -> Result<SpeakerPlan> {
    let speakers = table_of(source, file, fixed)?;
    let id_of = |name: &str| speakers.iter().find(|s| s.name == name).map(|s| s.id);
    let mut recordings = Vec::new();
    match source {
        DataSource::OneSpeaker { layout } => {
            for files in pair_files(layout)? {
                recordings.push(PlannedRecording {
                    id: files.id.clone(),
                    files,
                    speaker: None,
                    speakers: Vec::new(),
                    folder: 0,
                });
            }
        }
        DataSource::SpeakersFile { layout, .. } => {
            let pairs = pair_files(layout)?;
            if let Some((path, f)) = file {
                let missing: Vec<&String> = f
                    .recordings
                    .keys()
                    .filter(|k| !pairs.iter().any(|p| &p.id == *k))
                    .collect();
                if let Some(first) = missing.first() {
                    let more = match missing.len() {
                        1 => String::new(),
                        n => format!(" (and {} more: {})", n - 1, join_names(&missing[1..])),
                    };
                    return Err(speaker_error(
                        path,
                        format!("recordings.{first}"),
                        format!(
                            "no such recording: {} has no audio file `{first}.*` with a \
                             transcript{more}",
                            layout.audio_dir.display()
                        ),
                    ));
                }
            }
            for files in pairs {
                let speaker = file
                    .and_then(|(_, f)| f.recordings.get(&files.id))
                    .and_then(|r| id_of(&r.name()));
                recordings.push(PlannedRecording {
                    id: files.id.clone(),
                    files,
                    speaker,
                    speakers: Vec::new(),
                    folder: 0,
                });
            }
        }
        DataSource::SpeakerFolders { folders, .. } => {
            if let Some((path, f)) = file {
                if let Some(key) = f.recordings.keys().next() {
                    return Err(speaker_error(
                        path,
                        format!("recordings.{key}"),
                        "`recordings` is for one audio/ folder; in the per-speaker layout each \
                         folder is its recordings' speaker (keep `speakers` for fixed ids)",
                    ));
                }
            }
            for (i, folder) in folders.iter().enumerate() {
                let speaker = id_of(&folder.speaker);
                for files in pair_files(&folder.layout)? {
                    recordings.push(PlannedRecording {
                        id: format!("{}/{}", folder.speaker, files.id),
                        files,
                        speaker,
                        speakers: Vec::new(),
                        folder: i,
                    });
                }
            }
        }
    }
    if !source.has_speakers() {
        return Ok(SpeakerPlan {
            speakers,
            recordings,
        });
    }
    for r in &mut recordings {
        r.speakers = match &r.files.alignment {
            Some(path) => {
                let a = read_alignment(path)?;
                let ids = word_speakers(source, file.map(|f| f.0), &speakers, r, path, &a)?;
                let mut order = Vec::new();
                for id in ids {
                    if !order.contains(&id) {
                        order.push(id);
                    }
                }
                order
            }
            None => match r.speaker {
                Some(id) => vec![id],
                None => return Err(unassigned(source, file.map(|f| f.0), r, None)),
            },
        };
    }
    recordings.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(SpeakerPlan {
        speakers,
        recordings,
    })
}

/// The error for a recording no one is said to speak (or a word of it,
/// `word`: index and text).
fn unassigned(
    source: &DataSource,
    speakers_file: Option<&Path>,
    r: &PlannedRecording,
    word: Option<(usize, &str, &Path)>,
) -> DataError {
    let what = match word {
        Some((i, text, path)) => format!(
            "{} labels no speaker for word {i} (`{text}`), and",
            path.display()
        ),
        None => format!("{} has no alignment naming its speakers, and", r.id),
    };
    match (source, speakers_file) {
        (DataSource::SpeakersFile { .. }, Some(path)) => speaker_error(
            path,
            format!("recordings.{}", r.id),
            format!(
                "missing: {what} the recording has no entry here; add \"{}\": \"SPEAKER\"",
                r.id
            ),
        ),
        _ => speaker_error(
            &r.files.audio,
            "speaker",
            format!("{what} no speaker is given for the recording"),
        ),
    }
}

/// The speaker id of each word of `alignment` (a label, else the
/// recording's speaker).
fn word_speakers(
    source: &DataSource,
    speakers_file: Option<&Path>,
    speakers: &[Speaker],
    r: &PlannedRecording,
    path: &Path,
    alignment: &Alignment,
) -> Result<Vec<u32>> {
    alignment
        .words
        .iter()
        .enumerate()
        .map(|(i, w)| match &w.speaker {
            Some(label) => speakers
                .iter()
                .find(|s| s.name == label.name)
                .or_else(|| {
                    // A number is also an id of the table.
                    let id: u32 = label.name.parse().ok()?;
                    speakers.iter().find(|s| s.id == id)
                })
                .map(|s| s.id)
                .ok_or_else(|| {
                    let known: Vec<String> = speakers
                        .iter()
                        .map(|s| format!("{} ({})", s.name, s.id))
                        .collect();
                    let hint = match speakers_file {
                        Some(f) => format!("add it to {}'s \"speakers\"", f.display()),
                        None => format!(
                            "name a speaker folder after it, or declare it in a {SPEAKERS_FILE}"
                        ),
                    };
                    speaker_error(
                        path,
                        label.key.clone(),
                        format!(
                            "speaker `{}` is not a speaker of this dataset (speakers: {}); {hint}, \
                             or fix the label",
                            label.name,
                            known.join(", ")
                        ),
                    )
                }),
            None => r
                .speaker
                .ok_or_else(|| unassigned(source, speakers_file, r, Some((i, &w.text, path)))),
        })
        .collect()
}

/// Loads `source` as training uses it: [`load_dataset_with_progress`] for
/// one speaker; for several, [`plan`], then every recording read and cut
/// (conversations at each change of voice), each utterance carrying its
/// speaker, the split made per speaker (see the module docs), and
/// [`Dataset::speakers`] filled.
///
/// # Errors
/// Those of [`plan`] and of [`load_dataset_with_progress`].
pub fn load_source(
    source: &DataSource,
    fixed: &BTreeMap<String, u32>,
    opts: &LoadOptions,
    on_progress: &mut dyn FnMut(LoadProgress),
) -> Result<Dataset> {
    if let DataSource::OneSpeaker { layout } = source {
        return load_dataset_with_progress(layout, opts, on_progress);
    }
    opts.segment.validate()?;
    let plan = plan(source, fixed)?;
    let layouts: Vec<&DatasetLayout> = match source {
        DataSource::OneSpeaker { layout } | DataSource::SpeakersFile { layout, .. } => {
            vec![layout]
        }
        DataSource::SpeakerFolders { folders, .. } => folders.iter().map(|f| &f.layout).collect(),
    };
    let ids: Vec<String> = plan.recordings.iter().map(|r| r.id.clone()).collect();
    let speakers_file = source.speakers_file();
    let results = load_parallel(&ids, on_progress, |i| {
        let r = &plan.recordings[i];
        let unaligned = match r.speaker {
            Some(id) => RecordingSpeakers::One(id),
            None => RecordingSpeakers::Run,
        };
        load_spoken(
            &r.files,
            &r.id,
            layouts[r.folder],
            &opts.segment,
            unaligned,
            &|path, alignment| {
                let ids = word_speakers(source, speakers_file, &plan.speakers, r, path, alignment)?;
                let first = ids.first().copied();
                let speakers = match first {
                    Some(id) if ids.iter().all(|&x| x == id) => RecordingSpeakers::One(id),
                    _ => RecordingSpeakers::PerWord(ids),
                };
                Ok((speakers, None))
            },
        )
    });
    let mut warnings = Vec::new();
    let mut conversations = Vec::new();
    let mut names = Vec::new();
    let mut recordings_read = Vec::with_capacity(ids.len());
    for (r, result) in plan.recordings.iter().zip(results) {
        let Some(result) = result else { continue };
        let loaded = result?;
        recordings_read.push((r.id.clone(), loaded.seconds));
        warnings.extend(loaded.warnings);
        if let Some(conv) = loaded.conversation {
            log_alignment(&conv);
            // The split hashes the file stem, as a one-speaker run would.
            names.push(r.files.id.clone());
            conversations.push(conv);
        }
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if conversations.is_empty() {
        return Err(DataError::EmptyDir {
            path: source.root().to_path_buf(),
            what: "usable recording",
        });
    }
    // Groups: each speaker's own recordings, then the conversations.
    let mut groups: BTreeMap<Option<u32>, Vec<usize>> = BTreeMap::new();
    for (ci, conv) in conversations.iter().enumerate() {
        let mut heard = conv.utterances.iter().map(|u| u.speaker);
        let first = heard.next().flatten();
        let key = if heard.all(|s| s == first) {
            first
        } else {
            None
        };
        groups.entry(key).or_default().push(ci);
    }
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    let mut split_unit = SplitUnit::Recording;
    for (key, members) in &groups {
        let convs: Vec<_> = members
            .iter()
            .map(|&ci| conversations[ci].clone())
            .collect();
        // Conversations may share stems across speaker folders: their ids
        // are unique.
        let group_names: Vec<String> = members
            .iter()
            .map(|&ci| match key {
                Some(_) => names[ci].clone(),
                None => conversations[ci].recording_id.clone(),
            })
            .collect();
        let (t, v, unit) = split_conversations(&convs, &group_names, opts)?;
        if unit == SplitUnit::Utterance {
            split_unit = SplitUnit::Utterance;
        }
        let global = |id: UtteranceId| UtteranceId {
            conversation: members[id.conversation],
            utterance: id.utterance,
        };
        train.extend(t.into_iter().map(global));
        validation.extend(v.into_iter().map(global));
    }
    train.sort();
    validation.sort();
    Ok(Dataset {
        conversations,
        train,
        validation,
        split_unit,
        warnings,
        recordings_read,
        speakers: plan.speakers,
    })
}

fn join_names(names: &[&String]) -> String {
    const SHOWN: usize = 5;
    let mut out = names
        .iter()
        .take(SHOWN)
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out.push_str(", ...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(
        source: &DataSource,
        file: Option<&SpeakersFile>,
        fixed: &[(&str, u32)],
    ) -> Result<Vec<(String, u32)>> {
        let fixed: BTreeMap<String, u32> = fixed.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        Ok(table_of(
            source,
            file.map(|f| (Path::new("speakers.json"), f)),
            &fixed,
        )?
        .into_iter()
        .map(|s| (s.name, s.id))
        .collect())
    }

    fn folders(names: &[&str]) -> DataSource {
        DataSource::SpeakerFolders {
            root: "d".into(),
            folders: names
                .iter()
                .map(|n| SpeakerFolder {
                    speaker: n.to_string(),
                    layout: DatasetLayout::new(format!("d/{n}/audio"), "t", None),
                })
                .collect(),
            speakers_file: None,
        }
    }

    #[test]
    fn ids_follow_the_documented_rules() {
        let pairs = |v: &[(&str, u32)]| -> Vec<(String, u32)> {
            v.iter().map(|(n, i)| (n.to_string(), *i)).collect()
        };
        // Byte order of names, smallest free ids.
        assert_eq!(
            table(&folders(&["bob", "alice", "Zed"]), None, &[]).unwrap(),
            pairs(&[("Zed", 0), ("alice", 1), ("bob", 2)])
        );
        // Whole numbers keep their number; the rest fill the gaps.
        assert_eq!(
            table(&folders(&["1", "bob", "alice"]), None, &[]).unwrap(),
            pairs(&[("alice", 0), ("1", 1), ("bob", 2)])
        );
        // The run's ids (a config.json's table) come first, so a new
        // speaker does not renumber the others.
        assert_eq!(
            table(
                &folders(&["alice", "bob", "aaron"]),
                None,
                &[("alice", 0), ("bob", 1)]
            )
            .unwrap(),
            pairs(&[("alice", 0), ("bob", 1), ("aaron", 2)])
        );
        // speakers.json's ids, and its names (conversation labels).
        let file = SpeakersFile {
            speakers: [("bob".to_string(), 5), ("SPEAKER_00".to_string(), 7)].into(),
            recordings: BTreeMap::new(),
        };
        assert_eq!(
            table(&folders(&["alice", "bob"]), Some(&file), &[]).unwrap(),
            pairs(&[("alice", 0), ("bob", 5), ("SPEAKER_00", 7)])
        );
        // One speaker: no table.
        let one = DataSource::OneSpeaker {
            layout: DatasetLayout::new("a", "t", None),
        };
        assert!(table(&one, None, &[("alice", 3)]).unwrap().is_empty());
    }

    #[test]
    fn id_clashes_are_named() {
        let file = SpeakersFile {
            speakers: [("alice".to_string(), 1), ("bob".to_string(), 1)].into(),
            recordings: BTreeMap::new(),
        };
        let err = table(&folders(&["alice", "bob"]), Some(&file), &[]).unwrap_err();
        assert!(
            matches!(&err, DataError::Speaker { key, .. } if key == "speakers.bob"),
            "{err}"
        );
        assert!(err.to_string().contains("speakers.json"), "{err}");
        let file = SpeakersFile {
            speakers: [("alice".to_string(), 2)].into(),
            recordings: BTreeMap::new(),
        };
        let err = table(&folders(&["alice"]), Some(&file), &[("alice", 3)]).unwrap_err();
        assert!(err.to_string().contains("speakers.alice"), "{err}");
        let err = table(
            &folders(&["alice", "bob"]),
            None,
            &[("alice", 0), ("bob", 0)],
        )
        .unwrap_err();
        assert!(err.to_string().contains("--speaker-map"), "{err}");
        let err = table(&folders(&["3"]), None, &[("3", 4)]).unwrap_err();
        assert!(err.to_string().contains("named by a number"), "{err}");
    }

    /// `dir/audio/NAME.wav` (empty: listing never decodes) and
    /// `dir/transcripts/NAME.txt` for each name.
    fn recordings(dir: &Path, names: &[&str]) {
        for d in ["audio", "transcripts"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        for n in names {
            std::fs::write(dir.join(format!("audio/{n}.wav")), b"").unwrap();
            std::fs::write(dir.join(format!("transcripts/{n}.txt")), "hi there").unwrap();
        }
    }

    fn alignment(dir: &Path, name: &str, json: &str) {
        std::fs::create_dir_all(dir.join("alignments")).unwrap();
        std::fs::write(dir.join(format!("alignments/{name}.json")), json).unwrap();
    }

    fn plan_of(dir: &Path) -> Result<SpeakerPlan> {
        plan(&DataSource::detect(dir, None)?, &BTreeMap::new())
    }

    #[test]
    fn layouts_are_detected_and_planned() {
        let tmp = tempfile::tempdir().unwrap();
        // One folder, no speakers.json: the run's one speaker.
        let one = tmp.path().join("one");
        recordings(&one, &["a"]);
        assert!(matches!(
            DataSource::detect(&one, None).unwrap(),
            DataSource::OneSpeaker { .. }
        ));
        // One folder of a speaker each, a conversation in bob's folder.
        let per = tmp.path().join("per");
        recordings(&per.join("alice"), &["a", "b"]);
        recordings(&per.join("bob"), &["a", "talk"]);
        std::fs::create_dir_all(per.join(".cache")).unwrap();
        alignment(
            &per.join("bob"),
            "talk",
            r#"{"segments": [{"text": "hi", "start": 0, "end": 1, "speaker": "alice"},
                             {"text": "there", "start": 1.5, "end": 2}]}"#,
        );
        let p = plan_of(&per).unwrap();
        let ids: Vec<(&str, Option<u32>, &[u32])> = p
            .recordings
            .iter()
            .map(|r| (r.id.as_str(), r.speaker, r.speakers.as_slice()))
            .collect();
        assert_eq!(
            ids,
            [
                ("alice/a", Some(0), &[0][..]),
                ("alice/b", Some(0), &[0][..]),
                ("bob/a", Some(1), &[1][..]),
                ("bob/talk", Some(1), &[0, 1][..]),
            ]
        );
        // speakers.json beside one audio folder.
        let file = tmp.path().join("file");
        recordings(&file, &["a", "b"]);
        std::fs::write(
            file.join(SPEAKERS_FILE),
            r#"{"recordings": {"a": "zoe", "b": 4}}"#,
        )
        .unwrap();
        let p = plan_of(&file).unwrap();
        assert_eq!(
            p.speakers,
            [
                Speaker {
                    name: "zoe".into(),
                    id: 0
                },
                Speaker {
                    name: "4".into(),
                    id: 4
                }
            ]
        );
        assert_eq!(p.recordings[1].speaker, Some(4));
    }

    #[test]
    fn bad_speaker_data_names_the_file_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let msg = |e: DataError| e.to_string();
        // A speakers.json naming a recording that is not there.
        let file = tmp.path().join("file");
        recordings(&file, &["a"]);
        std::fs::write(
            file.join(SPEAKERS_FILE),
            r#"{"recordings": {"a": "zoe", "gone": "zoe", "lost": "max"}}"#,
        )
        .unwrap();
        let e = msg(plan_of(&file).unwrap_err());
        assert!(
            e.contains("speakers.json") && e.contains("`recordings.gone`"),
            "{e}"
        );
        assert!(e.contains("no such recording") && e.contains("lost"), "{e}");
        // A recording no one speaks.
        recordings(&file, &["b"]);
        std::fs::write(file.join(SPEAKERS_FILE), r#"{"recordings": {"a": "zoe"}}"#).unwrap();
        let e = msg(plan_of(&file).unwrap_err());
        assert!(
            e.contains("speakers.json") && e.contains("`recordings.b`"),
            "{e}"
        );
        // An alignment naming a speaker the dataset does not have.
        std::fs::write(
            file.join(SPEAKERS_FILE),
            r#"{"recordings": {"a": "zoe", "b": "zoe"}}"#,
        )
        .unwrap();
        alignment(
            &file,
            "b",
            r#"{"segments": [{"text": "hi there", "start": 0, "end": 1, "speaker": "SPEAKER_07"}]}"#,
        );
        let e = plan_of(&file).unwrap_err();
        assert!(
            matches!(&e, DataError::Speaker { path, key, .. }
                if path.ends_with("alignments/b.json") && key == "segments[0].speaker"),
            "{e}"
        );
        assert!(msg(e).contains("SPEAKER_07"));
        // Mixed layouts: audio/ beside speaker folders, and a folder that is
        // no speaker folder.
        let mixed = tmp.path().join("mixed");
        recordings(&mixed, &["a"]);
        recordings(&mixed.join("alice"), &["a"]);
        let e = msg(DataSource::detect(&mixed, None).unwrap_err());
        assert!(e.contains("mixed layouts") && e.contains("alice"), "{e}");
        let stray = tmp.path().join("stray");
        recordings(&stray.join("alice"), &["a"]);
        std::fs::create_dir_all(stray.join("notes")).unwrap();
        let e = msg(DataSource::detect(&stray, None).unwrap_err());
        assert!(
            e.contains("notes") && e.contains("not a speaker folder"),
            "{e}"
        );
        // `recordings` in the per-speaker layout.
        std::fs::remove_dir(stray.join("notes")).unwrap();
        std::fs::write(
            stray.join(SPEAKERS_FILE),
            r#"{"recordings": {"a": "alice"}}"#,
        )
        .unwrap();
        let e = msg(plan_of(&stray).unwrap_err());
        assert!(
            e.contains("`recordings.a`") && e.contains("per-speaker"),
            "{e}"
        );
        // Neither layout, and a --speakers file that is not there.
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let e = msg(DataSource::detect(&empty, None).unwrap_err());
        assert!(e.contains("neither audio/"), "{e}");
        let e = DataSource::detect(&file, Some(&empty.join("who.json"))).unwrap_err();
        assert!(matches!(&e, DataError::Io { path, .. } if path.ends_with("who.json")));
    }

    #[test]
    fn an_edit_is_planned_before_it_is_saved() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("file");
        recordings(&dir, &["a", "b", "c"]);
        // No speakers.json yet: one speaker, until the edit names two.
        let source = DataSource::detect(&dir, None).unwrap();
        assert!(!source.has_speakers());
        let edit = SpeakersFile {
            speakers: [("bob".to_string(), 3)].into(),
            recordings: [
                ("a".to_string(), SpeakerRef::Name("alice".into())),
                ("b".to_string(), SpeakerRef::Name("bob".into())),
                ("c".to_string(), SpeakerRef::Name("alice".into())),
            ]
            .into(),
        };
        let planned = plan_with(&source, &edit, &BTreeMap::new()).unwrap();
        let who: Vec<(&str, Option<u32>)> = planned
            .recordings
            .iter()
            .map(|r| (r.id.as_str(), r.speaker))
            .collect();
        assert_eq!(who, [("a", Some(0)), ("b", Some(3)), ("c", Some(0))]);
        assert!(!dir.join(SPEAKERS_FILE).exists(), "planning writes nothing");
        // Saved, the run reads the same plan from the file.
        write_speakers_file(&dir.join(SPEAKERS_FILE), &edit).unwrap();
        let saved = DataSource::detect(&dir, None).unwrap();
        assert_eq!(plan(&saved, &BTreeMap::new()).unwrap(), planned);
        // An edit that leaves a recording to no one is refused, naming the
        // file it would be saved as and the recording.
        let mut partial = edit.clone();
        partial.recordings.remove("c");
        let e = plan_with(&saved, &partial, &BTreeMap::new()).unwrap_err();
        assert!(
            matches!(&e, DataError::Speaker { path, key, .. }
                if path.ends_with(SPEAKERS_FILE) && key == "recordings.c"),
            "{e}"
        );
    }

    #[test]
    fn speakers_json_reads_names_and_ids_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SPEAKERS_FILE);
        std::fs::write(
            &path,
            r#"{"speakers": {"alice": 0}, "recordings": {"a": "alice", "b": 1}}"#,
        )
        .unwrap();
        let f = read_speakers_file(&path).unwrap();
        assert_eq!(f.recordings["a"], SpeakerRef::Name("alice".into()));
        assert_eq!(f.recordings["b"], SpeakerRef::Id(1));
        write_speakers_file(&path, &f).unwrap();
        assert_eq!(read_speakers_file(&path).unwrap(), f);
        for (bad, needle) in [
            (r#"{"recording": {}}"#, "unknown field"),
            (r#"{"recordings": {"a": 1.5}}"#, "speakers.json"),
            (r#"{"recordings": {"a": " "}}"#, "recordings.a"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = read_speakers_file(&path).unwrap_err();
            let msg = format!(
                "{err} {:?}",
                std::error::Error::source(&err).map(|s| s.to_string())
            );
            assert!(
                msg.contains("speakers.json") && msg.contains(needle),
                "{bad}: {msg}"
            );
        }
    }
}
