//! Sesame CSM: a Llama backbone over frames of 32 Mimi codes + 1 text token,
//! predicting codebook 0, and a small depth decoder that predicts codebooks
//! 1..31 of one frame from the backbone state.
//!
//! Ported from SesameAILabs/csm `models.py` (commit 836f886): `_embed_tokens`,
//! `_embed_audio`, `generate_frame`; training layout as in transformers
//! `models/csm/modeling_csm.py` (`CsmForConditionalGeneration.forward`).
//! Shapes and conventions: `docs/architecture.md`, "The model".

use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::{Module, ModuleParameters, Param, Parameter};
use mlx_rs::ops::indexing::TryIndexOp;
use mlx_rs::{nn, ops, random, Array, Dtype};

use super::config::CsmConfig;
use super::llama::{AttentionMask, KvCache, Llama, LlamaInput};
use super::proj::Proj;

/// The CSM model. Field names are the canonical checkpoint names
/// (`backbone.layers.N...`, `decoder.layers.N...`, `text_embeddings.weight`,
/// `audio_embeddings.weight`, `projection.weight`, `codebook0_head.weight`,
/// `audio_head`).
#[derive(Debug, Clone, ModuleParameters)]
pub struct Csm {
    /// Backbone over frames (llama-1B in CSM-1B).
    #[param]
    pub backbone: Llama,
    /// Depth decoder over the codebooks of one frame (llama-100M).
    #[param]
    pub decoder: Llama,
    /// Text token embeddings `[text_vocab, D]`.
    #[param]
    pub text_embeddings: nn::Embedding,
    /// Audio embeddings shared by all codebooks `[n_cb * audio_vocab, D]`;
    /// codebook `k`, code `c` is row `c + k * audio_vocab`.
    #[param]
    pub audio_embeddings: nn::Embedding,
    /// Backbone width to decoder width `[D_dec, D]`.
    #[param]
    pub projection: Proj,
    /// Codebook-0 logits from the backbone `[audio_vocab, D]`.
    #[param]
    pub codebook0_head: Proj,
    /// Codebook `i >= 1` logits are `d @ audio_head[i - 1]`;
    /// `[n_cb - 1, D_dec, audio_vocab]` (stored `[in, out]`, no transpose).
    #[param]
    pub audio_head: Param<Array>,
    /// Hyperparameters.
    pub config: CsmConfig,
    /// Which forms the training loss and attention take
    /// ([`Csm::set_train_kernels`]).
    pub kernels: TrainKernels,
}

/// Forms of the training computation that give the same loss as the plain
/// ones (to rounding; tested) but cost less time or memory on some
/// devices. The trainer and `csm bench-train` choose them
/// ([`TrainKernels::for_device`]); each can be turned off for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainKernels {
    /// Cross-entropy with its own gradient, over codebook-major depth
    /// logits: no f32 copy of the logits is kept for the backward and no
    /// transposed copy is made ([`super::cross_entropy`]).
    pub fused_cross_entropy: bool,
    /// Pad the backbone's causal attention, inside the attention only, to a
    /// multiple of this many positions (0: never). MLX's CUDA backend has a
    /// fused (cuDNN) attention backward only for query lengths that are a
    /// multiple of 128; other lengths recompute the attention unfused in
    /// the backward. The padded keys come after every real query, so the
    /// causal mask hides them and the real rows are unchanged.
    pub attention_tile: i32,
    /// SwiGLU keeps only its inputs for the backward, recomputing the
    /// sigmoid ([`crate::kernels::lean::swiglu`]): two arrays of the
    /// feed-forward's width per token and layer instead of four.
    pub lean_swiglu: bool,
    /// LoRA adapters keep their input in the activation dtype for the
    /// backward, not an f32 copy ([`crate::kernels::lean::lora_update`]).
    pub lean_lora: bool,
    /// With [`TrainKernels::lean_lora`]: the adapters' products in the
    /// activation dtype (bf16 on GPUs; f32 accumulation in the products),
    /// their f32 weights and gradients cast at the edges, instead of in f32
    /// as PEFT computes them: no f32 copies of the adapted projections'
    /// inputs and gradients. Rounds `x A` and the gradients to bf16.
    pub lora_in_activation_dtype: bool,
    /// Projections of one input (q, k and v; gate and up) with one gradient
    /// for it ([`crate::kernels::group`]): the frozen products summed in
    /// the GEMMs' epilogue and the adapters' shares in one product, instead
    /// of a product, a cast and an add each. The same values; the gradient
    /// to rounding.
    pub grouped_projections: bool,
    /// The codebook heads' vocabulary (2051) padded with zero weights to a
    /// multiple of 8 for their products, the logits cut back to it: cuBLAS
    /// runs products whose rows are not 16-byte aligned on slow kernels
    /// (on an H100, 10 ms of a 230 ms step at 16 x 250 frames with the
    /// decoder on every frame). The same values; only heads without an
    /// adapter, bias or quantization.
    pub aligned_heads: bool,
    /// SwiGLU's two input gradients in one CUDA kernel
    /// ([`crate::kernels::cuda::swiglu_grad`]; needs
    /// [`TrainKernels::lean_swiglu`]). CUDA only.
    pub cuda_swiglu_grad: bool,
    /// RoPE and the head transpose of q and k in one CUDA kernel each way
    /// ([`crate::kernels::cuda::rope_transposed`]), for attention over
    /// whole sequences (training, scoring). CUDA only.
    pub cuda_rope: bool,
    /// The loss's cross-entropy as CUDA kernels
    /// ([`crate::kernels::cuda::cross_entropy`]): one read of the
    /// (codebook-major) logits forward and one pass for the gradient,
    /// over the padded heads as they come with
    /// [`TrainKernels::aligned_heads`]. CUDA only.
    pub cuda_cross_entropy: bool,
    /// With [`TrainKernels::grouped_projections`] and f32 adapters: each
    /// adapter's rank-r product added to its frozen projection's output,
    /// and the adapters' share of the input gradient to the frozen one's,
    /// by one CUDA kernel each ([`crate::kernels::cuda::lora_expand_add`]),
    /// in f32 and rounded once, as PEFT adds them. CUDA only. It also
    /// spares MLX from rebuilding the CUDA graphs that held cuBLAS's
    /// y-clustered TF32 GEMMs for those products (20 a step, 4 left).
    pub cuda_lora: bool,
    /// The depth decoder's MLPs run on this many pieces of its frames (1:
    /// whole; [`crate::model::llama::mlp_pieces`]): the same values, and
    /// the MLP backward's three transient arrays of the hidden width (8192
    /// for CSM-1B) held for one piece at a time instead of every token, at
    /// the cost of more, smaller kernels and a concatenation each way. The
    /// decoder only: it runs 32 positions a frame, so its MLPs see up to
    /// 32 times the backbone's tokens.
    pub decoder_mlp_pieces: i32,
    /// Fewest tokens a piece of [`TrainKernels::decoder_mlp_pieces`] may
    /// have: smaller MLPs are split into fewer pieces, or none
    /// ([`crate::model::llama::MLP_PIECE_MIN_ROWS`] unless a test asks for
    /// fewer).
    pub mlp_piece_min_rows: i32,
}

