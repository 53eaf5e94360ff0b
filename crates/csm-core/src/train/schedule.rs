//! Learning-rate schedule: linear warm-up, then constant, linear or cosine.

use super::config::LrSchedule;

/// Learning rate for optimizer step `step` (0-based) of `total` steps.
pub fn learning_rate(
    schedule: LrSchedule,
    peak: f32,
    warmup: usize,
    step: usize,
    total: usize,
) -> f32 {
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f32 / warmup as f32;
    }
    let decay_steps = total.saturating_sub(warmup).max(1);
    let t = ((step - warmup.min(step)) as f32 / decay_steps as f32).clamp(0.0, 1.0);
    match schedule {
        LrSchedule::Constant => peak,
        LrSchedule::Linear => peak * (1.0 - t),
        // Floors at 10% of the peak so late steps still learn.
        LrSchedule::Cosine => {
            let floor = 0.1 * peak;
            floor + (peak - floor) * 0.5 * (1.0 + (std::f32::consts::PI * t).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let lr = |s, step| learning_rate(s, 1.0, 10, step, 110);
        assert!((lr(LrSchedule::Cosine, 0) - 0.1).abs() < 1e-6);
        assert!((lr(LrSchedule::Cosine, 9) - 1.0).abs() < 1e-6);
        assert!((lr(LrSchedule::Cosine, 10) - 1.0).abs() < 1e-6);
        assert!((lr(LrSchedule::Cosine, 60) - 0.55).abs() < 1e-6);
        assert!((lr(LrSchedule::Cosine, 110) - 0.1).abs() < 1e-6);
        assert!((lr(LrSchedule::Linear, 60) - 0.5).abs() < 1e-6);
        assert_eq!(lr(LrSchedule::Constant, 100), 1.0);
        assert_eq!(learning_rate(LrSchedule::Constant, 2.0, 0, 0, 5), 2.0);
    }
}
