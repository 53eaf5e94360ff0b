//! The Llama-3.2 transformer stack used twice by CSM (backbone and depth
//! decoder): pre-norm RMSNorm blocks with GQA attention, interleaved Llama-3
//! scaled RoPE and a SwiGLU MLP, followed by a final RMSNorm.
//!
//! Ported from the torchtune `llama3_2` builder that SesameAILabs/csm
//! `models.py` instantiates (commit 836f886), using the numerics described in
//! `docs/architecture.md`, "The model". Field names give the csm-mlx key names
//! (`layers.N.self_attn.q_proj.weight`, `layers.N.input_layernorm.weight`,
//! ...), our canonical layout. q/k rows are in the ORIGINAL (interleaved)
//! order, so RoPE runs with `traditional = true`; transformers checkpoints
//! are un-permuted at load time (`model::load`).

use mlx_rs::error::Exception;
use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::{Module, Param};
use mlx_rs::ops::indexing::TryIndexOp;
use mlx_rs::{ops, Array};

use super::config::LlamaConfig;
use super::proj::{forward_shared, Proj};

/// RMSNorm over the last axis with a learned scale.
#[derive(Debug, Clone, ModuleParameters)]
pub struct RmsNorm {
    /// Per-channel scale `[dim]`.
    #[param]
    pub weight: Param<Array>,
    /// Added to the mean square before the square root.
    pub eps: f32,
}

impl RmsNorm {
    /// A norm with unit scale.
    pub fn new(dim: i32, eps: f32) -> Result<Self, Exception> {
        Ok(RmsNorm {
            weight: Param::new(ops::ones::<f32>(&[dim])?),
            eps,
        })
    }
}

impl Module<&Array> for RmsNorm {
    type Error = Exception;
    type Output = Array;

    /// # Shapes
    /// `x: [..., dim]` -> `[..., dim]`; statistics in f32 inside MLX.
    fn forward(&mut self, x: &Array) -> Result<Array, Exception> {
        fast::rms_norm(x, Some(&self.weight.value), self.eps)
    }

    fn training_mode(&mut self, _mode: bool) {}
}

/// Key/value cache of one attention layer for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        KvCache::default()
    }

    /// Number of cached positions, i.e. the position of the next token.
    pub fn offset(&self) -> i32 {
        self.keys.as_ref().map_or(0, |k| k.shape()[2])
    }

    /// Drops everything (the depth decoder does this every frame).
    pub fn reset(&mut self) {
        self.keys = None;
        self.values = None;
    }

    /// Appends new keys/values and returns the full history.
    ///
    /// # Shapes
    /// `keys, values: [B, H_kv, L, hd]` -> `([B, H_kv, offset + L, hd], same)`
    pub fn update(&mut self, keys: Array, values: Array) -> Result<(Array, Array), Exception> {
        let (k, v) = match (&self.keys, &self.values) {
            (Some(pk), Some(pv)) => (
                ops::concatenate(&[pk, &keys], 2)?,   // [B, H_kv, offset + L, hd]
                ops::concatenate(&[pv, &values], 2)?, // [B, H_kv, offset + L, hd]
            ),
            _ => (keys, values),
        };
        self.keys = Some(k.clone());
        self.values = Some(v.clone());
        Ok((k, v))
    }
}

/// Which attention pattern to use.
#[derive(Debug, Clone, Copy)]
pub enum AttentionMask<'a> {
    /// Attend everywhere (single-token decode steps against a cache).
    None,
    /// Causal, aligned to the end of the keys (prefill, training).
    Causal,
    /// An explicit mask broadcastable to `[B, H, L, K]`: boolean (`true` =
    /// attend) or additive float, e.g. from [`padded_causal_mask`].
    Array(&'a Array),
    /// Several sequences packed into each row (no cache): `mask` keeps
    /// each query on the earlier keys of its own sequence
    /// ([`packed_causal_mask`]) and RoPE takes each token's position in
    /// its sequence from `positions` instead of its index in the row.
    Packed {
        /// `[B, 1, L', L']` bool, `true` = attend, `L' >= L`: a mask longer
        /// than the row (built from segments padded with a segment of their
        /// own, e.g. to the attention tile) has the attention run on `q`,
        /// `k`, `v` padded to `L'` and cut back, as the tile does for the
        /// causal flag.
        mask: &'a Array,
        /// `[B, L]` int: position of each token within its sequence.
        positions: &'a Array,
    },
}