impl TrainKernels {
    /// The plain forms: MLX's autodiff of the cross-entropy, no padding.
    pub const PLAIN: TrainKernels = TrainKernels {
        fused_cross_entropy: false,
        attention_tile: 0,
        lean_swiglu: false,
        lean_lora: false,
        lora_in_activation_dtype: false,
        grouped_projections: false,
        aligned_heads: false,
        cuda_swiglu_grad: false,
        cuda_rope: false,
        cuda_cross_entropy: false,
        cuda_lora: false,
        decoder_mlp_pieces: 1,
        mlp_piece_min_rows: super::llama::MLP_PIECE_MIN_ROWS,
    };

    /// The forms expected to pay on a device: the attention tile on GPUs
    /// outside macOS (CUDA), where
    /// the fused backward exists (Metal trains with the unfused attention
    /// whatever the length, so padding would only add work there); the
    /// lean SwiGLU and LoRA on GPUs (on the CPU, f32 SwiGLU is a primitive
    /// of this crate and an f32 LoRA input needs no copy). Not the fused
    /// cross-entropy: on an H100 it was neutral with the depth decoder on
    /// 1/16 of the frames and 13% slower on every frame, for 0.2-0.7 GB
    /// less memory (docs/benchmarks.md).
    ///
    /// On CUDA also the aligned heads and the three CUDA kernels: on an
    /// H100 (2026-12-07, sixth session) the four together took a step at
    /// 16 x 250 frames with the decoder on every frame from 0.232 s to
    /// 0.209 s, and each paid there when left out of the four; the CUDA
    /// cross-entropy also took the peak from 42.2 to 39.4 GB. The LoRA
    /// kernel (eighth session, the same card, two runs each) took 8 x 130
    /// frames on every frame from 0.070-0.075 s to 0.066-0.070 s, and its
    /// faster run was ahead in six of the other seven cases (1 x 130 on
    /// every frame: within that case's spread). And the depth decoder's
    /// MLPs in 2 pieces (ninth session, two H100s): the peak fell by 0.1
    /// to 0.67 GB wherever the decoder had 2048 tokens or more (13.32 to
    /// 12.85 GB at 8 x 130 on every frame), with step times within the
    /// runs' spread (8 x 130 on 1/16: up to 4% slower), where 8 pieces
    /// (and the backbone's MLPs split too) had cost 3 to 7% on every
    /// frame. Metal has no twin of the kernels, and the aligned heads and
    /// the MLP pieces are unmeasured there.
    pub fn for_device(gpu: bool) -> TrainKernels {
        let cuda = gpu && !cfg!(target_os = "macos");
        TrainKernels {
            fused_cross_entropy: false,
            attention_tile: if cuda { 128 } else { 0 },
            lean_swiglu: gpu,
            lean_lora: gpu,
            lora_in_activation_dtype: false,
            grouped_projections: gpu,
            aligned_heads: cuda,
            cuda_swiglu_grad: cuda,
            cuda_rope: cuda,
            cuda_cross_entropy: cuda,
            cuda_lora: cuda,
            decoder_mlp_pieces: if cuda { 2 } else { 1 },
            mlp_piece_min_rows: super::llama::MLP_PIECE_MIN_ROWS,
        }
    }
}

