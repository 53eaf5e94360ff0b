//! The Dataset screen: `scan_dataset` (the table, from
//! `csm_core::data::scan_dataset`: headers and transcripts only) and
//! `dataset_usage` (the audio a run would train on, after trimming and
//! cutting, from `csm_core::data::audio_usage`).

use std::path::{Path, PathBuf};

use csm_core::data::dataset::{FileReport, ProblemKind as CoreKind};
use csm_core::data::speakers::load_source;
use csm_core::data::{
    audio_usage, scan_dataset as core_scan, AudioUsage, DataSource, DatasetLayout, ScanOptions,
    TARGET_SAMPLE_RATE,
};
use csm_core::train::TrainConfig;
use serde::Serialize;
use tauri::{AppHandle, Runtime, State};

use crate::error::{blocking, Error, Result};
use crate::state::AllowedPaths;

/// Mirrors `DatasetScan` in `ui/src/lib/api.ts`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetScan {
    /// Folder the user chose, or the common parent of the dropped folders.
    pub root: PathBuf,
    /// Audio folder.
    pub audio_dir: PathBuf,
    /// Transcript folder.
    pub transcript_dir: PathBuf,
    /// Alignment folder, if any.
    pub alignment_dir: Option<PathBuf>,
    /// One row per audio file.
    pub items: Vec<DatasetItem>,
    /// Sums.
    pub totals: Totals,
    /// The speakers' folders (names) when `root` holds one folder per
    /// speaker (`root/NAME/audio`...); the rows' `file` is then
    /// `NAME/<file>`, and `audioDir`/`transcriptDir` are `root`. Empty for
    /// one folder of recordings.
    pub speaker_folders: Vec<String>,
    /// `speakers.json` in the dataset folder, when there is one.
    pub speakers_file: Option<PathBuf>,
}

/// One audio file.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetItem {
    /// File name relative to the audio folder.
    pub file: String,
    /// Absolute path.
    pub path: PathBuf,
    /// Duration; `None` when unreadable.
    pub duration_secs: Option<f64>,
    /// Sample rate of the file.
    pub sample_rate: Option<u32>,
    /// Channels of the file.
    pub channels: Option<u16>,
    /// Matching transcript, if found.
    pub transcript_path: Option<PathBuf>,
    /// Trimmed transcript text.
    pub transcript: Option<String>,
    /// Whether an alignment file exists.
    pub has_alignment: bool,
    /// Its alignment was made stale by a transcript edit (moved to
    /// `alignments/stale/`): the recording is used without word timings.
    pub alignment_stale: bool,
    /// Everything wrong with the file.
    pub problems: Vec<Problem>,
}

/// One problem of one file.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// `ProblemKind` of api.ts.
    pub kind: &'static str,
    /// Sentence for the user.
    pub message: String,
}

/// Sums over the rows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Audio files.
    pub files: usize,
    /// Seconds of readable audio.
    pub seconds: f64,
    /// Files with a transcript.
    pub with_transcript: usize,
    /// Files with at least one problem.
    pub with_problems: usize,
    /// Files the trainer will use.
    pub usable: usize,
}

/// Scans dropped or picked folders (see docs/ipc.md for the accepted layouts).
///
/// # Errors
/// `notFound` for a missing folder, `invalidInput` when the folders do not
/// form a dataset or were not chosen by the user.
#[tauri::command]
pub async fn scan_dataset<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    paths: Vec<PathBuf>,
) -> Result<DatasetScan> {
    for p in &paths {
        allowed.check(&app, p)?;
    }
    blocking("scan_dataset", move || scan(&paths)).await
}

/// The audio a run with `config` would use: its dataset (`audio_dir`,
/// `transcript_dir`, `alignment_dir`) read, trimmed, cut and split as
/// training does with `config`'s segmenting settings, `val_split` and
/// `seed`. Reads every recording, so it takes a while on a large dataset.
/// `AudioUsage` crosses IPC in the core's serde (snake_case).
///
/// # Errors
/// `invalidInput` for a dataset training would refuse (the message names
/// the file, e.g. a long recording without alignment), or folders the user
/// did not choose; `notFound` for a missing folder.
#[tauri::command]
pub async fn dataset_usage<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    config: TrainConfig,
) -> Result<AudioUsage> {
    check_dataset(&app, &allowed, &config)?;
    blocking("dataset_usage", move || usage(&config)).await
}

/// Synchronous body of [`dataset_usage`]: one speaker's folders through
/// `audio_usage`, several speakers (`data_dir`, `speakers_file`) through
/// `data::speakers::load_source`, as training loads them (with each
/// speaker's share in `speakers`).
pub fn usage(config: &TrainConfig) -> Result<AudioUsage> {
    let invalid = |e: csm_core::data::DataError| Error::InvalidInput(e.to_string());
    let source = config.data_source().map_err(invalid)?;
    if let DataSource::OneSpeaker { layout } = &source {
        return audio_usage(layout, &config.load_options(), &mut |_| {}).map_err(invalid);
    }
    let dataset = load_source(
        &source,
        &config.speakers,
        &config.load_options(),
        &mut |_| {},
    )
    .map_err(invalid)?;
    Ok(dataset.usage())
}