/// Block-diagonal causal mask of packed rows: query `q` attends to key `k`
/// when both belong to the same sequence and `k <= q`. Every query sees at
/// least itself, so no softmax row is empty (padding gets a segment id of
/// its own).
///
/// # Shapes
/// `segments: [B, L]` int (the sequence each token belongs to) ->
/// `[B, 1, L, L]` bool
pub fn packed_causal_mask(segments: &Array) -> Result<Array, Exception> {
    let l = segments.shape()[1];
    let pos = ops::arange::<_, i32>(0, l, 1)?; // [L]
    let causal = pos.reshape(&[l, 1])?.ge(pos.reshape(&[1, l])?)?; // [L, L]
    let q = segments.expand_dims_axes(&[1, 3])?; // [B, 1, L, 1]
    let k = segments.expand_dims_axes(&[1, 2])?; // [B, 1, 1, L]
    q.eq(&k)?.logical_and(&causal) // [B, 1, L, L]
}

/// Interleaved RoPE (`traditional`, as [`fast::rope`] with `traditional =
/// true` and these periods) at given positions rather than `offset + t`:
/// the pair `(x[2i], x[2i+1])` of a token at position `p` is rotated by
/// `p / periods[i]`. Computed in f32, returned in `x`'s dtype.
///
/// # Shapes
/// `x: [B, H, L, hd]`, `positions: [B, L]` int, `periods: [hd/2]` ->
/// `[B, H, L, hd]`
pub fn rope_at(x: &Array, positions: &Array, periods: &Array) -> Result<Array, Exception> {
    let shape = x.shape().to_vec();
    let (b, h, l, hd) = (shape[0], shape[1], shape[2], shape[3]);
    let inv = ops::reciprocal(periods.as_dtype(mlx_rs::Dtype::Float32)?)?; // [hd/2]
    let theta = positions
        .as_dtype(mlx_rs::Dtype::Float32)?
        .reshape(&[b, 1, l, 1])? // [B, 1, L, 1]
        .multiply(&inv)?; // [B, 1, L, hd/2]
    let (cos, sin) = (ops::cos(&theta)?, ops::sin(&theta)?);
    let pairs = x
        .as_dtype(mlx_rs::Dtype::Float32)?
        .reshape(&[b, h, l, hd / 2, 2])?; // [B, H, L, hd/2, 2]
    let x0 = pairs.try_index((.., .., .., .., 0))?; // [B, H, L, hd/2]
    let x1 = pairs.try_index((.., .., .., .., 1))?; // [B, H, L, hd/2]
    let r0 = x0.multiply(&cos)?.subtract(x1.multiply(&sin)?)?;
    let r1 = x0.multiply(&sin)?.add(x1.multiply(&cos)?)?;
    ops::stack(&[r0, r1], -1)? // [B, H, L, hd/2, 2]
        .reshape(&[b, h, l, hd])? // [B, H, L, hd]
        .as_dtype(x.dtype())
}

/// Causal mask that also hides padded keys, for right-padded batches.
///
/// A padded query still sees itself, so no softmax row is empty (its output
/// is ignored by the loss but must stay finite).
///
/// # Shapes
/// `valid: [B, S]` (bool or 0/1) -> `[B, 1, S, S]` bool
pub fn padded_causal_mask(valid: &Array) -> Result<Array, Exception> {
    let s = valid.shape()[1];
    let pos = ops::arange::<_, i32>(0, s, 1)?; // [S]
    let q = pos.reshape(&[s, 1])?; // [S, 1]
    let k = pos.reshape(&[1, s])?; // [1, S]
    let causal = q.ge(&k)?; // [S, S]
    let diag = q.eq(&k)?; // [S, S]
    let key_valid = valid
        .as_dtype(mlx_rs::Dtype::Bool)?
        .expand_dims_axes(&[1, 2])?; // [B, 1, 1, S]
    causal.logical_and(&key_valid.logical_or(&diag)?) // [B, 1, S, S]
}

/// Multi-head self-attention with grouped key/value heads and RoPE.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Attention {
    /// Query projection `[H*hd, D]`.
    #[param]
    pub q_proj: Proj,
    /// Key projection `[H_kv*hd, D]`.
    #[param]
    pub k_proj: Proj,
    /// Value projection `[H_kv*hd, D]`.
    #[param]
    pub v_proj: Proj,
    /// Output projection `[D, H*hd]`.
    #[param]
    pub o_proj: Proj,
    /// Query heads.
    pub num_heads: i32,
    /// Key/value heads.
    pub num_kv_heads: i32,
    /// Width of one head.
    pub head_dim: i32,
    /// RoPE periods `[hd/2]` (f32), see [`LlamaConfig::rope_periods`].
    pub rope_periods: Array,
    /// Causal attention without a cache runs on `q`, `k`, `v` padded to a
    /// multiple of this many positions, then cut back (0: never); see
    /// [`super::csm::TrainKernels::attention_tile`].
    pub tile: i32,
    /// q, k and v as one group with one input gradient
    /// ([`crate::kernels::group`]; set by `Csm::set_train_kernels`).
    pub grouped: bool,
    /// In the group, the adapters' rank-r products added by a CUDA kernel
    /// ([`crate::kernels::cuda::lora_expand_add`]; set by
    /// `Csm::set_train_kernels`).
    pub cuda_lora: bool,
    /// RoPE and the transpose of q and k as one CUDA kernel when the whole
    /// sequence is attended from position 0 (no cache; not packed)
    /// ([`crate::kernels::cuda::rope_transposed`]; set by
    /// `Csm::set_train_kernels`).
    pub cuda_rope: bool,
}

