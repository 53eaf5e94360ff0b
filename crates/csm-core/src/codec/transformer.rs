//! Mimi's encoder/decoder transformer: pre-norm layers with LayerNorm (with
//! bias), fused bias-free `in_proj`, interleaved RoPE, a causal attention
//! window (`context`), exact-erf GELU MLP and LayerScale.

use mlx_rs::error::Exception;
use mlx_rs::fast;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::Param;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{nn, ops, random, Array};

use super::config::MimiTransformerConfig;

/// Queries per attention block for long inputs: beyond this many frames
/// the attention runs block by block over the keys each block can see, so
/// memory grows as `T * (block + context)` instead of `T^2`. Exact either way.
pub const ATTENTION_BLOCK: i32 = 512;

/// Additive attention mask for `t` aligned positions: `0` where
/// `0 <= q - k < context`, `-inf` elsewhere.
///
/// # Shapes
/// -> `[t, t]`
pub fn window_mask(t: i32, context: i32) -> Result<Array, Exception> {
    window_mask_block(0, t, 0, t, context)
}

/// Additive mask for queries `q_start..q_start + q_len` against keys
/// `k_start..k_start + k_len`: `0` where `0 <= q - k < context`.
///
/// # Shapes
/// -> `[q_len, k_len]`
pub fn window_mask_block(
    q_start: i32,
    q_len: i32,
    k_start: i32,
    k_len: i32,
    context: i32,
) -> Result<Array, Exception> {
    // [q_len] -> [q_len, 1]
    let q = ops::arange::<_, i32>(q_start, q_start + q_len, None)?.reshape(&[q_len, 1])?;
    // [k_len] -> [1, k_len]
    let k = ops::arange::<_, i32>(k_start, k_start + k_len, None)?.reshape(&[1, k_len])?;
    let delta = q.subtract(&k)?; // [q_len, k_len]
    let allowed = delta
        .ge(Array::from_int(0))?
        .logical_and(&delta.lt(Array::from_int(context))?)?;
    ops::select(
        &allowed,
        Array::from_f32(0.0),
        Array::from_f32(f32::NEG_INFINITY),
    )
}

/// One block of queries with the keys it may see and its mask.
#[derive(Debug, Clone)]
pub struct WindowBlock {
    /// First query position.
    pub q_start: i32,
    /// One past the last query position.
    pub q_end: i32,
    /// First key position (`max(0, q_start - context + 1)`); keys end at `q_end`.
    pub k_start: i32,
    /// Additive mask `[q_end - q_start, q_end - k_start]`.
    pub mask: Array,
}

/// How the windowed causal attention over `T` positions is computed:
/// one block (plain masked attention) or several (long inputs). Built once
/// per transformer call and shared by its layers.
#[derive(Debug, Clone)]
pub struct WindowPlan {
    /// The query blocks, in order, covering `0..T`.
    pub blocks: Vec<WindowBlock>,
}

impl WindowPlan {
    /// Plans `t` positions with window `context` and at most `block` queries
    /// per block (a single block when `t <= block`).
    pub fn new(t: i32, context: i32, block: i32) -> Result<Self, Exception> {
        if t <= block {
            return Ok(WindowPlan {
                blocks: vec![WindowBlock {
                    q_start: 0,
                    q_end: t,
                    k_start: 0,
                    mask: window_mask(t, context)?,
                }],
            });
        }
        let mut blocks = Vec::new();
        let mut q_start = 0;
        while q_start < t {
            let q_end = (q_start + block).min(t);
            let k_start = (q_start - context + 1).max(0);
            let mask =
                window_mask_block(q_start, q_end - q_start, k_start, q_end - k_start, context)?;
            blocks.push(WindowBlock {
                q_start,
                q_end,
                k_start,
                mask,
            });
            q_start = q_end;
        }
        Ok(WindowPlan { blocks })
    }
}

fn linear_init(out_dim: i32, in_dim: i32) -> Result<Array, Exception> {
    let bound = 1.0 / (in_dim as f32).sqrt();
    random::uniform::<_, f32>(-bound, bound, &[out_dim, in_dim], None)
}

/// LayerNorm with weight and bias.
#[derive(Debug, Clone, ModuleParameters)]
pub struct MimiLayerNorm {
    /// Scale `[dim]`.
    #[param]
    pub weight: Param<Array>,
    /// Offset `[dim]`.
    #[param]
    pub bias: Param<Array>,
    /// Epsilon.
    pub eps: f32,
}

