//! Utterances, conversations, cutting at word boundaries, context turns and
//! length bucketing.
//!
//! A recording becomes a [`Conversation`]: its utterances in spoken order.
//! With word timings, [`segment_recording`] cuts it at pauses between words
//! into pieces of roughly [`SegmentConfig::min_s`]..[`SegmentConfig::max_s`];
//! a cut never falls inside a word, nor next to a word the aligner could not
//! place. Without timings a recording is only used whole, because splitting
//! the transcript by guesswork could pair text with the wrong audio.
//!
//! A recording whose words name several speakers (a conversation, see
//! [`RecordingSpeakers::PerWord`]) is first cut at every change of speaker,
//! halfway between the two voices' words, and each turn is then cut as
//! above: an utterance never holds two voices' words, and each carries its
//! speaker ([`Utterance::speaker`]).

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::alignment::{Alignment, AlignmentFormat, Word};
use super::audio::TARGET_SAMPLE_RATE;
use super::{DataError, Result};

/// What to do with a recording longer than
/// [`SegmentConfig::max_unaligned_s`] that has no alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LongUnaligned {
    /// Fail with [`DataError::NeedsAlignment`].
    #[default]
    Refuse,
    /// Leave it out and record a warning.
    Skip,
}

/// How recordings are cut into utterances.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SegmentConfig {
    /// Shortest utterance wanted, in seconds (shorter ones appear only when a
    /// recording, or a stretch between unavoidable cuts, is shorter).
    pub min_s: f64,
    /// Longest utterance wanted, in seconds (exceeded only when speech has no
    /// usable pause; a warning says so).
    pub max_s: f64,
    /// Preferred utterance length, in seconds.
    pub target_s: f64,
    /// Silence kept before the first and after the last word of an utterance.
    pub edge_pad_s: f64,
    /// Longest recording used whole when it has no alignment.
    pub max_unaligned_s: f64,
    /// What to do with longer unaligned recordings.
    pub long_unaligned: LongUnaligned,
    /// Trim leading and trailing silence of unaligned recordings to
    /// `edge_pad_s`, so the model does not learn to pad turns with silence
    /// (aligned ones are trimmed by their word times).
    pub trim_silence: bool,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            min_s: 3.0,
            max_s: 12.0,
            // Peers report CSM trains best on clips of about 10 s.
            target_s: 10.0,
            edge_pad_s: 0.2,
            max_unaligned_s: 12.0,
            long_unaligned: LongUnaligned::Refuse,
            trim_silence: true,
        }
    }
}

impl SegmentConfig {
    /// Checks that the lengths are positive and ordered.
    ///
    /// # Errors
    /// [`DataError::InvalidOption`] naming the bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| {
            Err(DataError::InvalidOption {
                name,
                reason: reason.to_string(),
            })
        };
        let all = [
            self.min_s,
            self.max_s,
            self.target_s,
            self.edge_pad_s,
            self.max_unaligned_s,
        ];
        if all.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return bad("segment lengths", "must be finite and non-negative");
        }
        if self.max_s <= 0.0 || self.min_s > self.max_s {
            return bad("max_s", "must be positive and at least min_s");
        }
        if !(self.min_s..=self.max_s).contains(&self.target_s) {
            return bad("target_s", "must lie between min_s and max_s");
        }
        Ok(())
    }
}

/// A speaker of a dataset with several: the name the dataset gives it (a
/// folder, a `speakers.json` key, an alignment label) and the CSM speaker
/// id it trains under (`[id]text` in the prompt).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
pub struct Speaker {
    /// Its name.
    pub name: String,
    /// Its CSM speaker id.
    pub id: u32,
}

/// One training turn: a stretch of a recording and the words spoken in it.
#[derive(Debug, Clone, Serialize)]
pub struct Utterance {
    /// The recording's id (the file stem).
    pub recording_id: String,
    /// Position within the recording, from 0.
    pub index: usize,
    /// What is said.
    pub text: String,
    /// Who says it (a CSM speaker id), when the dataset has several
    /// speakers; `None`: the run's one speaker (`--speaker-id`).
    pub speaker: Option<u32>,
    /// Sample range in the recording at [`TARGET_SAMPLE_RATE`]; private so
    /// it always lies within `audio`.
    range: Range<usize>,
    #[serde(skip)]
    audio: Arc<[f32]>,
}

impl Utterance {
    /// An utterance over `range` of a 24 kHz mono recording.
    ///
    /// `range` is clamped to the recording.
    pub fn new(
        recording_id: impl Into<String>,
        index: usize,
        text: impl Into<String>,
        audio: Arc<[f32]>,
        range: Range<usize>,
    ) -> Self {
        let end = range.end.min(audio.len());
        let start = range.start.min(end);
        Self {
            recording_id: recording_id.into(),
            index,
            text: text.into(),
            speaker: None,
            range: start..end,
            audio,
        }
    }

    /// The same utterance, said by speaker `id`.
    pub fn with_speaker(mut self, id: Option<u32>) -> Self {
        self.speaker = id;
        self
    }

    /// The utterance's samples, 24 kHz mono.
    pub fn samples(&self) -> &[f32] {
        &self.audio[self.range.clone()]
    }