/// The one item of each projection's output, in order.
fn three(ys: Vec<Array>) -> Result<[Array; 3], Exception> {
    let n = ys.len();
    ys.try_into()
        .map_err(|_| Exception::custom(format!("expected 3 projections, got {n}")))
}

/// As [`three`], for gate and up.
fn two(ys: Vec<Array>) -> Result<[Array; 2], Exception> {
    let n = ys.len();
    ys.try_into()
        .map_err(|_| Exception::custom(format!("expected 2 projections, got {n}")))
}

/// Input of [`Attention`], [`Block`] and [`Llama`] forwards.
#[derive(Debug)]
pub struct AttentionInput<'a> {
    /// Hidden states `[B, L, D]`.
    pub x: &'a Array,
    /// Attention pattern.
    pub mask: AttentionMask<'a>,
    /// Cache of this layer (positions then start at its offset).
    pub cache: Option<&'a mut KvCache>,
}

impl Attention {
    /// Random weights of the right shapes (replaced when a checkpoint loads).
    pub fn new(cfg: &LlamaConfig, rope_periods: Array) -> Result<Self, Exception> {
        let (d, hd) = (cfg.embed_dim, cfg.head_dim);
        Ok(Attention {
            q_proj: Proj::random(d, cfg.num_heads * hd)?,
            k_proj: Proj::random(d, cfg.num_kv_heads * hd)?,
            v_proj: Proj::random(d, cfg.num_kv_heads * hd)?,
            o_proj: Proj::random(cfg.num_heads * hd, d)?,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: hd,
            rope_periods,
            tile: 0,
            grouped: false,
            cuda_lora: false,
            cuda_rope: false,
        })
    }

    fn rope(&self, x: &Array, offset: i32) -> Result<Array, Exception> {
        fast::rope(
            x,
            self.head_dim,
            true,
            None,
            1.0,
            offset,
            &self.rope_periods,
        )
    }
}

