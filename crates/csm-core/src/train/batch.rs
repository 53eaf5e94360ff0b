//! From utterances (text tokens + Mimi codes) to padded training batches in
//! CSM's frame layout.
//!
//! A frame has `K + 1` columns: `K` codebooks, then one text token. A turn
//! is its text frames (`<|begin_of_text|>[spk]text<|end_of_text|>`, one token
//! per frame), its audio frames, and one all-zero EOS audio frame. An
//! example is `context_turns` previous turns of the same recording followed
//! by the target turn.

use mlx_rs::error::Exception;
use mlx_rs::Array;

use crate::rng::Rng;

/// One turn of a conversation.
#[derive(Debug, Clone)]
pub struct Turn {
    /// Token ids of the whole prompt, BOS and EOS included.
    pub text_tokens: Vec<u32>,
    /// Mimi codes, frame-major: `codes[t][k]`, `k < K`.
    pub codes: Vec<Vec<u32>>,
    /// Whether this turn's audio frames carry loss.
    pub has_loss: bool,
}

impl Turn {
    /// Frames this turn occupies (text + audio + EOS).
    pub fn frames(&self) -> usize {
        self.text_tokens.len() + self.codes.len() + 1
    }
}

/// One training sequence, flattened row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Codebooks per frame (`K`).
    pub num_codebooks: usize,
    /// `[S, K+1]` token ids.
    pub frames: Vec<i32>,
    /// `[S, K+1]` 1.0 where a column is embedded.
    pub mask: Vec<f32>,
    /// `[S]` true where frame `t` is an audio (or EOS) frame whose codes are
    /// a training target (predicted from position `t-1`).
    pub targets: Vec<bool>,
}

impl Example {
    /// Sequence length in frames.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether the example has no frames.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Frames carrying loss.
    pub fn target_frames(&self) -> usize {
        self.targets.iter().filter(|&&t| t).count()
    }
}

/// Why an example could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The target turn alone exceeds `--max-seq-len`.
    #[error("the target turn needs {needed} frames but --max-seq-len is {max}")]
    TooLong {
        /// Frames the target turn needs.
        needed: usize,
        /// The limit.
        max: usize,
    },
    /// A turn has a code row of the wrong width.
    #[error("a turn has {found} codebooks per frame, expected {expected}")]
    Codebooks {
        /// Expected K.
        expected: usize,
        /// Found.
        found: usize,
    },
}

/// Lays out `context` turns (oldest first) then `target`. Context turns are
/// dropped from the oldest until the sequence fits `max_len` frames.
pub fn build_example(
    context: &[Turn],
    target: &Turn,
    num_codebooks: usize,
    max_len: usize,
) -> Result<Example, BatchError> {
    if target.frames() > max_len {
        return Err(BatchError::TooLong {
            needed: target.frames(),
            max: max_len,
        });
    }
    let mut first = 0;
    let total =
        |from: usize| context[from..].iter().map(Turn::frames).sum::<usize>() + target.frames();
    while total(first) > max_len {
        first += 1;
    }
    let width = num_codebooks + 1;
    let len = total(first);
    let mut ex = Example {
        num_codebooks,
        frames: Vec::with_capacity(len * width),
        mask: Vec::with_capacity(len * width),
        targets: Vec::with_capacity(len),
    };
    for turn in context[first..].iter().chain(std::iter::once(target)) {
        for &tok in &turn.text_tokens {
            ex.frames.extend(std::iter::repeat_n(0, num_codebooks));
            ex.frames.push(tok as i32);
            ex.mask.extend(std::iter::repeat_n(0.0, num_codebooks));
            ex.mask.push(1.0);
            ex.targets.push(false);
        }
        let eos = vec![0u32; num_codebooks];
        for row in turn.codes.iter().chain(std::iter::once(&eos)) {
            if row.len() != num_codebooks {
                return Err(BatchError::Codebooks {
                    expected: num_codebooks,
                    found: row.len(),
                });
            }
            ex.frames.extend(row.iter().map(|&c| c as i32));
            ex.frames.push(0);
            ex.mask.extend(std::iter::repeat_n(1.0, num_codebooks));
            ex.mask.push(0.0);
            ex.targets.push(turn.has_loss);
        }
    }
    Ok(ex)
}

