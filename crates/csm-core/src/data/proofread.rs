//! Proofreading a dataset in place: saving an edited transcript, keeping
//! word alignments honest after an edit, and dropping recordings without
//! deleting them.
//!
//! Everything here moves or writes files of the user's dataset, so every
//! change is visible on disk and can be undone:
//!
//! - [`save_transcript`] replaces `transcripts/ID.txt` atomically (a hidden
//!   temporary file in the same folder, then a rename).
//! - An alignment whose words no longer match the edited text (the rule is
//!   [`segment::transcript_words`], the one training uses to take utterance
//!   text from the transcript) is **stale**: training would otherwise cut
//!   the recording with the aligner's words and silently drop the edit. It
//!   is moved to `alignments/stale/ID.json`, so the recording is used
//!   unaligned (whole when short enough, else refused or skipped as
//!   `long_unaligned` says). An edit of case or punctuation keeps the
//!   alignment; an edit back to matching words restores the stale one.
//! - [`exclude`] moves a recording's audio, transcript and alignment into
//!   an `excluded/` folder inside each of those folders (never deleted, not
//!   read by training: dataset folders are not searched recursively);
//!   [`restore`] moves them back and [`list_excluded`] lists them.
//!
//! Nothing is ever overwritten: a move whose destination exists fails
//! before any file is touched, naming it.

use std::path::{Path, PathBuf};

use super::alignment::read_alignment;
use super::dataset::DatasetLayout;
use super::decode::{is_audio_extension, is_unsupported_audio_extension};
use super::segment::transcript_words;
use super::DataError;

/// Folder (inside the audio, transcript and alignment folders) that holds
/// excluded recordings.
pub const EXCLUDED_DIR: &str = "excluded";

/// Folder (inside the alignment folder) that holds stale alignments.
pub const STALE_DIR: &str = "stale";

/// Errors of proofreading operations; each names the file or recording.
#[derive(Debug, thiserror::Error)]
pub enum ProofreadError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A recording id that is not a plain file stem.
    #[error("`{id}` is not a recording name (a file name without folder or extension)")]
    BadId {
        /// The id given.
        id: String,
    },
    /// An empty transcript was to be saved.
    #[error(
        "the text for {id} is empty; drop the recording instead of saving an empty transcript"
    )]
    EmptyText {
        /// The recording.
        id: String,
    },
    /// A file must be moved to a place that is taken.
    #[error("{path} already exists; nothing was moved (move or rename it first)")]
    Exists {
        /// The destination that exists.
        path: PathBuf,
    },
    /// There is nothing of that recording to move.
    #[error("no files of recording `{id}` in {where_}")]
    NoFiles {
        /// The recording.
        id: String,
        /// The folder(s) looked in.
        where_: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProofreadError + '_ {
    move |source| ProofreadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What happened to a recording's word alignment when its text was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AlignmentState {
    /// The dataset has no alignment for this recording.
    None,
    /// The alignment still matches the text (kept).
    Kept,
    /// The alignment no longer matches: moved to `alignments/stale/`.
    MadeStale,
    /// A stale alignment matches the text again: moved back.
    Restored,
    /// Only a stale alignment exists, and it still does not match.
    Stale,
    /// The alignment file cannot be read; it was left where it is (the
    /// dataset scan reports why).
    Unreadable,
}

/// Result of [`save_transcript`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The transcript file written.
    pub path: PathBuf,
    /// The text as written (trimmed, plus a final newline in the file).
    pub text: String,
    /// What happened to the alignment.
    pub alignment: AlignmentState,
}

/// Refuses ids with folders, dots in front or nothing in them.
fn check_id(id: &str) -> Result<(), ProofreadError> {
    let bad = id.is_empty()
        || id.starts_with('.')
        || id.contains(['/', '\\', '\0'])
        || Path::new(id).components().count() != 1;
    if bad {
        return Err(ProofreadError::BadId { id: id.to_string() });
    }
    Ok(())
}

/// Where a stale alignment of `id` is kept (whether or not it exists).
pub fn stale_alignment_path(layout: &DatasetLayout, id: &str) -> Option<PathBuf> {
    layout
        .alignment_dir
        .as_ref()
        .map(|d| d.join(STALE_DIR).join(format!("{id}.json")))
}

/// Whether the recording `id` has a stale alignment and no current one.
pub fn has_stale_alignment(layout: &DatasetLayout, id: &str) -> bool {
    let Some(dir) = &layout.alignment_dir else {
        return false;
    };
    !dir.join(format!("{id}.json")).is_file()
        && stale_alignment_path(layout, id).is_some_and(|p| p.is_file())
}