impl Module<AttentionInput<'_>> for Attention {
    type Error = Exception;
    type Output = Array;

    /// # Shapes
    /// `x: [B, L, D]` -> `[B, L, D]`
    #[allow(non_snake_case)]
    fn forward(&mut self, input: AttentionInput<'_>) -> Result<Array, Exception> {
        let AttentionInput { x, mask, cache } = input;
        let (B, L) = (x.shape()[0], x.shape()[1]);
        let (H, Hkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let [q, k, v] = three(forward_shared(
            &mut [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj],
            x,
            self.grouped,
            self.cuda_lora,
        )?)?;
        let q = q.reshape(&[B, L, H, hd])?; // [B, L, H, hd]
        let k = k.reshape(&[B, L, Hkv, hd])?; // [B, L, H_kv, hd]
        let v = v
            .reshape(&[B, L, Hkv, hd])? // [B, L, H_kv, hd]
            .transpose_axes(&[0, 2, 1, 3])?; // [B, H_kv, L, hd]
        let heads_first = |a: Array| a.transpose_axes(&[0, 2, 1, 3]); // [B, h, L, hd]
        let offset = cache.as_ref().map_or(0, |c| c.offset());
        let (q, k) = match mask {
            AttentionMask::Packed { positions, .. } => (
                rope_at(&heads_first(q)?, positions, &self.rope_periods)?,
                rope_at(&heads_first(k)?, positions, &self.rope_periods)?,
            ),
            #[cfg(not(target_os = "macos"))]
            _ if self.cuda_rope && cache.is_none() && hd % 8 == 0 => {
                use crate::kernels::cuda::rope_transposed;
                (
                    rope_transposed(&q, &self.rope_periods)?,
                    rope_transposed(&k, &self.rope_periods)?,
                )
            }
            _ => (
                self.rope(&heads_first(q)?, offset)?,
                self.rope(&heads_first(k)?, offset)?,
            ),
        }; // [B, H, L, hd], [B, H_kv, L, hd]
        let cached = cache.is_some();
        let (k, v) = match cache {
            Some(cache) => cache.update(k, v)?,
            None => (k, v),
        };
        let scale = 1.0 / (hd as f32).sqrt();
        let o = match mask {
            AttentionMask::Causal if !cached && self.tile > 0 && L % self.tile != 0 => {
                // Padded positions come after every real one: the causal
                // mask hides them from the real queries, whose rows are
                // unchanged; the padded rows are cut off.
                let extra = self.tile - L % self.tile;
                let widths = [(0, 0), (0, 0), (0, extra), (0, 0)];
                let pad = |a: &Array| ops::pad(a, &widths[..], None, None); // [B, h, L', hd]
                fast::scaled_dot_product_attention(
                    pad(&q)?,
                    pad(&k)?,
                    pad(&v)?,
                    scale,
                    ScaledDotProductAttentionMask::Causal,
                    None::<&Array>,
                )? // [B, H, L', hd]
                .try_index((.., .., ..L, ..))? // [B, H, L, hd]
            }
            AttentionMask::None => {
                fast::scaled_dot_product_attention(&q, &k, &v, scale, None, None::<&Array>)?
            }
            AttentionMask::Causal => fast::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                scale,
                ScaledDotProductAttentionMask::Causal,
                None::<&Array>,
            )?,
            AttentionMask::Packed { mask: m, .. } if !cached && m.shape()[3] > L => {
                // The padded keys are a segment of their own: no real query
                // sees them, and the padded rows are cut off.
                let widths = [(0, 0), (0, 0), (0, m.shape()[3] - L), (0, 0)];
                let pad = |a: &Array| ops::pad(a, &widths[..], None, None); // [B, h, L', hd]
                fast::scaled_dot_product_attention(
                    pad(&q)?,
                    pad(&k)?,
                    pad(&v)?,
                    scale,
                    m,
                    None::<&Array>,
                )? // [B, H, L', hd]
                .try_index((.., .., ..L, ..))? // [B, H, L, hd]
            }
            AttentionMask::Array(m) | AttentionMask::Packed { mask: m, .. } => {
                fast::scaled_dot_product_attention(&q, &k, &v, scale, m, None::<&Array>)?
            }
        }; // [B, H, L, hd]
        let o = o
            .transpose_axes(&[0, 2, 1, 3])? // [B, L, H, hd]
            .reshape(&[B, L, H * hd])?; // [B, L, H*hd]
        self.o_proj.forward(&o)
    }

    fn training_mode(&mut self, mode: bool) {
        self.q_proj.training_mode(mode);
        self.k_proj.training_mode(mode);
        self.v_proj.training_mode(mode);
        self.o_proj.training_mode(mode);
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Mlp {
    /// `w1` in the original names, `[I, D]`.
    #[param]
    pub gate_proj: Proj,
    /// `w3` in the original names, `[I, D]`.
    #[param]
    pub up_proj: Proj,
    /// `w2` in the original names, `[D, I]`.
    #[param]
    pub down_proj: Proj,
    /// SwiGLU keeps only its inputs for the backward
    /// ([`crate::kernels::lean::swiglu`]; set by `Csm::set_train_kernels`).
    pub lean_swiglu: bool,
    /// Gate and up as one group with one input gradient
    /// ([`crate::kernels::group`]; set by `Csm::set_train_kernels`).
    pub grouped: bool,
    /// In the group, the adapters' rank-r products added by a CUDA kernel
    /// ([`crate::kernels::cuda::lora_expand_add`]; set by
    /// `Csm::set_train_kernels`).
    pub cuda_lora: bool,
    /// With [`Mlp::lean_swiglu`], its gradient as one CUDA kernel
    /// ([`crate::kernels::cuda::swiglu_grad`]; set by
    /// `Csm::set_train_kernels`).
    pub cuda_swiglu_grad: bool,
    /// Run the MLP on this many pieces, split along the first axis (1:
    /// whole; [`mlp_pieces`]; set by `Csm::set_train_kernels`).
    pub pieces: i32,
    /// Fewest tokens a piece may have ([`mlp_pieces`]).
    pub piece_min_rows: i32,
}

/// Most pieces [`Mlp::pieces`] splits into: MLX splits an array into fewer
/// than 10 pieces as one op whose gradient is one concatenation (more
/// become separate slices, each with a zero-filled gradient of the whole
/// input).
const MAX_MLP_PIECES: i32 = 8;

/// Fewest tokens a piece of an MLP has unless a caller asks for fewer
/// ([`Mlp::piece_min_rows`]): 1024 (a piece's hidden arrays then hold 16
/// MB of bf16 each at CSM-1B's width).
pub const MLP_PIECE_MIN_ROWS: i32 = 1024;

/// How many pieces an MLP input of `shape` `[N, ..., D]` runs in when
/// asked for `pieces` of at least `min_rows` tokens each: at most
/// `pieces`, [`MAX_MLP_PIECES`] and `N`; 1 where the input is too small.
///
/// Why pieces: the backward of one piece needs the down projection's
/// input gradient and both SwiGLU gradients (three arrays of the hidden
/// width per token) only for that piece's tokens, and each piece's
/// forward activations go once its backward is done. MLX evaluates a
/// concatenation's inputs one after the other, so the transient peak of
/// the MLP's backward falls with the piece's size. Each piece costs
/// kernels of its own, so small inputs stay whole.
pub fn mlp_pieces(shape: &[i32], pieces: i32, min_rows: i32) -> i32 {
    if pieces <= 1 || shape.len() < 2 {
        return 1;
    }
    let rows: i64 = shape[..shape.len() - 1]
        .iter()
        .map(|&d| i64::from(d))
        .product();
    let fit = rows / i64::from(min_rows.max(1));
    fit.min(i64::from(pieces))
        .min(i64::from(MAX_MLP_PIECES))
        .min(i64::from(shape[0]))
        .max(1) as i32
}

impl Mlp {
    /// Random weights of the right shapes.
    pub fn new(dim: i32, hidden: i32) -> Result<Self, Exception> {
        Ok(Mlp {
            gate_proj: Proj::random(dim, hidden)?,
            up_proj: Proj::random(dim, hidden)?,
            down_proj: Proj::random(hidden, dim)?,
            lean_swiglu: false,
            grouped: false,
            cuda_lora: false,
            cuda_swiglu_grad: false,
            pieces: 1,
            piece_min_rows: MLP_PIECE_MIN_ROWS,
        })
    }

    /// The MLP on all rows of `x` at once.
    ///
    /// # Shapes
    /// `x: [..., D]` -> `[..., D]`
    fn forward_whole(&mut self, x: &Array) -> Result<Array, Exception> {
        let [gate, up] = two(forward_shared(
            &mut [&mut self.gate_proj, &mut self.up_proj],
            x,
            self.grouped,
            self.cuda_lora,
        )?)?;
        let act = if self.lean_swiglu {
            crate::kernels::lean::swiglu_with(&gate, &up, self.cuda_swiglu_grad)?
        } else {
            crate::kernels::swiglu(&gate, &up)?
        };
        self.down_proj.forward(&act)
    }
}

impl Module<&Array> for Mlp {
    type Error = Exception;
    type Output = Array;

    /// # Shapes
    /// `x: [..., D]` -> `[..., D]`
    fn forward(&mut self, x: &Array) -> Result<Array, Exception> {
        let pieces = mlp_pieces(x.shape(), self.pieces, self.piece_min_rows);
        if pieces < 2 {
            return self.forward_whole(x);
        }
        let n = x.shape()[0];
        let bounds: Vec<i32> = (1..pieces).map(|i| i * n / pieces).collect();
        let mut outs = Vec::with_capacity(pieces as usize);
        for part in x.split_at_indices(&bounds, 0)? {
            outs.push(self.forward_whole(&part)?); // [n_i, ..., D]
        }
        ops::concatenate(&outs, 0) // [..., D]
    }

    fn training_mode(&mut self, mode: bool) {
        self.gate_proj.training_mode(mode);
        self.up_proj.training_mode(mode);
        self.down_proj.training_mode(mode);
    }
}

/// One pre-norm transformer block.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Block {
    /// Attention.
    #[param]
    pub self_attn: Attention,
    /// Feed-forward.
    #[param]
    pub mlp: Mlp,
    /// Norm before attention (`sa_norm` in the original names).
    #[param]
    pub input_layernorm: RmsNorm,
    /// Norm before the MLP (`mlp_norm` in the original names).
    #[param]
    pub post_attention_layernorm: RmsNorm,
}

