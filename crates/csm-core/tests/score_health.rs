//! Sample health on synthetic 24 kHz audio with known silences, clipping
//! and rate.

use csm_core::score::health::{
    count_chars, count_syllables, health_warnings, reference_rate, sample_health, HealthLimits,
    HealthOptions,
};
use csm_core::score::{score_sample, ScoreInputs};

const SR: u32 = 24_000;

fn silence(seconds: f64) -> Vec<f32> {
    vec![0.0; (seconds * f64::from(SR)).round() as usize]
}

/// A "voice": a 180 Hz tone with a 2.5 kHz overtone.
fn tone(seconds: f64, amplitude: f32) -> Vec<f32> {
    let n = (seconds * f64::from(SR)).round() as usize;
    (0..n)
        .map(|i| {
            let t = i as f32 / SR as f32;
            amplitude
                * (0.8 * (2.0 * std::f32::consts::PI * 180.0 * t).sin()
                    + 0.2 * (2.0 * std::f32::consts::PI * 2500.0 * t).sin())
        })
        .collect()
}

fn concat(parts: &[Vec<f32>]) -> Vec<f32> {
    parts.concat()
}

fn close(got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "got {got}, want {want} (tolerance {tol})"
    );
}

#[test]
fn silences_and_pauses() {
    let audio = concat(&[
        silence(0.5),
        tone(1.0, 0.3),
        silence(0.7),
        tone(0.8, 0.3),
        silence(0.2),
        tone(0.5, 0.3),
        silence(1.25),
    ]);
    let h = sample_health(&audio, SR, None, &HealthOptions::default());
    close(h.duration_s, 4.95, 1e-9);
    close(h.leading_silence_s, 0.5, 0.01);
    close(h.trailing_silence_s, 1.25, 0.01);
    close(h.longest_pause_s, 0.7, 0.02);
    close(h.speech_s, 3.2, 0.02);
    assert_eq!(h.clipped_fraction, 0.0);
    assert!(h.rate.is_none());
}

#[test]
fn quiet_noise_counts_as_silence() {
    // -70 dBFS noise around the speech is below the -60 dBFS floor.
    let mut audio = concat(&[silence(0.3), tone(1.0, 0.3), silence(0.6)]);
    let mut state = 12345u32;
    for s in &mut audio {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        *s += ((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.001;
    }
    let h = sample_health(&audio, SR, None, &HealthOptions::default());
    close(h.leading_silence_s, 0.3, 0.01);
    close(h.trailing_silence_s, 0.6, 0.01);
    close(h.longest_pause_s, 0.0, 1e-9);
}

#[test]
fn all_silent_sample() {
    let h = sample_health(&silence(2.0), SR, Some("hello"), &HealthOptions::default());
    close(h.leading_silence_s, 2.0, 1e-9);
    assert_eq!((h.speech_s, h.rate), (0.0, None));
}

#[test]
fn clipping_fraction() {
    // 0.25 s of flat full-scale samples in a 2 s sample: 12.5 %.
    let mut audio = concat(&[tone(1.0, 0.3), vec![1.0; SR as usize / 4], tone(0.75, 0.3)]);
    let h = sample_health(&audio, SR, None, &HealthOptions::default());
    close(h.clipped_fraction, 0.125, 1e-9);
    // Lone full-scale peaks are not clipping.
    audio = tone(1.0, 0.3);
    for i in (0..audio.len()).step_by(100) {
        audio[i] = 1.0;
    }
    let h = sample_health(&audio, SR, None, &HealthOptions::default());
    assert_eq!(h.clipped_fraction, 0.0);
}

#[test]
fn speaking_rate_and_ratio() {
    // 33 letters and 11 syllables over 2 s of speech (0.5 s silence each side).
    let text = "the quick brown fox jumps over a lazy dog"; // 33 letters
    assert_eq!(count_chars(text), 33);
    assert_eq!(count_syllables(text), 11);
    assert_eq!(count_syllables("Beautiful table, simple cake!"), 8);
    let audio = concat(&[silence(0.5), tone(2.0, 0.3), silence(0.5)]);
    let h = sample_health(&audio, SR, Some(text), &HealthOptions::default());
    let rate = h.rate.unwrap();
    close(rate.chars_per_s, 16.5, 0.2);
    close(rate.syllables_per_s, 5.5, 0.06);

    // The speaker's own: the same text in 3 s and again in 2.5 s.
    let slow = concat(&[silence(0.2), tone(3.0, 0.3)]);
    let other = tone(2.5, 0.3);
    let own = reference_rate(
        [(slow.as_slice(), SR, text), (other.as_slice(), SR, text)],
        &HealthOptions::default(),
    )
    .unwrap();
    close(own.chars_per_s, 66.0 / 5.5, 0.1);
    close(rate.ratio_to(&own), 16.5 / 12.0, 0.03);
}

#[test]
fn end_to_end_with_a_supplied_transcript() {
    let audio = concat(&[silence(0.4), tone(1.5, 0.3), silence(0.4)]);
    let inputs = ScoreInputs {
        text: Some("Dr. Smith has twenty-one cats."),
        transcript: Some("doctor smith has 21 hats"),
        speaker: None,
    };
    let score = score_sample(&audio, SR, &inputs, &HealthOptions::default()).unwrap();
    let wer = score.wer.unwrap();
    assert_eq!((wer.substitutions, wer.reference_len), (1, 5));
    close(score.cer.unwrap().rate, 1.0 / 24.0, 1e-12);
    assert!(score.similarity.is_none() && score.rate_ratio.is_none());
    close(score.health.leading_silence_s, 0.4, 0.01);
    let json = serde_json::to_value(&score).unwrap();
    assert_eq!(json["wer"]["substitutions"], 1);
}

#[test]
fn warnings_name_what_passes_the_limits() {
    let limits = HealthLimits::default();
    let options = HealthOptions::default();
    // 0.5 s lead, a 0.7 s pause, 0.3 s tail, at the speaker's pace: healthy.
    let fine = concat(&[
        silence(0.5),
        tone(1.0, 0.3),
        silence(0.7),
        tone(1.0, 0.3),
        silence(0.3),
    ]);
    let h = sample_health(&fine, SR, None, &options);
    assert!(health_warnings(&h, Some(1.0), &limits).is_empty());
    // 1.2 s lead, a 2 s pause, 1.5 s tail, clipped, too fast.
    let bad = concat(&[
        silence(1.2),
        tone(0.5, 0.3),
        vec![1.0; SR as usize / 10],
        silence(2.0),
        tone(0.5, 0.3),
        silence(1.5),
    ]);
    let h = sample_health(&bad, SR, None, &options);
    let w = health_warnings(&h, Some(1.8), &limits);
    assert_eq!(w.len(), 5, "{w:?}");
    for (i, part) in [
        "1.2 s of silence before",
        "pause of 2.0 s",
        "1.5 s of silence after",
        "clipping",
        "fast: 180%",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            w.iter().any(|m| m.contains(part)),
            "{i}: {part} not in {w:?}"
        );
    }
    assert!(health_warnings(&h, Some(0.5), &limits)
        .iter()
        .any(|m| m.contains("slow: 50%")));
    // Nothing voiced: one warning, whatever else.
    let h = sample_health(&silence(2.0), SR, Some("hi"), &options);
    assert_eq!(
        health_warnings(&h, None, &limits),
        ["no speech: nothing voiced in 2.0 s"]
    );
}
