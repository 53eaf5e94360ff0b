//! The CSM training objective (`docs/fine-tuning-recipe.md`, "The
//! objective"; transformers `CsmForConditionalGeneration.forward` with
//! labels):
//!
//! - **semantic**: cross-entropy of `codebook0_head(h[t-1])` against `c0` of
//!   every loss frame `t` (audio frames, including the all-zero EOS frame);
//! - **acoustic**: on a chosen subset of loss frames (all, or Sesame's random
//!   1/16), the depth decoder over `[h[t-1], emb(c0..c_{n-2})]`,
//!   cross-entropy against `c1..c_{n-1}`, averaged over all (frame,
//!   codebook) targets;
//! - **total** = `semantic_weight * semantic + acoustic_weight * acoustic`.
//!
//! With weights 1/1 and all frames this equals transformers'
//! `backbone_loss + depth_decoder_loss`. The depth decoder runs only on the
//! gathered subset, which is what keeps memory bounded.

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::{take_along_axis, take_axis, TryIndexOp};
use mlx_rs::{ops, Array, Dtype};

use super::cross_entropy::cross_entropy_fused;
use super::csm::{Csm, FrameInput};
use super::llama::AttentionMask;

/// [`crate::kernels::cuda::cross_entropy`] where it exists (outside macOS).
#[cfg(not(target_os = "macos"))]
fn cuda_cross_entropy(logits: &Array, targets: &Array, valid: i32) -> Result<Array, Exception> {
    crate::kernels::cuda::cross_entropy(logits, targets, valid)
}

#[cfg(target_os = "macos")]
fn cuda_cross_entropy(_: &Array, _: &Array, _: i32) -> Result<Array, Exception> {
    Err(Exception::custom(
        "the CUDA cross-entropy runs on NVIDIA GPUs only",
    ))
}

/// [`LossBatch`] with the depth-decoder frames as an array, for
/// [`Csm::loss_arrays`].
#[derive(Debug, Clone, Copy)]
pub struct ArrayLossBatch<'a> {
    /// Frames `[B, S, n_cb + 1]` (int); padding is all zeros.
    pub tokens: &'a Array,
    /// Column mask `[B, S, n_cb + 1]`; all false on padding.
    pub mask: &'a Array,
    /// `[B, S]` codebook-0 targets, as in [`LossBatch`].
    pub loss_mask: &'a Array,
    /// `[N]` int flat indices `b * S + t` of the depth-decoder frames, every
    /// `t >= 1` (not checked here).
    pub decoder_frames: &'a Array,
    /// Optional `[N]` weights (1 = real, 0 = padding entry); `None` = all 1.
    pub decoder_weights: Option<&'a Array>,
    /// Attention pattern of the backbone.
    pub attention: AttentionMask<'a>,
}

/// Weights of the two loss terms (1.0 / 1.0 = transformers' plain sum).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// Weight of the codebook-0 (backbone) term.
    pub semantic: f32,
    /// Weight of the codebooks 1..n-1 (depth decoder) term.
    pub acoustic: f32,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            semantic: 1.0,
            acoustic: 1.0,
        }
    }
}

/// One training batch as the loss sees it.
#[derive(Debug, Clone, Copy)]
pub struct LossBatch<'a> {
    /// Frames `[B, S, n_cb + 1]` (int); padding is all zeros.
    pub tokens: &'a Array,
    /// Column mask `[B, S, n_cb + 1]`; all false on padding.
    pub mask: &'a Array,
    /// `[B, S]` (bool or 0/1): frames whose codes are targets, i.e. audio
    /// and EOS frames of the turns being trained. Text, padding and context
    /// turns are 0. Column 0 is ignored (no previous state predicts it).
    pub loss_mask: &'a Array,
    /// Flat indices `b * S + t` (`N >= 1` of them, every `t >= 1`) of the
    /// loss frames the depth decoder is trained on; see
    /// [`loss_frame_indices`] and [`choose_decoder_frames`].
    pub decoder_frames: &'a [i32],
    /// Attention pattern of the backbone (causal for right padding).
    pub attention: AttentionMask<'a>,
}