    /// Sample range within the recording, at [`TARGET_SAMPLE_RATE`].
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether the utterance has no samples.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        self.range.len() as f64 / f64::from(TARGET_SAMPLE_RATE)
    }

    /// Start within the recording, in seconds.
    pub fn start_s(&self) -> f64 {
        self.range.start as f64 / f64::from(TARGET_SAMPLE_RATE)
    }

    /// A stable key of the audio and text (hex SHA-256), for caching codes.
    ///
    /// It covers the sample rate, the samples' exact bits (little-endian)
    /// and the text, not the file name or position, so the same audio and
    /// text give the same key on every platform and in every folder.
    pub fn content_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"csm-utterance-v1\0");
        h.update(TARGET_SAMPLE_RATE.to_le_bytes());
        h.update((self.range.len() as u64).to_le_bytes());
        let mut buf = Vec::with_capacity(4 * 4096);
        for chunk in self.samples().chunks(4096) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|s| s.to_le_bytes()));
            h.update(&buf);
        }
        h.update((self.text.len() as u64).to_le_bytes());
        h.update(self.text.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The utterances of one recording, in spoken order.
#[derive(Debug, Clone, Serialize)]
pub struct Conversation {
    /// The recording's id (the file stem).
    pub recording_id: String,
    /// Its utterances; `utterances[i].index == i`.
    pub utterances: Vec<Utterance>,
    /// The alignment layout used to cut it, if any.
    pub alignment_format: Option<AlignmentFormat>,
}

/// A target utterance with the turns before it as context.
#[derive(Debug, Clone, Copy)]
pub struct Example<'a> {
    /// Up to N previous utterances of the same recording, oldest first.
    pub context: &'a [Utterance],
    /// The utterance to learn.
    pub target: &'a Utterance,
}

impl Conversation {
    /// The up to `n` utterances before `index`, oldest first.
    pub fn context(&self, index: usize, n: usize) -> &[Utterance] {
        let end = index.min(self.utterances.len());
        &self.utterances[end.saturating_sub(n)..end]
    }

    /// One example per utterance, each with up to `context_turns` previous
    /// utterances as context.
    pub fn examples(&self, context_turns: usize) -> impl Iterator<Item = Example<'_>> {
        self.utterances
            .iter()
            .enumerate()
            .map(move |(i, target)| Example {
                context: self.context(i, context_turns),
                target,
            })
    }

    /// Total duration of the utterances, in seconds.
    pub fn duration_s(&self) -> f64 {
        self.utterances.iter().map(Utterance::duration_s).sum()
    }
}

/// The shortest utterance kept from an aligned recording: one Mimi frame
/// (1920 samples at 24 kHz, 80 ms); a shorter piece has nothing to encode.
pub const MIN_UTTERANCE_SAMPLES: usize = 1920;

/// Where a planned utterance lies, in seconds, and which words it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cut {
    /// Start in seconds.
    pub start_s: f64,
    /// End in seconds.
    pub end_s: f64,
    /// Indices into [`Alignment::words`].
    pub words: Range<usize>,
}

/// Plans cuts of a recording of `duration_s` seconds at word boundaries.
///
/// A cut is only made in a pause between two timed words that do not
/// overlap; it lands in the middle of the pause, and no utterance keeps more
/// than [`SegmentConfig::edge_pad_s`] of silence at either end. Among the
/// possible cut sets it picks the one whose pieces stay within
/// `min_s..=max_s`, closest to `target_s`, cutting preferably at long pauses
/// and after sentence ends. Word times are clamped to the recording.
pub fn plan_cuts(alignment: &Alignment, duration_s: f64, cfg: &SegmentConfig) -> Vec<Cut> {
    let words = &alignment.words;
    let n = words.len();
    if n == 0 {
        return Vec::new();
    }
    let span = |i: usize| {
        words[i]
            .span
            .map(|(s, e)| (s.min(duration_s), e.min(duration_s)))
    };
    // Boundary b sits between word b-1 and word b; 0 and n are the ends.
    let cut_allowed = |b: usize| match (span(b - 1), span(b)) {
        (Some((_, e)), Some((s, _))) => e <= s,
        _ => false,
    };
    let mut boundaries = vec![0];
    boundaries.extend((1..n).filter(|&b| cut_allowed(b)));
    boundaries.push(n);

    let pad = cfg.edge_pad_s;
    let start_of = |b: usize| -> f64 {
        match span(b) {
            None => 0.0, // only possible for b == 0
            Some((s, _)) if b == 0 => (s - pad).max(0.0),
            Some((s, _)) => {
                let prev_end = span(b - 1).map_or(s, |p| p.1);
                (s - pad).max((prev_end + s) / 2.0)
            }
        }
    };
    let end_of = |b: usize| -> f64 {
        match span(b - 1) {
            None => duration_s, // only possible for b == n
            Some((_, e)) if b == n => (e + pad).min(duration_s),
            Some((_, e)) => {
                let next_start = span(b).map_or(e, |p| p.0);
                (e + pad).min((e + next_start) / 2.0)
            }
        }
    };
    let cut_cost = |b: usize| -> f64 {
        if b == n {
            return 0.0;
        }
        let gap = match (span(b - 1), span(b)) {
            (Some((_, e)), Some((s, _))) => s - e,
            _ => 0.0,
        };
        let text = words[b - 1]
            .text
            .trim_end_matches(['"', '\'', ')', ']', '»', '”']);
        // A cut is good after a sentence end or at a long pause, and bad
        // mid-phrase with no pause: worth more than one extra piece.
        let punct = if text.ends_with(['.', '!', '?', '…']) {
            0.0
        } else if text.ends_with([',', ';', ':', '—', '-']) {
            0.5
        } else {
            1.0
        };
        let pause = 1.0 - (gap / 0.5).clamp(0.0, 1.0);
        0.1 + 2.0 * punct * pause
    };
    let length_cost = |len: f64| -> f64 {
        let width = (cfg.max_s - cfg.min_s).max(1e-3);
        let near = ((len - cfg.target_s) / width).powi(2);
        if len > cfg.max_s {
            100.0 + 10.0 * (len - cfg.max_s) + near
        } else if len < cfg.min_s {
            10.0 + 10.0 * (cfg.min_s - len) + near
        } else {
            near
        }
    };

    // Shortest path over boundaries; the inner loop stops at the first
    // predecessor that makes the piece longer than max_s, since every
    // earlier one is longer still.
    let m = boundaries.len();
    let mut best = vec![f64::INFINITY; m];
    let mut from = vec![0usize; m];
    best[0] = 0.0;
    for j in 1..m {
        let end = end_of(boundaries[j]);
        for k in (0..j).rev() {
            if !best[k].is_finite() {
                continue;
            }
            let len = end - start_of(boundaries[k]);
            let cost = best[k] + length_cost(len) + cut_cost(boundaries[j]);
            if cost < best[j] {
                best[j] = cost;
                from[j] = k;
            }
            if len > cfg.max_s {
                break;
            }
        }
    }
    let mut chosen = vec![m - 1];
    while *chosen.last().unwrap_or(&0) != 0 {
        let j = *chosen.last().unwrap_or(&0);
        chosen.push(from[j]);
    }
    chosen.reverse();
    chosen
        .windows(2)
        .map(|w| {
            let (a, b) = (boundaries[w[0]], boundaries[w[1]]);
            Cut {
                start_s: start_of(a),
                end_s: end_of(b),
                words: a..b,
            }
        })
        .collect()
}