/// The dataset folders of `config` that exist and were given to the app
/// (`data_dir` or the three folders, and `speakers_file`).
pub(crate) fn check_dataset<R: Runtime>(
    app: &AppHandle<R>,
    allowed: &AllowedPaths,
    config: &TrainConfig,
) -> Result<()> {
    let folders = match &config.data_dir {
        Some(dir) => vec![Some(dir)],
        None => vec![Some(&config.audio_dir), Some(&config.transcript_dir)],
    };
    for p in folders
        .into_iter()
        .chain([config.alignment_dir.as_ref()])
        .flatten()
    {
        if !p.is_dir() {
            return Err(Error::NotFound(p.clone()));
        }
        allowed.check(app, p)?;
    }
    if let Some(p) = &config.speakers_file {
        if !p.is_file() {
            return Err(Error::NotFound(p.clone()));
        }
        allowed.check(app, p)?;
    }
    Ok(())
}

/// Synchronous body of [`scan_dataset`].
pub fn scan(paths: &[PathBuf]) -> Result<DatasetScan> {
    if let Some(scan) = scan_speaker_folders(paths)? {
        return Ok(scan);
    }
    let (root, layout) = resolve_layout(paths)?;
    let opts = ScanOptions {
        preview_chars: usize::MAX,
        ..ScanOptions::default()
    };
    let report = core_scan(&layout, &opts).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let items: Vec<DatasetItem> = report
        .files
        .iter()
        .filter_map(|f| item(&layout, f))
        .collect();
    let usable = report
        .files
        .iter()
        .filter(|f| f.audio_file.is_some() && f.usable)
        .count();
    // Where a run of these folders looks for it, and save_speakers writes it.
    let speakers_file = Some(
        DataSource::OneSpeaker {
            layout: layout.clone(),
        }
        .speakers_file_target(),
    )
    .filter(|p| p.is_file());
    Ok(DatasetScan {
        root,
        audio_dir: layout.audio_dir.clone(),
        transcript_dir: layout.transcript_dir.clone(),
        alignment_dir: layout.alignment_dir.clone(),
        totals: totals(&items, usable),
        items,
        speaker_folders: Vec::new(),
        speakers_file,
    })
}

/// Sums over the rows; `usable` from the core's report.
fn totals(items: &[DatasetItem], usable: usize) -> Totals {
    Totals {
        files: items.len(),
        seconds: items.iter().filter_map(|i| i.duration_secs).sum(),
        with_transcript: items.iter().filter(|i| i.transcript_path.is_some()).count(),
        with_problems: items.iter().filter(|i| !i.problems.is_empty()).count(),
        usable,
    }
}

/// One folder in the per-speaker layout (`DataSource::detect`): every
/// speaker folder scanned, its rows named `SPEAKER/<file>`. `None` for any
/// other folder or set of folders.
fn scan_speaker_folders(paths: &[PathBuf]) -> Result<Option<DatasetScan>> {
    let [root] = paths else { return Ok(None) };
    if !root.is_dir() || root.join("audio").is_dir() {
        return Ok(None);
    }
    let Ok(DataSource::SpeakerFolders {
        folders,
        speakers_file,
        ..
    }) = DataSource::detect(root, None)
    else {
        return Ok(None);
    };
    let opts = ScanOptions {
        preview_chars: usize::MAX,
        ..ScanOptions::default()
    };
    let mut items = Vec::new();
    let mut usable = 0;
    for folder in &folders {
        let report =
            core_scan(&folder.layout, &opts).map_err(|e| Error::InvalidInput(e.to_string()))?;
        usable += report
            .files
            .iter()
            .filter(|f| f.audio_file.is_some() && f.usable)
            .count();
        items.extend(
            report
                .files
                .iter()
                .filter_map(|f| item(&folder.layout, f))
                .map(|i| DatasetItem {
                    file: format!("{}/{}", folder.speaker, i.file),
                    ..i
                }),
        );
    }
    Ok(Some(DatasetScan {
        root: root.clone(),
        audio_dir: root.clone(),
        transcript_dir: root.clone(),
        alignment_dir: None,
        totals: totals(&items, usable),
        items,
        speaker_folders: folders.into_iter().map(|f| f.speaker).collect(),
        speakers_file,
    }))
}

