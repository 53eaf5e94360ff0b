//! Model FLOPs of one training step: what the step has to compute by the
//! model's shapes, whatever an implementation does on top (recomputation,
//! padding, copies). `csm bench-train` divides it by the step time and the
//! device's matmul rate for the model FLOPs utilisation (MFU).
//!
//! Counted, per token a weight sees (a token is a frame for the backbone
//! and the codebook-0 head, a codebook position for the depth decoder):
//!
//! - a frozen weight `W [out, in]`: `2 in out` forward and `2 in out` for
//!   the input gradient the backward needs below it: **4 per weight**;
//! - a trainable weight (a full fine-tune): 2 more for its own gradient,
//!   **6 per weight**;
//! - a LoRA adapter of rank `r` on it: `x A` and `(x A) B` forward, the
//!   gradients of `A` and `B`, and the input gradient through both:
//!   **`6 r (in + out)`**;
//! - causal attention per layer and sequence of `L` positions: `Q K^T` and
//!   `P V` over the `L (L + 1) / 2` visible pairs, `4 H hd` each forward,
//!   twice that backward: **`12 H hd L (L + 1) / 2`**;
//! - the depth decoder's input projection: forward on all `n_cb` positions
//!   of a frame, the input gradient for the backbone state only (the
//!   codebook embeddings are frozen): `2 D D_dec (n_cb + 1)` per frame;
//! - the codebook-0 head on the `S - 1` predicting frames of a row and the
//!   `n_cb - 1` depth heads on each decoder frame, as frozen weights.
//!
//! Not counted: embeddings (gathers), norms, RoPE, SwiGLU, softmax, the
//! loss and the optimizer (memory-bound, a small share of the time).

use mlx_rs::module::ModuleParameters;

use super::csm::Csm;
use super::llama::Llama;
use super::proj::Proj;

/// Model FLOPs of one training step, by part (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StepFlops {
    /// Backbone projections (frozen weights, trained weights, adapters).
    pub backbone: f64,
    /// Backbone attention.
    pub backbone_attention: f64,
    /// Codebook-0 head.
    pub c0_head: f64,
    /// Depth-decoder input projection.
    pub projection: f64,
    /// Depth-decoder projections.
    pub decoder: f64,
    /// Depth-decoder attention.
    pub decoder_attention: f64,
    /// Depth heads (codebooks 1..n_cb-1).
    pub depth_heads: f64,
    /// All of the above.
    pub total: f64,
}

/// Model FLOPs of one training step of `model` (its adapters and trainable
/// weights as attached) over rows of `row_frames` frames (padding
/// excluded), with `decoder_frames` frames through the depth decoder.
pub fn train_step_flops(model: &Csm, row_frames: &[usize], decoder_frames: usize) -> StepFlops {
    let trainable: std::collections::HashSet<String> = model
        .trainable_parameters()
        .flatten()
        .keys()
        .map(|k| k.to_string())
        .collect();
    let frames: f64 = row_frames.iter().map(|&s| s as f64).sum();
    let predicting: f64 = row_frames.iter().map(|&s| s.saturating_sub(1) as f64).sum();
    let n_cb = model.config.audio_num_codebooks as f64;
    let nd = decoder_frames as f64;
    let backbone = stack_weights(&model.backbone, "backbone", &trainable) * frames;
    let backbone_attention = row_frames
        .iter()
        .map(|&s| attention(&model.backbone, s as f64))
        .sum();
    let c0_head = proj_per_token(&model.codebook0_head, "codebook0_head", &trainable) * predicting;
    let (d_out, d_in) = model.projection.dims();
    let projection = 2.0 * d_in as f64 * d_out as f64 * (n_cb + 1.0) * nd;
    let decoder = stack_weights(&model.decoder, "decoder", &trainable) * n_cb * nd;
    let decoder_attention = attention(&model.decoder, n_cb) * nd;
    let head = model.audio_head.value.shape();
    let head_factor = if trainable.contains("audio_head") {
        6.0
    } else {
        4.0
    };
    let depth_heads = head_factor * head.iter().map(|&d| d as f64).product::<f64>() * nd;
    let total = backbone
        + backbone_attention
        + c0_head
        + projection
        + decoder
        + decoder_attention
        + depth_heads;
    StepFlops {
        backbone,
        backbone_attention,
        c0_head,
        projection,
        decoder,
        decoder_attention,
        depth_heads,
        total,
    }
}

