//! Split residual vector quantizer: a semantic RVQ (`rvq_first`) and an
//! acoustic RVQ (`rvq_rest`), both fed the same latent.
//!
//! Codebooks hold the centroids `embedding_sum / clamp(cluster_usage, 1e-5)`,
//! computed once at load time. Encoding takes, per layer, the argmin of the
//! squared L2 distance (fp32) and subtracts the chosen centroid.

use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::Param;
use mlx_rs::ops::indexing::{argmin_axis, IndexOp};
use mlx_rs::{ops, random, Array, Dtype};

use super::config::MimiConfig;

/// One residual VQ with optional 1x1 input/output projections.
#[derive(Debug, Clone, ModuleParameters)]
pub struct ResidualVq {
    /// `[dim, latent]` (a bias-free 1x1 conv as a linear weight).
    #[param]
    pub input_proj: Param<Option<Array>>,
    /// `[latent, dim]`.
    #[param]
    pub output_proj: Param<Option<Array>>,
    /// Centroids `[n_q, bins, dim]`.
    #[param]
    pub codebooks: Param<Array>,
}

impl ResidualVq {
    /// Random projections and codebooks (tests; replaced when loading).
    pub fn new(
        n_q: i32,
        bins: i32,
        dim: i32,
        latent: i32,
        projections: bool,
    ) -> Result<Self, Exception> {
        let proj = |o: i32, i: i32| -> Result<Option<Array>, Exception> {
            if !projections {
                return Ok(None);
            }
            let bound = 1.0 / (i as f32).sqrt();
            Ok(Some(random::uniform::<_, f32>(
                -bound,
                bound,
                &[o, i],
                None,
            )?))
        };
        Ok(ResidualVq {
            input_proj: Param::new(proj(dim, latent)?),
            output_proj: Param::new(proj(latent, dim)?),
            codebooks: Param::new(random::normal::<f32>(&[n_q, bins, dim], None, None, None)?),
        })
    }

    /// Number of codebooks.
    pub fn num_codebooks(&self) -> i32 {
        self.codebooks.value.shape()[0]
    }

    /// Quantizes with the first `n` codebooks.
    ///
    /// # Shapes
    /// `x: [B, T, latent]` -> codes `[B, n, T]` (int32)
    pub fn encode(&self, x: &Array, n: i32) -> Result<Array, Exception> {
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let x = match &self.input_proj.value {
            Some(w) => ops::matmul(x, w.t())?,
            None => x.clone(),
        };
        let dim = x.shape()[2];
        // [B, T, dim] -> [B * T, dim]
        let mut residual = x.reshape(&[b * t, dim])?.as_dtype(Dtype::Float32)?;
        let mut codes = Vec::with_capacity(n as usize);
        for i in 0..n {
            let centroids = self.codebooks.value.index(i); // [bins, dim]
            let c_norm = centroids.square()?.sum_axis(-1, None)?; // [bins]
            let r_norm = residual.square()?.sum_axis(-1, true)?; // [B*T, 1]
            let dots = ops::matmul(&residual, centroids.t())?; // [B*T, bins]
            let dist = ops::maximum(
                r_norm
                    .add(&c_norm)?
                    .subtract(&dots.multiply(Array::from_f32(2.0))?)?,
                Array::from_f32(0.0),
            )?; // [B*T, bins]
            let idx = argmin_axis(&dist, -1, None)?.as_dtype(Dtype::Int32)?; // [B*T]
            residual = residual.subtract(&centroids.take_axis(&idx, 0)?)?;
            codes.push(idx);
        }
        if codes.is_empty() {
            return ops::zeros_dtype(&[b, 0, t], Dtype::Int32);
        }
        // n x [B*T] -> [n, B*T] -> [n, B, T] -> [B, n, T]
        ops::stack(&codes, 0)?
            .reshape(&[n, b, t])?
            .transpose_axes(&[1, 0, 2])?
            .contiguous()
    }

    /// Sum of the centroids of `codes` (one codebook per row), projected.
    ///
    /// # Shapes
    /// `codes: [B, n, T]` -> `[B, T, latent]`
    pub fn decode(&self, codes: &Array) -> Result<Array, Exception> {
        let n = codes.shape()[1];
        let mut sum: Option<Array> = None;
        for i in 0..n {
            let centroids = self.codebooks.value.index(i); // [bins, dim]
            let q = centroids.take_axis(codes.index((.., i, ..)), 0)?; // [B, T, dim]
            sum = Some(match sum {
                Some(s) => s.add(&q)?,
                None => q,
            });
        }
        let sum = sum.ok_or_else(|| Exception::custom("cannot decode zero codebooks"))?;
        match &self.output_proj.value {
            Some(w) => ops::matmul(&sum, w.t()),
            None => Ok(sum),
        }
    }
}

/// Semantic + acoustic RVQ.
#[derive(Debug, Clone, ModuleParameters)]
pub struct SplitResidualVq {
    /// Semantic codebooks (`n_q_semantic`, 1 in Mimi).
    #[param]
    pub rvq_first: ResidualVq,
    /// Acoustic codebooks (`n_q - n_q_semantic`).
    #[param]
    pub rvq_rest: ResidualVq,
}