impl Block {
    /// Random weights of the right shapes.
    pub fn new(cfg: &LlamaConfig, rope_periods: Array) -> Result<Self, Exception> {
        Ok(Block {
            self_attn: Attention::new(cfg, rope_periods)?,
            mlp: Mlp::new(cfg.embed_dim, cfg.intermediate_dim)?,
            input_layernorm: RmsNorm::new(cfg.embed_dim, cfg.norm_eps)?,
            post_attention_layernorm: RmsNorm::new(cfg.embed_dim, cfg.norm_eps)?,
        })
    }
}

impl Module<AttentionInput<'_>> for Block {
    type Error = Exception;
    type Output = Array;

    /// # Shapes
    /// `x: [B, L, D]` -> `[B, L, D]`
    fn forward(&mut self, input: AttentionInput<'_>) -> Result<Array, Exception> {
        let x = input.x;
        let normed = self.input_layernorm.forward(x)?;
        let attn = self.self_attn.forward(AttentionInput {
            x: &normed,
            mask: input.mask,
            cache: input.cache,
        })?;
        let h = x.add(&attn)?;
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h)?)?;
        h.add(&mlp)
    }

    fn training_mode(&mut self, mode: bool) {
        self.self_attn.training_mode(mode);
        self.mlp.training_mode(mode);
    }
}

