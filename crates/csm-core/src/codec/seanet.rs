//! SEANet encoder and decoder (causal, no norm, ELU, identity skips).

use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::Array;

use super::config::MimiConfig;
use super::conv::{elu, CausalConv1d, CausalConvTranspose1d, ConvPadMode};

/// Residual block: `x + conv2(elu(conv1(elu(x))))`, `conv1` with kernel
/// `residual_kernel_size` and dilation `base^j`, `conv2` with kernel 1.
#[derive(Debug, Clone, ModuleParameters)]
pub struct SeanetResBlock {
    /// `dim -> dim / compress`.
    #[param]
    pub conv1: CausalConv1d,
    /// `dim / compress -> dim`, kernel 1.
    #[param]
    pub conv2: CausalConv1d,
}

impl SeanetResBlock {
    fn new(dim: i32, cfg: &MimiConfig, dilation: i32) -> Result<Self, Exception> {
        let hidden = dim / cfg.compress;
        Ok(SeanetResBlock {
            conv1: CausalConv1d::new(
                dim,
                hidden,
                cfg.residual_kernel_size,
                1,
                dilation,
                1,
                true,
                ConvPadMode::Zeros,
            )?,
            conv2: CausalConv1d::new(hidden, dim, 1, 1, 1, 1, true, ConvPadMode::Zeros)?,
        })
    }

    /// # Shapes
    /// `x: [B, L, dim]` -> `[B, L, dim]`
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let h = self.conv1.forward(&elu(x)?)?;
        let h = self.conv2.forward(&elu(&h)?)?;
        x.add(&h)
    }
}

/// One encoder stage: residual blocks, then ELU and a strided conv that
/// doubles the channels.
#[derive(Debug, Clone, ModuleParameters)]
pub struct SeanetEncoderBlock {
    /// Residual blocks (`n_residual_layers`).
    #[param]
    pub residuals: Vec<SeanetResBlock>,
    /// `dim -> 2 dim`, kernel `2 ratio`, stride `ratio`.
    #[param]
    pub downsample: CausalConv1d,
}

/// SEANet encoder: waveform to latent at the SEANet frame rate.
#[derive(Debug, Clone, ModuleParameters)]
pub struct SeanetEncoder {
    /// `channels -> n_filters`, kernel `kernel_size`.
    #[param]
    pub init_conv: CausalConv1d,
    /// One stage per ratio (ratios reversed: 4, 5, 6, 8).
    #[param]
    pub blocks: Vec<SeanetEncoderBlock>,
    /// `n_filters 2^len(ratios) -> dimension`, kernel `last_kernel_size`.
    #[param]
    pub final_conv: CausalConv1d,
}

impl SeanetEncoder {
    /// Builds the encoder with random weights.
    pub fn new(cfg: &MimiConfig) -> Result<Self, Exception> {
        let init_conv = CausalConv1d::new(
            cfg.channels,
            cfg.n_filters,
            cfg.kernel_size,
            1,
            1,
            1,
            true,
            ConvPadMode::Zeros,
        )?;
        let mut dim = cfg.n_filters;
        let mut blocks = Vec::new();
        for &ratio in cfg.ratios.iter().rev() {
            let residuals = (0..cfg.n_residual_layers)
                .map(|j| SeanetResBlock::new(dim, cfg, cfg.dilation_base.pow(j as u32)))
                .collect::<Result<Vec<_>, _>>()?;
            let downsample = CausalConv1d::new(
                dim,
                dim * 2,
                ratio * 2,
                ratio,
                1,
                1,
                true,
                ConvPadMode::Zeros,
            )?;
            blocks.push(SeanetEncoderBlock {
                residuals,
                downsample,
            });
            dim *= 2;
        }
        let final_conv = CausalConv1d::new(
            dim,
            cfg.dimension,
            cfg.last_kernel_size,
            1,
            1,
            1,
            true,
            ConvPadMode::Zeros,
        )?;
        Ok(SeanetEncoder {
            init_conv,
            blocks,
            final_conv,
        })
    }

    /// # Shapes
    /// `x: [B, N, channels]` -> `[B, ceil(N / prod(ratios)), dimension]`
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let mut x = self.init_conv.forward(x)?;
        for block in &self.blocks {
            for res in &block.residuals {
                x = res.forward(&x)?;
            }
            x = block.downsample.forward(&elu(&x)?)?;
        }
        self.final_conv.forward(&elu(&x)?)
    }
}

/// One decoder stage: ELU and a conv-transpose that halves the channels,
/// then residual blocks.
#[derive(Debug, Clone, ModuleParameters)]
pub struct SeanetDecoderBlock {
    /// `dim -> dim / 2`, kernel `2 ratio`, stride `ratio`.
    #[param]
    pub upsample: CausalConvTranspose1d,
    /// Residual blocks (`n_residual_layers`).
    #[param]
    pub residuals: Vec<SeanetResBlock>,
}

/// SEANet decoder: latent at the SEANet frame rate to waveform.
#[derive(Debug, Clone, ModuleParameters)]
pub struct SeanetDecoder {
    /// `dimension -> n_filters 2^len(ratios)`, kernel `kernel_size`.
    #[param]
    pub init_conv: CausalConv1d,
    /// One stage per ratio (8, 6, 5, 4).
    #[param]
    pub blocks: Vec<SeanetDecoderBlock>,
    /// `n_filters -> channels`, kernel `last_kernel_size`.
    #[param]
    pub final_conv: CausalConv1d,
}

impl SeanetDecoder {
    /// Builds the decoder with random weights.
    pub fn new(cfg: &MimiConfig) -> Result<Self, Exception> {
        let mut dim = cfg.n_filters * (1 << cfg.ratios.len());
        let init_conv = CausalConv1d::new(
            cfg.dimension,
            dim,
            cfg.kernel_size,
            1,
            1,
            1,
            true,
            ConvPadMode::Zeros,
        )?;
        let mut blocks = Vec::new();
        for &ratio in &cfg.ratios {
            let upsample = CausalConvTranspose1d::new(dim, dim / 2, ratio * 2, ratio, 1, true)?;
            let residuals = (0..cfg.n_residual_layers)
                .map(|j| SeanetResBlock::new(dim / 2, cfg, cfg.dilation_base.pow(j as u32)))
                .collect::<Result<Vec<_>, _>>()?;
            blocks.push(SeanetDecoderBlock {
                upsample,
                residuals,
            });
            dim /= 2;
        }
        let final_conv = CausalConv1d::new(
            dim,
            cfg.channels,
            cfg.last_kernel_size,
            1,
            1,
            1,
            true,
            ConvPadMode::Zeros,
        )?;
        Ok(SeanetDecoder {
            init_conv,
            blocks,
            final_conv,
        })
    }

    /// # Shapes
    /// `x: [B, T, dimension]` -> `[B, T prod(ratios), channels]`
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let mut x = self.init_conv.forward(x)?;
        for block in &self.blocks {
            x = block.upsample.forward(&elu(&x)?)?;
            for res in &block.residuals {
                x = res.forward(&x)?;
            }
        }
        self.final_conv.forward(&elu(&x)?)
    }
}
