//! Whisper's tokenizer: byte-level BPE through the `tokenizers` crate, the
//! special tokens (`<|startoftranscript|>`, languages, tasks,
//! `<|notimestamps|>`, timestamps `<|0.00|>`..`<|30.00|>`), and byte-exact
//! decoding (invalid UTF-8 becomes U+FFFD, as tiktoken's `errors="replace"`).
//!
//! Two sources: a transformers `tokenizer.json`, or openai-whisper's
//! `multilingual.tiktoken` ranks, turned into the same BPE here (merges
//! recovered from the ranks; whole-word lookup first, as tiktoken does).
//! Special token ids follow openai-whisper `tokenizer.py::get_encoding`.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use super::error::WhisperError;

/// openai-whisper's language codes, in token order (`LANGUAGES` keys).
pub const LANGUAGE_CODES: [&str; 100] = [
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it",
    "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur",
    "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn",
    "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si",
    "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo",
    "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln",
    "ha", "ba", "jw", "su", "yue",
];

/// Python's `string.punctuation`.
const ASCII_PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Number of timestamp tokens (0.00 to 30.00 s by 0.02 s).
pub const N_TIMESTAMPS: u32 = 1501;

/// Ids of the special tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `<|endoftext|>`.
    pub eot: u32,
    /// `<|startoftranscript|>`.
    pub sot: u32,
    /// `<|translate|>`.
    pub translate: u32,
    /// `<|transcribe|>`.
    pub transcribe: u32,
    /// `<|startoflm|>`.
    pub sot_lm: u32,
    /// `<|startofprev|>`.
    pub sot_prev: u32,
    /// `<|nospeech|>` (`<|nocaptions|>` in older files).
    pub no_speech: u32,
    /// `<|notimestamps|>`.
    pub no_timestamps: u32,
    /// `<|0.00|>`; timestamp `i` is `timestamp_begin + i`.
    pub timestamp_begin: u32,
    /// `(code, id)` of every language token, in order.
    pub languages: Vec<(String, u32)>,
}

/// Whisper's tokenizer.
#[derive(Debug, Clone)]
pub struct WhisperTokenizer {
    inner: tokenizers::Tokenizer,
    bytes: Vec<Vec<u8>>,
    /// Special token ids.
    pub special: SpecialTokens,
}

/// GPT-2's printable stand-ins for bytes (`bytes_to_unicode`).
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        out[b as usize] = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid code point")
        };
    }
    out
}

fn tok_err(e: impl std::fmt::Display) -> WhisperError {
    WhisperError::Tokenizer(e.to_string())
}

