//! Word timings from JSON alignment files.
//!
//! Accepted layouts (the one found is reported as [`AlignmentFormat`]):
//!
//! | layout | example |
//! | --- | --- |
//! | [`AlignmentFormat::WordsObject`] | `{"words": [{"word": "hi", "start": 0.1, "end": 0.4}]}` (also Gentle, and `"word_segments"` of WhisperX) |
//! | [`AlignmentFormat::WordList`] | `[{"word": "hi", "start": 0.1, "end": 0.4}]` |
//! | [`AlignmentFormat::SegmentWords`] | `{"segments": [{"words": [...]}]}` (whisper / WhisperX), or a bare list of such segments |
//! | [`AlignmentFormat::SegmentsOnly`] | `{"segments": [{"text": "hi there", "start": 0.1, "end": 0.9}]}` (segment-level timings only: cuts fall between segments) |
//! | [`AlignmentFormat::MfaTiers`] | `{"tiers": {"words": {"entries": [[0.1, 0.4, "hi"]]}}}` (Montreal Forced Aligner JSON) |
//!
//! In a word object, the text may be under `word`, `text` or `token`, and
//! times under `start`/`end`, `start_time`/`end_time` or `begin`/`end`
//! (seconds). A word with no times (Gentle's "not-found-in-audio") is kept
//! as untimed: its text stays in the transcript, and no cut is made next to it.
//!
//! # Who speaks
//!
//! A word object or a segment may name its speaker with a `speaker` key,
//! as WhisperX's diarization writes it: a name (`"SPEAKER_00"`, `"alice"`)
//! or a whole number (a CSM speaker id). A word without one takes its
//! segment's. The key is optional, so every file written before it existed
//! reads as before; [`Word::speaker`] keeps the label and the JSON key it
//! came from (`segments[2].speaker`), and [`super::speakers`] turns labels
//! into speaker ids (a recording with several speakers is a conversation).

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::{DataError, Result};

/// Which JSON layout an alignment file used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlignmentFormat {
    /// An object with a `words` (or `word_segments`) list.
    WordsObject,
    /// A bare list of word objects.
    WordList,
    /// Segments, each with its own `words` list (whisper-style).
    SegmentWords,
    /// Segments with text and times but no words.
    SegmentsOnly,
    /// Montreal Forced Aligner JSON (`tiers.words.entries`).
    MfaTiers,
}

impl std::fmt::Display for AlignmentFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::WordsObject => r#"{"words": [...]}"#,
            Self::WordList => "bare list of words",
            Self::SegmentWords => r#"{"segments": [{"words": [...]}]}"#,
            Self::SegmentsOnly => r#"{"segments": [...]} without word timings"#,
            Self::MfaTiers => "MFA tiers",
        })
    }
}

/// One aligned unit: a word, or a whole segment for
/// [`AlignmentFormat::SegmentsOnly`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Word {
    /// The text as the aligner wrote it.
    pub text: String,
    /// Start and end in seconds, or `None` if the aligner could not place it.
    pub span: Option<(f64, f64)>,
    /// Who speaks it, when the file says (`"speaker"` on the word or its
    /// segment).
    pub speaker: Option<SpeakerLabel>,
}

/// A `speaker` value of an alignment file and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpeakerLabel {
    /// The label: a name, or a whole number written as digits.
    pub name: String,
    /// The JSON key it was read from, e.g. `segments[2].words[0].speaker`.
    pub key: String,
}

/// The word timings of one recording.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alignment {
    /// The layout the file used.
    pub format: AlignmentFormat,
    /// Words in spoken order.
    pub words: Vec<Word>,
}

impl Alignment {
    /// End time of the last timed word, in seconds.
    pub fn last_end(&self) -> Option<f64> {
        self.words
            .iter()
            .filter_map(|w| w.span)
            .map(|s| s.1)
            .reduce(f64::max)
    }

    /// Number of words without times.
    pub fn untimed(&self) -> usize {
        self.words.iter().filter(|w| w.span.is_none()).count()
    }

    /// The distinct speaker labels, in order of first appearance (empty
    /// when the file names no speaker).
    pub fn speaker_labels(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for label in self.words.iter().filter_map(|w| w.speaker.as_ref()) {
            if !out.contains(&label.name.as_str()) {
                out.push(&label.name);
            }
        }
        out
    }
}

/// Reads and parses an alignment file.
///
/// # Errors
/// [`DataError::Io`], [`DataError::AlignmentJson`] for invalid JSON,
/// [`DataError::MalformedAlignment`] for an unknown layout or inconsistent
/// times; all name `path`.
pub fn read_alignment(path: &Path) -> Result<Alignment> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_alignment(path, &bytes)
}