impl Default for TrainKernels {
    /// The CPU's choice: the plain forms.
    fn default() -> Self {
        TrainKernels::for_device(false)
    }
}

/// Input of the backbone forward ([`Module`] impl of [`Csm`]).
#[derive(Debug, Clone, Copy)]
pub struct FrameInput<'a> {
    /// Frames `[B, S, n_cb + 1]` (int): codes in columns `0..n_cb`, text
    /// token in column `n_cb`.
    pub tokens: &'a Array,
    /// Which columns are present `[B, S, n_cb + 1]` (bool or 0/1).
    pub mask: &'a Array,
    /// Attention pattern: [`AttentionMask::Causal`] for right-padded or
    /// unpadded batches, or an explicit mask.
    pub attention: AttentionMask<'a>,
}

/// `v` rounded up to a multiple of 8 (16 bytes of bf16), when it is not
/// one ([`TrainKernels::aligned_heads`]).
fn aligned_vocab(v: i32) -> Option<i32> {
    (v % 8 != 0).then(|| (v + 7) / 8 * 8)
}

impl Csm {
    /// Random weights of the right shapes (replaced when a checkpoint loads;
    /// MLX is lazy, so they are never computed in that case).
    ///
    /// # Errors
    /// An invalid config.
    pub fn new(config: &CsmConfig) -> Result<Self, Exception> {
        config.validate().map_err(Exception::custom)?;
        let (d, dd) = (config.backbone.embed_dim, config.decoder.embed_dim);
        let (n, v) = (config.audio_num_codebooks, config.audio_vocab_size);
        let bound = (1.0 / dd as f32).sqrt();
        Ok(Csm {
            backbone: Llama::new(&config.backbone)?,
            decoder: Llama::new(&config.decoder)?,
            text_embeddings: nn::Embedding::new(config.text_vocab_size, d)?,
            audio_embeddings: nn::Embedding::new(v * n, d)?,
            projection: Proj::random(d, dd)?,
            codebook0_head: Proj::random(d, v)?,
            audio_head: Param::new(random::uniform::<_, f32>(
                -bound,
                bound,
                &[n - 1, dd, v],
                None,
            )?),
            config: config.clone(),
            kernels: TrainKernels::default(),
        })
    }

    /// Chooses the forms of the training computation (see
    /// [`TrainKernels`]); the attention tile applies to the backbone.
    pub fn set_train_kernels(&mut self, kernels: TrainKernels) {
        self.kernels = kernels;
        for layer in &mut self.backbone.layers {
            layer.self_attn.tile = kernels.attention_tile;
            layer.mlp.pieces = 1;
        }
        for layer in &mut self.decoder.layers {
            layer.mlp.pieces = kernels.decoder_mlp_pieces;
            layer.mlp.piece_min_rows = kernels.mlp_piece_min_rows;
        }
        for layer in self
            .backbone
            .layers
            .iter_mut()
            .chain(self.decoder.layers.iter_mut())
        {
            layer.mlp.lean_swiglu = kernels.lean_swiglu;
            layer.mlp.cuda_swiglu_grad = kernels.cuda_swiglu_grad;
            layer.self_attn.cuda_rope = kernels.cuda_rope;
            layer.mlp.grouped = kernels.grouped_projections;
            layer.self_attn.grouped = kernels.grouped_projections;
            layer.mlp.cuda_lora = kernels.cuda_lora;
            layer.self_attn.cuda_lora = kernels.cuda_lora;
            let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
            for p in [
                &mut a.q_proj,
                &mut a.k_proj,
                &mut a.v_proj,
                &mut a.o_proj,
                &mut m.gate_proj,
                &mut m.up_proj,
                &mut m.down_proj,
            ] {
                p.lean_lora = kernels.lean_lora;
                p.lora_in_activation_dtype = kernels.lora_in_activation_dtype;
            }
        }
        for p in [&mut self.projection, &mut self.codebook0_head] {
            p.lean_lora = kernels.lean_lora;
            p.lora_in_activation_dtype = kernels.lora_in_activation_dtype;
        }
    }

    /// Casts every floating parameter to `dtype` (lazily).
    pub fn cast(&mut self, dtype: Dtype) -> Result<(), Exception> {
        let mut cast = std::collections::HashMap::new();
        for (k, v) in self.parameters().flatten() {
            if v.dtype().is_float() && v.dtype() != dtype {
                cast.insert(k, v.as_dtype(dtype)?);
            }
        }
        self.update_flattened(cast);
        Ok(())
    }