/// Input of a whole [`Llama`] stack.
#[derive(Debug)]
pub struct LlamaInput<'a> {
    /// Input embeddings `[B, L, D]`.
    pub x: &'a Array,
    /// Attention pattern for every layer.
    pub mask: AttentionMask<'a>,
    /// One cache per layer (see [`Llama::new_cache`]), or `None` for a
    /// cache-free forward from position 0.
    pub cache: Option<&'a mut [KvCache]>,
}

/// A stack of [`Block`]s with a final RMSNorm; no embeddings or output head
/// (CSM replaces torchtune's with identities).
#[derive(Debug, Clone, ModuleParameters)]
pub struct Llama {
    /// The blocks.
    #[param]
    pub layers: Vec<Block>,
    /// Final norm; the stack's output is post-norm.
    #[param]
    pub norm: RmsNorm,
    /// Hyperparameters.
    pub config: LlamaConfig,
    /// Recompute each block's activations in the backward pass instead of
    /// keeping them (`--grad-checkpoint`, [`super::checkpointing`]); only
    /// cache-free forwards (training, evaluation) are affected.
    pub grad_checkpoint: bool,
}

impl Llama {
    /// Random weights of the right shapes.
    pub fn new(cfg: &LlamaConfig) -> Result<Self, Exception> {
        let periods = cfg.rope_periods();
        let periods = Array::from_slice(&periods, &[periods.len() as i32]);
        let layers = (0..cfg.num_layers)
            .map(|_| Block::new(cfg, periods.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Llama {
            layers,
            norm: RmsNorm::new(cfg.embed_dim, cfg.norm_eps)?,
            config: cfg.clone(),
            grad_checkpoint: false,
        })
    }

    /// One empty cache per layer.
    pub fn new_cache(&self) -> Vec<KvCache> {
        vec![KvCache::new(); self.layers.len()]
    }
}

impl Module<LlamaInput<'_>> for Llama {
    type Error = Exception;
    type Output = Array;

    /// # Shapes
    /// `x: [B, L, D]` -> post-norm hidden states `[B, L, D]`
    fn forward(&mut self, input: LlamaInput<'_>) -> Result<Array, Exception> {
        let LlamaInput { x, mask, cache } = input;
        if let Some(cache) = &cache {
            if cache.len() != self.layers.len() {
                return Err(Exception::custom(format!(
                    "KV cache has {} layers, the stack {}",
                    cache.len(),
                    self.layers.len()
                )));
            }
        }
        let mut h = x.clone();
        match cache {
            Some(cache) => {
                for (layer, c) in self.layers.iter_mut().zip(cache.iter_mut()) {
                    h = layer.forward(AttentionInput {
                        x: &h,
                        mask,
                        cache: Some(c),
                    })?;
                }
            }
            None if self.grad_checkpoint => {
                for layer in &self.layers {
                    h = super::checkpointing::block_forward(layer, &h, mask)?;
                }
            }
            None => {
                for layer in self.layers.iter_mut() {
                    h = layer.forward(AttentionInput {
                        x: &h,
                        mask,
                        cache: None,
                    })?;
                }
            }
        }
        self.norm.forward(&h)
    }