impl MimiLayerNorm {
    fn new(dim: i32, eps: f32) -> Result<Self, Exception> {
        Ok(MimiLayerNorm {
            weight: Param::new(ops::ones::<f32>(&[dim])?),
            bias: Param::new(ops::zeros::<f32>(&[dim])?),
            eps,
        })
    }

    /// # Shapes
    /// `x: [..., dim]` -> same
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        fast::layer_norm(x, &self.weight.value, &self.bias.value, self.eps)
    }
}

/// Self-attention with a fused `in_proj` (`q`, `k`, `v` rows, head-major)
/// and interleaved RoPE.
#[derive(Debug, Clone, ModuleParameters)]
pub struct MimiAttention {
    /// `[d_model + 2 kv_dim, d_model]`.
    #[param]
    pub in_proj: Param<Array>,
    /// `[d_model, d_model]`.
    #[param]
    pub out_proj: Param<Array>,
    /// Query heads.
    pub num_heads: i32,
    /// Key/value heads.
    pub num_kv_heads: i32,
    /// RoPE period.
    pub max_period: f32,
}

impl MimiAttention {
    /// # Shapes
    /// `x: [B, T, D]`, `plan` over `T` positions -> `[B, T, D]`
    pub fn forward(&self, x: &Array, plan: &WindowPlan) -> Result<Array, Exception> {
        let (b, t, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let head_dim = d / self.num_heads;
        let kv_dim = head_dim * self.num_kv_heads;
        let qkv = ops::matmul(x, self.in_proj.value.t())?; // [B, T, D + 2 kv_dim]
        let q = qkv.index((.., .., ..d));
        let k = qkv.index((.., .., d..d + kv_dim));
        let v = qkv.index((.., .., d + kv_dim..));
        // [B, T, H * hd] -> [B, T, H, hd] -> [B, H, T, hd]
        let q = q
            .reshape(&[b, t, self.num_heads, head_dim])?
            .transpose_axes(&[0, 2, 1, 3])?;
        // [B, T, Hkv * hd] -> [B, T, Hkv, hd] -> [B, Hkv, T, hd]
        let k = k
            .reshape(&[b, t, self.num_kv_heads, head_dim])?
            .transpose_axes(&[0, 2, 1, 3])?;
        // [B, T, Hkv * hd] -> [B, T, Hkv, hd] -> [B, Hkv, T, hd]
        let v = v
            .reshape(&[b, t, self.num_kv_heads, head_dim])?
            .transpose_axes(&[0, 2, 1, 3])?;
        let q = fast::rope(&q, head_dim, true, self.max_period, 1.0, 0, None)?;
        let k = fast::rope(&k, head_dim, true, self.max_period, 1.0, 0, None)?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let o = if let [only] = plan.blocks.as_slice() {
            fast::scaled_dot_product_attention(&q, &k, &v, scale, &only.mask, None)?
        } else {
            let mut outs = Vec::with_capacity(plan.blocks.len());
            for blk in &plan.blocks {
                let qb = q.index((.., .., blk.q_start..blk.q_end, ..)); // [B, H, Tq, hd]
                let kb = k.index((.., .., blk.k_start..blk.q_end, ..)); // [B, Hkv, Tk, hd]
                let vb = v.index((.., .., blk.k_start..blk.q_end, ..)); // [B, Hkv, Tk, hd]
                outs.push(fast::scaled_dot_product_attention(
                    &qb, &kb, &vb, scale, &blk.mask, None,
                )?);
            }
            ops::concatenate(&outs, 2)?
        }; // [B, H, T, hd]
           // [B, H, T, hd] -> [B, T, H, hd] -> [B, T, D]
        let o = o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, t, d])?;
        ops::matmul(&o, self.out_proj.value.t())
    }
}

/// One pre-norm transformer layer.
#[derive(Debug, Clone, ModuleParameters)]
pub struct MimiTransformerLayer {
    /// Norm before attention.
    #[param]
    pub norm1: MimiLayerNorm,
    /// Self-attention.
    #[param]
    pub self_attn: MimiAttention,
    /// Norm before the MLP.
    #[param]
    pub norm2: MimiLayerNorm,
    /// MLP up-projection `[ffn, D]`, no bias.
    #[param]
    pub linear1: Param<Array>,
    /// MLP down-projection `[D, ffn]`, no bias.
    #[param]
    pub linear2: Param<Array>,
    /// LayerScale of the attention branch `[D]`, if the model has one.
    #[param]
    pub layer_scale_1: Param<Option<Array>>,
    /// LayerScale of the MLP branch `[D]`, if the model has one.
    #[param]
    pub layer_scale_2: Param<Option<Array>>,
}