/// FLOPs per token of one projection named `name` in the model's keys.
fn proj_per_token(p: &Proj, name: &str, trainable: &std::collections::HashSet<String>) -> f64 {
    let (out, input) = p.dims();
    let weights = out as f64 * input as f64;
    let factor = if trainable.contains(&format!("{name}.weight")) {
        6.0
    } else {
        4.0
    };
    let lora = match &p.lora_a.value {
        Some(a) => 6.0 * a.shape()[1] as f64 * (input + out) as f64,
        None => 0.0,
    };
    factor * weights + lora
}

/// FLOPs per token of every projection of a stack.
fn stack_weights(stack: &Llama, name: &str, trainable: &std::collections::HashSet<String>) -> f64 {
    stack
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let a = &l.self_attn;
            let m = &l.mlp;
            let key = |what: &str| format!("{name}.layers.{i}.{what}");
            [
                (&a.q_proj, key("self_attn.q_proj")),
                (&a.k_proj, key("self_attn.k_proj")),
                (&a.v_proj, key("self_attn.v_proj")),
                (&a.o_proj, key("self_attn.o_proj")),
                (&m.gate_proj, key("mlp.gate_proj")),
                (&m.up_proj, key("mlp.up_proj")),
                (&m.down_proj, key("mlp.down_proj")),
            ]
            .iter()
            .map(|(p, k)| proj_per_token(p, k, trainable))
            .sum::<f64>()
        })
        .sum()
}

/// Causal attention FLOPs of a whole stack for one sequence of `len`
/// positions, forward and backward.
fn attention(stack: &Llama, len: f64) -> f64 {
    let c = &stack.config;
    let pairs = len * (len + 1.0) / 2.0;
    12.0 * c.num_heads as f64 * c.head_dim as f64 * pairs * stack.layers.len() as f64
}

#[cfg(test)]
mod tests {
    use super::super::csm::tiny_config;
    use super::*;

    /// The tiny model's counts by hand: backbone 32 wide (4 heads of 8, 2
    /// kv heads, MLP 48), decoder 24 wide (4 heads of 6, 2 kv heads, MLP
    /// 40), 4 codebooks of 11 codes, 2 layers each.
    #[test]
    fn counts_match_the_shapes() {
        let mut m = Csm::new(&tiny_config()).unwrap();
        m.freeze_parameters(true);
        let f = train_step_flops(&m, &[10, 6], 3);
        // q, o: 32x32; k, v: 32x16; gate, up, down: 32x48.
        let bb = 2.0 * (2.0 * 1024.0 + 2.0 * 512.0 + 3.0 * 1536.0);
        assert_eq!(f.backbone, 4.0 * bb * 16.0);
        assert_eq!(f.backbone_attention, 12.0 * 32.0 * (55.0 + 21.0) * 2.0);
        assert_eq!(f.c0_head, 4.0 * 32.0 * 11.0 * 14.0);
        // q, o: 24x24; k, v: 24x12; MLP 24x40.
        let dec = 2.0 * (2.0 * 576.0 + 2.0 * 288.0 + 3.0 * 960.0);
        assert_eq!(f.decoder, 4.0 * dec * 4.0 * 3.0);
        assert_eq!(f.decoder_attention, 12.0 * 24.0 * 10.0 * 2.0 * 3.0);
        assert_eq!(f.projection, 2.0 * 32.0 * 24.0 * 5.0 * 3.0);
        assert_eq!(f.depth_heads, 4.0 * 3.0 * 24.0 * 11.0 * 3.0);
        // An adapter of rank 2 on one backbone q_proj adds 6 r (in + out)
        // per frame.
        m.backbone.layers[0]
            .self_attn
            .q_proj
            .attach_lora(2, 4.0, 0.0, false)
            .unwrap();
        let g = train_step_flops(&m, &[10, 6], 3);
        assert_eq!(g.backbone - f.backbone, 6.0 * 2.0 * 64.0 * 16.0);
        assert_eq!(g.total - f.total, g.backbone - f.backbone);
    }
}