    fn training_mode(&mut self, mode: bool) {
        for layer in &mut self.layers {
            layer.training_mode(mode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use mlx_rs::module::ModuleParameters;
    use mlx_rs::random;

    #[test]
    fn mlp_pieces_follow_the_token_count_within_limits() {
        // Whole, or too few tokens for two pieces: one piece.
        assert_eq!(mlp_pieces(&[8, 32, 1024], 1, 16), 1);
        assert_eq!(mlp_pieces(&[8, 32, 1024], 4, 200), 1);
        // 8 x 32 = 256 tokens, pieces of at least 100: 2 of the 4 asked.
        assert_eq!(mlp_pieces(&[8, 32, 1024], 4, 100), 2);
        assert_eq!(mlp_pieces(&[8, 32, 1024], 3, 16), 3);
        // Never more pieces than the first axis has entries, nor than 8.
        assert_eq!(mlp_pieces(&[2, 151, 2048], 4, 16), 2);
        assert_eq!(mlp_pieces(&[1048, 32, 1024], 12, 1024), 8);
        assert_eq!(mlp_pieces(&[1024], 4, 16), 1);
    }

    /// An MLP in pieces gives the whole MLP's output and input gradient.
    #[test]
    fn mlp_in_pieces_matches_the_whole() {
        let mut mlp = Mlp::new(16, 48).unwrap();
        let x = random::normal::<f32>(&[5, 3, 16], None, None, None).unwrap();
        let run = |mlp: &mut Mlp, x: &Array| mlp.forward(x).unwrap();
        let want = run(&mut mlp, &x);
        let grad = |mlp: &Mlp| {
            let mut m = mlp.clone();
            let f = move |xs: &[Array]| -> Result<Vec<Array>, Exception> {
                Ok(vec![m.forward(&xs[0])?.square()?.sum(None)?])
            };
            mlx_rs::transforms::grad(f)(std::slice::from_ref(&x))
                .unwrap()
                .remove(0)
        };
        let want_grad = grad(&mlp);
        mlp.pieces = 4;
        mlp.piece_min_rows = 3;
        assert_eq!(mlp_pieces(x.shape(), mlp.pieces, mlp.piece_min_rows), 4);
        let got = run(&mut mlp, &x);
        assert_eq!(got.shape(), want.shape());
        assert!(max_abs_diff(&got, &want) < 1e-6);
        let got_grad = grad(&mlp);
        assert!(max_abs_diff(&got_grad, &want_grad) < 1e-5);
    }

    fn tiny() -> LlamaConfig {
        LlamaConfig {
            num_layers: 2,
            embed_dim: 32,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            intermediate_dim: 48,
            norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(super::super::config::Llama3RopeScaling {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 16.0,
            }),
            max_seq_len: 64,
        }
    }

    #[test]
    fn canonical_parameter_names() {
        let m = Llama::new(&tiny()).unwrap();
        let mut keys: Vec<String> = m
            .parameters()
            .flatten()
            .keys()
            .map(|k| k.to_string())
            .collect();
        keys.sort();
        assert_eq!(keys.len(), 2 * 9 + 1);
        for k in [
            "layers.0.self_attn.q_proj.weight",
            "layers.1.self_attn.o_proj.weight",
            "layers.0.mlp.gate_proj.weight",
            "layers.1.mlp.down_proj.weight",
            "layers.0.input_layernorm.weight",
            "layers.0.post_attention_layernorm.weight",
            "norm.weight",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        // Absent LoRA/bias options do not show up as parameters.
        assert!(!keys
            .iter()
            .any(|k| k.contains("lora") || k.contains("bias")));
    }

    /// Interleaved RoPE on original-order weights equals rotate-half RoPE on
    /// the transformers permutation of the same rows, up to that permutation.
    #[test]
    fn interleaved_rope_matches_rotate_half_after_permute() {
        let cfg = tiny();
        let periods = cfg.rope_periods();
        let periods = Array::from_slice(&periods, &[4]);
        let (b, h, l, hd) = (1, 2, 5, 8);
        let x = random::normal::<f32>(&[b, h, l, hd], None, None, None).unwrap();
        let inter = fast::rope(&x, hd, true, None, 1.0, 3, &periods).unwrap();
        // permute_for_rope on the head axis: (hd/2, 2) -> (2, hd/2).
        let perm = |a: &Array| {
            a.reshape(&[b, h, l, hd / 2, 2])
                .unwrap()
                .transpose_axes(&[0, 1, 2, 4, 3])
                .unwrap()
                .reshape(&[b, h, l, hd])
                .unwrap()
        };
        let half = fast::rope(perm(&x), hd, false, None, 1.0, 3, &periods).unwrap();
        assert!(max_abs_diff(&perm(&inter), &half) < 1e-5);
        // And the interleaved result is a true pairwise rotation at pos 3+t.
        let xs: Vec<f32> = x.as_slice::<f32>().to_vec();
        let ys: Vec<f32> = inter.as_slice::<f32>().to_vec();
        let p: Vec<f32> = periods.as_slice::<f32>().to_vec();
        for t in 0..l as usize {
            for (i, period) in p.iter().enumerate() {
                let angle = (3 + t) as f64 / *period as f64;
                let (c, s) = (angle.cos() as f32, angle.sin() as f32);
                let base = t * hd as usize + 2 * i;
                let (x0, x1) = (xs[base], xs[base + 1]);
                assert!((ys[base] - (x0 * c - x1 * s)).abs() < 1e-5);
                assert!((ys[base + 1] - (x0 * s + x1 * c)).abs() < 1e-5);
            }
        }
    }

    /// RoPE at explicit positions equals MLX's at `offset + t`, per row.
    #[test]
    fn rope_at_positions_matches_fast_rope() {
        let periods = tiny().rope_periods();
        let periods = Array::from_slice(&periods, &[4]);
        let x = random::normal::<f32>(&[2, 3, 5, 8], None, None, None).unwrap();
        // Row 0 at positions 0..5, row 1 at 7..12.
        let pos: Vec<i32> = (0..5).chain(7..12).collect();
        let got = rope_at(&x, &Array::from_slice(&pos, &[2, 5]), &periods).unwrap();
        for (row, offset) in [(0, 0), (1, 7)] {
            let want = fast::rope(
                x.index((row..row + 1, .., .., ..)),
                8,
                true,
                None,
                1.0,
                offset,
                &periods,
            )
            .unwrap();
            let d = max_abs_diff(&got.index((row..row + 1, .., .., ..)), &want);
            assert!(d < 1e-5, "row {row}: {d}");
        }
    }

    #[test]
    fn packed_mask_is_block_diagonal_causal() {
        let seg = Array::from_slice(&[0i32, 0, 1, 1, -1], &[1, 5]);
        let m = packed_causal_mask(&seg).unwrap();
        assert_eq!(m.shape(), &[1, 1, 5, 5]);
        #[rustfmt::skip]
        let want = [
            true,  false, false, false, false,
            true,  true,  false, false, false,
            false, false, true,  false, false,
            false, false, true,  true,  false,
            false, false, false, false, true,
        ];
        assert_eq!(m.as_slice::<bool>(), &want);
    }

    #[test]
    fn gqa_shapes_and_cache_equals_full() {
        let cfg = tiny();
        let mut m = Llama::new(&cfg).unwrap();
        let x = random::normal::<f32>(&[2, 6, 32], None, None, None).unwrap();
        let full = m
            .forward(LlamaInput {
                x: &x,
                mask: AttentionMask::Causal,
                cache: None,
            })
            .unwrap();
        assert_eq!(full.shape(), &[2, 6, 32]);
        // Prefill 4 then two single steps.
        let mut cache = m.new_cache();
        let pre = m
            .forward(LlamaInput {
                x: &x.index((.., ..4, ..)),
                mask: AttentionMask::Causal,
                cache: Some(&mut cache),
            })
            .unwrap();
        assert_eq!(cache[0].offset(), 4);
        let mut outs = vec![pre];
        for t in 4..6 {
            outs.push(
                m.forward(LlamaInput {
                    x: &x.index((.., t..t + 1, ..)),
                    mask: AttentionMask::None,
                    cache: Some(&mut cache),
                })
                .unwrap(),
            );
        }
        let inc = ops::concatenate(&outs, 1).unwrap(); // [2, 6, 32]
        assert!(max_abs_diff(&inc, &full) < 1e-5);
        // Prefill with a non-empty cache uses end-aligned causal masking.
        let mut cache = m.new_cache();
        m.forward(LlamaInput {
            x: &x.index((.., ..2, ..)),
            mask: AttentionMask::Causal,
            cache: Some(&mut cache),
        })
        .unwrap();
        let rest = m
            .forward(LlamaInput {
                x: &x.index((.., 2.., ..)),
                mask: AttentionMask::Causal,
                cache: Some(&mut cache),
            })
            .unwrap();
        assert!(max_abs_diff(&rest, &full.index((.., 2.., ..))) < 1e-5);
    }

    #[test]
    fn padded_mask_matches_causal_on_valid_rows() {
        let cfg = tiny();
        let mut m = Llama::new(&cfg).unwrap();
        let x = random::normal::<f32>(&[2, 5, 32], None, None, None).unwrap();
        let valid = Array::from_slice(&[1i32, 1, 1, 1, 1, 1, 1, 1, 0, 0], &[2, 5]);
        let mask = padded_causal_mask(&valid).unwrap();
        assert_eq!(mask.shape(), &[2, 1, 5, 5]);
        let a = m
            .forward(LlamaInput {
                x: &x,
                mask: AttentionMask::Array(&mask),
                cache: None,
            })
            .unwrap();
        let b = m
            .forward(LlamaInput {
                x: &x,
                mask: AttentionMask::Causal,
                cache: None,
            })
            .unwrap();
        // Right padding: valid positions are unaffected; all rows finite.
        assert!(max_abs_diff(&a.index((.., ..3, ..)), &b.index((.., ..3, ..))) < 1e-5);
        assert!(max_abs_diff(&a.index((0, .., ..)), &b.index((0, .., ..))) < 1e-5);
        assert!(a
            .abs()
            .unwrap()
            .max(None)
            .unwrap()
            .item_cast::<f32>()
            .is_finite());
    }

    use mlx_rs::ops::indexing::IndexOp;
}
