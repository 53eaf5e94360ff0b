//! Top-k + temperature sampling as in SesameAILabs/csm `sample_topk`
//! (`docs/architecture.md`, "The model"): divide by the temperature, mask every
//! logit strictly below the k-th largest (ties at the threshold are kept),
//! then draw from the softmax with a seeded key.

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::{argmax_axis, TryIndexOp};
use mlx_rs::{ops, random, Array, Dtype};

use super::{GenerateError, SamplingConfig};

/// Masks (with `-inf`) every logit strictly below the `k`-th largest of its
/// row; values equal to the threshold stay, so more than `k` may survive on
/// ties. `k >= V` returns the logits unchanged.
///
/// # Shapes
/// `logits: [..., V]` -> `[..., V]`
///
/// # Errors
/// `k < 1`, or an MLX failure.
pub fn top_k_mask(logits: &Array, k: i32) -> Result<Array, Exception> {
    let v = *logits
        .shape()
        .last()
        .ok_or_else(|| Exception::custom("top_k_mask needs logits with a vocabulary axis"))?;
    if k < 1 {
        return Err(Exception::custom(format!(
            "top_k must be at least 1, got {k}"
        )));
    }
    if k >= v {
        return Ok(logits.clone());
    }
    // After partitioning at V - k, position V - k holds the k-th largest.
    let part = ops::partition_axis(logits, v - k, -1)?; // [..., V]
    let threshold = part.try_index((.., (v - k)..(v - k + 1)))?; // [..., 1]
    let below = logits.lt(&threshold)?; // [..., V]
    let neg_inf = Array::from_f32(f32::NEG_INFINITY).as_dtype(logits.dtype())?;
    ops::select(&below, &neg_inf, logits)
}

/// A seeded top-k / temperature sampler. Every call draws with a fresh key
/// split off the previous one, so a given seed always gives the same codes
/// for the same logits.
#[derive(Debug)]
pub struct Sampler {
    key: Array,
    temperature: f32,
    top_k: i32,
}

impl Sampler {
    /// A sampler for `cfg` (temperature, top-k, seed).
    ///
    /// # Errors
    /// An invalid config (see [`SamplingConfig::validate`]).
    pub fn new(cfg: &SamplingConfig) -> Result<Self, GenerateError> {
        cfg.validate()?;
        Ok(Sampler {
            key: random::key(cfg.seed)?,
            temperature: cfg.temperature,
            top_k: i32::try_from(cfg.top_k).unwrap_or(i32::MAX),
        })
    }

    /// The current key (evaluate it with the sampled codes to keep the lazy
    /// graph short).
    pub fn key(&self) -> &Array {
        &self.key
    }

    /// Samples one code per row. With `limit`, only ids `0..limit` can be
    /// drawn (the codec's real codes; the model's extra ids are never valid
    /// Mimi input). A temperature of 0 is greedy (argmax).
    ///
    /// # Shapes
    /// `logits: [B, V]` -> `[B]` (int32)
    pub fn sample(&mut self, logits: &Array, limit: Option<i32>) -> Result<Array, Exception> {
        let v = logits.shape()[logits.ndim() - 1];
        let logits = match limit {
            Some(n) if n < v => logits.try_index((.., ..n))?, // [B, n]
            _ => logits.clone(),
        };
        let logits = logits.as_dtype(Dtype::Float32)?;
        if self.temperature <= 0.0 {
            return argmax_axis(&logits, -1, None)?.as_dtype(Dtype::Int32);
        }
        let scaled = logits.divide(Array::from_f32(self.temperature))?; // [B, V]
        let masked = top_k_mask(&scaled, self.top_k)?; // [B, V]
        let (next, sub) = random::split(&self.key, 2)?;
        self.key = next;
        // Gumbel-max: the same distribution as softmax + multinomial.
        random::categorical(&masked, -1, None, &sub)?.as_dtype(Dtype::Int32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_kept(a: &Array) -> Vec<usize> {
        let v = a.as_slice::<f32>();
        v.iter()
            .enumerate()
            .filter(|(_, x)| x.is_finite())
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn top_k_keeps_exactly_the_top_k() {
        let logits = Array::from_slice(&[0.5f32, 3.0, -1.0, 2.0, 7.0, 1.0, 2.5], &[1, 7]);
        let m = top_k_mask(&logits, 3).unwrap();
        m.eval().unwrap();
        assert_eq!(sorted_kept(&m), vec![1, 4, 6]);
        // Kept values are unchanged.
        assert_eq!(m.as_slice::<f32>()[4], 7.0);
        let m = top_k_mask(&logits, 1).unwrap();
        m.eval().unwrap();
        assert_eq!(sorted_kept(&m), vec![4]);
        let m = top_k_mask(&logits, 7).unwrap();
        m.eval().unwrap();
        assert_eq!(sorted_kept(&m).len(), 7);
        assert!(top_k_mask(&logits, 0).is_err());
    }

    #[test]
    fn top_k_keeps_ties_at_the_threshold() {
        // Third largest is 2.0, held by three entries: all three survive.
        let logits = Array::from_slice(&[2.0f32, 5.0, 2.0, 4.0, 2.0, 1.0], &[1, 6]);
        let m = top_k_mask(&logits, 3).unwrap();
        m.eval().unwrap();
        assert_eq!(sorted_kept(&m), vec![0, 1, 2, 3, 4]);
        // Per row.
        let logits = Array::from_slice(&[1.0f32, 2.0, 3.0, 3.0, 2.0, 1.0], &[2, 3]);
        let m = top_k_mask(&logits, 1).unwrap();
        m.eval().unwrap();
        assert_eq!(sorted_kept(&m), vec![2, 3]);
    }

    #[test]
    fn sampler_is_seeded_and_respects_top_k_and_limit() {
        let cfg = |seed| SamplingConfig {
            temperature: 1.0,
            top_k: 2,
            seed,
            ..SamplingConfig::default()
        };
        let logits = Array::from_slice(&[0.0f32, 1.0, 1.2, -3.0, 0.9, 0.1], &[1, 6]);
        let draw = |seed| {
            let mut s = Sampler::new(&cfg(seed)).unwrap();
            (0..64)
                .map(|_| s.sample(&logits, None).unwrap().item_cast::<i32>())
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(a.iter().all(|&c| c == 1 || c == 2), "{a:?}");
        assert!(a.contains(&1) && a.contains(&2));
        // Limit: ids >= 2 cannot be drawn.
        let mut s = Sampler::new(&cfg(1)).unwrap();
        for _ in 0..16 {
            assert!(s.sample(&logits, Some(2)).unwrap().item_cast::<i32>() < 2);
        }
        // Temperature 0 is argmax.
        let mut s = Sampler::new(&SamplingConfig {
            temperature: 0.0,
            ..cfg(1)
        })
        .unwrap();
        assert_eq!(s.sample(&logits, None).unwrap().item_cast::<i32>(), 2);
    }
}
