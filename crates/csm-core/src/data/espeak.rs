//! A small spoken dataset synthesised with `espeak-ng`, so `csm demo` can
//! show the whole pipeline without downloading anything.
//!
//! The voice is robotic; the point is a real, correctly paired dataset of
//! one consistent speaker, not a good voice.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::audio::{self, WavEncoding, TARGET_SAMPLE_RATE};
use super::{DataError, Result};

/// The built-in sentences: varied lengths, questions, numbers, punctuation.
pub const DEMO_SENTENCES: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "Good morning! Did you sleep well last night?",
    "Please remember to water the plants before you leave.",
    "The train to Edinburgh departs from platform nine at half past four.",
    "I can't believe it's already the end of November.",
    "Could you pass me the salt, please?",
    "Every Tuesday, the market fills the old square with music and colour.",
    "She opened the letter slowly, afraid of what it might say.",
    "Three hundred and twelve people signed the petition in one afternoon.",
    "Why is the sky blue during the day and red at sunset?",
    "The library closes early on Sundays, so plan accordingly.",
    "We walked along the beach until the lighthouse came into view.",
    "He said the meeting was moved to Thursday at ten.",
    "Honestly, I think the second option is much better.",
    "A gentle rain began to fall as the concert ended.",
    "The recipe calls for two eggs, a cup of flour, and a pinch of salt.",
    "Turn left at the bakery, then keep going straight for two blocks.",
    "Is this seat taken, or may I sit here?",
    "The old clock in the hallway has not worked for years.",
    "Learning a new language takes patience, practice, and a sense of humour.",
    "Our flight was delayed, so we played cards at the gate.",
    "The children built a snowman with a carrot for a nose.",
    "What time does the museum open tomorrow?",
    "Thank you so much for your help with the move.",
    "The river was calm, and the boats drifted quietly past the bridge.",
    "Please save your work before shutting down the computer.",
    "My grandmother still writes every letter by hand.",
    "The first rule of cooking is to taste as you go.",
    "Wow, that was the best concert I've ever been to!",
    "Scientists discovered a new species of frog in the rainforest.",
    "If it stops raining, we could go for a walk after lunch.",
    "The package should arrive sometime between nine and five.",
    "Do you prefer tea or coffee in the morning?",
    "Sometimes the simplest answer is the right one.",
    "The garden looks beautiful now that the roses are in bloom.",
    "I'll call you back as soon as I get home.",
];

/// Settings for [`generate_demo_dataset`].
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DemoOptions {
    /// How many sentences to speak (at most [`DEMO_SENTENCES`]'s length);
    /// `None` speaks all.
    pub count: Option<usize>,
    /// espeak-ng voice.
    pub voice: String,
    /// Words per minute.
    pub words_per_minute: u32,
    /// The program to run; `espeak-ng` from `PATH` by default.
    pub program: String,
    /// Allow writing into non-empty `audio/`/`transcripts/` folders
    /// (files of the same names are replaced).
    pub overwrite: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            count: None,
            voice: "en-us".into(),
            words_per_minute: 150,
            program: "espeak-ng".into(),
            overwrite: false,
        }
    }
}

/// What [`generate_demo_dataset`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoSummary {
    /// The `audio/` folder.
    pub audio_dir: PathBuf,
    /// The `transcripts/` folder.
    pub transcript_dir: PathBuf,
    /// Number of utterances written.
    pub files: usize,
    /// Total audio duration in seconds.
    pub duration_s: f64,
}