    /// Dtype of the weights (that of `codebook0_head`).
    pub fn dtype(&self) -> Dtype {
        self.codebook0_head.weight.value.dtype()
    }

    fn num_codebooks(&self) -> i32 {
        self.config.audio_num_codebooks
    }

    /// `[0, V, 2V, ...]` for codebooks `0..count`.
    fn codebook_offsets(&self, count: i32) -> Result<Array, Exception> {
        let v = self.config.audio_vocab_size;
        ops::arange::<_, i32>(0, count * v, v)
    }

    /// Audio embedding rows at offset codes. A frozen table (training) is
    /// gathered as words ([`crate::kernels::take_rows`], the same rows bit
    /// for bit); a trainable one through the embedding, which has a
    /// gradient.
    ///
    /// # Shapes
    /// `idx: [...]` int -> `[..., D]`
    fn audio_rows(&mut self, idx: &Array) -> Result<Array, Exception> {
        let table = &self.audio_embeddings.weight;
        if table.is_frozen() == Some(true) {
            crate::kernels::take_rows(table, idx)
        } else {
            self.audio_embeddings.forward(idx)
        }
    }

    /// Embeds frames: the masked sum of the text embedding and the
    /// per-codebook audio embeddings.
    ///
    /// # Shapes
    /// `tokens, mask: [B, S, n_cb + 1]` -> `[B, S, D]`
    pub fn embed_frames(&mut self, tokens: &Array, mask: &Array) -> Result<Array, Exception> {
        let n = self.num_codebooks();
        let shape = tokens.shape();
        if shape.len() != 3 || shape[2] != n + 1 || mask.shape() != shape {
            return Err(Exception::custom(format!(
                "frames must be [B, S, {}] with a mask of the same shape; got tokens {:?}, mask {:?}",
                n + 1,
                shape,
                mask.shape()
            )));
        }
        let tokens = tokens.as_dtype(Dtype::Int32)?;
        let text_tok = tokens.try_index((.., .., n))?; // [B, S]
        let audio_tok = tokens
            .try_index((.., .., ..n))?
            .add(&self.codebook_offsets(n)?)?; // [B, S, n_cb]
        let text = self.text_embeddings.forward(&text_tok)?; // [B, S, D]
        let audio = self.audio_rows(&audio_tok)?; // [B, S, n_cb, D]

        // The masked sum over codebooks as one batched product, which reads
        // the gathered rows once: no concatenated copy and no masked copy
        // (on an H100, 16 x 271 frames: 0.57 GB of gathered rows a step).
        let m = mask.as_dtype(audio.dtype())?; // [B, S, n_cb + 1]
        let m_audio = m.try_index((.., .., ..n))?.expand_dims(2)?; // [B, S, 1, n_cb]
        let m_text = m.try_index((.., .., n..))?; // [B, S, 1]
        let audio = ops::matmul(&m_audio, &audio)?.squeeze_axes(&[2])?; // [B, S, D]
        audio.add(text.multiply(&m_text)?) // [B, S, D]
    }

    /// Backbone over embedded frames, without a cache.
    ///
    /// # Shapes
    /// `tokens, mask: [B, S, n_cb + 1]` -> post-norm hidden `[B, S, D]`
    pub fn backbone_hidden(&mut self, input: FrameInput<'_>) -> Result<Array, Exception> {
        let s = input.tokens.shape()[1];
        if s > self.config.backbone.max_seq_len {
            return Err(Exception::custom(format!(
                "sequence of {s} frames exceeds the backbone's max_seq_len {}",
                self.config.backbone.max_seq_len
            )));
        }
        let x = self.embed_frames(input.tokens, input.mask)?;
        self.backbone.forward(LlamaInput {
            x: &x,
            mask: input.attention,
            cache: None,
        })
    }

    /// Codebook-0 logits from backbone hidden states.
    ///
    /// # Shapes
    /// `h: [..., D]` -> `[..., audio_vocab]`
    pub fn c0_logits(&mut self, h: &Array) -> Result<Array, Exception> {
        let v = self.config.audio_vocab_size;
        let wide = self.c0_logits_wide(h)?; // [..., W]
        if wide.shape().last() == Some(&v) {
            return Ok(wide);
        }
        wide.try_index((mlx_rs::ops::indexing::Ellipsis, ..v)) // [..., V]
    }

    /// [`Csm::c0_logits`] over the padded vocabulary where
    /// [`TrainKernels::aligned_heads`] pads the head (its first
    /// `audio_vocab` columns are the logits), else the same.
    ///
    /// # Shapes
    /// `h: [..., D]` -> `[..., W]` (W >= audio_vocab)
    pub fn c0_logits_wide(&mut self, h: &Array) -> Result<Array, Exception> {
        let v = self.config.audio_vocab_size;
        let head = &self.codebook0_head;
        match aligned_vocab(v) {
            Some(padded) if self.kernels.aligned_heads && head.is_plain() => {
                let w = ops::pad(
                    &head.weight.value,
                    &[(0, padded - v), (0, 0)][..],
                    None,
                    None,
                )?; // [W, D]
                crate::kernels::linear(h, &w) // [..., W]
            }
            _ => self.codebook0_head.forward(h),
        }
    }

