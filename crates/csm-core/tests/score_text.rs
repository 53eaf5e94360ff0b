//! WER/CER on known pairs and the English normalisation.

use csm_core::score::text::{char_error_rate, edit_counts, normalize_english, word_error_rate};

#[test]
fn normalisation() {
    let cases = [
        ("Hello, World!", "hello world"),
        ("  Many   spaces\tand\nlines ", "many spaces and lines"),
        ("[laughs] Okay (quietly) then <noise>", "okay then"),
        ("Um, I think, uh, yes.", "i think yes"),
        (
            "I won't go, you can't stay, let's see.",
            "i will not go you can not stay let us see",
        ),
        (
            "It’s what they’re doing; we'd know.",
            "it is what they are doing we would know",
        ),
        ("Mr. Smith met Dr. Jones", "mister smith met doctor jones"),
        ("I'm gonna wanna", "i am going to want to"),
        (
            "It costs 1,000 dollars, or 2.5 each.",
            "it costs 1000 dollars or 2.5 each",
        ),
        (
            "twenty-one pilots and two hundred and five",
            "21 pilots and 205",
        ),
        ("three thousand four hundred", "3400"),
        ("one of them counted five five", "one of them counted 5 5"),
        ("A café in Zürich", "a cafe in zurich"),
        ("U.S. and 50% of $20", "u s and 50% of $20"),
        ("Well... maybe?", "well maybe"),
    ];
    for (input, want) in cases {
        assert_eq!(normalize_english(input), want, "{input:?}");
    }
}

#[test]
fn identical_texts_score_zero() {
    let r = word_error_rate("The cat sat on the mat.", "the cat sat on the mat");
    assert_eq!((r.rate, r.reference_len), (0.0, 6));
    let r = char_error_rate("Hello there", "hello, there!");
    assert_eq!(r.rate, 0.0);
}

#[test]
fn substitutions_deletions_insertions() {
    let r = word_error_rate("the cat sat on the mat", "the dog sat on the mat");
    assert_eq!((r.substitutions, r.deletions, r.insertions), (1, 0, 0));
    assert!((r.rate - 1.0 / 6.0).abs() < 1e-12);

    let r = word_error_rate("the cat sat on the mat", "the cat on mat");
    assert_eq!((r.substitutions, r.deletions, r.insertions), (0, 2, 0));
    assert!((r.rate - 2.0 / 6.0).abs() < 1e-12);

    let r = word_error_rate("the cat sat", "well the big cat sat down");
    assert_eq!((r.substitutions, r.deletions, r.insertions), (0, 0, 3));
    assert!((r.rate - 1.0).abs() < 1e-12);

    let r = word_error_rate("a b c d", "x b d e");
    assert_eq!(r.substitutions + r.deletions + r.insertions, 3);
    assert_eq!(r.rate, 0.75);
}

#[test]
fn character_error_rate() {
    // kitten -> sitting: 2 substitutions and 1 insertion over 6 characters.
    let r = char_error_rate("kitten", "sitting");
    assert_eq!((r.substitutions, r.deletions, r.insertions), (2, 0, 1));
    assert!((r.rate - 0.5).abs() < 1e-12);
    // Normalisation first: case and punctuation are free.
    let r = char_error_rate("Don't stop!", "do not stop");
    assert_eq!(r.rate, 0.0);
}

#[test]
fn normalisation_removes_formatting_errors() {
    let reference = "Dr. Smith said it's twenty-five percent, (roughly) at 5 o'clock.";
    let heard = "doctor smith said it is 25 percent at five o'clock";
    let r = word_error_rate(reference, heard);
    assert_eq!(r.rate, 0.0, "{r:?}");
}

#[test]
fn empty_texts() {
    let r = word_error_rate("", "");
    assert_eq!((r.rate, r.reference_len), (0.0, 0));
    let r = word_error_rate("", "two words");
    assert_eq!((r.insertions, r.rate), (2, 2.0));
    let r = word_error_rate("two words", "");
    assert_eq!((r.deletions, r.rate), (2, 1.0));
    assert_eq!(edit_counts::<u8>(&[], &[]).rate, 0.0);
}