/// The text of each aligned unit, taken from the transcript when the
/// transcript's tokens match the aligner's words (so punctuation and case
/// survive), else `None`.
pub fn transcript_words(transcript: &str, words: &[Word]) -> Option<Vec<String>> {
    let mut tokens = transcript.split_whitespace().peekable();
    let mut out = Vec::with_capacity(words.len());
    for w in words {
        let mut piece: Vec<&str> = Vec::new();
        let unit: Vec<String> = w
            .text
            .split_whitespace()
            .map(normalize)
            .filter(|t| !t.is_empty())
            .collect();
        for want in &unit {
            // Tokens with no letters or digits (dashes, ellipses) ride along.
            while let Some(t) = tokens.peek() {
                if normalize(t).is_empty() {
                    piece.push(tokens.next()?);
                } else {
                    break;
                }
            }
            let t = tokens.next()?;
            if normalize(t) != *want {
                return None;
            }
            piece.push(t);
        }
        out.push(piece.join(" "));
    }
    let rest: Vec<&str> = tokens.collect();
    if rest.iter().any(|t| !normalize(t).is_empty()) {
        return None;
    }
    if let Some(last) = out.last_mut() {
        for t in rest {
            last.push(' ');
            last.push_str(t);
        }
    }
    Some(out)
}

fn normalize(token: &str) -> String {
    token
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Turns one recording (24 kHz mono) of the run's one speaker into a
/// [`Conversation`]: [`segment_spoken`] with [`RecordingSpeakers::Run`].
///
/// # Errors
/// As [`segment_spoken`].
pub fn segment_recording(
    recording_id: &str,
    audio: Arc<[f32]>,
    transcript: &str,
    alignment: Option<(&Path, &Alignment)>,
    audio_path: &Path,
    cfg: &SegmentConfig,
    warnings: &mut Vec<String>,
) -> Result<Option<Conversation>> {
    segment_spoken(
        Recording {
            id: recording_id,
            audio,
            transcript,
            alignment,
            audio_path,
            speakers: RecordingSpeakers::Run,
        },
        cfg,
        warnings,
    )
}

/// Who speaks in a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingSpeakers {
    /// The run's one speaker (`--speaker-id`): utterances name none.
    Run,
    /// One speaker throughout, this CSM speaker id.
    One(u32),
    /// A CSM speaker id per word of the alignment, in its order: a
    /// conversation (needs the alignment).
    PerWord(Vec<u32>),
}

/// A recording to cut into utterances ([`segment_spoken`]).
#[derive(Debug, Clone)]
pub struct Recording<'a> {
    /// Its id (file stem, or `speaker/stem` in a per-speaker dataset).
    pub id: &'a str,
    /// Its samples, 24 kHz mono.
    pub audio: Arc<[f32]>,
    /// Its transcript.
    pub transcript: &'a str,
    /// Its alignment file and what it holds, if any.
    pub alignment: Option<(&'a Path, &'a Alignment)>,
    /// The audio file (for messages).
    pub audio_path: &'a Path,
    /// Who speaks.
    pub speakers: RecordingSpeakers,
}