    /// Depth-decoder logits for codebooks `1..n_cb` of `N` frames, teacher
    /// forced: the decoder input is `[h_prev, emb(c_0), ..., emb(c_{n-2})]`.
    ///
    /// # Shapes
    /// `h_prev: [N, D]` (backbone state of the previous frame), `codes:
    /// [N, n_cb]` (the frame's codes) -> `[N, n_cb - 1, audio_vocab]`
    pub fn depth_logits(&mut self, h_prev: &Array, codes: &Array) -> Result<Array, Exception> {
        self.depth_logits_by_codebook(h_prev, codes)?
            .transpose_axes(&[1, 0, 2]) // [N, n_cb - 1, V]
    }

    /// [`Csm::depth_logits`] codebook-major, as the heads compute them (no
    /// transposed copy).
    ///
    /// # Shapes
    /// `h_prev: [N, D]`, `codes: [N, n_cb]` -> `[n_cb - 1, N, audio_vocab]`
    pub fn depth_logits_by_codebook(
        &mut self,
        h_prev: &Array,
        codes: &Array,
    ) -> Result<Array, Exception> {
        let v = self.config.audio_vocab_size;
        let wide = self.depth_logits_wide(h_prev, codes)?; // [n_cb - 1, N, W]
        if wide.shape()[2] == v {
            return Ok(wide);
        }
        wide.try_index((.., .., ..v)) // [n_cb - 1, N, V]
    }

    /// [`Csm::depth_logits_by_codebook`] over the padded vocabulary where
    /// [`TrainKernels::aligned_heads`] pads the heads (the first
    /// `audio_vocab` columns are the logits), else the same.
    ///
    /// # Shapes
    /// `h_prev: [N, D]`, `codes: [N, n_cb]` -> `[n_cb - 1, N, W]` (W >=
    /// audio_vocab)
    pub fn depth_logits_wide(&mut self, h_prev: &Array, codes: &Array) -> Result<Array, Exception> {
        let n = self.num_codebooks();
        let nf = codes.shape()[0];
        let prev_codes = codes
            .as_dtype(Dtype::Int32)?
            .try_index((.., ..n - 1))?
            .add(&self.codebook_offsets(n - 1)?)?; // [N, n_cb - 1]
        let emb = self.audio_rows(&prev_codes)?; // [N, n_cb - 1, D]

        // Projected apart, so training's backward runs the projection's
        // input gradient for the N backbone states only: the embeddings are
        // frozen and need none (17.6 GFLOP less per CSM-1B step with the
        // decoder on all 131 frames).
        let h_proj = self.projection.forward(&h_prev.expand_dims(1)?)?; // [N, 1, D_dec]
        let emb_proj = self.projection.forward(&emb)?; // [N, n_cb - 1, D_dec]
        let x = ops::concatenate(&[h_proj, emb_proj], 1)?; // [N, n_cb, D_dec]
        let d = self.decoder.forward(LlamaInput {
            x: &x,
            mask: AttentionMask::Causal,
            cache: None,
        })?; // [N, n_cb, D_dec]
        let d = d.try_index((.., 1.., ..))?.transpose_axes(&[1, 0, 2])?; // [n_cb - 1, N, D_dec]
        let v = self.config.audio_vocab_size;
        let logits = match aligned_vocab(v) {
            Some(padded) if self.kernels.aligned_heads => {
                let widths = [(0, 0), (0, 0), (0, padded - v)];
                let w = ops::pad(&self.audio_head.value, &widths[..], None, None)?; // [n_cb - 1, D_dec, W]
                ops::matmul(&d, &w)? // [n_cb - 1, N, W]
            }
            _ => ops::matmul(&d, &self.audio_head.value)?, // [n_cb - 1, N, V]
        };
        debug_assert_eq!(logits.shape()[1], nf);
        Ok(logits)
    }

    /// One empty KV cache per backbone layer, for [`Csm::backbone_step`].
    pub fn new_backbone_cache(&self) -> Vec<KvCache> {
        self.backbone.new_cache()
    }

    /// Runs the backbone on new frames (a prompt, then one frame at a time)
    /// at the positions following the cache, and returns the last state.
    ///
    /// # Shapes
    /// `tokens, mask: [B, L, n_cb + 1]` -> `[B, D]`
    ///
    /// # Errors
    /// When the cache would grow past the backbone's `max_seq_len`.
    pub fn backbone_step(
        &mut self,
        tokens: &Array,
        mask: &Array,
        cache: &mut [KvCache],
    ) -> Result<Array, Exception> {
        let l = tokens.shape()[1];
        let offset = cache.first().map_or(0, KvCache::offset);
        if offset + l > self.config.backbone.max_seq_len {
            return Err(Exception::custom(format!(
                "backbone context full: {offset} cached + {l} new frames > max_seq_len {}",
                self.config.backbone.max_seq_len
            )));
        }
        let x = self.embed_frames(tokens, mask)?;
        let attention = if l > 1 {
            AttentionMask::Causal
        } else {
            AttentionMask::None
        };
        let h = self.backbone.forward(LlamaInput {
            x: &x,
            mask: attention,
            cache: Some(cache),
        })?; // [B, L, D]
        h.try_index((.., -1, ..)) // [B, D]
    }