/// Writes `bytes` to `path` through a hidden temporary file in the same
/// folder, flushed, then renamed over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProofreadError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.partial", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `to` must not exist; renames `from` to it (creating `to`'s folder).
fn move_new(from: &Path, to: &Path) -> Result<(), ProofreadError> {
    if to.exists() {
        return Err(ProofreadError::Exists {
            path: to.to_path_buf(),
        });
    }
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(from, to).map_err(io(from))
}

/// Saves `text` as the transcript of recording `id`
/// (`transcript_dir/ID.txt`, created if missing) and brings its alignment
/// in line (see the module docs).
///
/// # Errors
/// [`ProofreadError::BadId`], [`ProofreadError::EmptyText`], and I/O
/// errors naming the file; the old transcript is intact on any error.
pub fn save_transcript(
    layout: &DatasetLayout,
    id: &str,
    text: &str,
) -> Result<Saved, ProofreadError> {
    check_id(id)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(ProofreadError::EmptyText { id: id.to_string() });
    }
    let path = layout.transcript_dir.join(format!("{id}.txt"));
    write_atomic(&path, format!("{text}\n").as_bytes())?;
    let alignment = sync_alignment(layout, id, text)?;
    Ok(Saved {
        path,
        text: text.to_string(),
        alignment,
    })
}

/// Makes an alignment that no longer matches `text` stale, and restores a
/// stale one that matches again.
fn sync_alignment(
    layout: &DatasetLayout,
    id: &str,
    text: &str,
) -> Result<AlignmentState, ProofreadError> {
    let Some(dir) = &layout.alignment_dir else {
        return Ok(AlignmentState::None);
    };
    let current = dir.join(format!("{id}.json"));
    let stale = dir.join(STALE_DIR).join(format!("{id}.json"));
    let matches = |p: &Path| -> Result<bool, DataError> {
        Ok(transcript_words(text, &read_alignment(p)?.words).is_some())
    };
    if current.is_file() {
        return match matches(&current) {
            Ok(true) => Ok(AlignmentState::Kept),
            Ok(false) => {
                if stale.exists() {
                    // Keep the older stale file too, under the first free name.
                    let older = (2..)
                        .map(|n| dir.join(STALE_DIR).join(format!("{id}.{n}.json")))
                        .find(|p| !p.exists())
                        .expect("some number is free");
                    move_new(&stale, &older)?;
                }
                move_new(&current, &stale)?;
                Ok(AlignmentState::MadeStale)
            }
            Err(_) => Ok(AlignmentState::Unreadable),
        };
    }
    if stale.is_file() {
        return match matches(&stale) {
            Ok(true) => {
                move_new(&stale, &current)?;
                Ok(AlignmentState::Restored)
            }
            _ => Ok(AlignmentState::Stale),
        };
    }
    Ok(AlignmentState::None)
}

/// A recording moved out of the dataset by [`exclude`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExcludedRecording {
    /// The recording (file stem).
    pub id: String,
    /// Its files, where they are now.
    pub files: Vec<PathBuf>,
}

/// The dataset folders of `layout`, each once (audio and transcripts may
/// share one).
fn folders(layout: &DatasetLayout) -> Vec<&Path> {
    let mut out: Vec<&Path> = vec![&layout.audio_dir];
    for d in [Some(&layout.transcript_dir), layout.alignment_dir.as_ref()]
        .into_iter()
        .flatten()
    {
        if !out.contains(&d.as_path()) {
            out.push(d);
        }
    }
    out
}