/// The loss terms (f32 scalars).
#[derive(Debug, Clone)]
pub struct CsmLoss {
    /// Mean codebook-0 cross-entropy over loss frames.
    pub semantic: Array,
    /// Mean cross-entropy over (decoder frame, codebook 1..n-1) targets.
    pub acoustic: Array,
    /// `semantic_weight * semantic + acoustic_weight * acoustic`.
    pub total: Array,
}

/// Cross-entropy per position, computed in f32.
///
/// # Shapes
/// `logits: [..., V]`, `targets: [...]` (int) -> `[...]` f32
pub fn cross_entropy(logits: &Array, targets: &Array) -> Result<Array, Exception> {
    let logits = logits.as_dtype(Dtype::Float32)?;
    let lse = crate::kernels::pow_exp::logsumexp(&logits)?; // [...]
    let idx = targets.as_dtype(Dtype::Int32)?.expand_dims(-1)?; // [..., 1]
    let picked = take_along_axis(&logits, &idx, -1)?.squeeze_axes(&[-1])?; // [...]
    lse.subtract(&picked)
}

impl Csm {
    /// The training loss of one batch; see the module docs.
    ///
    /// # Shapes
    /// see [`LossBatch`]; the result holds scalars.
    ///
    /// # Errors
    /// Inconsistent shapes, an empty `decoder_frames` or one that is out of
    /// range or at the start of a row.
    #[allow(non_snake_case)]
    pub fn loss(
        &mut self,
        batch: &LossBatch<'_>,
        weights: LossWeights,
    ) -> Result<CsmLoss, Exception> {
        let shape = batch.tokens.shape();
        let (B, S) = (shape[0], shape[1]);
        if batch.loss_mask.shape() != [B, S] {
            return Err(Exception::custom(format!(
                "loss_mask must be [B, S] = [{B}, {S}], got {:?}",
                batch.loss_mask.shape()
            )));
        }
        if batch.decoder_frames.is_empty() {
            return Err(Exception::custom(
                "decoder_frames is empty: the depth decoder needs at least one loss frame",
            ));
        }
        if let Some(bad) = batch
            .decoder_frames
            .iter()
            .find(|&&f| f < 0 || f >= B * S || f % S == 0)
        {
            return Err(Exception::custom(format!(
                "decoder_frames: index {bad} is outside [0, B*S = {}) or the first frame of a row",
                B * S
            )));
        }
        if S < 2 {
            return Err(Exception::custom(format!(
                "a training sequence needs at least 2 frames, got {S}"
            )));
        }
        let nf = batch.decoder_frames.len() as i32;
        let idx = Array::from_slice(batch.decoder_frames, &[nf]); // [N]
        self.loss_arrays(
            &ArrayLossBatch {
                tokens: batch.tokens,
                mask: batch.mask,
                loss_mask: batch.loss_mask,
                decoder_frames: &idx,
                decoder_weights: None,
                attention: batch.attention,
            },
            weights,
        )
    }