impl SplitResidualVq {
    /// Builds the quantizer with random weights.
    pub fn new(cfg: &MimiConfig) -> Result<Self, Exception> {
        let q = &cfg.quantizer;
        Ok(SplitResidualVq {
            rvq_first: ResidualVq::new(
                q.n_q_semantic,
                q.bins,
                q.dimension,
                cfg.dimension,
                q.projections,
            )?,
            rvq_rest: ResidualVq::new(
                q.n_q - q.n_q_semantic,
                q.bins,
                q.dimension,
                cfg.dimension,
                q.projections,
            )?,
        })
    }

    /// Total codebooks available.
    pub fn max_codebooks(&self) -> i32 {
        self.rvq_first.num_codebooks() + self.rvq_rest.num_codebooks()
    }

    /// Quantizes with `n` codebooks (semantic first).
    ///
    /// # Shapes
    /// `x: [B, T, latent]` -> codes `[B, n, T]` (int32)
    pub fn encode(&self, x: &Array, n: i32) -> Result<Array, Exception> {
        let n_sem = self.rvq_first.num_codebooks();
        let first = self.rvq_first.encode(x, n_sem.min(n))?;
        if n <= n_sem {
            return Ok(first);
        }
        let rest = self.rvq_rest.encode(x, n - n_sem)?;
        ops::concatenate(&[first, rest], 1) // [B, n, T]
    }

    /// Decodes any number of codebooks `>= 1` (semantic first).
    ///
    /// # Shapes
    /// `codes: [B, n, T]` -> `[B, T, latent]`
    pub fn decode(&self, codes: &Array) -> Result<Array, Exception> {
        let n = codes.shape()[1];
        let n_sem = self.rvq_first.num_codebooks();
        let first = self
            .rvq_first
            .decode(&codes.index((.., ..n_sem.min(n), ..)))?;
        if n <= n_sem {
            return Ok(first);
        }
        first.add(&self.rvq_rest.decode(&codes.index((.., n_sem.., ..)))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_a_sum_of_centroids_gives_its_indices() {
        // Well-separated codebooks: layer i has scale 4^-i, so the residual
        // after layer i is exactly the remaining centroids.
        let (n_q, bins, dim) = (3, 16, 8);
        // Seeded: MLX's default key changes from run to run, and some
        // draws put two centroids of a finer layer closer than the
        // coarser layers' rounding (one failed here on 2026-12-07).
        random::seed(17).unwrap();
        let mut rvq = ResidualVq::new(n_q, bins, dim, dim, false).unwrap();
        let scales = Array::from_slice(&[1.0f32, 0.25, 0.0625], &[n_q, 1, 1]);
        let books = random::normal::<f32>(&[n_q, bins, dim], None, None, None)
            .unwrap()
            .multiply(&scales)
            .unwrap();
        rvq.codebooks = Param::new(books);
        let want: Vec<i32> = vec![3, 7, 0, 15, 1, 9, 12, 2, 5, 11, 4, 6]; // [B=2, n_q=3, T=2]
        let codes = Array::from_slice(&want, &[2, n_q, 2]);
        let latent = rvq.decode(&codes).unwrap();
        assert_eq!(latent.shape(), &[2, 2, dim]);
        let got = rvq.encode(&latent, n_q).unwrap();
        assert_eq!(got.shape(), &[2, n_q, 2]);
        assert_eq!(got.dtype(), Dtype::Int32);
        assert_eq!(got.as_slice::<i32>(), want.as_slice());
        // Fewer codebooks: a prefix of the same codes.
        let got2 = rvq.encode(&latent, 2).unwrap();
        assert_eq!(got2.as_slice::<i32>(), &[3, 7, 0, 15, 12, 2, 5, 11]);
    }

    #[test]
    fn split_rvq_concatenates_and_sums() {
        let cfg = MimiConfig {
            dimension: 8,
            quantizer: crate::codec::MimiQuantizerConfig {
                dimension: 4,
                bins: 8,
                n_q: 4,
                n_q_semantic: 1,
                projections: true,
            },
            ..MimiConfig::mimi_v0_1()
        };
        let q = SplitResidualVq::new(&cfg).unwrap();
        let x = random::normal::<f32>(&[1, 5, 8], None, None, None).unwrap();
        let codes = q.encode(&x, 3).unwrap();
        assert_eq!(codes.shape(), &[1, 3, 5]);
        let semantic_only = q.rvq_first.encode(&x, 1).unwrap();
        assert_eq!(
            codes.index((.., ..1, ..)).as_slice::<i32>(),
            semantic_only.as_slice::<i32>()
        );
        let dec = q.decode(&codes).unwrap();
        let want = q
            .rvq_first
            .decode(&codes.index((.., ..1, ..)))
            .unwrap()
            .add(q.rvq_rest.decode(&codes.index((.., 1.., ..))).unwrap())
            .unwrap();
        assert!(
            dec.subtract(&want)
                .unwrap()
                .abs()
                .unwrap()
                .max(None)
                .unwrap()
                .item_exact::<f32>()
                < 1e-6
        );
    }
}