/// Parses alignment JSON; `path` is used in errors only.
///
/// # Errors
/// As [`read_alignment`].
pub fn parse_alignment(path: &Path, bytes: &[u8]) -> Result<Alignment> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|source| DataError::AlignmentJson {
            path: path.to_path_buf(),
            source,
        })?;
    let malformed = |reason: String| DataError::MalformedAlignment {
        path: path.to_path_buf(),
        reason,
    };
    let (format, words) = detect(&value).map_err(malformed)?;
    if words.is_empty() {
        return Err(malformed("no words".into()));
    }
    validate(&words).map_err(malformed)?;
    Ok(Alignment { format, words })
}

fn detect(value: &Value) -> std::result::Result<(AlignmentFormat, Vec<Word>), String> {
    match value {
        Value::Array(items) => {
            if items.iter().any(|i| i.get("words").is_some()) {
                Ok((AlignmentFormat::SegmentWords, segment_words(items, "")?))
            } else {
                Ok((AlignmentFormat::WordList, word_list(items, "")?))
            }
        }
        Value::Object(map) => {
            for key in ["words", "word_segments"] {
                if let Some(v) = map.get(key) {
                    let items = v.as_array().ok_or(format!("`{key}` is not a list"))?;
                    return Ok((AlignmentFormat::WordsObject, word_list(items, key)?));
                }
            }
            if let Some(v) = map.get("segments") {
                let items = v.as_array().ok_or("`segments` is not a list")?;
                if items.iter().any(|i| i.get("words").is_some()) {
                    return Ok((
                        AlignmentFormat::SegmentWords,
                        segment_words(items, "segments")?,
                    ));
                }
                return Ok((AlignmentFormat::SegmentsOnly, word_list(items, "segments")?));
            }
            if let Some(entries) = value.pointer("/tiers/words/entries") {
                return Ok((AlignmentFormat::MfaTiers, mfa_entries(entries)?));
            }
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            Err(format!(
                "no `words`, `segments` or `tiers.words` key (found keys: {}); expected \
                 {{\"words\": [{{\"word\", \"start\", \"end\"}}]}}, a list of such words, \
                 or whisper-style {{\"segments\": [{{\"words\": [...]}}]}}",
                keys.join(", ")
            ))
        }
        _ => Err("top level must be an object or a list".into()),
    }
}

fn segment_words(segments: &[Value], at: &str) -> std::result::Result<Vec<Word>, String> {
    let mut out = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let words = seg
            .get("words")
            .and_then(Value::as_array)
            .ok_or(format!("{at}[{i}] has no `words` list"))?;
        let seg_at = format!("{at}[{i}]");
        // A word without a speaker of its own is its segment's.
        let seg_speaker = speaker_label(seg, &seg_at)?;
        let mut words = word_list(words, &format!("{seg_at}.words"))?;
        for w in &mut words {
            if w.speaker.is_none() {
                w.speaker.clone_from(&seg_speaker);
            }
        }
        out.extend(words);
    }
    Ok(out)
}

fn word_list(items: &[Value], at: &str) -> std::result::Result<Vec<Word>, String> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let here = format!("{at}[{i}]");
            word(item, &here).map_err(|e| format!("{here}: {e}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(|words| words.into_iter().flatten().collect())
}

/// The `speaker` of the object at `at`: a non-empty name or a whole number;
/// absent or `null`: none.
fn speaker_label(item: &Value, at: &str) -> std::result::Result<Option<SpeakerLabel>, String> {
    let key = if at.is_empty() {
        "speaker".to_string()
    } else {
        format!("{at}.speaker")
    };
    let name = match item.get("speaker") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v <= u64::from(u32::MAX)) => {
            n.to_string()
        }
        Some(v) => {
            return Err(format!(
                "`{key}` is {v}; a speaker is a name (\"alice\") or a whole number \
                 (a CSM speaker id)"
            ))
        }
    };
    Ok(Some(SpeakerLabel { name, key }))
}

/// One word object at JSON key `at`; `Ok(None)` for entries that carry no
/// text (pauses).
fn word(item: &Value, at: &str) -> std::result::Result<Option<Word>, String> {
    let obj = item.as_object().ok_or("not an object")?;
    let text = ["word", "text", "token"]
        .iter()
        .find_map(|k| obj.get(*k))
        .ok_or("no `word`/`text` field")?
        .as_str()
        .ok_or("word text is not a string")?
        .trim();
    let time = |keys: &[&str]| -> std::result::Result<Option<f64>, String> {
        match keys.iter().find_map(|k| obj.get(*k)) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or(format!("time {v} is not a number")),
        }
    };
    let start = time(&["start", "start_time", "begin"])?;
    let end = time(&["end", "end_time"])?;
    if text.is_empty() {
        return Ok(None);
    }
    let span = match (start, end) {
        (Some(s), Some(e)) => Some((s, e)),
        (None, None) => None,
        _ => return Err(format!("`{text}` has only one of start/end")),
    };
    Ok(Some(Word {
        text: text.to_string(),
        span,
        speaker: speaker_label(item, at)?,
    }))
}