/// The files of recording `id` directly in `dir` that belong to the
/// dataset: audio (any format), `.txt`, `.json`.
fn files_of(dir: &Path, id: &str) -> Result<Vec<PathBuf>, ProofreadError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if !path.is_file() || path.file_stem().and_then(|s| s.to_str()) != Some(id) {
            continue;
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if is_audio_extension(&ext)
            || is_unsupported_audio_extension(&ext)
            || ext == "txt"
            || ext == "json"
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Moves every file in `moves` (from, to); nothing moves unless every
/// destination is free, and a failure half-way moves back what moved.
fn move_all(moves: &[(PathBuf, PathBuf)]) -> Result<(), ProofreadError> {
    if let Some((_, to)) = moves.iter().find(|(_, to)| to.exists()) {
        return Err(ProofreadError::Exists { path: to.clone() });
    }
    for (i, (from, to)) in moves.iter().enumerate() {
        if let Err(e) = move_new(from, to) {
            for (back_to, back_from) in moves[..i].iter().rev() {
                let _ = std::fs::rename(back_from, back_to);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Moves recording `id` (its audio in every format, transcript and
/// alignment) into the `excluded/` folder of each folder it is in.
///
/// # Errors
/// [`ProofreadError::NoFiles`] when the dataset has no file of `id`,
/// [`ProofreadError::Exists`] when `excluded/` already holds one of its
/// names (nothing is moved), I/O errors naming the file.
pub fn exclude(layout: &DatasetLayout, id: &str) -> Result<ExcludedRecording, ProofreadError> {
    check_id(id)?;
    let mut moves = Vec::new();
    for dir in folders(layout) {
        for f in files_of(dir, id)? {
            let to = dir.join(EXCLUDED_DIR).join(f.file_name().expect("a file"));
            moves.push((f, to));
        }
    }
    if moves.is_empty() {
        return Err(ProofreadError::NoFiles {
            id: id.to_string(),
            where_: layout.audio_dir.display().to_string(),
        });
    }
    move_all(&moves)?;
    let mut files: Vec<PathBuf> = moves.into_iter().map(|(_, to)| to).collect();
    files.sort();
    Ok(ExcludedRecording {
        id: id.to_string(),
        files,
    })
}

/// Moves an excluded recording back into the dataset; returns where its
/// files are now.
///
/// # Errors
/// [`ProofreadError::NoFiles`] when nothing of `id` is excluded,
/// [`ProofreadError::Exists`] when the dataset has a file of the same
/// name again (nothing is moved), I/O errors naming the file.
pub fn restore(layout: &DatasetLayout, id: &str) -> Result<Vec<PathBuf>, ProofreadError> {
    check_id(id)?;
    let mut moves = Vec::new();
    for dir in folders(layout) {
        for f in files_of(&dir.join(EXCLUDED_DIR), id)? {
            let to = dir.join(f.file_name().expect("a file"));
            moves.push((f, to));
        }
    }
    if moves.is_empty() {
        return Err(ProofreadError::NoFiles {
            id: id.to_string(),
            where_: layout.audio_dir.join(EXCLUDED_DIR).display().to_string(),
        });
    }
    move_all(&moves)?;
    Ok(moves.into_iter().map(|(_, to)| to).collect())
}

/// The excluded recordings (those with audio in `audio_dir/excluded/`),
/// sorted by id, each with all its excluded files.
///
/// # Errors
/// I/O errors naming the folder.
pub fn list_excluded(layout: &DatasetLayout) -> Result<Vec<ExcludedRecording>, ProofreadError> {
    let dir = layout.audio_dir.join(EXCLUDED_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&dir)(e)),
    };
    let mut ids: Vec<String> = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(&dir))?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if path.is_file() && (is_audio_extension(&ext) || is_unsupported_audio_extension(&ext)) {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                if !ids.iter().any(|i| i == stem) {
                    ids.push(stem.to_string());
                }
            }
        }
    }
    ids.sort();
    ids.into_iter()
        .map(|id| {
            let mut files = Vec::new();
            for d in folders(layout) {
                files.extend(files_of(&d.join(EXCLUDED_DIR), &id)?);
            }
            files.sort();
            files.dedup();
            Ok(ExcludedRecording { id, files })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIGNMENT: &str = r#"{"segments": [{"start": 0.0, "end": 1.0, "text": "hello there",
        "words": [{"word": " hello", "start": 0.1, "end": 0.4}, {"word": " there", "start": 0.5, "end": 0.9}]}]}"#;

    fn dataset() -> (tempfile::TempDir, DatasetLayout) {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["audio", "transcripts", "alignments"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let root = dir.path();
        std::fs::write(root.join("audio/a.wav"), b"RIFF").unwrap();
        std::fs::write(root.join("audio/a.mp3"), b"ID3").unwrap();
        std::fs::write(root.join("audio/b.wav"), b"RIFF").unwrap();
        std::fs::write(root.join("transcripts/a.txt"), "hello there\n").unwrap();
        std::fs::write(root.join("alignments/a.json"), ALIGNMENT).unwrap();
        let layout = DatasetLayout::from_root(root);
        (dir, layout)
    }

    fn read(p: impl AsRef<Path>) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn case_and_punctuation_edits_keep_the_alignment_word_edits_make_it_stale() {
        let (dir, layout) = dataset();
        let root = dir.path();
        let saved = save_transcript(&layout, "a", "  Hello, there!  ").unwrap();
        assert_eq!(saved.alignment, AlignmentState::Kept);
        assert_eq!(read(root.join("transcripts/a.txt")), "Hello, there!\n");
        assert!(!has_stale_alignment(&layout, "a"));

        let saved = save_transcript(&layout, "a", "Hello, where?").unwrap();
        assert_eq!(saved.alignment, AlignmentState::MadeStale);
        assert!(!root.join("alignments/a.json").exists());
        assert_eq!(read(root.join("alignments/stale/a.json")), ALIGNMENT);
        assert!(has_stale_alignment(&layout, "a"));

        // Still different: stays stale; back to the aligned words: restored.
        let saved = save_transcript(&layout, "a", "Hello where").unwrap();
        assert_eq!(saved.alignment, AlignmentState::Stale);
        let saved = save_transcript(&layout, "a", "hello THERE.").unwrap();
        assert_eq!(saved.alignment, AlignmentState::Restored);
        assert_eq!(read(root.join("alignments/a.json")), ALIGNMENT);
        assert!(!root.join("alignments/stale/a.json").exists());

        // No alignment at all; a new transcript is created.
        let saved = save_transcript(&layout, "b", "new text").unwrap();
        assert_eq!(saved.alignment, AlignmentState::None);
        assert_eq!(read(root.join("transcripts/b.txt")), "new text\n");
        // Nothing but the transcripts and the alignment moved: no temp files.
        let names: Vec<String> = std::fs::read_dir(root.join("transcripts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_second_stale_alignment_keeps_the_first() {
        let (dir, layout) = dataset();
        let root = dir.path();
        std::fs::create_dir(root.join("alignments/stale")).unwrap();
        std::fs::write(root.join("alignments/stale/a.json"), "older").unwrap();
        let saved = save_transcript(&layout, "a", "something else").unwrap();
        assert_eq!(saved.alignment, AlignmentState::MadeStale);
        assert_eq!(read(root.join("alignments/stale/a.json")), ALIGNMENT);
        assert_eq!(read(root.join("alignments/stale/a.2.json")), "older");
    }

    #[test]
    fn empty_text_and_bad_ids_are_refused_and_change_nothing() {
        let (dir, layout) = dataset();
        let err = save_transcript(&layout, "a", " \n ").unwrap_err();
        assert!(matches!(err, ProofreadError::EmptyText { .. }), "{err}");
        for id in ["", "../a", ".hidden", "x/y"] {
            let err = save_transcript(&layout, id, "text").unwrap_err();
            assert!(matches!(err, ProofreadError::BadId { .. }), "{id}: {err}");
        }
        assert_eq!(read(dir.path().join("transcripts/a.txt")), "hello there\n");
    }

    #[test]
    fn exclude_moves_every_file_of_a_recording_and_restore_brings_them_back() {
        let (dir, layout) = dataset();
        let root = dir.path();
        let ex = exclude(&layout, "a").unwrap();
        assert_eq!(ex.files.len(), 4, "{:?}", ex.files);
        for f in [
            "audio/excluded/a.wav",
            "audio/excluded/a.mp3",
            "transcripts/excluded/a.txt",
            "alignments/excluded/a.json",
        ] {
            assert!(root.join(f).is_file(), "{f}");
        }
        assert!(!root.join("audio/a.wav").exists());
        assert_eq!(list_excluded(&layout).unwrap(), vec![ex.clone()]);

        // A new a.txt in the dataset: restoring would overwrite it, so nothing moves.
        std::fs::write(root.join("transcripts/a.txt"), "mine").unwrap();
        let err = restore(&layout, "a").unwrap_err();
        assert!(matches!(err, ProofreadError::Exists { .. }), "{err}");
        assert!(root.join("audio/excluded/a.wav").is_file());
        std::fs::remove_file(root.join("transcripts/a.txt")).unwrap();

        let back = restore(&layout, "a").unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(read(root.join("transcripts/a.txt")), "hello there\n");
        assert_eq!(read(root.join("alignments/a.json")), ALIGNMENT);
        assert!(list_excluded(&layout).unwrap().is_empty());

        // Excluding twice with the same names left in excluded/: refused.
        exclude(&layout, "b").unwrap();
        std::fs::write(root.join("audio/b.wav"), b"RIFF again").unwrap();
        let err = exclude(&layout, "b").unwrap_err();
        assert!(matches!(err, ProofreadError::Exists { .. }), "{err}");
        assert_eq!(read(root.join("audio/b.wav")), "RIFF again");
        let err = exclude(&layout, "nope").unwrap_err();
        assert!(matches!(err, ProofreadError::NoFiles { .. }), "{err}");
    }
}
