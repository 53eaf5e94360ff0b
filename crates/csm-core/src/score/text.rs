//! Word and character error rates after an English text normalisation in
//! the spirit of openai-whisper's `EnglishTextNormalizer`
//! (`whisper/normalizers/english.py`).
//!
//! [`normalize_english`] does, in order:
//!
//! 1. lower-case; curly apostrophes (`’`, `‘`) become `'` (an addition:
//!    Whisper's normaliser would split `don’t` into `don t`);
//! 2. drop text between `[...]`, `<...>` and `(...)`;
//! 3. drop the fillers `hmm mm mhm mmm uh um`;
//! 4. expand contractions and titles as Whisper does: `won't` -> `will
//!    not`, `can't` -> `can not`, `let's` -> `let us`, `gonna` -> `going
//!    to`, ... `mr` -> `mister`, `dr` -> `doctor`, ..., then the endings
//!    `n't` `'re` `'s` `'d` `'ll` `'ve` `'m` -> ` not` ` are` ` is` ` would`
//!    ` will` ` have` ` am` (Whisper reads every `'s` as `is`, possessives
//!    too; both texts go through the same rule);
//! 5. drop commas between digits (`1,000` -> `1000`) and periods not
//!    followed by a digit;
//! 6. strip common Latin diacritics (`é` -> `e`, `æ` -> `ae`, `ß` -> `ss`)
//!    and turn every other character that is not a letter, a digit, `'`
//!    (inside a word) or a numeric symbol next to a digit (`.` `%` `$` `£`
//!    `€`) into a space;
//! 7. spelled-out cardinals become digits (`twenty one` -> `21`, `two
//!    hundred and five` -> `205`, `three thousand` -> `3000`); a lone `one`
//!    stays a word, as in Whisper;
//! 8. collapse whitespace.
//!
//! Not implemented from Whisper: ordinals, fractions, decimals and
//! currencies spelled out (`five dollars` stays as it is, `$5` stays `$5`),
//! and the British-to-American spelling list.

/// Whole-word replacements (step 4), after lower-casing.
const WORDS: &[(&str, &str)] = &[
    ("won't", "will not"),
    ("can't", "can not"),
    ("let's", "let us"),
    ("ain't", "aint"),
    ("y'all", "you all"),
    ("wanna", "want to"),
    ("gotta", "got to"),
    ("gonna", "going to"),
    ("i'ma", "i am going to"),
    ("imma", "i am going to"),
    ("woulda", "would have"),
    ("coulda", "could have"),
    ("shoulda", "should have"),
    ("ma'am", "madam"),
    ("mr", "mister"),
    ("mrs", "missus"),
    ("st", "saint"),
    ("dr", "doctor"),
    ("prof", "professor"),
    ("capt", "captain"),
    ("gov", "governor"),
    ("gen", "general"),
    ("sen", "senator"),
    ("rep", "representative"),
    ("pres", "president"),
    ("rev", "reverend"),
    ("lt", "lieutenant"),
    ("col", "colonel"),
    ("jr", "junior"),
    ("sr", "senior"),
    ("esq", "esquire"),
];

/// Word endings (step 4), longest first.
const ENDINGS: &[(&str, &str)] = &[
    ("n't", " not"),
    ("'re", " are"),
    ("'ll", " will"),
    ("'ve", " have"),
    ("'s", " is"),
    ("'d", " would"),
    ("'m", " am"),
    ("'t", " not"),
];

const FILLERS: &[&str] = &["hmm", "mm", "mhm", "mmm", "uh", "um"];

const UNITS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: &[&str] = &[
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

fn strip_diacritic(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' => "a",
        'ç' | 'ć' | 'č' => "c",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ę' | 'ě' => "e",
        'ì' | 'í' | 'î' | 'ï' | 'ī' => "i",
        'ñ' | 'ń' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' => "o",
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' => "u",
        'ý' | 'ÿ' => "y",
        'š' | 'ś' => "s",
        'ž' | 'ź' | 'ż' => "z",
        'ł' => "l",
        'đ' | 'ð' => "d",
        'þ' => "th",
        'æ' => "ae",
        'œ' => "oe",
        'ß' => "ss",
        _ => return None,
    })
}