    /// [`Csm::loss`] computed from arrays only, nothing read back on the
    /// host and no checks, so that it can be traced by `mx.compile` (a
    /// host value would be frozen into the trace).
    ///
    /// # Shapes
    /// see [`ArrayLossBatch`]; the result holds scalars.
    ///
    /// # Errors
    /// MLX failures (shapes that do not fit).
    #[allow(non_snake_case)]
    pub fn loss_arrays(
        &mut self,
        batch: &ArrayLossBatch<'_>,
        weights: LossWeights,
    ) -> Result<CsmLoss, Exception> {
        let shape = batch.tokens.shape();
        let (B, S) = (shape[0], shape[1]);
        let n = self.config.audio_num_codebooks;
        let h = self.backbone_hidden(FrameInput {
            tokens: batch.tokens,
            mask: batch.mask,
            attention: batch.attention,
        })?; // [B, S, D]
        let D = h.shape()[2];
        let tokens = batch.tokens.as_dtype(Dtype::Int32)?;

        // Semantic: h[t-1] predicts c0 of frame t.
        let h_prev = h.try_index((.., ..S - 1, ..))?; // [B, S-1, D]
        let c0_targets = tokens.try_index((.., 1.., 0))?; // [B, S-1]
        let v = self.config.audio_vocab_size;
        let cuda_ce = self.kernels.cuda_cross_entropy && cfg!(not(target_os = "macos"));
        let m = batch
            .loss_mask
            .try_index((.., 1..))?
            .as_dtype(Dtype::Float32)?; // [B, S-1]
        let fused = self.kernels.fused_cross_entropy;
        let ce = if cuda_ce {
            let wide = self.c0_logits_wide(&h_prev)?; // [B, S-1, W]
            cuda_cross_entropy(&wide, &c0_targets, v)?
        } else if fused {
            cross_entropy_fused(&self.c0_logits(&h_prev)?, &c0_targets)?
        } else {
            cross_entropy(&self.c0_logits(&h_prev)?, &c0_targets)?
        }; // [B, S-1]
        let count = ops::maximum(m.sum(None)?, Array::from_f32(1.0))?;
        let semantic = ce.multiply(&m)?.sum(None)?.divide(&count)?;

        // Acoustic: depth decoder on the gathered frames only.
        let idx = batch.decoder_frames.as_dtype(Dtype::Int32)?; // [N]
        let h_flat = h.reshape(&[B * S, D])?; // [B*S, D]
        let h_sel = take_axis(&h_flat, idx.subtract(Array::from_int(1))?, 0)?; // [N, D]
        let codes = take_axis(tokens.reshape(&[B * S, n + 1])?, &idx, 0)? // [N, n_cb + 1]
            .try_index((.., ..n))?; // [N, n_cb]

        // Per (frame, codebook) cross-entropy and the axis of frames in it.
        let (ce, frame_axis) = if cuda_ce {
            let depth = self.depth_logits_wide(&h_sel, &codes)?; // [n_cb - 1, N, W]
            let targets = codes.try_index((.., 1..))?.transpose_axes(&[1, 0])?; // [n_cb - 1, N]
            (cuda_cross_entropy(&depth, &targets, v)?, 1) // [n_cb - 1, N]
        } else if fused {
            // Codebook-major, as the heads compute it: no transposed copy.
            let depth = self.depth_logits_by_codebook(&h_sel, &codes)?; // [n_cb - 1, N, V]
            let targets = codes.try_index((.., 1..))?.transpose_axes(&[1, 0])?; // [n_cb - 1, N]
            (cross_entropy_fused(&depth, &targets)?, 1) // [n_cb - 1, N]
        } else {
            let depth = self.depth_logits(&h_sel, &codes)?; // [N, n_cb - 1, V]
            let targets = codes.try_index((.., 1..))?; // [N, n_cb - 1]
            (cross_entropy(&depth, &targets)?, 0) // [N, n_cb - 1]
        };
        let acoustic = match batch.decoder_weights {
            None => ce.mean(None)?,
            Some(w) => {
                // Weighted mean over frames (0 = padding), then codebooks.
                let w = w.as_dtype(Dtype::Float32)?;
                let per_frame = ce.mean_axis(1 - frame_axis, None)?; // [N]
                let count = ops::maximum(w.sum(None)?, Array::from_f32(1.0))?;
                per_frame.multiply(&w)?.sum(None)?.divide(&count)?
            }
        };

        let total = semantic
            .multiply(Array::from_f32(weights.semantic))?
            .add(acoustic.multiply(Array::from_f32(weights.acoustic))?)?;
        Ok(CsmLoss {
            semantic,
            acoustic,
            total,
        })
    }
}

/// Flat indices `b * seq_len + t` of the frames that can carry a loss:
/// `loss_mask[b, t]` set and `t >= 1`.
///
/// # Shapes
/// `loss_mask`: row-major `[batch, seq_len]`.
pub fn loss_frame_indices(loss_mask: &[bool], seq_len: usize) -> Vec<i32> {
    loss_mask
        .iter()
        .enumerate()
        .filter(|&(i, &on)| on && i % seq_len != 0)
        .map(|(i, _)| i as i32)
        .collect()
}