fn mfa_entries(entries: &Value) -> std::result::Result<Vec<Word>, String> {
    let list = entries
        .as_array()
        .ok_or("`tiers.words.entries` is not a list")?;
    let mut out = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let bad = || format!("tiers.words.entries[{i}] is not [start, end, word]");
        let arr = e.as_array().filter(|a| a.len() == 3).ok_or_else(bad)?;
        let (Some(s), Some(t), Some(w)) = (arr[0].as_f64(), arr[1].as_f64(), arr[2].as_str())
        else {
            return Err(bad());
        };
        // MFA marks pauses with empty labels.
        if !w.trim().is_empty() {
            out.push(Word {
                text: w.trim().to_string(),
                span: Some((s, t)),
                speaker: None,
            });
        }
    }
    Ok(out)
}

/// Times must be finite, non-negative, `start <= end`, and in order.
fn validate(words: &[Word]) -> std::result::Result<(), String> {
    // Aligners overlap neighbours by a few ms; more than this is disorder.
    const OVERLAP_TOLERANCE_S: f64 = 0.05;
    let mut prev: Option<(usize, f64)> = None;
    for (i, w) in words.iter().enumerate() {
        let Some((s, e)) = w.span else { continue };
        if !s.is_finite() || !e.is_finite() || s < 0.0 {
            return Err(format!("word {i} `{}` has invalid times {s}..{e}", w.text));
        }
        if e < s {
            return Err(format!(
                "word {i} `{}` ends ({e}) before it starts ({s})",
                w.text
            ));
        }
        if let Some((j, prev_start)) = prev {
            if s + OVERLAP_TOLERANCE_S < prev_start {
                return Err(format!(
                    "words out of order: word {i} `{}` starts at {s} s, before word {j} ({prev_start} s)",
                    w.text
                ));
            }
        }
        prev = Some((i, s));
    }
    if prev.is_none() {
        return Err("no word has timings".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Alignment> {
        parse_alignment(Path::new("a.json"), json.as_bytes())
    }

    #[test]
    fn words_object() {
        let a = parse(
            r#"{"transcript": "hi there", "words": [
            {"word": "hi", "start": 0.1, "end": 0.3},
            {"word": "there", "start": 0.35, "end": 0.7, "score": 0.9}]}"#,
        )
        .unwrap();
        assert_eq!(a.format, AlignmentFormat::WordsObject);
        assert_eq!(a.words.len(), 2);
        assert_eq!(a.words[1].text, "there");
        assert_eq!(a.words[1].span, Some((0.35, 0.7)));
        assert_eq!(a.last_end(), Some(0.7));
    }

    #[test]
    fn bare_list_with_alternative_keys() {
        let a = parse(
            r#"[{"text": "a", "start_time": 0, "end_time": 0.2},
                          {"token": "b", "begin": 0.3, "end": 0.5}]"#,
        )
        .unwrap();
        assert_eq!(a.format, AlignmentFormat::WordList);
        assert_eq!(a.words[0].span, Some((0.0, 0.2)));
        assert_eq!(a.words[1].text, "b");
    }

    #[test]
    fn whisper_segments() {
        let a = parse(
            r#"{"text": " Hello world. Bye.", "segments": [
            {"id": 0, "start": 0.0, "end": 1.0, "text": " Hello world.",
             "words": [{"word": " Hello", "start": 0.0, "end": 0.4, "probability": 0.9},
                       {"word": " world.", "start": 0.45, "end": 1.0}]},
            {"id": 1, "start": 1.2, "end": 1.6, "text": " Bye.",
             "words": [{"word": " Bye.", "start": 1.2, "end": 1.6}]}]}"#,
        )
        .unwrap();
        assert_eq!(a.format, AlignmentFormat::SegmentWords);
        let texts: Vec<_> = a.words.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(texts, ["Hello", "world.", "Bye."]);
    }

    #[test]
    fn segments_without_words_and_mfa() {
        let a = parse(
            r#"{"segments": [{"text": "one two", "start": 0, "end": 1},
                                         {"text": "three", "start": 1.5, "end": 2}]}"#,
        )
        .unwrap();
        assert_eq!(a.format, AlignmentFormat::SegmentsOnly);
        assert_eq!(a.words.len(), 2);

        let m = parse(
            r#"{"start": 0, "end": 2, "tiers": {"words": {"type": "interval",
            "entries": [[0.1, 0.5, "hello"], [0.5, 0.7, ""], [0.7, 1.1, "world"]]}}}"#,
        )
        .unwrap();
        assert_eq!(m.format, AlignmentFormat::MfaTiers);
        assert_eq!(m.words.len(), 2);
        assert_eq!(m.words[1].span, Some((0.7, 1.1)));
    }

    #[test]
    fn gentle_untimed_words_are_kept() {
        let a = parse(
            r#"{"words": [
            {"word": "a", "start": 0.0, "end": 0.2, "case": "success"},
            {"word": "mumble", "case": "not-found-in-audio"},
            {"word": "c", "start": 0.8, "end": 1.0, "case": "success"}]}"#,
        )
        .unwrap();
        assert_eq!(a.untimed(), 1);
        assert_eq!(a.words[1].span, None);
    }

    #[test]
    fn speakers_of_words_and_segments() {
        // WhisperX after diarization: speakers on segments and words; a word
        // without one takes its segment's.
        let a = parse(
            r#"{"segments": [
            {"start": 0.0, "end": 1.0, "text": "Hi Bob.", "speaker": "SPEAKER_00",
             "words": [{"word": "Hi", "start": 0.0, "end": 0.3, "speaker": "SPEAKER_00"},
                       {"word": "Bob.", "start": 0.4, "end": 1.0}]},
            {"start": 1.5, "end": 2.0, "text": "Hey.",
             "words": [{"word": "Hey.", "start": 1.5, "end": 2.0, "speaker": 1}]}]}"#,
        )
        .unwrap();
        let labels: Vec<_> = a
            .words
            .iter()
            .map(|w| {
                w.speaker
                    .as_ref()
                    .map(|l| (l.name.as_str(), l.key.as_str()))
            })
            .collect();
        assert_eq!(
            labels,
            [
                Some(("SPEAKER_00", "segments[0].words[0].speaker")),
                Some(("SPEAKER_00", "segments[0].speaker")),
                Some(("1", "segments[1].words[0].speaker")),
            ]
        );
        assert_eq!(a.speaker_labels(), ["SPEAKER_00", "1"]);
        // Segments without words carry their own; files without speakers
        // read as before.
        let s = parse(r#"{"segments": [{"text": "a", "start": 0, "end": 1, "speaker": "x"}]}"#)
            .unwrap();
        assert_eq!(
            s.words[0].speaker.as_ref().unwrap().key,
            "segments[0].speaker"
        );
        let plain = parse(r#"[{"word": "a", "start": 0, "end": 1, "speaker": null}]"#).unwrap();
        assert!(plain.speaker_labels().is_empty());
        for bad in [r#""  ""#, "-1", "1.5", "[1]"] {
            let json = format!(
                r#"{{"words": [{{"word": "a", "start": 0, "end": 1, "speaker": {bad}}}]}}"#
            );
            let err = parse(&json).unwrap_err().to_string();
            assert!(
                err.contains("a.json") && err.contains("words[0].speaker"),
                "{err}"
            );
        }
    }

    #[test]
    fn malformed_inputs_name_the_file_and_problem() {
        let cases = [
            ("{not json", "json"),
            (r#"{"foo": 1}"#, "found keys: foo"),
            (r#"{"words": []}"#, "no words"),
            (r#"{"words": 3}"#, "not a list"),
            (r#"{"words": [{"start": 0, "end": 1}]}"#, "words[0]"),
            (
                r#"{"words": [{"word": "a", "start": "x", "end": 1}]}"#,
                "not a number",
            ),
            (
                r#"{"words": [{"word": "a", "start": 2, "end": 1}]}"#,
                "before it starts",
            ),
            (r#"{"words": [{"word": "a", "start": 1}]}"#, "only one of"),
            (
                r#"[{"word": "a", "start": 5, "end": 6}, {"word": "b", "start": 1, "end": 2}]"#,
                "out of order",
            ),
            (r#"{"words": [{"word": "a"}]}"#, "no word has timings"),
            ("42", "top level"),
        ];
        for (json, needle) in cases {
            let err = parse(json).unwrap_err();
            let msg = format!(
                "{err} {:?}",
                std::error::Error::source(&err).map(|s| s.to_string())
            );
            assert!(msg.contains("a.json"), "{json}: {msg}");
            assert!(msg.to_lowercase().contains(needle), "{json}: {msg}");
            match (needle, &err) {
                ("json", DataError::AlignmentJson { .. }) => {}
                (_, DataError::MalformedAlignment { .. }) if needle != "json" => {}
                _ => panic!("{json}: wrong variant {err:?}"),
            }
        }
    }
}
