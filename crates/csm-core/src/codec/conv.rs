//! Causal 1-D convolutions with Mimi's (moshi 0.2.2 / transformers)
//! non-streaming padding rules, in MLX's channels-last layout.
//!
//! * [`CausalConv1d`]: left pad `k_eff - stride`, right pad `extra` so that a
//!   stride-`s` conv maps `L -> ceil(L / s)`, both with zeros or with the edge
//!   value (replicate), then an unpadded conv.
//! * [`CausalConvTranspose1d`]: full transposed conv, then the last
//!   `k - stride` samples are dropped (`trim_right_ratio = 1`), so it maps
//!   `L -> L * stride`. With `groups = channels` it is the depthwise upsample.
//!
//! Weights are stored in MLX layout: conv `[out, k, in / groups]`,
//! conv-transpose `[out, k, in / groups]`; the loader converts PyTorch's
//! `[out, in, k]` and `[in, out / groups, k]`.

use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::Param;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::ops::{self, PadMode};
use mlx_rs::{random, Array};

/// How a causal conv fills its padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvPadMode {
    /// Zeros (PyTorch `"constant"`), used by every SEANet conv.
    Zeros,
    /// Edge value (PyTorch `"replicate"`), used by the downsample conv.
    Replicate,
}

/// Right padding that makes the last window of a strided conv complete
/// (moshi's `get_extra_padding_for_conv1d`), for an input of `length`.
pub fn extra_padding(length: i32, kernel_eff: i32, stride: i32, padding_total: i32) -> i32 {
    let n_frames =
        ((length - kernel_eff + padding_total) as f64 / stride as f64 + 1.0).ceil() as i64 - 1;
    let ideal = n_frames * stride as i64 + (kernel_eff - padding_total) as i64;
    (ideal - length as i64).max(0) as i32
}

/// Output length of a [`CausalConv1d`] for an input of `length` samples
/// (equals `ceil(length / stride)`).
pub fn conv_output_length(length: i32, kernel_size: i32, stride: i32, dilation: i32) -> i32 {
    let kernel_eff = (kernel_size - 1) * dilation + 1;
    let padding_total = kernel_eff - stride;
    let padded = length + padding_total + extra_padding(length, kernel_eff, stride, padding_total);
    (padded - kernel_eff) / stride + 1
}

/// Uniform `±1/sqrt(fan_in)` initialisation (PyTorch's conv default range).
fn uniform_init(shape: &[i32], fan_in: i32) -> Result<Array, Exception> {
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    random::uniform::<_, f32>(-bound, bound, shape, None)
}

/// Causal conv1d with constant or replicate padding and extra right padding.
#[derive(Debug, Clone, ModuleParameters)]
pub struct CausalConv1d {
    /// Weight, MLX layout `[out, k, in / groups]`.
    #[param]
    pub weight: Param<Array>,
    /// Optional bias `[out]`.
    #[param]
    pub bias: Param<Option<Array>>,
    /// Stride.
    pub stride: i32,
    /// Dilation.
    pub dilation: i32,
    /// Feature groups.
    pub groups: i32,
    /// Padding fill.
    pub pad_mode: ConvPadMode,
}

impl CausalConv1d {
    /// A conv with random weights (replaced when a checkpoint is loaded).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: i32,
        out_channels: i32,
        kernel_size: i32,
        stride: i32,
        dilation: i32,
        groups: i32,
        bias: bool,
        pad_mode: ConvPadMode,
    ) -> Result<Self, Exception> {
        let fan_in = in_channels / groups * kernel_size;
        let weight = uniform_init(&[out_channels, kernel_size, in_channels / groups], fan_in)?;
        let bias = if bias {
            Some(uniform_init(&[out_channels], fan_in)?)
        } else {
            None
        };
        Ok(CausalConv1d {
            weight: Param::new(weight),
            bias: Param::new(bias),
            stride,
            dilation,
            groups,
            pad_mode,
        })
    }

    /// Kernel size (from the weight).
    pub fn kernel_size(&self) -> i32 {
        self.weight.value.shape()[1]
    }

    /// Applies the padded conv.
    ///
    /// # Shapes
    /// `x: [B, L, in]` -> `[B, ceil(L / stride), out]`
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let length = x.shape()[1];
        let kernel_eff = (self.kernel_size() - 1) * self.dilation + 1;
        let padding_total = kernel_eff - self.stride;
        let extra = extra_padding(length, kernel_eff, self.stride, padding_total);
        let mode = match self.pad_mode {
            ConvPadMode::Zeros => PadMode::Constant,
            ConvPadMode::Replicate => PadMode::Edge,
        };
        let x = if padding_total > 0 || extra > 0 {
            // [B, L, in] -> [B, padding_total + L + extra, in]
            ops::pad(x, &[(0, 0), (padding_total, extra), (0, 0)], None, mode)?
        } else {
            x.clone()
        };
        let y = ops::conv1d(
            &x,
            &self.weight.value,
            self.stride,
            0,
            self.dilation,
            self.groups,
        )?;
        match &self.bias.value {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
}