fn item(layout: &DatasetLayout, f: &FileReport) -> Option<DatasetItem> {
    let file = f.audio_file.clone()?;
    let mut problems: Vec<Problem> = f
        .problems
        .iter()
        .map(|p| Problem {
            kind: problem_kind(p.kind, p.blocking),
            message: p.message.clone(),
        })
        .collect();
    if let Some(sr) = f.sample_rate.filter(|&sr| sr != TARGET_SAMPLE_RATE) {
        problems.push(Problem {
            kind: "resampled",
            message: format!("{sr} Hz; resampled to {TARGET_SAMPLE_RATE} Hz for training"),
        });
    }
    let alignment_stale = super::proofread::alignment_stale(layout, &file);
    Some(DatasetItem {
        path: layout.audio_dir.join(&file),
        file,
        duration_secs: f.duration_s,
        sample_rate: f.sample_rate,
        channels: f.channels,
        transcript_path: f
            .transcript_file
            .as_ref()
            .map(|t| layout.transcript_dir.join(t)),
        transcript: f.text_preview.as_ref().map(|t| t.trim().to_string()),
        has_alignment: f.alignment_file.is_some(),
        alignment_stale,
        problems,
    })
}

/// The UI's problem kinds; blocking file-level failures are all "unreadable".
fn problem_kind(kind: CoreKind, blocking: bool) -> &'static str {
    match kind {
        CoreKind::MissingTranscript => "missingTranscript",
        CoreKind::EmptyTranscript => "emptyTranscript",
        CoreKind::TooLong => "tooLong",
        CoreKind::Clipping => "clipping",
        CoreKind::Silence => "silence",
        CoreKind::MissingAlignment | CoreKind::BadAlignment if !blocking => "alignment",
        _ => "unreadable",
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Audio,
    Transcripts,
    Alignments,
}

/// One parent holding `audio/` + `transcripts/`, or the folders themselves.
fn resolve_layout(paths: &[PathBuf]) -> Result<(PathBuf, DatasetLayout)> {
    if paths.is_empty() {
        return Err(Error::InvalidInput("no folder given".into()));
    }
    for p in paths {
        if !p.exists() {
            return Err(Error::NotFound(p.clone()));
        }
        if !p.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{} is not a folder",
                p.display()
            )));
        }
    }
    if let [one] = paths {
        if one.join("audio").is_dir() && one.join("transcripts").is_dir() {
            return Ok((one.clone(), DatasetLayout::from_root(one)));
        }
    }
    let (mut audio, mut text, mut align) = (None, None, None);
    for p in paths {
        let slot = match role(p) {
            Some(Role::Audio) => &mut audio,
            Some(Role::Transcripts) => &mut text,
            Some(Role::Alignments) => &mut align,
            None => {
                return Err(Error::InvalidInput(format!(
                    "{} holds neither audio (.wav, .flac, .mp3, .m4a, .ogg) nor transcripts (.txt) nor alignments (.json); drop the audio and transcripts folders, or one folder holding audio/ and transcripts/",
                    p.display()
                )))
            }
        };
        if slot.replace(p.clone()).is_some() {
            return Err(Error::InvalidInput(format!(
                "two folders of the same kind were given ({})",
                p.display()
            )));
        }
    }
    let audio = audio
        .ok_or_else(|| Error::InvalidInput("no audio folder among the folders given".into()))?;
    let text = text.ok_or_else(|| {
        Error::InvalidInput(format!(
            "no transcripts folder given with {}",
            audio.display()
        ))
    })?;
    let root = common_parent(paths);
    Ok((root, DatasetLayout::new(audio, text, align)))
}

fn role(dir: &Path) -> Option<Role> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.starts_with("align") {
        return Some(Role::Alignments);
    }
    if name.starts_with("transcript") || name == "text" || name == "txt" {
        return Some(Role::Transcripts);
    }
    if name.starts_with("audio") || name.starts_with("wav") {
        return Some(Role::Audio);
    }
    let (mut wav, mut txt, mut json) = (0, 0, 0);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e
            .path()
            .extension()
            .map(|x| x.to_string_lossy().to_lowercase())
            .as_deref()
        {
            Some(x) if csm_core::data::decode::is_audio_extension(x) => wav += 1,
            Some("txt") => txt += 1,
            Some("json") => json += 1,
            _ => {}
        }
    }
    let max = wav.max(txt).max(json);
    if max == 0 {
        None
    } else if max == wav {
        Some(Role::Audio)
    } else if max == txt {
        Some(Role::Transcripts)
    } else {
        Some(Role::Alignments)
    }
}

fn common_parent(paths: &[PathBuf]) -> PathBuf {
    let mut root = paths[0].parent().unwrap_or(&paths[0]).to_path_buf();
    while !paths.iter().all(|p| p.starts_with(&root)) {
        match root.parent() {
            Some(p) => root = p.to_path_buf(),
            None => break,
        }
    }
    root
}
