//! The ADM U-Net exactly as EDM's `DhariwalUNet` (edm / RelayDiffusion
//! `training/networks.py`), Dhariwal & Nichol 2021, "Diffusion Models Beat GANs".
//!
//! Building it:
//! 1. [`Structure::new`] derives the module list and channel counts from the config, the
//!    way the reference constructor does.
//! 2. [`DhariwalUnet::new`] creates one layer per module under the reference `state_dict`
//!    names, so converted EDM/RDM checkpoints load without renaming.
//!
//! Running it ([`DhariwalUnet::forward`]): mapping network → encoder (every output is
//! pushed on a skip stack) → decoder (a skip is concatenated, x first, before every block
//! whose input channels differ from the current ones) → `out_conv(SiLU(out_norm(x)))`.
//! This is the raw network F; [`super::precond::EdmPrecond`] wraps it.

use candle_core::{bail, Result, Tensor};
use candle_nn::{Module, VarBuilder};

use super::blocks::UNetBlock;
use super::config::UnetConfig;
use super::dropout::DropoutKey;
use super::embedding::Mapping;
use super::layers::{conv2d, group_norm, Conv};
use super::ops::group_norm::GroupNorm;
use super::structure::Structure;

/// What [`DhariwalUnet::forward_traced`] records (the golden files' `intermediates`).
#[derive(Debug, Default, Clone)]
pub struct Trace {
    /// The embedding after the final SiLU, [B, emb_channels].
    pub emb: Option<Tensor>,
    /// Every enc/dec module's output averaged over H and W, [B, C], in forward order,
    /// named as in the state_dict without `model.` (`enc.16x16_conv`, `dec.8x8_up`, ...).
    pub block_means: Vec<(String, Tensor)>,
}