/// Causal conv-transpose1d that trims `k - stride` samples on the right.
#[derive(Debug, Clone, ModuleParameters)]
pub struct CausalConvTranspose1d {
    /// Weight, MLX layout `[out, k, in / groups]`.
    #[param]
    pub weight: Param<Array>,
    /// Optional bias `[out]`.
    #[param]
    pub bias: Param<Option<Array>>,
    /// Stride (upsampling factor).
    pub stride: i32,
    /// Feature groups (`channels` for the depthwise upsample).
    pub groups: i32,
}

impl CausalConvTranspose1d {
    /// A conv-transpose with random weights (replaced when loading).
    pub fn new(
        in_channels: i32,
        out_channels: i32,
        kernel_size: i32,
        stride: i32,
        groups: i32,
        bias: bool,
    ) -> Result<Self, Exception> {
        let fan_in = out_channels / groups * kernel_size;
        let weight = uniform_init(&[out_channels, kernel_size, in_channels / groups], fan_in)?;
        let bias = if bias {
            Some(uniform_init(&[out_channels], fan_in)?)
        } else {
            None
        };
        Ok(CausalConvTranspose1d {
            weight: Param::new(weight),
            bias: Param::new(bias),
            stride,
            groups,
        })
    }

    /// Kernel size (from the weight).
    pub fn kernel_size(&self) -> i32 {
        self.weight.value.shape()[1]
    }

    /// Applies the transposed conv and the causal right trim.
    ///
    /// # Shapes
    /// `x: [B, L, in]` -> `[B, L * stride, out]`
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let length = x.shape()[1];
        let y = match self.taps(x)? {
            Some(taps) => self.overlap_add(&taps, length)?,
            None => {
                // [B, L, in] -> [B, (L - 1) * stride + k, out]
                let y = ops::conv_transpose1d(
                    x,
                    &self.weight.value,
                    self.stride,
                    0,
                    1,
                    0,
                    self.groups,
                )?;
                // [B, (L - 1) * stride + k, out] -> [B, L * stride, out]
                y.index((.., ..length * self.stride, ..))
            }
        };
        match &self.bias.value {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
}

impl CausalConvTranspose1d {
    /// What each input frame adds at each kernel tap, `[B, L, k, out]`, as
    /// one matmul (dense) or one broadcast product (depthwise); `None` for
    /// other group counts. MLX's CPU conv-transpose takes a direct-loop path
    /// (input dilation) that made Mimi's decoder ~50x slower than PyTorch.
    ///
    /// # Shapes
    /// `x: [B, L, in]` -> `[B, L, k, out]`
    fn taps(&self, x: &Array) -> Result<Option<Array>, Exception> {
        let w = &self.weight.value; // [out, k, in / groups]
        let (out, k, per_group) = (w.shape()[0], w.shape()[1], w.shape()[2]);
        let (b, l, input) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        if self.groups == 1 {
            let wt = w.transpose_axes(&[2, 1, 0])?.reshape(&[input, k * out])?; // [in, k * out]
            Ok(Some(ops::matmul(x, &wt)?.reshape(&[b, l, k, out])?)) // [B, L, k, out]
        } else if self.groups == input && out == input && per_group == 1 {
            let wt = w.squeeze_axes(&[2])?.t(); // [out, k] -> [k, out]
            Ok(Some(x.expand_dims(2)?.multiply(&wt)?)) // [B, L, 1, in] * [k, out] -> [B, L, k, out]
        } else {
            Ok(None)
        }
    }