impl MimiTransformerLayer {
    fn new(cfg: &MimiTransformerConfig) -> Result<Self, Exception> {
        let d = cfg.d_model;
        let kv_dim = cfg.head_dim() * cfg.num_kv_heads;
        let scale = || -> Result<Option<Array>, Exception> {
            Ok(if cfg.layer_scale {
                Some(ops::full::<f32>(&[d], Array::from_f32(0.01))?)
            } else {
                None
            })
        };
        Ok(MimiTransformerLayer {
            norm1: MimiLayerNorm::new(d, cfg.norm_eps)?,
            self_attn: MimiAttention {
                in_proj: Param::new(linear_init(d + 2 * kv_dim, d)?),
                out_proj: Param::new(linear_init(d, d)?),
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                max_period: cfg.max_period,
            },
            norm2: MimiLayerNorm::new(d, cfg.norm_eps)?,
            linear1: Param::new(linear_init(cfg.dim_feedforward, d)?),
            linear2: Param::new(linear_init(d, cfg.dim_feedforward)?),
            layer_scale_1: Param::new(scale()?),
            layer_scale_2: Param::new(scale()?),
        })
    }

    /// # Shapes
    /// `x: [B, T, D]`, `plan` over `T` positions -> `[B, T, D]`
    pub fn forward(&self, x: &Array, plan: &WindowPlan) -> Result<Array, Exception> {
        let h = self.self_attn.forward(&self.norm1.forward(x)?, plan)?;
        let h = match &self.layer_scale_1.value {
            Some(s) => h.multiply(s)?,
            None => h,
        };
        let x = x.add(&h)?;
        let h = ops::matmul(&self.norm2.forward(&x)?, self.linear1.value.t())?; // [B, T, ffn]
        let h = ops::matmul(&nn::gelu(&h)?, self.linear2.value.t())?; // [B, T, D]
        let h = match &self.layer_scale_2.value {
            Some(s) => h.multiply(s)?,
            None => h,
        };
        x.add(&h)
    }
}

/// Stack of [`MimiTransformerLayer`]s (no final norm, no projections).
#[derive(Debug, Clone, ModuleParameters)]
pub struct MimiTransformer {
    /// The layers.
    #[param]
    pub layers: Vec<MimiTransformerLayer>,
    /// Attention window.
    pub context: i32,
}

impl MimiTransformer {
    /// Builds the transformer with random weights.
    pub fn new(cfg: &MimiTransformerConfig) -> Result<Self, Exception> {
        Ok(MimiTransformer {
            layers: (0..cfg.num_layers)
                .map(|_| MimiTransformerLayer::new(cfg))
                .collect::<Result<Vec<_>, _>>()?,
            context: cfg.context,
        })
    }