/// Removes `open ... close` spans (unclosed ones are kept).
fn drop_spans(s: &str, pairs: &[(char, char)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if let Some(&(_, close)) = pairs.iter().find(|(open, _)| *open == c) {
            if let Some(end) = s[i + c.len_utf8()..].find(close) {
                let resume = i + c.len_utf8() + end + close.len_utf8();
                while chars.peek().is_some_and(|&(j, _)| j < resume) {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn expand_word(word: &str) -> String {
    if FILLERS.contains(&word) {
        return String::new();
    }
    if let Some((_, to)) = WORDS.iter().find(|(from, _)| *from == word) {
        return (*to).to_string();
    }
    for (ending, to) in ENDINGS {
        if let Some(stem) = word.strip_suffix(ending) {
            if !stem.is_empty() {
                return format!("{stem}{to}");
            }
        }
    }
    word.to_string()
}

/// Steps 5 and 6 on one word: numeric symbols kept next to digits,
/// apostrophes kept inside words, everything else a separator.
fn clean_symbols(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let digit = |i: Option<&char>| i.is_some_and(char::is_ascii_digit);
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|j| chars.get(j));
        let next = chars.get(i + 1);
        if let Some(plain) = strip_diacritic(c) {
            out.push_str(plain);
            continue;
        }
        let between_digits = digit(prev) && digit(next);
        let inside_word =
            prev.is_some_and(|p| p.is_alphanumeric()) && next.is_some_and(|n| n.is_alphanumeric());
        let keep = c.is_alphanumeric()
            || (c == '.' && between_digits)
            || (matches!(c, '$' | '£' | '€') && digit(next))
            || (c == '%' && digit(prev))
            || (c == '\'' && inside_word);
        if keep {
            out.push(c);
        } else if !(c == ',' && between_digits) {
            out.push(' ');
        }
    }
    out
}

fn number_word(word: &str) -> Option<(u64, bool)> {
    if let Some(n) = UNITS.iter().position(|w| *w == word) {
        return Some((n as u64, false));
    }
    if let Some(n) = TENS.iter().position(|w| !w.is_empty() && *w == word) {
        return Some((10 * n as u64, false));
    }
    match word {
        "hundred" => Some((100, true)),
        "thousand" => Some((1_000, true)),
        "million" => Some((1_000_000, true)),
        "billion" => Some((1_000_000_000, true)),
        _ => None,
    }
}

/// Step 7: runs of number words become one number.
fn spelled_numbers(words: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let Some(first) = number_word(&words[i]) else {
            out.push(words[i].clone());
            i += 1;
            continue;
        };
        if first.1 {
            // "hundred" with no number before it is a word.
            out.push(words[i].clone());
            i += 1;
            continue;
        }
        let (mut total, mut current) = (0u64, 0u64);
        let mut last_small = None::<u64>;
        let mut j = i;
        while j < words.len() {
            let word = words[j].as_str();
            if word == "and"
                && last_small.is_none()
                && j + 1 < words.len()
                && number_word(&words[j + 1]).is_some_and(|(_, scale)| !scale)
            {
                j += 1;
                continue;
            }
            let Some((value, scale)) = number_word(word) else {
                break;
            };
            if scale {
                if value == 100 {
                    current = current.max(1) * 100;
                } else {
                    total += current.max(1) * value;
                    current = 0;
                }
                last_small = None;
            } else {
                // Two small numbers in a row ("five five") are two numbers,
                // except tens followed by units ("twenty one").
                if let Some(prev) = last_small {
                    if !(prev >= 20 && prev % 10 == 0 && value < 10) {
                        break;
                    }
                }
                current += value;
                last_small = Some(value);
            }
            j += 1;
        }
        let value = total + current;
        if j == i + 1 && value == 1 {
            out.push("one".to_string());
        } else {
            out.push(value.to_string());
        }
        i = j;
    }
    out
}

/// The normalised text (see the module docs for what is done).
pub fn normalize_english(text: &str) -> String {
    let s = text.to_lowercase().replace(['’', '‘'], "'");
    let s = drop_spans(&s, &[('[', ']'), ('<', '>'), ('(', ')')]);
    // Separators first, so that "mr." and "it's," are words to expand.
    let s: String = s
        .chars()
        .map(|c| {
            let keep = c.is_alphanumeric() || matches!(c, '\'' | '.' | ',' | '%' | '$' | '£' | '€');
            if keep {
                c
            } else {
                ' '
            }
        })
        .collect();
    let mut words = Vec::new();
    for token in s.split_whitespace() {
        let token = token
            .trim_start_matches([',', '\''])
            .trim_end_matches(['.', ',', '\'']);
        let token =
            if token.starts_with('.') && !token[1..].starts_with(|c: char| c.is_ascii_digit()) {
                token.trim_start_matches('.')
            } else {
                token
            };
        words.push(expand_word(token));
    }
    let cleaned = clean_symbols(&words.join(" "));
    let words: Vec<String> = cleaned.split_whitespace().map(str::to_string).collect();
    spelled_numbers(words).join(" ")
}

/// Edit counts of a hypothesis against a reference.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ErrorRate {
    /// `(substitutions + deletions + insertions) / reference_len` (the
    /// number of insertions when the reference is empty).
    pub rate: f64,
    /// Reference tokens replaced.
    pub substitutions: usize,
    /// Reference tokens missing from the hypothesis.
    pub deletions: usize,
    /// Hypothesis tokens not in the reference.
    pub insertions: usize,
    /// Tokens in the reference.
    pub reference_len: usize,
}

/// Levenshtein alignment of token sequences, counting each kind of edit
/// (ties prefer substitutions, then deletions).
pub fn edit_counts<T: PartialEq>(reference: &[T], hypothesis: &[T]) -> ErrorRate {
    let (n, m) = (reference.len(), hypothesis.len());
    // cost[i][j]: edits turning reference[..i] into hypothesis[..j].
    let mut cost = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in cost.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, c) in cost[0].iter_mut().enumerate() {
        *c = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let same = reference[i - 1] == hypothesis[j - 1];
            cost[i][j] = (cost[i - 1][j - 1] + usize::from(!same))
                .min(cost[i - 1][j] + 1)
                .min(cost[i][j - 1] + 1);
        }
    }
    let (mut i, mut j) = (n, m);
    let (mut s, mut d, mut ins) = (0, 0, 0);
    while i > 0 || j > 0 {
        if i > 0 && j > 0 {
            let same = reference[i - 1] == hypothesis[j - 1];
            if cost[i][j] == cost[i - 1][j - 1] + usize::from(!same) {
                s += usize::from(!same);
                i -= 1;
                j -= 1;
                continue;
            }
        }
        if i > 0 && cost[i][j] == cost[i - 1][j] + 1 {
            d += 1;
            i -= 1;
        } else {
            ins += 1;
            j -= 1;
        }
    }
    let errors = s + d + ins;
    ErrorRate {
        rate: errors as f64 / n.max(1) as f64,
        substitutions: s,
        deletions: d,
        insertions: ins,
        reference_len: n,
    }
}

/// Word error rate after [`normalize_english`] on both texts.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> ErrorRate {
    let r = normalize_english(reference);
    let h = normalize_english(hypothesis);
    let r: Vec<&str> = r.split_whitespace().collect();
    let h: Vec<&str> = h.split_whitespace().collect();
    edit_counts(&r, &h)
}

/// Character error rate after [`normalize_english`] on both texts, over
/// the characters of the normalised strings (single spaces included).
pub fn char_error_rate(reference: &str, hypothesis: &str) -> ErrorRate {
    let r: Vec<char> = normalize_english(reference).chars().collect();
    let h: Vec<char> = normalize_english(hypothesis).chars().collect();
    edit_counts(&r, &h)
}