    /// Sums the taps into the output: frame `t`, tap `j` lands on sample
    /// `t * stride + j`; samples from `L * stride` on are the causal trim.
    ///
    /// # Shapes
    /// `taps: [B, L, k, out]` -> `[B, L * stride, out]`
    fn overlap_add(&self, taps: &Array, length: i32) -> Result<Array, Exception> {
        let (b, k, out) = (taps.shape()[0], taps.shape()[2], taps.shape()[3]);
        let s = self.stride;
        let blocks = (k + s - 1) / s;
        // Pad the taps to whole blocks of `stride`: [B, L, blocks * s, out].
        let taps = if blocks * s > k {
            ops::pad(
                taps,
                &[(0, 0), (0, 0), (0, blocks * s - k), (0, 0)],
                None,
                PadMode::Constant,
            )?
        } else {
            taps.clone()
        };
        let taps = taps.reshape(&[b, length, blocks, s, out])?; // [B, L, blocks, s, out]
        let mut y: Option<Array> = None;
        for j in 0..blocks.min(length) {
            // Block j of frame t covers samples (t + j) * s ..; keep the
            // frames that land before L * s and shift them by j * s.
            let part = taps
                .index((.., ..length - j, j, .., ..)) // [B, L - j, s, out]
                .reshape(&[b, (length - j) * s, out])?; // [B, (L - j) * s, out]
            let part = if j > 0 {
                ops::pad(
                    &part,
                    &[(0, 0), (j * s, 0), (0, 0)],
                    None,
                    PadMode::Constant,
                )?
            } else {
                part
            }; // [B, L * s, out]
            y = Some(match y {
                Some(acc) => acc.add(&part)?,
                None => part,
            });
        }
        Ok(y.expect("at least one block: k >= 1 and L >= 1"))
    }
}

/// ELU with `alpha = 1`, `expm1` on the negative side like PyTorch (one
/// fused pass on the Linux CPU: [`crate::kernels::elu`]).
///
/// # Shapes
/// any -> same
pub fn elu(x: &Array) -> Result<Array, Exception> {
    crate::kernels::elu(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_vec(a: &Array) -> Vec<f32> {
        a.as_dtype(mlx_rs::Dtype::Float32)
            .unwrap()
            .as_slice::<f32>()
            .to_vec()
    }

    #[test]
    fn strided_conv_lengths_are_ceil() {
        for (k, s) in [(7, 1), (8, 4), (10, 5), (12, 6), (16, 8), (4, 2), (3, 1)] {
            for l in 1..40 {
                assert_eq!(
                    conv_output_length(l, k, s, 1),
                    (l + s - 1) / s,
                    "k={k} s={s} L={l}"
                );
                let conv = CausalConv1d::new(2, 3, k, s, 1, 1, true, ConvPadMode::Zeros).unwrap();
                let x = random::normal::<f32>(&[1, l, 2], None, None, None).unwrap();
                let y = conv.forward(&x).unwrap();
                assert_eq!(y.shape(), &[1, (l + s - 1) / s, 3]);
            }
        }
    }

    /// Direct causal conv with explicit padding, for comparison.
    fn reference_conv(x: &[f32], w: &[f32], stride: usize, replicate: bool) -> Vec<f32> {
        let k = w.len();
        let l = x.len();
        let pt = k - stride;
        let extra = extra_padding(l as i32, k as i32, stride as i32, pt as i32) as usize;
        let mut padded = vec![if replicate { x[0] } else { 0.0 }; pt];
        padded.extend_from_slice(x);
        padded.extend(std::iter::repeat_n(
            if replicate { x[l - 1] } else { 0.0 },
            extra,
        ));
        (0..=(padded.len() - k) / stride)
            .map(|t| (0..k).map(|j| padded[t * stride + j] * w[j]).sum())
            .collect()
    }

    #[test]
    fn replicate_padding_differs_from_zeros() {
        let x = [3.0f32, -1.0, 2.0, 0.5, 4.0];
        let w = [0.5f32, -0.25, 1.0, 2.0];
        for (mode, replicate) in [(ConvPadMode::Zeros, false), (ConvPadMode::Replicate, true)] {
            let mut conv = CausalConv1d::new(1, 1, 4, 2, 1, 1, false, mode).unwrap();
            conv.weight = Param::new(Array::from_slice(&w, &[1, 4, 1]));
            let y = conv.forward(&Array::from_slice(&x, &[1, 5, 1])).unwrap();
            assert_eq!(y.shape(), &[1, 3, 1]);
            let want = reference_conv(&x, &w, 2, replicate);
            let got = to_vec(&y);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{mode:?}: {got:?} vs {want:?}");
            }
        }
        // The first output sees two copies of x[0] with replicate padding.
        let want_zero = reference_conv(&x, &w, 2, false);
        let want_rep = reference_conv(&x, &w, 2, true);
        assert!((want_rep[0] - want_zero[0] - (0.5 * 3.0 - 0.25 * 3.0)).abs() < 1e-6);
        // ... and the last output sees x[4] instead of zero on the right.
        assert!((want_rep[2] - want_zero[2]).abs() > 1.0);
    }

    #[test]
    fn conv_transpose_matches_pytorch_semantics_and_trims_right() {
        // y[s*t + j] += x[t] * w[j], then drop the last k - s samples.
        let x = [1.0f32, 2.0, -1.0];
        let w = [0.5f32, 1.0, -2.0, 3.0];
        let (k, s) = (4usize, 2usize);
        let mut full = vec![0.0f32; (x.len() - 1) * s + k];
        for (t, xv) in x.iter().enumerate() {
            for (j, wv) in w.iter().enumerate() {
                full[s * t + j] += xv * wv;
            }
        }
        full.truncate(x.len() * s);
        let mut convtr = CausalConvTranspose1d::new(1, 1, 4, 2, 1, true).unwrap();
        convtr.weight = Param::new(Array::from_slice(&w, &[1, 4, 1]));
        convtr.bias = Param::new(Some(Array::from_slice(&[0.25f32], &[1])));
        let y = convtr.forward(&Array::from_slice(&x, &[1, 3, 1])).unwrap();
        assert_eq!(y.shape(), &[1, 6, 1]);
        let got = to_vec(&y);
        for (a, b) in got.iter().zip(&full) {
            assert!((a - (b + 0.25)).abs() < 1e-5, "{got:?} vs {full:?}");
        }
    }

    #[test]
    fn depthwise_conv_transpose_is_per_channel() {
        // Two channels, groups = 2: each channel uses its own kernel only.
        let (c, k, s, l) = (2, 4, 2, 3);
        let w: Vec<f32> = (0..c * k).map(|i| i as f32 * 0.5 - 1.0).collect(); // [c, k, 1]
        let x: Vec<f32> = (0..l * c).map(|i| (i as f32).sin()).collect(); // [1, l, c]
        let mut up =
            CausalConvTranspose1d::new(c as i32, c as i32, k as i32, s as i32, c as i32, false)
                .unwrap();
        up.weight = Param::new(Array::from_slice(&w, &[c as i32, k as i32, 1]));
        let y = up
            .forward(&Array::from_slice(&x, &[1, l as i32, c as i32]))
            .unwrap();
        assert_eq!(y.shape(), &[1, (l * s) as i32, c as i32]);
        let got = to_vec(&y);
        for ch in 0..c {
            let mut full = vec![0.0f32; (l - 1) * s + k];
            for t in 0..l {
                for j in 0..k {
                    full[s * t + j] += x[t * c + ch] * w[ch * k + j];
                }
            }
            for t in 0..l * s {
                assert!(
                    (got[t * c + ch] - full[t]).abs() < 1e-5,
                    "channel {ch} t {t}"
                );
            }
        }
    }

    /// The matmul + overlap-add path against MLX's own conv-transpose, for
    /// dense and depthwise layers, kernels that are and are not multiples of
    /// the stride, and inputs shorter than the kernel.
    #[test]
    fn overlap_add_matches_mlx_conv_transpose() {
        random::seed(5).unwrap();
        let cases = [
            // (in, out, k, stride, groups, length)
            (6, 4, 16, 8, 1, 7),
            (5, 3, 10, 5, 1, 4),
            (4, 4, 5, 2, 1, 3),
            (3, 2, 7, 3, 1, 1),
            (8, 8, 4, 2, 8, 9),
            (6, 6, 5, 2, 6, 2),
        ];
        for (cin, cout, k, s, g, l) in cases {
            let conv = CausalConvTranspose1d::new(cin, cout, k, s, g, true).unwrap();
            let x = random::normal::<f32>(&[2, l, cin], None, None, None).unwrap();
            let got = conv.forward(&x).unwrap();
            let want = ops::conv_transpose1d(&x, &conv.weight.value, s, 0, 1, 0, g)
                .unwrap()
                .index((.., ..l * s, ..))
                .add(conv.bias.value.as_ref().unwrap())
                .unwrap();
            assert_eq!(
                got.shape(),
                want.shape(),
                "case {:?}",
                (cin, cout, k, s, g, l)
            );
            let err = crate::test_util::max_abs_diff(&got, &want);
            assert!(
                err < 1e-5,
                "case {:?}: max error {err}",
                (cin, cout, k, s, g, l)
            );
        }
    }

    #[test]
    fn elu_matches_definition() {
        let x = Array::from_slice(&[-3.0f32, -0.5, 0.0, 0.5, 2.0], &[5]);
        let got = to_vec(&elu(&x).unwrap());
        let want: Vec<f32> = [-3.0f32, -0.5, 0.0, 0.5, 2.0]
            .iter()
            .map(|&v| if v > 0.0 { v } else { v.exp_m1() })
            .collect();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