impl Trace {
    fn record(&mut self, name: &str, x: &Tensor) -> Result<()> {
        self.block_means.push((name.to_string(), x.mean((2, 3))?));
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct DecBlock {
    name: String,
    block: UNetBlock,
    concat_skip: bool,
}

/// EDM's `DhariwalUNet`.
#[derive(Debug, Clone)]
pub struct DhariwalUnet {
    cfg: UnetConfig,
    mapping: Mapping,
    enc_conv: (String, Conv),
    enc: Vec<(String, UNetBlock)>,
    dec: Vec<DecBlock>,
    out_norm: GroupNorm,
    out_conv: Conv,
}

impl DhariwalUnet {
    /// `vb` is the network's root, i.e. `model` inside an `EDMPrecond` state_dict.
    pub fn new(vb: VarBuilder, cfg: &UnetConfig) -> Result<Self> {
        if vb.device().is_cpu() {
            super::ops::tune_cpu_runtime();
        }
        #[cfg(feature = "cuda")]
        if let candle_core::Device::Cuda(dev) = vb.device() {
            super::ops::cuda::runtime::tune_device(dev)?;
        }
        let s = Structure::new(cfg)?;
        let emb = s.emb_channels;
        let mapping = Mapping::new(
            &vb,
            cfg.model_channels,
            emb,
            cfg.label_dim,
            cfg.augment_dim,
            cfg.label_dropout,
        )?;
        let (name, cin, cout) = &s.input_conv;
        let enc_conv = (name.clone(), conv2d(*cin, *cout, 3, false, vb.pp(name))?);
        let enc = s
            .enc
            .iter()
            .map(|b| {
                Ok((
                    b.name.clone(),
                    UNetBlock::new(vb.pp(&b.name), b, emb, cfg.dropout)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let dec = s
            .dec
            .iter()
            .map(|b| {
                Ok(DecBlock {
                    name: b.name.clone(),
                    block: UNetBlock::new(vb.pp(&b.name), b, emb, cfg.dropout)?,
                    concat_skip: b.concat_skip,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let c = s.final_channels;
        Ok(Self {
            cfg: cfg.clone(),
            mapping,
            enc_conv,
            enc,
            dec,
            out_norm: group_norm(c, vb.pp("out_norm"))?,
            out_conv: conv2d(c, cfg.out_channels, 3, true, vb.pp("out_conv"))?,
        })
    }

    pub fn config(&self) -> &UnetConfig {
        &self.cfg
    }

    /// F(x, noise_labels, class_labels, augment_labels).
    ///
    /// * `x` [B, in_channels, H, W], H and W divisible by 2^(levels−1);
    /// * `noise_labels` [B] (EDM: ln(σ)/4), same dtype as `x`;
    /// * `class_labels` [B, L] or [1, L]; `None` adds no label term (= an all-zero label);
    /// * `augment_labels` [B, augment_dim], used only when the net has `map_augment`;
    /// * `dropout`: `Some(key)` in training (dropout and label dropout on, masks drawn
    ///   from the key), `None` in eval mode.
    pub fn forward(
        &self,
        x: &Tensor,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        dropout: Option<DropoutKey>,
    ) -> Result<Tensor> {
        self.run(x, noise_labels, class_labels, augment_labels, dropout, None)
    }

    /// [`Self::forward`] in eval mode, recording the intermediates into `trace`.
    pub fn forward_traced(
        &self,
        x: &Tensor,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        self.run(x, noise_labels, class_labels, None, None, Some(trace))
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let (_, c, h, w) = x.dims4()?;
        let m = self.cfg.size_multiple();
        if c != self.cfg.in_channels {
            bail!(
                "U-Net expects {} input channels, got {c}",
                self.cfg.in_channels
            );
        }
        if h == 0 || w == 0 || !h.is_multiple_of(m) || !w.is_multiple_of(m) {
            bail!(
                "U-Net with {} levels needs H and W divisible by {m}, got {h}×{w}",
                self.cfg.levels()
            );
        }
        Ok(())
    }

    fn run(
        &self,
        x: &Tensor,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        dropout: Option<DropoutKey>,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        self.check_input(x)?;

        // 1. Mapping: noise (+ augment) embedding → MLP → + label → SiLU.
        let emb = self
            .mapping
            .forward(noise_labels, class_labels, augment_labels, dropout)?;
        // Block i draws its dropout masks from child key i + 1 (0 is the mapping's).
        let key = |i: usize| dropout.map(|k| k.child(i as u64 + 1));
        if let Some(t) = trace.as_deref_mut() {
            t.emb = Some(emb.clone());
        }

        // 2. Encoder: every module's output goes on the skip stack.
        let mut x = self.enc_conv.1.forward(x)?;
        if let Some(t) = trace.as_deref_mut() {
            t.record(&self.enc_conv.0, &x)?;
        }
        let mut skips = vec![x.clone()];
        for (i, (name, block)) in self.enc.iter().enumerate() {
            x = block.forward(&x, &emb, key(i))?;
            if let Some(t) = trace.as_deref_mut() {
                t.record(name, &x)?;
            }
            skips.push(x.clone());
        }

        // 3. Decoder: concatenate [x, skip] before every `_block{i}`.
        for (i, d) in self.dec.iter().enumerate() {
            if d.concat_skip {
                let skip = match skips.pop() {
                    Some(s) => s,
                    None => bail!("U-Net: skip stack empty at {}", d.name),
                };
                x = Tensor::cat(&[&x, &skip], 1)?;
            }
            x = d.block.forward(&x, &emb, key(self.enc.len() + i))?;
            if let Some(t) = trace.as_deref_mut() {
                t.record(&d.name, &x)?;
            }
        }

        // 4. Output: GroupNorm → SiLU → 3×3 conv.
        self.out_conv.forward(&self.out_norm.forward_silu(&x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Shapes for every preset with zero weights, at small resolutions (adm-256 has six
    /// levels, so 32 px is its smallest input).
    #[test]
    fn presets_produce_the_input_shape() -> Result<()> {
        let dev = Device::Cpu;
        for (name, res) in [("tiny", 16), ("tiny", 32), ("adm-64", 16), ("adm-256", 32)] {
            let cfg = UnetConfig::preset(name)?;
            let vb = VarBuilder::zeros(DType::F32, &dev);
            let net = DhariwalUnet::new(vb.pp("model"), &cfg)?;
            let x = Tensor::zeros((2, 3, res, res), DType::F32, &dev)?;
            let noise = Tensor::zeros(2, DType::F32, &dev)?;
            let labels = Tensor::zeros((2, cfg.label_dim.max(1)), DType::F32, &dev)?;
            let labels = (cfg.label_dim > 0).then_some(&labels);
            let y = net.forward(&x, &noise, labels, None, None)?;
            assert_eq!(y.dims(), &[2, 3, res, res], "{name} at {res}px");
        }
        Ok(())
    }

    #[test]
    fn rejects_sizes_the_levels_cannot_halve() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = UnetConfig::tiny();
        let net = DhariwalUnet::new(VarBuilder::zeros(DType::F32, &dev), &cfg)?;
        let x = Tensor::zeros((1, 3, 18, 16), DType::F32, &dev)?;
        let noise = Tensor::zeros(1, DType::F32, &dev)?;
        assert!(net.forward(&x, &noise, None, None, None).is_err());
        Ok(())
    }
}