impl WhisperTokenizer {
    /// Loads a transformers `tokenizer.json`. `vocab_size` (the model's) sets
    /// how many ids exist; timestamp tokens missing from older files are
    /// added after `<|notimestamps|>`.
    pub fn from_tokenizer_json(path: &Path, vocab_size: usize) -> Result<Self, WhisperError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| WhisperError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::from_tokenizer(inner, vocab_size)
    }

    /// Builds the tokenizer from openai-whisper's `.tiktoken` ranks (one
    /// `base64 rank` line per token) and its special-token list for
    /// `num_languages` languages (99, or 100 from large-v3 on).
    pub fn from_tiktoken(ranks_text: &str, num_languages: usize) -> Result<Self, WhisperError> {
        let mut ranks: Vec<(Vec<u8>, u32)> = Vec::new();
        for line in ranks_text.lines().filter(|l| !l.trim().is_empty()) {
            let mut it = line.split_whitespace();
            let (Some(b64), Some(rank)) = (it.next(), it.next()) else {
                return Err(WhisperError::Tokenizer(format!(
                    "bad tiktoken line {line:?}"
                )));
            };
            let bytes = base64_decode(b64).ok_or_else(|| tok_err(format!("bad base64 {b64:?}")))?;
            let rank: u32 = rank
                .parse()
                .map_err(|_| tok_err(format!("bad rank {rank:?}")))?;
            ranks.push((bytes, rank));
        }
        ranks.sort_by_key(|r| r.1);
        let rank_of: HashMap<&[u8], u32> = ranks.iter().map(|(b, r)| (b.as_slice(), *r)).collect();
        let chars = byte_chars();
        let show = |b: &[u8]| b.iter().map(|&x| chars[x as usize]).collect::<String>();
        let mut vocab = serde_json::Map::new();
        let mut merges = Vec::new();
        for (bytes, rank) in &ranks {
            vocab.insert(show(bytes), json!(rank));
            if bytes.len() < 2 {
                continue;
            }
            // Merge with lower ranks only; the last two parts are this
            // token's merge (transformers' TikTokenConverter does the same).
            let mut parts: Vec<&[u8]> = bytes.chunks(1).collect();
            loop {
                let best = (0..parts.len() - 1)
                    .filter_map(|i| {
                        let joined = [parts[i], parts[i + 1]].concat();
                        rank_of
                            .get(joined.as_slice())
                            .filter(|&&r| r < *rank)
                            .map(|&r| (r, i))
                    })
                    .min();
                let Some((_, i)) = best else { break };
                let len = parts[i].len() + parts[i + 1].len();
                let start = parts[..i].iter().map(|p| p.len()).sum::<usize>();
                parts[i] = &bytes[start..start + len];
                parts.remove(i + 1);
            }
            if parts.len() == 2 {
                merges.push(json!([show(parts[0]), show(parts[1])]));
            }
        }
        let n_vocab = ranks.len() as u32;
        let mut specials: Vec<String> =
            vec!["<|endoftext|>".into(), "<|startoftranscript|>".into()];
        specials.extend(
            LANGUAGE_CODES[..num_languages.min(100)]
                .iter()
                .map(|c| format!("<|{c}|>")),
        );
        for s in [
            "translate",
            "transcribe",
            "startoflm",
            "startofprev",
            "nospeech",
            "notimestamps",
        ] {
            specials.push(format!("<|{s}|>"));
        }
        specials.extend((0..N_TIMESTAMPS).map(|i| format!("<|{:.2}|>", i as f64 * 0.02)));
        let added: Vec<Value> = specials
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({"id": n_vocab + i as u32, "content": s, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": true, "vocab": vocab, "merges": merges},
        });
        let inner: tokenizers::Tokenizer = spec.to_string().parse().map_err(tok_err)?;
        Self::from_tokenizer(inner, (n_vocab as usize) + specials.len())
    }

    fn from_tokenizer(
        inner: tokenizers::Tokenizer,
        vocab_size: usize,
    ) -> Result<Self, WhisperError> {
        let chars = byte_chars();
        let unchar: HashMap<char, u8> = chars
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let added = inner.get_added_tokens_decoder();
        let find = |names: &[&str]| -> Result<u32, WhisperError> {
            names
                .iter()
                .find_map(|n| inner.token_to_id(n))
                .ok_or_else(|| tok_err(format!("the tokenizer has no {}", names[0])))
        };
        let eot = find(&["<|endoftext|>"])?;
        let sot = find(&["<|startoftranscript|>"])?;
        let translate = find(&["<|translate|>"])?;
        let no_timestamps = find(&["<|notimestamps|>"])?;
        let special = SpecialTokens {
            eot,
            sot,
            translate,
            transcribe: find(&["<|transcribe|>"])?,
            sot_lm: find(&["<|startoflm|>"])?,
            sot_prev: find(&["<|startofprev|>"])?,
            no_speech: find(&["<|nospeech|>", "<|nocaptions|>"])?,
            no_timestamps,
            timestamp_begin: no_timestamps + 1,
            languages: (sot + 1..translate)
                .filter_map(|id| {
                    let t = inner.id_to_token(id)?;
                    let code = t.strip_prefix("<|")?.strip_suffix("|>")?.to_string();
                    Some((code, id))
                })
                .collect(),
        };
        let mut bytes = vec![Vec::new(); vocab_size];
        for (id, slot) in bytes.iter_mut().enumerate() {
            let id = id as u32;
            if id >= special.timestamp_begin {
                let i = id - special.timestamp_begin;
                *slot = format!("<|{:.2}|>", i as f64 * 0.02).into_bytes();
            } else if let Some(tok) = added.get(&id) {
                *slot = tok.content.clone().into_bytes();
            } else if let Some(tok) = inner.id_to_token(id) {
                *slot = tok
                    .chars()
                    .map(|c| unchar.get(&c).copied().unwrap_or(b'?'))
                    .collect();
            }
        }
        Ok(WhisperTokenizer {
            inner,
            bytes,
            special,
        })
    }

    /// Encodes plain text (special-token strings are not parsed as such).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, WhisperError> {
        let enc = self.inner.encode_fast(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// The bytes of one token (special tokens give their text).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Decodes tokens, timestamps included as `<|1.23|>` text.
    pub fn decode_with_timestamps(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.token_bytes(i).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Decodes tokens, dropping timestamp tokens (openai-whisper `decode`).
    pub fn decode(&self, ids: &[u32]) -> String {
        let kept: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&i| i < self.special.timestamp_begin)
            .collect();
        self.decode_with_timestamps(&kept)
    }

    /// The id of a language code (`"en"`), if the model has it.
    pub fn language_token(&self, code: &str) -> Option<u32> {
        self.special
            .languages
            .iter()
            .find(|(c, _)| c == code)
            .map(|(_, id)| *id)
    }

    /// The code of a language token id.
    pub fn language_code(&self, id: u32) -> Option<&str> {
        self.special
            .languages
            .iter()
            .find(|(_, i)| *i == id)
            .map(|(c, _)| c.as_str())
    }

    /// `<|startoftranscript|>`, the language (if any), the task token.
    pub fn sot_sequence(&self, language: Option<u32>, translate: bool) -> Vec<u32> {
        let mut seq = vec![self.special.sot];
        seq.extend(language);
        seq.push(if translate {
            self.special.translate
        } else {
            self.special.transcribe
        });
        seq
    }

    /// Tokens that spell speaker tags and annotations (`(`, `[`, `♪`, ...),
    /// suppressed by default (openai-whisper `non_speech_tokens`).
    pub fn non_speech_tokens(&self) -> Result<Vec<u32>, WhisperError> {
        let mut symbols: Vec<String> = "\"#()*+/:;<=>@[\\]^_`{|}~「」『』"
            .chars()
            .map(String::from)
            .collect();
        symbols.extend(
            "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪"
                .split(' ')
                .map(String::from),
        );
        let misc: Vec<String> = "♩♪♫♬♭♮♯".chars().map(String::from).collect();
        let mut out = std::collections::BTreeSet::new();
        for s in [" -", " '"] {
            out.extend(self.encode(s)?.first().copied());
        }
        for (symbol, is_misc) in symbols
            .iter()
            .map(|s| (s, false))
            .chain(misc.iter().map(|s| (s, true)))
        {
            for text in [symbol.clone(), format!(" {symbol}")] {
                let ids = self.encode(&text)?;
                if ids.len() == 1 || (is_misc && !ids.is_empty()) {
                    out.insert(ids[0]);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Splits tokens into words as openai-whisper does for space-delimited
    /// languages: pieces that decode to whole code points, joined unless a
    /// piece starts with a space, is punctuation or is special.
    pub fn split_to_word_tokens(
        &self,
        tokens: &[u32],
        language: Option<&str>,
    ) -> (Vec<String>, Vec<Vec<u32>>) {
        let (subwords, pieces) = self.split_on_unicode(tokens);
        if matches!(language, Some("zh" | "ja" | "th" | "lo" | "my" | "yue")) {
            return (subwords, pieces);
        }
        let mut words: Vec<String> = Vec::new();
        let mut word_tokens: Vec<Vec<u32>> = Vec::new();
        for (sub, toks) in subwords.into_iter().zip(pieces) {
            let special = toks[0] >= self.special.eot;
            let with_space = sub.starts_with(' ');
            // Python's `in string.punctuation`: a substring test, so "" and "()" count.
            let punct = ASCII_PUNCTUATION.contains(sub.trim());
            if special || with_space || punct || words.is_empty() {
                words.push(sub);
                word_tokens.push(toks);
            } else {
                words.last_mut().expect("non-empty").push_str(&sub);
                word_tokens.last_mut().expect("non-empty").extend(toks);
            }
        }
        (words, word_tokens)
    }

    fn split_on_unicode(&self, tokens: &[u32]) -> (Vec<String>, Vec<Vec<u32>>) {
        const REPLACEMENT: char = '\u{FFFD}';
        let full: Vec<char> = self.decode_with_timestamps(tokens).chars().collect();
        let mut words = Vec::new();
        let mut pieces = Vec::new();
        let mut current = Vec::new();
        let mut offset = 0usize;
        for &t in tokens {
            current.push(t);
            let decoded = self.decode_with_timestamps(&current);
            let chars: Vec<char> = decoded.chars().collect();
            let complete = match chars.iter().position(|&c| c == REPLACEMENT) {
                None => true,
                Some(i) => full.get(offset + i) == Some(&REPLACEMENT),
            };
            if complete {
                offset += chars.len();
                words.push(decoded);
                pieces.push(std::mem::take(&mut current));
            }
        }
        (words, pieces)
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        out.extend((0..n).map(|i| (acc >> (16 - 8 * i)) as u8));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_byte_chars() {
        assert_eq!(base64_decode("SGVsbG8=").unwrap(), b"Hello");
        assert_eq!(base64_decode("IQ==").unwrap(), b"!");
        assert_eq!(base64_decode("4pmq").unwrap(), "♪".as_bytes());
        let c = byte_chars();
        assert_eq!(c[b' ' as usize], 'Ġ');
        assert_eq!(c[b'a' as usize], 'a');
        let unique: std::collections::HashSet<char> = c.iter().copied().collect();
        assert_eq!(unique.len(), 256);
    }
}