/// Turns one recording into a [`Conversation`].
///
/// With an alignment, cuts with [`plan_cuts`] (a conversation: first at
/// each change of speaker, see [`plan_turns`]); the text of each utterance
/// comes from the transcript when its words match the alignment's, else from
/// the alignment. Without one, the whole recording is one utterance if it is
/// at most [`SegmentConfig::max_unaligned_s`] long; a longer one is refused
/// or skipped as [`SegmentConfig::long_unaligned`] says. Returns `None` for a
/// skipped recording. Warnings (skips, over-long utterances, text taken from
/// the aligner, voices that overlap) are pushed to `warnings`.
///
/// # Errors
/// [`DataError::NeedsAlignment`] (refused long recording) and
/// [`DataError::MalformedAlignment`] when the words run past the audio (or
/// per-word speakers come without an alignment or with another word
/// count), naming the audio or alignment file.
pub fn segment_spoken(
    recording: Recording<'_>,
    cfg: &SegmentConfig,
    warnings: &mut Vec<String>,
) -> Result<Option<Conversation>> {
    let Recording {
        id: recording_id,
        audio,
        transcript,
        alignment,
        audio_path,
        speakers,
    } = recording;
    let whole_speaker = match speakers {
        RecordingSpeakers::One(id) => Some(id),
        _ => None,
    };
    let rate = f64::from(TARGET_SAMPLE_RATE);
    let duration_s = audio.len() as f64 / rate;
    let Some((alignment_path, alignment)) = alignment else {
        if let RecordingSpeakers::PerWord(_) = &speakers {
            return Err(DataError::MalformedAlignment {
                path: audio_path.to_path_buf(),
                reason: "speakers per word need the recording's alignment".into(),
            });
        }
        if duration_s > cfg.max_unaligned_s {
            return match cfg.long_unaligned {
                LongUnaligned::Refuse => Err(DataError::NeedsAlignment {
                    path: audio_path.to_path_buf(),
                    duration_s,
                    max_s: cfg.max_unaligned_s,
                }),
                LongUnaligned::Skip => {
                    warnings.push(format!(
                        "{}: skipped: {duration_s:.1} s without alignment (longer than {:.1} s \
                         cannot be cut safely without word timings)",
                        audio_path.display(),
                        cfg.max_unaligned_s
                    ));
                    Ok(None)
                }
            };
        }
        let range = if cfg.trim_silence {
            super::audio::speech_bounds(&audio, TARGET_SAMPLE_RATE, cfg.edge_pad_s)
        } else {
            0..audio.len()
        };
        return Ok(Some(Conversation {
            recording_id: recording_id.to_string(),
            utterances: vec![
                Utterance::new(recording_id, 0, transcript.trim(), audio, range)
                    .with_speaker(whole_speaker),
            ],
            alignment_format: None,
        }));
    };

    // Half a second of slack for aligners that round or pad the last word.
    if let Some(last) = alignment.last_end() {
        if last > duration_s + 0.5 {
            let hint = if last > 100.0 * duration_s {
                " (times look like milliseconds; seconds are expected)"
            } else {
                ""
            };
            return Err(DataError::MalformedAlignment {
                path: alignment_path.to_path_buf(),
                reason: format!(
                    "words run to {last:.2} s but {} is {duration_s:.2} s long{hint}",
                    audio_path.display()
                ),
            });
        }
    }
    // Prefer the transcript's words (case, punctuation): they read better and
    // tell plan_cuts where sentences end even when the aligner drops
    // punctuation (Gentle, MFA).
    let words = match transcript_words(transcript, &alignment.words) {
        Some(texts) => Alignment {
            format: alignment.format,
            words: alignment
                .words
                .iter()
                .zip(texts)
                .map(|(w, text)| Word {
                    text,
                    span: w.span,
                    speaker: w.speaker.clone(),
                })
                .collect(),
        },
        None => {
            warnings.push(format!(
                "{}: transcript words differ from the alignment's; utterance text is taken from {}",
                audio_path.display(),
                alignment_path.display()
            ));
            alignment.clone()
        }
    };
    let cuts: Vec<(Cut, Option<u32>)> = match &speakers {
        RecordingSpeakers::PerWord(ids) => {
            if ids.len() != words.words.len() {
                return Err(DataError::MalformedAlignment {
                    path: alignment_path.to_path_buf(),
                    reason: format!("{} speakers for {} words", ids.len(), words.words.len()),
                });
            }
            warn_overlaps(&words, ids, audio_path, warnings);
            plan_turns(&words, ids, duration_s, cfg)
                .into_iter()
                .map(|(cut, id)| (cut, Some(id)))
                .collect()
        }
        _ => plan_cuts(&words, duration_s, cfg)
            .into_iter()
            .map(|cut| (cut, whole_speaker))
            .collect(),
    };
    let mut utterances = Vec::with_capacity(cuts.len());
    for (cut, speaker) in cuts {
        let text = words.words[cut.words.clone()]
            .iter()
            .map(|w| w.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let len = cut.end_s - cut.start_s;
        if len > cfg.max_s {
            warnings.push(format!(
                "{}: utterance {} ({:.1}-{:.1} s) is {len:.1} s long: no pause to cut at",
                audio_path.display(),
                utterances.len(),
                cut.start_s,
                cut.end_s
            ));
        }
        let range = (cut.start_s * rate).floor() as usize..(cut.end_s * rate).ceil() as usize;
        let range = range.start.min(audio.len())..range.end.min(audio.len());
        // Words an aligner timed at one instant (a hallucinating Whisper
        // does) can leave a piece with no audio, which no codec can encode.
        if range.len() < MIN_UTTERANCE_SAMPLES {
            warnings.push(format!(
                "{}: left out {:?} ({:.2}-{:.2} s): shorter than one codec frame (its words \
                 are timed at one instant; check {})",
                audio_path.display(),
                text,
                cut.start_s,
                cut.end_s,
                alignment_path.display()
            ));
            continue;
        }
        utterances.push(
            Utterance::new(recording_id, utterances.len(), text, audio.clone(), range)
                .with_speaker(speaker),
        );
    }
    Ok(Some(Conversation {
        recording_id: recording_id.to_string(),
        utterances,
        alignment_format: Some(alignment.format),
    }))
}

/// Plans the cuts of a conversation: `speakers[i]` says who speaks word
/// `i`. Each turn (a run of words of one speaker) is cut with
/// [`plan_cuts`], and no piece reaches past the boundary between two
/// turns, halfway between the last timed word of one and the first of the
/// next. Returns each piece with its speaker, in spoken order.
pub fn plan_turns(
    alignment: &Alignment,
    speakers: &[u32],
    duration_s: f64,
    cfg: &SegmentConfig,
) -> Vec<(Cut, u32)> {
    let words = &alignment.words;
    let n = words.len().min(speakers.len());
    let mut out = Vec::new();
    let mut a = 0;
    while a < n {
        let who = speakers[a];
        let b = (a..n).find(|&i| speakers[i] != who).unwrap_or(n);
        let lower = if a == 0 {
            0.0
        } else {
            turn_boundary(words, a, duration_s)
        };
        let upper = if b == n {
            duration_s
        } else {
            turn_boundary(words, b, duration_s)
        };
        let turn = Alignment {
            format: alignment.format,
            words: words[a..b].to_vec(),
        };
        for cut in plan_cuts(&turn, duration_s, cfg) {
            let start_s = cut.start_s.clamp(lower, upper);
            let piece = Cut {
                start_s,
                end_s: cut.end_s.clamp(start_s, upper),
                words: cut.words.start + a..cut.words.end + a,
            };
            out.push((piece, who));
        }
        a = b;
    }
    out
}

/// Where the turn that starts at word `b` begins: halfway between the end
/// of the last timed word before `b` and the start of the first timed word
/// from `b` on (at the one that exists, when the other does not).
fn turn_boundary(words: &[Word], b: usize, duration_s: f64) -> f64 {
    let prev_end = words[..b].iter().rev().find_map(|w| w.span).map(|s| s.1);
    let next_start = words[b..].iter().find_map(|w| w.span).map(|s| s.0);
    let t = match (prev_end, next_start) {
        (Some(e), Some(s)) => (e + s) / 2.0,
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => 0.0,
    };
    t.clamp(0.0, duration_s)
}

/// Warns where one voice starts before the other has finished: the cut
/// between their turns then clips a word of one of them.
fn warn_overlaps(
    words: &Alignment,
    speakers: &[u32],
    audio_path: &Path,
    warnings: &mut Vec<String>,
) {
    for b in 1..words.words.len().min(speakers.len()) {
        if speakers[b] == speakers[b - 1] {
            continue;
        }
        let prev = words.words[..b].iter().rev().find_map(|w| w.span);
        let next = words.words[b..].iter().find_map(|w| w.span);
        if let (Some((_, e)), Some((s, _))) = (prev, next) {
            if s < e {
                warnings.push(format!(
                    "{}: speaker {} starts at {s:.2} s, before speaker {} stops at {e:.2} s; \
                     the turns are cut at {:.2} s, clipping both voices",
                    audio_path.display(),
                    speakers[b],
                    speakers[b - 1],
                    (s + e) / 2.0
                ));
            }
        }
    }
}

/// Groups item indices into batches of similar length, to minimise padding.
///
/// Items are sorted by length (ties broken by a seeded hash, so each epoch's
/// seed gives another order), cut into batches of `batch_size`, and the
/// batches are shuffled with `seed`. The same inputs always give the same
/// batches. Every index appears exactly once.
///
/// # Errors
/// [`DataError::InvalidOption`] if `batch_size` is 0.
pub fn bucket_by_length(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    if batch_size == 0 {
        return Err(DataError::InvalidOption {
            name: "batch_size",
            reason: "must be at least 1".into(),
        });
    }
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], crate::rng::mix64(seed ^ i as u64)));
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    super::shuffle(&mut batches, seed);
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(spec: &[(&str, f64, f64)]) -> Alignment {
        Alignment {
            format: AlignmentFormat::WordsObject,
            words: spec
                .iter()
                .map(|&(t, s, e)| Word {
                    text: t.into(),
                    span: Some((s, e)),
                    speaker: None,
                })
                .collect(),
        }
    }

    /// ~60 s of speech: words of 0.3 s with 0.1 s gaps, a 0.6 s pause
    /// after each sentence of 7 words.
    fn long_speech() -> (Alignment, f64) {
        let mut spec = Vec::new();
        let mut t = 0.5;
        let mut i = 0;
        while t < 60.0 {
            let end_of_sentence = i % 7 == 6;
            spec.push((if end_of_sentence { "end." } else { "word" }, t, t + 0.3));
            t += 0.3 + if end_of_sentence { 0.6 } else { 0.1 };
            i += 1;
        }
        let dur = t + 1.0;
        let owned: Vec<(String, f64, f64)> = spec
            .iter()
            .map(|(w, s, e)| (w.to_string(), *s, *e))
            .collect();
        let a = Alignment {
            format: AlignmentFormat::WordsObject,
            words: owned
                .into_iter()
                .map(|(text, s, e)| Word {
                    text,
                    span: Some((s, e)),
                    speaker: None,
                })
                .collect(),
        };
        (a, dur)
    }

    #[test]
    fn cuts_stay_within_bounds_and_never_split_words() {
        let (a, dur) = long_speech();
        let cfg = SegmentConfig::default();
        let cuts = plan_cuts(&a, dur, &cfg);
        assert!(cuts.len() >= 5, "{} cuts", cuts.len());
        // Pieces are contiguous in word order and cover every word once.
        assert_eq!(cuts[0].words.start, 0);
        assert_eq!(cuts.last().unwrap().words.end, a.words.len());
        for pair in cuts.windows(2) {
            assert_eq!(pair[0].words.end, pair[1].words.start);
            assert!(pair[0].end_s <= pair[1].start_s + 1e-9);
        }
        for c in &cuts {
            let len = c.end_s - c.start_s;
            assert!((cfg.min_s..=cfg.max_s).contains(&len), "piece of {len} s");
            assert!(c.start_s >= 0.0 && c.end_s <= dur);
            // Each word lies wholly inside its piece.
            for w in &a.words[c.words.clone()] {
                let (s, e) = w.span.unwrap();
                assert!(s >= c.start_s && e <= c.end_s, "word {s}-{e} outside {c:?}");
            }
            // Cuts prefer sentence ends.
            if c.words.end < a.words.len() {
                assert_eq!(a.words[c.words.end - 1].text, "end.", "{c:?}");
            }
            // At most edge_pad_s of silence at each end.
            let first = a.words[c.words.start].span.unwrap().0;
            let last = a.words[c.words.end - 1].span.unwrap().1;
            assert!(first - c.start_s <= cfg.edge_pad_s + 1e-9);
            assert!(c.end_s - last <= cfg.edge_pad_s + 1e-9);
        }
    }

    #[test]
    fn no_cut_inside_overlaps_or_next_to_untimed_words() {
        // Continuous speech (overlapping words) can't be cut: one long piece.
        let spec: Vec<(&str, f64, f64)> = (0..40)
            .map(|i| ("w", i as f64 * 0.5, i as f64 * 0.5 + 0.55))
            .collect();
        let a = words(&spec);
        let cuts = plan_cuts(&a, 21.0, &SegmentConfig::default());
        assert_eq!(cuts.len(), 1);
        assert_eq!(cuts[0].words, 0..40);

        // Only the gap between two timed words is usable.
        let mut a = words(&[
            ("a", 0.0, 4.0),
            ("b", 4.5, 8.0),
            ("c", 8.5, 12.0),
            ("d", 12.5, 16.0),
        ]);
        a.words[1].span = None;
        let cuts = plan_cuts(&a, 16.0, &SegmentConfig::default());
        let starts: Vec<usize> = cuts.iter().map(|c| c.words.start).collect();
        assert_eq!(starts, [0, 3], "{cuts:?}");
    }

    #[test]
    fn short_recording_is_one_piece() {
        let a = words(&[("hi", 0.5, 0.8), ("there", 1.0, 1.4)]);
        let cuts = plan_cuts(&a, 2.0, &SegmentConfig::default());
        assert_eq!(cuts.len(), 1);
        assert!((cuts[0].start_s - 0.3).abs() < 1e-9);
        assert!((cuts[0].end_s - 1.6).abs() < 1e-9);
    }

    #[test]
    fn transcript_text_is_used_when_it_matches() {
        let a = words(&[
            ("hello", 0.0, 0.5),
            ("world", 0.6, 1.0),
            ("it's", 1.1, 1.3),
            ("me", 1.4, 1.6),
        ]);
        let t = transcript_words("Hello, world — it's ME!", &a.words).unwrap();
        assert_eq!(t, ["Hello,", "world", "— it's", "ME!"]);
        assert_eq!(
            transcript_words("Hello there world it's me", &a.words),
            None
        );
        assert_eq!(transcript_words("hello world it's me too", &a.words), None);
    }

    #[test]
    fn segment_recording_builds_utterances_and_context() {
        let (a, dur) = long_speech();
        let n = (dur * 24_000.0) as usize;
        let audio: Arc<[f32]> = (0..n).map(|i| (i as f32 * 0.01).sin() * 0.1).collect();
        let transcript: String = a
            .words
            .iter()
            .map(|w| w.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let mut warnings = Vec::new();
        let conv = segment_recording(
            "rec",
            audio,
            &transcript,
            Some((Path::new("rec.json"), &a)),
            Path::new("rec.wav"),
            &SegmentConfig::default(),
            &mut warnings,
        )
        .unwrap()
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(conv.alignment_format, Some(AlignmentFormat::WordsObject));
        let joined: Vec<&str> = conv.utterances.iter().map(|u| u.text.as_str()).collect();
        assert_eq!(joined.join(" "), transcript);
        for (i, u) in conv.utterances.iter().enumerate() {
            assert_eq!(u.index, i);
            assert_eq!(u.recording_id, "rec");
            assert!(u.text.ends_with("end.") || i == conv.utterances.len() - 1);
            assert_eq!(u.samples().len(), u.range.len());
        }
        // Context turns: the previous N of the same recording, in order.
        let ex: Vec<Example<'_>> = conv.examples(2).collect();
        assert_eq!(ex.len(), conv.utterances.len());
        assert!(ex[0].context.is_empty());
        assert_eq!(
            ex[1].context.iter().map(|u| u.index).collect::<Vec<_>>(),
            [0]
        );
        for e in &ex[2..] {
            let idx: Vec<usize> = e.context.iter().map(|u| u.index).collect();
            assert_eq!(idx, [e.target.index - 2, e.target.index - 1]);
        }
        assert!(conv.examples(0).all(|e| e.context.is_empty()));
        assert_eq!(conv.context(3, 10).len(), 3);
    }

    #[test]
    fn conversations_are_cut_at_every_change_of_speaker() {
        // Speaker 7 says two short sentences, speaker 3 one long stretch
        // (about 25 s, cut further at its sentence ends), then 7 again.
        // (word, speaker, pause after it)
        let mut plan: Vec<(&str, u32, f64)> = Vec::new();
        for w in ["Hi", "there.", "How", "are", "you?"] {
            plan.push((w, 7, 0.1));
        }
        plan.last_mut().unwrap().2 = 0.6;
        for i in 0..63 {
            let end = i % 7 == 6;
            plan.push((
                if end { "fine." } else { "well" },
                3,
                if end { 0.5 } else { 0.1 },
            ));
        }
        plan.last_mut().unwrap().2 = 0.3;
        for w in ["Good", "to", "hear."] {
            plan.push((w, 7, 0.1));
        }
        let (mut spec, mut who) = (Vec::new(), Vec::new());
        let mut t = 0.3;
        for (w, id, gap) in plan {
            spec.push((w.to_string(), t, t + 0.3));
            who.push(id);
            t += 0.3 + gap;
        }
        let duration = t + 0.5;
        let a = Alignment {
            format: AlignmentFormat::WordsObject,
            words: spec
                .iter()
                .map(|(text, s, e)| Word {
                    text: text.clone(),
                    span: Some((*s, *e)),
                    speaker: None,
                })
                .collect(),
        };
        let cfg = SegmentConfig::default();
        let turns = plan_turns(&a, &who, duration, &cfg);
        let speakers: Vec<u32> = turns.iter().map(|(_, id)| *id).collect();
        assert_eq!(speakers.first(), Some(&7));
        assert_eq!(speakers.last(), Some(&7));
        assert!(
            speakers.iter().filter(|&&id| id == 3).count() >= 2,
            "{speakers:?}"
        );
        for (cut, id) in &turns {
            assert!(who[cut.words.clone()].iter().all(|w| w == id), "{cut:?}");
        }
        // Pieces cover the words in order and never overlap.
        assert_eq!(turns[0].0.words.start, 0);
        assert_eq!(turns.last().unwrap().0.words.end, a.words.len());
        for p in turns.windows(2) {
            assert_eq!(p[0].0.words.end, p[1].0.words.start);
            assert!(p[0].0.end_s <= p[1].0.start_s + 1e-9, "{p:?}");
        }
        // Between two voices 0.8 s apart, both pieces keep edge_pad_s.
        let (first, second) = (&turns[0].0, &turns[1].0);
        let (last_word, next_word) = (a.words[4].span.unwrap(), a.words[5].span.unwrap());
        assert!((first.end_s - (last_word.1 + cfg.edge_pad_s)).abs() < 1e-9);
        assert!((second.start_s - (next_word.0 - cfg.edge_pad_s)).abs() < 1e-9);

        // Through segment_spoken: each utterance carries its speaker.
        let n = (duration * 24_000.0) as usize;
        let audio: Arc<[f32]> = vec![0.1; n].into();
        let transcript: Vec<&str> = spec.iter().map(|(w, _, _)| w.as_str()).collect();
        let mut warnings = Vec::new();
        let conv = segment_spoken(
            Recording {
                id: "talk",
                audio,
                transcript: &transcript.join(" "),
                alignment: Some((Path::new("talk.json"), &a)),
                audio_path: Path::new("talk.wav"),
                speakers: RecordingSpeakers::PerWord(who.clone()),
            },
            &cfg,
            &mut warnings,
        )
        .unwrap()
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let got: Vec<Option<u32>> = conv.utterances.iter().map(|u| u.speaker).collect();
        let want: Vec<Option<u32>> = speakers.iter().map(|&id| Some(id)).collect();
        assert_eq!(got, want);
        assert_eq!(conv.utterances[0].text, "Hi there. How are you?");
        // The previous turns, the other voice's among them, are the context.
        let ex: Vec<Example<'_>> = conv.examples(1).collect();
        assert_eq!(ex[1].context[0].speaker, Some(7));
        assert_eq!(ex[1].target.speaker, Some(3));

        // Overlapping voices are cut halfway and reported.
        let mut overlap = a.clone();
        overlap.words[5].span = Some((a.words[4].span.unwrap().1 - 0.1, 2.5));
        let mut warnings = Vec::new();
        warn_overlaps(&overlap, &who, Path::new("talk.wav"), &mut warnings);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("talk.wav") && warnings[0].contains("speaker 3"));
        // Per-word speakers must match the words.
        let err = segment_spoken(
            Recording {
                id: "talk",
                audio: vec![0.0; n].into(),
                transcript: "x",
                alignment: Some((Path::new("talk.json"), &a)),
                audio_path: Path::new("talk.wav"),
                speakers: RecordingSpeakers::PerWord(who[1..].to_vec()),
            },
            &cfg,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("talk.json"), "{err}");
    }

    #[test]
    fn transcript_punctuation_guides_cuts_when_the_aligner_has_none() {
        // Evenly spaced words, no punctuation in the alignment (as Gentle or
        // MFA write them); the transcript marks a sentence every 7 words.
        let spec: Vec<(&str, f64, f64)> = (0..70)
            .map(|i| ("word", 0.2 + i as f64 * 0.45, 0.2 + i as f64 * 0.45 + 0.3))
            .collect();
        let a = words(&spec);
        let transcript: Vec<String> = (0..70)
            .map(|i| {
                if i % 7 == 6 {
                    "Word.".to_string()
                } else {
                    "word".to_string()
                }
            })
            .collect();
        let audio: Arc<[f32]> = vec![0.0; 24_000 * 33].into();
        let conv = segment_recording(
            "g",
            audio,
            &transcript.join(" "),
            Some((Path::new("g.json"), &a)),
            Path::new("g.wav"),
            &SegmentConfig::default(),
            &mut Vec::new(),
        )
        .unwrap()
        .unwrap();
        assert!(conv.utterances.len() >= 3);
        for u in &conv.utterances {
            assert!(u.text.ends_with("Word."), "{}", u.text);
        }
    }

    /// Words timed at one instant (as a random or hallucinating Whisper
    /// writes them) never give an utterance without audio.
    #[test]
    fn words_at_one_instant_give_no_empty_utterance() {
        // The spans a random Whisper gave an 18.53 s recording.
        let mut spec = vec![("a", 0.0, 0.0); 5];
        spec.extend([("b", 0.0, 17.36), ("c", 17.36, 17.42), ("d", 17.42, 17.46)]);
        spec.extend([("e", 17.46, 17.46), ("f", 17.46, 17.46), ("g", 17.46, 18.5)]);
        spec.extend(vec![("h", 18.5, 18.5); 8]);
        let a = words(&spec);
        let text = vec!["w"; spec.len()].join(" ");
        let audio: Arc<[f32]> = vec![0.1; 24_000 * 1853 / 100].into();
        let mut w = Vec::new();
        let conv = segment_recording(
            "z",
            audio,
            &text,
            Some((Path::new("z.json"), &a)),
            Path::new("z.wav"),
            &SegmentConfig::default(),
            &mut w,
        )
        .unwrap()
        .unwrap();
        assert!(!conv.utterances.is_empty());
        for u in &conv.utterances {
            assert!(u.len() >= MIN_UTTERANCE_SAMPLES, "{:?} {w:?}", u.range());
        }
        // The plan has a piece of no length; it is left out, with a word.
        let cut = plan_cuts(&a, 18.53, &SegmentConfig::default());
        assert!(cut.iter().any(|c| c.end_s - c.start_s < 0.08), "{cut:?}");
        assert!(
            w.iter().any(|m| m.contains("shorter than one codec frame")),
            "{w:?}"
        );
    }

    #[test]
    fn unaligned_recordings_whole_refused_or_skipped() {
        let short: Arc<[f32]> = vec![0.1; 24_000 * 5].into();
        let long: Arc<[f32]> = vec![0.1; 24_000 * 20].into();
        let mut w = Vec::new();
        let cfg = SegmentConfig::default();
        let conv = segment_recording("s", short, " hi ", None, Path::new("s.wav"), &cfg, &mut w)
            .unwrap()
            .unwrap();
        assert_eq!(conv.utterances.len(), 1);
        assert_eq!(conv.utterances[0].text, "hi");
        assert_eq!(conv.utterances[0].range, 0..24_000 * 5);

        let err = segment_recording(
            "l",
            long.clone(),
            "hi",
            None,
            Path::new("l.wav"),
            &cfg,
            &mut w,
        )
        .unwrap_err();
        assert!(
            matches!(&err, DataError::NeedsAlignment { path, .. } if path == Path::new("l.wav"))
        );
        assert!(err.to_string().contains("l.wav"));

        let skip = SegmentConfig {
            long_unaligned: LongUnaligned::Skip,
            ..cfg
        };
        let r =
            segment_recording("l", long, "hi", None, Path::new("l.wav"), &skip, &mut w).unwrap();
        assert!(r.is_none());
        assert!(w[0].contains("l.wav") && w[0].contains("skipped"));
    }

    #[test]
    fn unaligned_recordings_lose_long_edge_silence() {
        // 2 s silence, 3 s tone, 2 s silence.
        let mut v = vec![0.0f32; 24_000 * 7];
        for (i, x) in v[48_000..120_000].iter_mut().enumerate() {
            *x = 0.3 * (i as f32 * 0.05).sin();
        }
        let audio: Arc<[f32]> = v.into();
        let cfg = SegmentConfig::default();
        let conv = segment_recording(
            "t",
            audio.clone(),
            "hi",
            None,
            Path::new("t.wav"),
            &cfg,
            &mut Vec::new(),
        )
        .unwrap()
        .unwrap();
        let r = conv.utterances[0].range();
        let pad = (cfg.edge_pad_s * 24_000.0) as usize;
        assert!(r.start <= 48_000 && r.start + pad >= 48_000 - 240, "{r:?}");
        assert!(r.end >= 120_000 && r.end <= 120_000 + pad + 240, "{r:?}");
        let keep = SegmentConfig {
            trim_silence: false,
            ..cfg
        };
        let conv = segment_recording(
            "t",
            audio,
            "hi",
            None,
            Path::new("t.wav"),
            &keep,
            &mut Vec::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(conv.utterances[0].range(), 0..24_000 * 7);
    }

    #[test]
    fn alignment_past_the_audio_is_rejected() {
        let a = words(&[("hi", 500.0, 900.0)]);
        let audio: Arc<[f32]> = vec![0.0; 24_000].into();
        let err = segment_recording(
            "x",
            audio,
            "hi",
            Some((Path::new("x.json"), &a)),
            Path::new("x.wav"),
            &SegmentConfig::default(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, DataError::MalformedAlignment { path, reason }
            if path == Path::new("x.json") && reason.contains("milliseconds"))
        );
    }

    #[test]
    fn content_key_depends_on_samples_and_text_only() {
        let audio: Arc<[f32]> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        let a = Utterance::new("a", 0, "hi", audio.clone(), 100..200);
        let copy: Arc<[f32]> = audio[100..200].to_vec().into();
        let b = Utterance::new("other", 5, "hi", copy, 0..100);
        assert_eq!(a.content_key(), b.content_key());
        assert_eq!(a.content_key().len(), 64);
        assert_ne!(
            a.content_key(),
            Utterance::new("a", 0, "ho", audio.clone(), 100..200).content_key()
        );
        assert_ne!(
            a.content_key(),
            Utterance::new("a", 0, "hi", audio, 100..201).content_key()
        );
    }

    #[test]
    fn buckets_are_deterministic_and_group_lengths() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 101).collect();
        let b1 = bucket_by_length(&lengths, 8, 7).unwrap();
        assert_eq!(b1, bucket_by_length(&lengths, 8, 7).unwrap());
        assert_ne!(b1, bucket_by_length(&lengths, 8, 8).unwrap());
        let mut all: Vec<usize> = b1.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        // Within a batch, lengths are close: sorted neighbours.
        for batch in &b1 {
            let lens: Vec<usize> = batch.iter().map(|&i| lengths[i]).collect();
            let spread = lens.iter().max().unwrap() - lens.iter().min().unwrap();
            assert!(spread <= 8, "{lens:?}");
        }
        assert!(bucket_by_length(&lengths, 0, 1).is_err());
    }
}