/// A batch as MLX arrays: one example per row, right-padded
/// ([`Layout::Padded`]), or several examples per row ([`Layout::Packed`]).
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, S, K+1]` int32 token ids (0 in padding).
    pub frames: Array,
    /// `[B, S, K+1]` f32 embedding mask (0 in padding).
    pub mask: Array,
    /// `[B, S]` f32: 1 where frame `t` is a codebook-0 target.
    pub c0_targets: Array,
    /// Flat indices `b * S + t` of the frames the depth decoder trains on
    /// (a subset of the targets), in the order drawn.
    pub decoder_frames: Vec<i32>,
    /// `[B, S]` f32: 1 on real frames, 0 on padding (attention key mask).
    pub valid: Array,
    /// Target frames in the batch (codebook-0 loss terms).
    pub target_frames: usize,
    /// Frames in the batch, padding excluded.
    pub real_frames: usize,
    /// With [`Layout::Packed`]: which example each frame belongs to and
    /// its position in it.
    pub packed: Option<PackedRows>,
}

impl Batch {
    /// Frames the step computes (`B * S`), padding included.
    pub fn layout_frames(&self) -> usize {
        let shape = self.frames.shape();
        shape[0] as usize * shape[1] as usize
    }
}

/// Where each frame of a packed batch comes from.
#[derive(Debug, Clone)]
pub struct PackedRows {
    /// `[B, S]` int32: the example's index within its row (0, 1, ...);
    /// -1 on padding. Attention stays within a segment
    /// ([`crate::model::packed_causal_mask`]).
    pub segments: Array,
    /// `[B, S]` int32: the frame's position within its example (RoPE
    /// restarts at 0 for each example); 0 on padding.
    pub positions: Array,
}

/// How the examples of a micro-batch are laid out in rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One example per row, right-padded to the longest.
    Padded,
    /// Several examples per row, up to `row_len` frames
    /// ([`pack_rows`]), right-padded to the fullest row. The loss is the
    /// padded layout's: the same target frames, the same depth-decoder
    /// frames, attention and positions per example.
    Packed {
        /// Frames a row may hold.
        row_len: usize,
    },
}

/// Packs examples of `lengths` frames into rows of at most `row_len`
/// frames by first-fit decreasing: longest first (ties in index order),
/// each into the first row it fits, a new row when none has room (an
/// example longer than `row_len` gets a row of its own). Returns each
/// row's example indices in the order they are laid out.
pub fn pack_rows(lengths: &[usize], row_len: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        match rows
            .iter_mut()
            .find(|(used, _)| used + lengths[i] <= row_len)
        {
            Some((used, row)) => {
                *used += lengths[i];
                row.push(i);
            }
            None => rows.push((lengths[i], vec![i])),
        }
    }
    rows.into_iter().map(|(_, row)| row).collect()
}

/// Frames a micro-batch of examples of `lengths` frames takes in `layout`
/// (rows x longest row), padding included.
pub fn layout_frames(lengths: &[usize], layout: Layout) -> usize {
    match layout {
        Layout::Padded => lengths.len() * lengths.iter().copied().max().unwrap_or(0),
        Layout::Packed { row_len } => {
            let rows = pack_rows(lengths, row_len);
            let longest = rows
                .iter()
                .map(|r| r.iter().map(|&i| lengths[i]).sum::<usize>())
                .max()
                .unwrap_or(0);
            rows.len() * longest
        }
    }
}

/// Pads `examples` to a common length and picks the depth-decoder frames:
/// `max(1, round(fraction * targets))` of the target frames, uniformly.
pub fn collate(
    examples: &[&Example],
    decoder_fraction: f32,
    rng: &mut Rng,
) -> Result<Batch, Exception> {
    collate_as(examples, decoder_fraction, rng, Layout::Padded)
}

/// [`collate`] in a given layout. The depth-decoder frames are drawn over
/// the target frames in example order whatever the layout, so the same
/// examples and generator state choose the same frames of the same
/// examples, padded or packed.
pub fn collate_as(
    examples: &[&Example],
    decoder_fraction: f32,
    rng: &mut Rng,
    layout: Layout,
) -> Result<Batch, Exception> {
    let rows: Vec<Vec<usize>> = match layout {
        Layout::Padded => (0..examples.len()).map(|i| vec![i]).collect(),
        Layout::Packed { row_len } => {
            let lengths: Vec<usize> = examples.iter().map(|e| e.len()).collect();
            pack_rows(&lengths, row_len)
        }
    };
    let b = rows.len();
    let k1 = examples[0].num_codebooks + 1;
    let s = rows
        .iter()
        .map(|r| r.iter().map(|&i| examples[i].len()).sum::<usize>())
        .max()
        .unwrap_or(0);
    let mut frames = vec![0i32; b * s * k1];
    let mut mask = vec![0f32; b * s * k1];
    let mut c0 = vec![0f32; b * s];
    let mut valid = vec![0f32; b * s];
    let mut segments = vec![-1i32; b * s];
    let mut positions = vec![0i32; b * s];
    // Each example's target frames as flat indices, gathered in example
    // order below.
    let mut targets_of: Vec<Vec<i32>> = vec![Vec::new(); examples.len()];
    for (r, row) in rows.iter().enumerate() {
        let mut start = r * s;
        for (seg, &i) in row.iter().enumerate() {
            let ex = examples[i];
            let n = ex.len();
            frames[start * k1..(start + n) * k1].copy_from_slice(&ex.frames);
            mask[start * k1..(start + n) * k1].copy_from_slice(&ex.mask);
            for t in 0..n {
                valid[start + t] = 1.0;
                segments[start + t] = seg as i32;
                positions[start + t] = t as i32;
                if ex.targets[t] {
                    c0[start + t] = 1.0;
                    targets_of[i].push((start + t) as i32);
                }
            }
            start += n;
        }
    }
    let target_idx: Vec<i32> = targets_of.concat();
    let want = ((decoder_fraction * target_idx.len() as f32).round() as usize).max(1);
    let chosen: Vec<i32> = rng
        .choose(target_idx.len(), want)
        .into_iter()
        .map(|j| target_idx[j])
        .collect();
    let (bi, si, ki) = (b as i32, s as i32, k1 as i32);
    let packed = matches!(layout, Layout::Packed { .. }).then(|| PackedRows {
        segments: Array::from_slice(&segments, &[bi, si]),
        positions: Array::from_slice(&positions, &[bi, si]),
    });
    Ok(Batch {
        frames: Array::from_slice(&frames, &[bi, si, ki]),
        mask: Array::from_slice(&mask, &[bi, si, ki]),
        c0_targets: Array::from_slice(&c0, &[bi, si]),
        decoder_frames: chosen,
        valid: Array::from_slice(&valid, &[bi, si]),
        target_frames: target_idx.len(),
        real_frames: examples.iter().map(|e| e.len()).sum(),
        packed,
    })
}

/// Groups example indices into batches of similar length (less padding):
/// shuffle, cut into chunks of `batch_size * 8`, sort each chunk by length,
/// split into batches, shuffle the batches.
pub fn bucket_batches(lengths: &[usize], batch_size: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);
    let mut batches = Vec::new();
    for chunk in order.chunks(batch_size * 8) {
        let mut chunk = chunk.to_vec();
        chunk.sort_by_key(|&i| lengths[i]);
        batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
    }
    rng.shuffle(&mut batches);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(text: usize, audio: usize, has_loss: bool) -> Turn {
        Turn {
            text_tokens: (0..text as u32).map(|i| 100 + i).collect(),
            codes: (0..audio as u32).map(|t| vec![t + 1, t + 2]).collect(),
            has_loss,
        }
    }

    #[test]
    fn layout_of_context_and_target() {
        let ex = build_example(&[turn(2, 2, false)], &turn(3, 1, true), 2, 100).unwrap();
        // context: 2 text + 2 audio + EOS; target: 3 text + 1 audio + EOS
        assert_eq!(ex.len(), 5 + 5);
        let row = |t: usize| &ex.frames[t * 3..t * 3 + 3];
        let mrow = |t: usize| &ex.mask[t * 3..t * 3 + 3];
        assert_eq!(row(0), &[0, 0, 100]);
        assert_eq!(mrow(0), &[0.0, 0.0, 1.0]);
        assert_eq!(row(2), &[1, 2, 0]);
        assert_eq!(mrow(2), &[1.0, 1.0, 0.0]);
        assert_eq!(row(4), &[0, 0, 0]); // EOS frame
        assert_eq!(mrow(4), &[1.0, 1.0, 0.0]);
        // Only the target's audio + EOS frames are targets.
        let targets: Vec<usize> = (0..ex.len()).filter(|&t| ex.targets[t]).collect();
        assert_eq!(targets, vec![8, 9]);
    }

    #[test]
    fn context_is_dropped_oldest_first_to_fit() {
        let ctx = [turn(2, 3, false), turn(2, 1, false)];
        let ex = build_example(&ctx, &turn(1, 1, true), 2, 8).unwrap();
        // 6 + 4 + 3 = 13 > 8; dropping the first leaves 4 + 3 = 7.
        assert_eq!(ex.len(), 7);
        assert_eq!(ex.frames[2], 100);
        let err = build_example(&[], &turn(5, 10, true), 2, 8).unwrap_err();
        assert_eq!(err, BatchError::TooLong { needed: 16, max: 8 });
        let bad = Turn {
            codes: vec![vec![1]],
            ..turn(1, 0, true)
        };
        assert!(matches!(
            build_example(&[], &bad, 2, 8),
            Err(BatchError::Codebooks { .. })
        ));
    }

    #[test]
    fn collate_pads_and_selects_decoder_frames() {
        let a = build_example(&[], &turn(2, 3, true), 2, 100).unwrap(); // 6 frames, 4 targets
        let b = build_example(&[], &turn(1, 1, true), 2, 100).unwrap(); // 3 frames, 2 targets
        let mut rng = Rng::new(1);
        let batch = collate(&[&a, &b], 0.5, &mut rng).unwrap();
        assert_eq!(batch.frames.shape(), &[2, 6, 3]);
        assert_eq!(batch.target_frames, 6);
        assert_eq!(batch.real_frames, 9);
        let valid = batch.valid.as_slice::<f32>().to_vec();
        assert_eq!(&valid[6..12], &[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        let sel = batch.decoder_frames.clone();
        assert_eq!(sel.len(), 3);
        let c0 = batch.c0_targets.as_slice::<f32>().to_vec();
        assert!(sel.iter().all(|&i| c0[i as usize] == 1.0));
        // fraction 1.0 selects every target
        let all = collate(&[&a, &b], 1.0, &mut rng).unwrap();
        assert_eq!(all.decoder_frames.len(), 6);
    }

    #[test]
    fn packing_is_first_fit_decreasing() {
        // Longest first: 9 opens row 0, 7 row 1, 5 row 2; 4 joins the 5,
        // 3 the 7 (10); 2 fits none of 9, 10, 9: a new row.
        let rows = pack_rows(&[3, 9, 4, 7, 5, 2], 10);
        assert_eq!(rows, vec![vec![1], vec![3, 0], vec![4, 2], vec![5]]);
        // Ties in index order; an example longer than a row gets its own.
        assert_eq!(
            pack_rows(&[4, 12, 4, 4], 8),
            vec![vec![1], vec![0, 2], vec![3]]
        );
        assert_eq!(layout_frames(&[3, 9, 4, 7, 5, 2], Layout::Padded), 6 * 9);
        assert_eq!(
            layout_frames(&[3, 9, 4, 7, 5, 2], Layout::Packed { row_len: 10 }),
            4 * 10
        );
    }

    #[test]
    fn packed_rows_restart_positions_and_keep_the_decoder_frames() {
        let a = build_example(&[], &turn(2, 3, true), 2, 100).unwrap(); // 6 frames
        let b = build_example(&[], &turn(1, 1, true), 2, 100).unwrap(); // 3 frames
        let c = build_example(&[], &turn(2, 2, true), 2, 100).unwrap(); // 5 frames
        let refs = [&a, &b, &c];
        let padded = collate(&refs, 0.5, &mut Rng::new(5)).unwrap();
        let packed =
            collate_as(&refs, 0.5, &mut Rng::new(5), Layout::Packed { row_len: 9 }).unwrap();
        // Rows: [a, b] (9 frames), [c] (5, padded to 9).
        assert_eq!(packed.frames.shape(), &[2, 9, 3]);
        assert_eq!(packed.layout_frames(), 18);
        assert_eq!(padded.layout_frames(), 18);
        assert_eq!(packed.real_frames, 14);
        assert_eq!(packed.target_frames, padded.target_frames);
        let p = packed.packed.as_ref().unwrap();
        assert_eq!(
            p.segments.as_slice::<i32>(),
            &[0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, -1, -1, -1, -1]
        );
        assert_eq!(
            p.positions.as_slice::<i32>(),
            &[0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 1, 2, 3, 4, 0, 0, 0, 0]
        );
        // The same frames of the same examples go through the decoder:
        // padded row i frame t is packed (row, start + t).
        let place = |f: i32| -> (usize, i32) {
            let (row, t) = (f / 6, f % 6);
            match row {
                0 => (0, t),
                1 => (0, 6 + t),
                _ => (1, t),
            }
        };
        let moved: Vec<i32> = padded
            .decoder_frames
            .iter()
            .map(|&f| {
                let (row, t) = place(f);
                row as i32 * 9 + t
            })
            .collect();
        assert_eq!(packed.decoder_frames, moved);
        assert_eq!(packed.decoder_frames.len(), 5); // round(0.5 x 9 targets)
                                                    // Each packed frame holds the padded frame's tokens.
        let (pf, qf) = (
            padded.frames.as_slice::<i32>(),
            packed.frames.as_slice::<i32>(),
        );
        for f in 0..18 {
            let (row, t) = (f / 6, f % 6);
            if (row == 1 && t >= 3) || (row == 2 && t >= 5) {
                continue; // padding of the padded layout
            }
            let (prow, pt) = place(f as i32);
            let q = (prow * 9 + pt as usize) * 3;
            assert_eq!(&pf[f * 3..f * 3 + 3], &qf[q..q + 3], "frame {f}");
        }
    }

    #[test]
    fn buckets_cover_every_example_once() {
        let lengths: Vec<usize> = (0..37).map(|i| (i * 7) % 23).collect();
        let batches = bucket_batches(&lengths, 4, &mut Rng::new(3));
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..37).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 4));
    }
}