    /// Runs all layers with positions `0..T`.
    ///
    /// # Shapes
    /// `x: [B, T, D]` -> `[B, T, D]`
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        self.forward_blocked(x, ATTENTION_BLOCK)
    }

    /// [`MimiTransformer::forward`] with an explicit attention block size.
    ///
    /// # Shapes
    /// `x: [B, T, D]` -> `[B, T, D]`
    pub fn forward_blocked(&self, x: &Array, block: i32) -> Result<Array, Exception> {
        let plan = WindowPlan::new(x.shape()[1], self.context, block)?;
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, &plan)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_mask_allows_exactly_the_causal_window() {
        let (t, context) = (9, 4);
        let m = window_mask(t, context).unwrap();
        assert_eq!(m.shape(), &[t, t]);
        let v = m.as_slice::<f32>();
        for q in 0..t {
            for k in 0..t {
                let allowed = q >= k && q - k < context;
                let val = v[(q * t + k) as usize];
                if allowed {
                    assert_eq!(val, 0.0, "q={q} k={k}");
                } else {
                    assert!(val.is_infinite() && val < 0.0, "q={q} k={k}");
                }
            }
        }
    }

    /// Reference attention for one head with plain loops: interleaved RoPE
    /// `(x[2i], x[2i+1])` rotated by `pos * period^(-2i/hd)`.
    fn rope_ref(x: &[f32], pos: usize, period: f32) -> Vec<f32> {
        let hd = x.len();
        let mut out = vec![0.0; hd];
        for i in 0..hd / 2 {
            let freq = (-(period.ln()) * 2.0 * i as f32 / hd as f32).exp();
            let (s, c) = (pos as f32 * freq).sin_cos();
            out[2 * i] = x[2 * i] * c - x[2 * i + 1] * s;
            out[2 * i + 1] = x[2 * i] * s + x[2 * i + 1] * c;
        }
        out
    }

    #[test]
    fn attention_matches_loop_reference_with_interleaved_rope() {
        let (t, d, heads, context) = (7, 8, 2, 3);
        let hd = d / heads;
        let cfg = MimiTransformerConfig {
            d_model: d,
            num_heads: heads,
            num_kv_heads: heads,
            num_layers: 1,
            dim_feedforward: 16,
            context,
            max_period: 10_000.0,
            layer_scale: true,
            norm_eps: 1e-5,
        };
        let layer = MimiTransformerLayer::new(&cfg).unwrap();
        let attn = &layer.self_attn;
        let x = random::normal::<f32>(&[1, t, d], None, None, None).unwrap();
        let y = attn
            .forward(&x, &WindowPlan::new(t, context, 512).unwrap())
            .unwrap();
        let xs = x.as_slice::<f32>().to_vec();
        let w_in = attn.in_proj.value.as_slice::<f32>().to_vec(); // [3d, d]
        let w_out = attn.out_proj.value.as_slice::<f32>().to_vec(); // [d, d]
        let proj = |row: usize, tt: usize| -> f32 {
            (0..d as usize)
                .map(|c| w_in[row * d as usize + c] * xs[tt * d as usize + c])
                .sum()
        };
        let mut concat = vec![0.0f32; (t * d) as usize];
        for h in 0..heads as usize {
            let hd = hd as usize;
            let vec_of = |base: usize, tt: usize| -> Vec<f32> {
                (0..hd).map(|j| proj(base + h * hd + j, tt)).collect()
            };
            for qt in 0..t as usize {
                let q = rope_ref(&vec_of(0, qt), qt, 10_000.0);
                let keys: Vec<usize> = (0..t as usize)
                    .filter(|&kt| kt <= qt && qt - kt < context as usize)
                    .collect();
                let scores: Vec<f32> = keys
                    .iter()
                    .map(|&kt| {
                        let k = rope_ref(&vec_of(d as usize, kt), kt, 10_000.0);
                        q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f32::MIN, f32::max);
                let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f32 = exps.iter().sum();
                for (&kt, e) in keys.iter().zip(&exps) {
                    let v = vec_of(2 * d as usize, kt);
                    for j in 0..hd {
                        concat[qt * d as usize + h * hd + j] += e / z * v[j];
                    }
                }
            }
        }
        let got = y.as_slice::<f32>();
        for tt in 0..t as usize {
            for o in 0..d as usize {
                let want: f32 = (0..d as usize)
                    .map(|c| w_out[o * d as usize + c] * concat[tt * d as usize + c])
                    .sum();
                let g = got[tt * d as usize + o];
                assert!((g - want).abs() < 1e-4, "t={tt} o={o}: {g} vs {want}");
            }
        }
    }

    #[test]
    fn blocked_attention_equals_full_attention() {
        let cfg = MimiTransformerConfig {
            d_model: 16,
            num_heads: 2,
            num_kv_heads: 2,
            num_layers: 2,
            dim_feedforward: 32,
            context: 7,
            max_period: 10_000.0,
            layer_scale: false,
            norm_eps: 1e-5,
        };
        let tr = MimiTransformer::new(&cfg).unwrap();
        let x = random::normal::<f32>(&[2, 45, 16], None, None, None).unwrap();
        let full = tr.forward_blocked(&x, 1000).unwrap();
        for block in [1, 5, 7, 16, 44] {
            let plan = WindowPlan::new(45, 7, block).unwrap();
            assert_eq!(plan.blocks.len() as i32, (45 + block - 1) / block);
            let blocked = tr.forward_blocked(&x, block).unwrap();
            let err = full
                .subtract(&blocked)
                .unwrap()
                .abs()
                .unwrap()
                .max(None)
                .unwrap()
                .item_exact::<f32>();
            assert!(err < 1e-5, "block {block}: {err}");
        }
    }

    #[test]
    fn block_mask_matches_full_mask_slice() {
        let (t, context) = (20, 6);
        let full = window_mask(t, context).unwrap();
        let blk = window_mask_block(8, 5, 3, 10, context).unwrap();
        let want = full.index((8..13, 3..13));
        assert!(blk.eq_values(&want).unwrap());
    }
}