/// Picks the depth-decoder frames (Sesame's compute amortization): all of
/// `candidates` when `fraction >= 1`, else `max(1, ceil(len * fraction))`
/// of them chosen uniformly without replacement by a splitmix64 stream
/// seeded with `seed` (same seed, same choice), returned in ascending order.
///
/// # Panics
/// If `fraction` is not in `(0, 1]` or is NaN.
pub fn choose_decoder_frames(candidates: &[i32], fraction: f64, seed: u64) -> Vec<i32> {
    assert!(
        fraction > 0.0 && fraction <= 1.0,
        "decoder frame fraction must be in (0, 1], got {fraction}"
    );
    if fraction >= 1.0 || candidates.len() <= 1 {
        return candidates.to_vec();
    }
    let k = ((candidates.len() as f64 * fraction).ceil() as usize).max(1);
    let mut pool = candidates.to_vec();
    // The plain SplitMix64 stream from `seed` (not `Rng::new`'s mixed seed).
    let mut rng = crate::rng::Rng { state: seed };
    let mut next = || rng.next_u64();
    // Partial Fisher-Yates: the first k entries are a uniform sample.
    for i in 0..k {
        let j = i + (next() % (pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    let mut chosen = pool[..k].to_vec();
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::super::csm::tiny_config;
    use super::*;
    use mlx_rs::ops::indexing::IndexOp;
    use mlx_rs::random;

    #[test]
    fn cross_entropy_on_hand_built_logits() {
        // log-softmax of [0, ln 3] at index 1 = ln(3/4).
        let logits = Array::from_slice(&[0.0f32, 3f32.ln(), 2.0, 2.0], &[2, 2]);
        let targets = Array::from_slice(&[1i32, 0], &[2]);
        let ce = cross_entropy(&logits, &targets).unwrap();
        let v = ce.as_slice::<f32>().to_vec();
        assert!((v[0] - (4.0f32 / 3.0).ln()).abs() < 1e-6);
        assert!((v[1] - 2f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn frame_selection() {
        let mask = [true, true, false, true, true, true, false, false];
        let idx = loss_frame_indices(&mask, 4);
        assert_eq!(idx, vec![1, 3, 5]); // 0 and 4 start a row
        assert_eq!(choose_decoder_frames(&idx, 1.0, 7), idx);
        let many: Vec<i32> = (1..=64).collect();
        let a = choose_decoder_frames(&many, 1.0 / 16.0, 42);
        assert_eq!(a.len(), 4);
        assert_eq!(a, choose_decoder_frames(&many, 1.0 / 16.0, 42));
        assert_ne!(a, choose_decoder_frames(&many, 1.0 / 16.0, 43));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(choose_decoder_frames(&many[..3], 0.01, 1).len(), 1);
    }

    /// The loss equals a direct computation from the model pieces, masked
    /// frames (text, padding, context) change nothing, and a gathered
    /// subset gives the mean over that subset.
    #[test]
    fn loss_masks_and_matches_manual() {
        let cfg = tiny_config();
        let mut m = Csm::new(&cfg).unwrap();
        let (b, s, n) = (2, 6, 4);
        let (tokens, mask, loss_mask, frames) = toy_batch();
        assert_eq!(frames, vec![2, 3, 4, 5, 8, 9, 10]);
        let batch = LossBatch {
            tokens: &tokens,
            mask: &mask,
            loss_mask: &loss_mask,
            decoder_frames: &frames,
            attention: AttentionMask::Causal,
        };
        let loss = m.loss(&batch, LossWeights::default()).unwrap();

        // Manual: per frame, c0 CE from h[t-1], and the depth CE.
        let h = m
            .backbone_hidden(FrameInput {
                tokens: &tokens,
                mask: &mask,
                attention: AttentionMask::Causal,
            })
            .unwrap();
        let mut sem = 0.0;
        let mut aco = 0.0;
        for &f in &frames {
            let (bi, t) = (f / s, f % s);
            let hp = h.index((bi, t - 1, ..)).reshape(&[1, 32]).unwrap();
            let c = tokens.index((bi, t, ..n)).reshape(&[1, n]).unwrap();
            let l0 = m.c0_logits(&hp).unwrap();
            sem += cross_entropy(&l0, &c.index((.., 0)))
                .unwrap()
                .item_cast::<f32>();
            let dl = m.depth_logits(&hp, &c).unwrap();
            aco += cross_entropy(&dl, &c.index((.., 1..)))
                .unwrap()
                .sum(None)
                .unwrap()
                .item_cast::<f32>();
        }
        let nf = frames.len() as f32;
        let (sem, aco) = (sem / nf, aco / (nf * (n - 1) as f32));
        let got_s = loss.semantic.item_cast::<f32>();
        let got_a = loss.acoustic.item_cast::<f32>();
        assert!((got_s - sem).abs() < 1e-4, "{got_s} vs {sem}");
        assert!((got_a - aco).abs() < 1e-4, "{got_a} vs {aco}");
        assert!((loss.total.item_cast::<f32>() - (sem + aco)).abs() < 1e-4);

        // Weights scale the terms.
        let w = LossWeights {
            semantic: 0.5,
            acoustic: 2.0,
        };
        let lw = m.loss(&batch, w).unwrap();
        assert!((lw.total.item_cast::<f32>() - (0.5 * sem + 2.0 * aco)).abs() < 1e-4);

        // Changing a masked-out (padding) frame's codes changes nothing...
        let pad_changed = tokens.add(padding_bump(b, s, n)).unwrap();
        let batch2 = LossBatch {
            tokens: &pad_changed,
            ..batch
        };
        let l2 = m.loss(&batch2, LossWeights::default()).unwrap();
        assert!((l2.total.item_cast::<f32>() - loss.total.item_cast::<f32>()).abs() < 1e-6);

        // ...and a subset of decoder frames averages over that subset only.
        let sub = [3i32, 9];
        let l3 = m
            .loss(
                &LossBatch {
                    decoder_frames: &sub,
                    ..batch
                },
                LossWeights::default(),
            )
            .unwrap();
        assert!((l3.semantic.item_cast::<f32>() - sem).abs() < 1e-4);
        let mut aco_sub = 0.0;
        for f in [3, 9] {
            let (bi, t) = (f / s, f % s);
            let hp = h.index((bi, t - 1, ..)).reshape(&[1, 32]).unwrap();
            let c = tokens.index((bi, t, ..n)).reshape(&[1, n]).unwrap();
            let dl = m.depth_logits(&hp, &c).unwrap();
            aco_sub += cross_entropy(&dl, &c.index((.., 1..)))
                .unwrap()
                .sum(None)
                .unwrap()
                .item_cast::<f32>();
        }
        let aco_sub = aco_sub / (2.0 * (n - 1) as f32);
        assert!((l3.acoustic.item_cast::<f32>() - aco_sub).abs() < 1e-4);
    }

    /// Two rows of 6 frames: frames 0-1 text, 2-5 audio; row 1's frame 5
    /// is padding. Returns `(tokens, mask, loss_mask, loss frame indices)`.
    fn toy_batch() -> (Array, Array, Array, Vec<i32>) {
        let (b, s, n) = (2, 6, 4);
        let codes = random::randint::<_, i32>(0, 11, &[b, s, n], None).unwrap();
        let text = random::randint::<_, i32>(0, 50, &[b, s, 1], None).unwrap();
        let audio = [
            false, false, true, true, true, true, false, false, true, true, true, false,
        ];
        let is_audio = Array::from_slice(&audio, &[b, s, 1]);
        let is_text = Array::from_slice(
            &[
                true, true, false, false, false, false, true, true, false, false, false, false,
            ],
            &[b, s, 1],
        );
        let tokens = ops::concatenate(
            &[
                codes.multiply(&is_audio).unwrap(),
                text.multiply(&is_text).unwrap(),
            ],
            2,
        )
        .unwrap(); // [B, S, n+1]
        let mask = ops::concatenate(
            &[ops::broadcast_to(&is_audio, &[b, s, n]).unwrap(), is_text],
            2,
        )
        .unwrap(); // [B, S, n+1]
        let loss_mask = Array::from_slice(&audio, &[b, s]);
        let frames = loss_frame_indices(&audio, s as usize);
        (tokens, mask, loss_mask, frames)
    }

    /// LoRA parameters get finite gradients through the whole loss (RoPE,
    /// attention, gathers, both heads), and a step along them lowers it.
    #[test]
    fn lora_gradients_flow_through_the_loss() {
        use mlx_rs::module::ModuleParameters;
        let mut m = Csm::new(&tiny_config()).unwrap();
        m.freeze_parameters(true);
        for layer in m
            .backbone
            .layers
            .iter_mut()
            .chain(m.decoder.layers.iter_mut())
        {
            layer
                .self_attn
                .q_proj
                .attach_lora(2, 4.0, 0.0, false)
                .unwrap();
            layer.mlp.down_proj.attach_lora(2, 4.0, 0.0, false).unwrap();
        }
        let (tokens, mask, loss_mask, frames) = toy_batch();
        let batch = LossBatch {
            tokens: &tokens,
            mask: &mask,
            loss_mask: &loss_mask,
            decoder_frames: &frames,
            attention: AttentionMask::Causal,
        };
        let loss_fn = |model: &mut Csm, batch: LossBatch<'_>| -> Result<Vec<Array>, Exception> {
            Ok(vec![model.loss(&batch, LossWeights::default())?.total])
        };
        let mut value_and_grad = mlx_rs::nn::value_and_grad(loss_fn);
        let (value, grads) = value_and_grad(&mut m, batch).unwrap();
        let before = value[0].item_cast::<f32>();
        assert_eq!(grads.len(), 4 * 2 * 2, "only the adapters are trainable");
        let mut step = std::collections::HashMap::new();
        for (key, g) in &grads {
            let norm = g.square().unwrap().sum(None).unwrap().item_cast::<f32>();
            assert!(norm.is_finite(), "{key}");
            if key.ends_with("lora_a") {
                assert_eq!(norm, 0.0, "{key}: B = 0 gives A no gradient");
            } else {
                assert!(norm > 0.0, "{key} has no gradient");
            }
            let flat = m.parameters().flatten();
            let p = flat[key]
                .subtract(g.multiply(Array::from_f32(0.05)).unwrap())
                .unwrap();
            step.insert(key.clone(), p);
        }
        m.update_flattened(step);
        let after = m.loss(&batch, LossWeights::default()).unwrap().total;
        assert!(
            after.item_cast::<f32>() < before,
            "{} !< {before}",
            after.item_cast::<f32>()
        );
    }

    /// Adds 1 to the codes of the padding frame (row 1, frame 5) only.
    fn padding_bump(b: i32, s: i32, n: i32) -> Array {
        let mut v = vec![0i32; (b * s * (n + 1)) as usize];
        let base = ((s + 5) * (n + 1)) as usize;
        for c in 0..n as usize {
            v[base + c] = 1;
        }
        Array::from_slice(&v, &[b, s, n + 1])
    }

    #[test]
    fn rejects_empty_decoder_frames() {
        let mut m = Csm::new(&tiny_config()).unwrap();
        let tokens = ops::zeros::<i32>(&[1, 3, 5]).unwrap();
        let mask = ops::ones::<bool>(&[1, 3, 5]).unwrap();
        let lm = ops::ones::<bool>(&[1, 3]).unwrap();
        let none: [i32; 0] = [];
        let err = m
            .loss(
                &LossBatch {
                    tokens: &tokens,
                    mask: &mask,
                    loss_mask: &lm,
                    decoder_frames: &none,
                    attention: AttentionMask::Causal,
                },
                LossWeights::default(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("decoder_frames"), "{err}");
        // Frame 3 of a 3-frame row is row 1's first frame: no h[t-1].
        let err = m
            .loss(
                &LossBatch {
                    tokens: &tokens,
                    mask: &mask,
                    loss_mask: &lm,
                    decoder_frames: &[1, 3],
                    attention: AttentionMask::Causal,
                },
                LossWeights::default(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("index 3"), "{err}");
    }
}