    /// Generates the codes of one frame from the backbone's last state:
    /// codebook 0 from `codebook0_head`, then codebooks 1.. from the depth
    /// decoder (fresh cache, positions 0..n_cb-1).
    ///
    /// `sample(logits [B, V], codebook)` picks codes `[B]` (any int dtype).
    ///
    /// # Shapes
    /// `last_h: [B, D]` -> codes `[B, n_cb]` (int32)
    pub fn generate_frame(
        &mut self,
        last_h: &Array,
        sample: &mut dyn FnMut(&Array, i32) -> Result<Array, Exception>,
    ) -> Result<Array, Exception> {
        let n = self.num_codebooks();
        let v = self.config.audio_vocab_size;
        // The head itself, not `c0_logits`: with the aligned heads on (a
        // sample drawn mid-training) that would pad a copy of the head's
        // weight every frame for a product of B rows.
        let c0_logits = self.codebook0_head.forward(last_h)?; // [B, V]
        let c0 = sample(&c0_logits, 0)?.as_dtype(Dtype::Int32)?; // [B]
        let mut cache = self.decoder.new_cache();
        let mut x = ops::concatenate(
            &[
                last_h.expand_dims(1)?,                              // [B, 1, D]
                self.audio_embeddings.forward(&c0)?.expand_dims(1)?, // [B, 1, D]
            ],
            1,
        )?; // [B, 2, D]
        let mut codes = vec![c0];
        for i in 1..n {
            let proj = self.projection.forward(&x)?; // [B, L, D_dec]
            let attention = if i == 1 {
                AttentionMask::Causal
            } else {
                AttentionMask::None
            };
            let d = self.decoder.forward(LlamaInput {
                x: &proj,
                mask: attention,
                cache: Some(&mut cache),
            })?; // [B, L, D_dec]
            let last = d.try_index((.., -1, ..))?; // [B, D_dec]
            let head = self.audio_head.value.try_index(i - 1..i)?; // [1, D_dec, V] view
            let head = head.squeeze_axes(&[0])?; // [D_dec, V] (an int index would copy)
            let logits = ops::matmul(&last, &head)?; // [B, V]
            let ci = sample(&logits, i)?.as_dtype(Dtype::Int32)?; // [B]
            let row = ci.add(Array::from_int(i * v))?;
            x = self.audio_embeddings.forward(&row)?.expand_dims(1)?; // [B, 1, D]
            codes.push(ci);
        }
        ops::stack(&codes, 1) // [B, n_cb]
    }

    /// Which generated frames are end-of-speech: all codes zero (the
    /// original's check; transformers only looks at the first `n_cb - 1`).
    ///
    /// # Shapes
    /// `codes: [B, n_cb]` -> `[B]` bool
    pub fn eos_frames(codes: &Array) -> Result<Array, Exception> {
        codes.eq(Array::from_int(0))?.all_axis(-1, None)
    }

    /// The backbone input for feeding a generated frame back: codes in
    /// columns `0..n_cb`, text 0, mask on the codes only.
    ///
    /// # Shapes
    /// `codes: [B, n_cb]` -> `(tokens [B, 1, n_cb + 1] int32, mask [B, 1, n_cb + 1] bool)`
    pub fn audio_frame(&self, codes: &Array) -> Result<(Array, Array), Exception> {
        let b = codes.shape()[0];
        let n = self.num_codebooks();
        let tokens = ops::concatenate(
            &[codes.as_dtype(Dtype::Int32)?, ops::zeros::<i32>(&[b, 1])?],
            1,
        )?
        .reshape(&[b, 1, n + 1])?; // [B, 1, n_cb + 1]
        let mut m = vec![true; (n + 1) as usize];
        m[n as usize] = false;
        let mask = ops::broadcast_to(Array::from_slice(&m, &[1, 1, n + 1]), &[b, 1, n + 1])?; // [B, 1, n_cb + 1]
        Ok((tokens, mask))
    }
}

impl Module<FrameInput<'_>> for Csm {
    type Error = Exception;
    type Output = Array;

    /// Backbone hidden states; see [`Csm::backbone_hidden`].
    ///
    /// # Shapes
    /// `tokens, mask: [B, S, n_cb + 1]` -> `[B, S, D]`
    fn forward(&mut self, input: FrameInput<'_>) -> Result<Array, Exception> {
        self.backbone_hidden(input)
    }

    fn training_mode(&mut self, mode: bool) {
        self.backbone.training_mode(mode);
        self.decoder.training_mode(mode);
        self.projection.training_mode(mode);
        self.codebook0_head.training_mode(mode);
    }
}