/// Speaks the built-in sentences with espeak-ng into `out_dir`, writing
/// `audio/NNN.wav` (24 kHz mono 16-bit) and `transcripts/NNN.txt`.
///
/// # Errors
/// [`DataError::EspeakMissing`] if the program cannot be run (the message
/// says how to install it), [`DataError::EspeakFailed`] if it fails,
/// [`DataError::OutputNotEmpty`] if a target folder holds files and
/// `overwrite` is off, [`DataError::InvalidOption`] for `count == 0`, and
/// I/O or WAV errors naming the file.
pub fn generate_demo_dataset(out_dir: &Path, opts: &DemoOptions) -> Result<DemoSummary> {
    let count = opts.count.unwrap_or(DEMO_SENTENCES.len());
    if count == 0 || count > DEMO_SENTENCES.len() {
        return Err(DataError::InvalidOption {
            name: "count",
            reason: format!("must be between 1 and {}", DEMO_SENTENCES.len()),
        });
    }
    check_espeak(&opts.program)?;
    let audio_dir = out_dir.join("audio");
    let transcript_dir = out_dir.join("transcripts");
    for dir in [&audio_dir, &transcript_dir] {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let mut entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
        if !opts.overwrite && entries.next().is_some() {
            return Err(DataError::OutputNotEmpty { path: dir.clone() });
        }
    }

    let mut duration_s = 0.0;
    for (index, sentence) in DEMO_SENTENCES[..count].iter().enumerate() {
        let name = format!("{index:03}");
        let raw = audio_dir.join(format!(".{name}.espeak.wav"));
        // -w writes a proper header; --stdout can't seek back to fill in sizes.
        let output = Command::new(&opts.program)
            .arg("-v")
            .arg(&opts.voice)
            .arg("-s")
            .arg(opts.words_per_minute.to_string())
            .arg("-w")
            .arg(&raw)
            .arg("--")
            .arg(sentence)
            .output()
            .map_err(|e| espeak_spawn_error(&opts.program, e))?;
        if !output.status.success() {
            let _ = std::fs::remove_file(&raw);
            return Err(DataError::EspeakFailed {
                task: format!("sentence {index} ({sentence:?})"),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        let bytes = std::fs::read(&raw).map_err(|e| DataError::io(&raw, e));
        let _ = std::fs::remove_file(&raw);
        let decoded = audio::read_wav_bytes(&raw, &bytes?)?;
        let samples = audio::resample(&decoded.to_mono(), decoded.sample_rate, TARGET_SAMPLE_RATE)?;
        duration_s += samples.len() as f64 / f64::from(TARGET_SAMPLE_RATE);
        audio::write_wav(
            &audio_dir.join(format!("{name}.wav")),
            &samples,
            TARGET_SAMPLE_RATE,
            WavEncoding::Int16,
        )?;
        let txt = transcript_dir.join(format!("{name}.txt"));
        std::fs::write(&txt, format!("{sentence}\n")).map_err(|e| DataError::io(&txt, e))?;
    }
    Ok(DemoSummary {
        audio_dir,
        transcript_dir,
        files: count,
        duration_s,
    })
}

fn check_espeak(program: &str) -> Result<()> {
    match Command::new(program).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(DataError::EspeakFailed {
            task: "--version".into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
        Err(e) => Err(espeak_spawn_error(program, e)),
    }
}

fn espeak_spawn_error(program: &str, e: std::io::Error) -> DataError {
    if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::PermissionDenied
    {
        DataError::EspeakMissing {
            program: program.to_string(),
        }
    } else {
        DataError::io(program, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_varied_and_unique() {
        assert!((30..=40).contains(&DEMO_SENTENCES.len()));
        let mut sorted = DEMO_SENTENCES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), DEMO_SENTENCES.len());
        assert!(DEMO_SENTENCES.iter().any(|s| s.ends_with('?')));
        assert!(DEMO_SENTENCES.iter().any(|s| s.ends_with('!')));
    }

    #[test]
    fn missing_espeak_says_how_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DemoOptions {
            program: "/nonexistent/espeak-ng-missing".into(),
            count: Some(1),
            ..DemoOptions::default()
        };
        let err = generate_demo_dataset(dir.path(), &opts).unwrap_err();
        assert!(matches!(err, DataError::EspeakMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("apt-get install espeak-ng"));
    }

    #[test]
    fn count_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DemoOptions {
            count: Some(0),
            ..DemoOptions::default()
        };
        assert!(matches!(
            generate_demo_dataset(dir.path(), &opts),
            Err(DataError::InvalidOption { name: "count", .. })
        ));
    }
}