/// A tiny config for unit tests (not a released model).
#[cfg(test)]
pub(crate) fn tiny_config() -> CsmConfig {
    use super::config::{Llama3RopeScaling, LlamaConfig};
    let scaling = Some(Llama3RopeScaling {
        factor: 32.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16.0,
    });
    CsmConfig {
        backbone: LlamaConfig {
            num_layers: 2,
            embed_dim: 32,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            intermediate_dim: 48,
            norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: scaling,
            max_seq_len: 64,
        },
        decoder: LlamaConfig {
            num_layers: 2,
            embed_dim: 24,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 6,
            intermediate_dim: 40,
            norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: scaling,
            max_seq_len: 16,
        },
        text_vocab_size: 50,
        audio_vocab_size: 11,
        audio_num_codebooks: 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use mlx_rs::ops::indexing::IndexOp;

    #[test]
    fn canonical_keys() {
        let m = Csm::new(&tiny_config()).unwrap();
        let flat = m.parameters().flatten();
        for (k, shape) in [
            ("text_embeddings.weight", vec![50, 32]),
            ("audio_embeddings.weight", vec![44, 32]),
            ("projection.weight", vec![24, 32]),
            ("codebook0_head.weight", vec![11, 32]),
            ("audio_head", vec![3, 24, 11]),
            ("backbone.layers.1.self_attn.k_proj.weight", vec![16, 32]),
            ("decoder.layers.0.mlp.down_proj.weight", vec![24, 40]),
            ("decoder.norm.weight", vec![24]),
        ] {
            assert_eq!(flat.get(k).map(|a| a.shape().to_vec()), Some(shape), "{k}");
        }
        assert_eq!(flat.len(), 5 + 2 * (2 * 9 + 1));
    }

    #[test]
    fn embedding_uses_codebook_offsets_and_mask() {
        let cfg = tiny_config();
        let mut m = Csm::new(&cfg).unwrap();
        // Frame 0: text token 7 only. Frame 1: codes [1, 2, 3, 4], no text.
        let tokens = Array::from_slice(&[0i32, 0, 0, 0, 7, 1, 2, 3, 4, 9], &[1, 2, 5]);
        let mask = Array::from_slice(
            &[
                false, false, false, false, true, true, true, true, true, false,
            ],
            &[1, 2, 5],
        );
        let e = m.embed_frames(&tokens, &mask).unwrap();
        let text = m.text_embeddings.weight.value.index(7);
        assert!(max_abs_diff(&e.index((0, 0, ..)), &text) < 1e-6);
        let aw = &m.audio_embeddings.weight.value;
        let want = aw
            .index(1)
            .add(aw.index(2 + 11))
            .unwrap()
            .add(aw.index(3 + 22))
            .unwrap()
            .add(aw.index(4 + 33))
            .unwrap();
        assert!(max_abs_diff(&e.index((0, 1, ..)), &want) < 1e-5);
        // A frozen table (training) gathers its rows as words: the same
        // frame embeddings and depth-decoder logits, bit for bit, in f32
        // and bf16.
        let h = random::normal::<f32>(&[2, 32], None, None, None).unwrap();
        let codes = Array::from_slice(&[1i32, 2, 3, 4, 5, 6, 7, 8], &[2, 4]);
        for dtype in [Dtype::Float32, Dtype::Bfloat16] {
            m.cast(dtype).unwrap();
            let h = h.as_dtype(dtype).unwrap();
            let mut run = |frozen: bool| {
                if frozen {
                    m.audio_embeddings.weight.freeze(false);
                } else {
                    m.audio_embeddings.weight.unfreeze(false);
                }
                let e = m.embed_frames(&tokens, &mask).unwrap();
                (e, m.depth_logits(&h, &codes).unwrap())
            };
            let ((e0, d0), (e1, d1)) = (run(false), run(true));
            assert_eq!(max_abs_diff(&e0, &e1), 0.0, "{dtype:?} frames");
            assert_eq!(max_abs_diff(&d0, &d1), 0.0, "{dtype:?} depth logits");
        }
    }

    #[test]
    fn generate_frame_matches_teacher_forced_depth_logits() {
        let cfg = tiny_config();
        let mut m = Csm::new(&cfg).unwrap();
        let h = random::normal::<f32>(&[2, 32], None, None, None).unwrap();
        let mut seen: Vec<Array> = Vec::new();
        let mut greedy = |logits: &Array, _i: i32| -> Result<Array, Exception> {
            seen.push(logits.clone());
            mlx_rs::ops::indexing::argmax_axis(logits, -1, None)
        };
        let codes = m.generate_frame(&h, &mut greedy).unwrap();
        assert_eq!(codes.shape(), &[2, 4]);
        assert_eq!(seen.len(), 4);
        // Incremental decoder steps equal the training-time full pass.
        let tf = m.depth_logits(&h, &codes).unwrap(); // [2, 3, 11]
        for i in 1..4 {
            let d = max_abs_diff(&tf.index((.., i - 1, ..)), &seen[i as usize]);
            assert!(d < 1e-5, "codebook {i}: {d}");
        }
        let c0 = m.c0_logits(&h).unwrap();
        assert!(max_abs_diff(&c0, &seen[0]) < 1e-6);
        let (tok, mask) = m.audio_frame(&codes).unwrap();
        assert_eq!(tok.shape(), &[2, 1, 5]);
        assert_eq!(mask.shape(), &[2, 1, 5]);
        assert_eq!(tok.index((1, 0, 4)).item_cast::<i32>(), 0);
        assert!(!mask.index((0, 0, 4)).item_cast::<bool>());
        let eos =
            Csm::eos_frames(&Array::from_slice(&[0i32, 0, 0, 0, 0, 0, 1, 0], &[2, 4])).unwrap();
        assert_eq!(eos.as_slice::<bool>(), &[true, false]);
    }

    #[test]
    fn backbone_step_with_cache_matches_full() {
        let cfg = tiny_config();
        let mut m = Csm::new(&cfg).unwrap();
        let tokens = random::randint::<_, i32>(0, 11, &[1, 5, 5], None).unwrap();
        let mask = ops::ones::<bool>(&[1, 5, 5]).unwrap();
        let full = m
            .backbone_hidden(FrameInput {
                tokens: &tokens,
                mask: &mask,
                attention: AttentionMask::Causal,
            })
            .unwrap();
        let mut cache = m.new_backbone_cache();
        let a = m
            .backbone_step(
                &tokens.index((.., ..3, ..)),
                &mask.index((.., ..3, ..)),
                &mut cache,
            )
            .unwrap();
        assert!(max_abs_diff(&a, &full.index((.., 2, ..))) < 1e-5);
        for t in 3..5 {
            let b = m
                .backbone_step(
                    &tokens.index((.., t..t + 1, ..)),
                    &mask.index((.., t..t + 1, ..)),
                    &mut cache,
                )
                .unwrap();
            assert!(max_abs_diff(&b, &full.index((.., t, ..))) < 1e-5);
        }
    }

    /// Two utterances packed in one row: the second's hidden states are
    /// those it has alone at the start of a row (positions restart), and
    /// changing the first's tokens leaves them bit-identical (no attention
    /// across utterances).
    #[test]
    fn packed_row_keeps_utterances_apart() {
        use crate::model::llama::packed_causal_mask;
        let mut m = Csm::new(&tiny_config()).unwrap();
        let (la, lb) = (5, 4);
        let a = random::randint::<_, i32>(0, 11, &[1, la, 5], None).unwrap();
        let b = random::randint::<_, i32>(0, 11, &[1, lb, 5], None).unwrap();
        let mask = ops::ones::<bool>(&[1, la + lb, 5]).unwrap();
        let seg: Vec<i32> = [0; 5].into_iter().chain([1; 4]).collect();
        let pos: Vec<i32> = (0..la).chain(0..lb).collect();
        let seg = Array::from_slice(&seg, &[1, la + lb]);
        let pos = Array::from_slice(&pos, &[1, la + lb]);
        let attention_mask = packed_causal_mask(&seg).unwrap();
        let mut packed = |first: &Array| {
            let tokens = ops::concatenate(&[first, &b], 1).unwrap(); // [1, 9, 5]
            m.backbone_hidden(FrameInput {
                tokens: &tokens,
                mask: &mask,
                attention: AttentionMask::Packed {
                    mask: &attention_mask,
                    positions: &pos,
                },
            })
            .unwrap()
            .index((.., la.., ..)) // [1, 4, 32]
        };
        let one = packed(&a);
        let other = packed(&a.add(Array::from_int(3)).unwrap());
        let d = max_abs_diff(&one, &other);
        assert_eq!(d, 0.0, "the second utterance saw the first: {d}");
        let alone = m
            .backbone_hidden(FrameInput {
                tokens: &b,
                mask: &ops::ones::<bool>(&[1, lb, 5]).unwrap(),
                attention: AttentionMask::Causal,
            })
            .unwrap();
        assert!(max_abs_diff(&one, &alone) < 1e-5);
    }

    #[test]
    fn bf16_cast_runs() {
        let mut m = Csm::new(&tiny_config()).unwrap();
        m.cast(Dtype::Bfloat16).unwrap();
        assert_eq!(m.dtype(), Dtype::Bfloat16);
        let tokens = ops::zeros::<i32>(&[1, 3, 5]).unwrap();
        let mask = ops::ones::<bool>(&[1, 3, 5]).unwrap();
        let h = m
            .backbone_hidden(FrameInput {
                tokens: &tokens,
                mask: &mask,
                attention: AttentionMask::Causal,
            })
            .unwrap();
        assert_eq!(h.dtype(), Dtype::Bfloat16);
        assert_eq!(h.shape(), &[1, 3, 32]);
    }
}
