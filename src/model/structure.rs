//! The module list of a `DhariwalUNet`, derived from a [`UnetConfig`] exactly the way the
//! reference constructor does it (edm `training/networks.py`, `DhariwalUNet.__init__`).
//!
//! It is plain data: no tensors. [`super::unet`] builds its layers from it, [`super::info`]
//! counts parameters and FLOPs from it, and [`super::checkpoint`] checks files against
//! [`Structure::state_dict`]. Keeping one derivation means the three cannot disagree.
//!
//! The constructor tracks the current channel count `cout`: in the encoder only
//! `_block{i}` modules change it, and every decoder `_block{i}` takes `cout + skip` input
//! channels, where `skip` is popped from the list of encoder outputs. With `num_blocks = 0`
//! this gives channel counts that `channel_mult` alone does not predict (golden README,
//! "num_blocks = 0").

use candle_core::{bail, Result};

use super::config::UnetConfig;

/// `DhariwalUNet` gives every attention head 64 channels.
pub const CHANNELS_PER_HEAD: usize = 64;
/// GroupNorm: at most 32 groups, at least 4 channels per group.
pub const MAX_GROUPS: usize = 32;
pub const MIN_CHANNELS_PER_GROUP: usize = 4;
/// GroupNorm epsilon, everywhere (`out_norm` included).
pub const GROUP_NORM_EPS: f64 = 1e-5;
/// The `[1, 1]` resample filter as stored in checkpoints: outer([1,1],[1,1]) / 4.
pub const RESAMPLE_FILTER_VALUE: f32 = 0.25;
/// Shape of every `*.resample_filter` buffer.
pub const RESAMPLE_FILTER_SHAPE: [usize; 4] = [1, 1, 2, 2];

/// Number of GroupNorm groups for `channels` (the reference's `min(32, C // 4)`).
pub fn group_norm_groups(channels: usize) -> usize {
    MAX_GROUPS.min(channels / MIN_CHANNELS_PER_GROUP)
}

/// Resampling inside a block (and its skip path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    None,
    /// Nearest-neighbour ×2 (transposed conv with the box filter × 4).
    Up,
    /// 2×2 mean, stride 2 (conv with the box filter).
    Down,
}

/// What the residual path of a block does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipKind {
    Identity,
    /// Resample only (up/down blocks, C_in = C_out): a `skip.resample_filter` buffer, no weights.
    Resample,
    /// 1×1 conv with bias (after resampling, if any) when C_in ≠ C_out.
    Conv,
}

/// One `UNetBlock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    /// Module name below `model.`, e.g. `enc.8x8_down` or `dec.4x4_block1`.
    pub name: String,
    /// Resolution of the block's output at the configured `img_resolution`.
    pub resolution: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub resample: Resample,
    /// 0 = no attention (not asked for, or fewer than 64 channels).
    pub num_heads: usize,
    /// Decoder only: concatenate a popped encoder output before this block.
    pub concat_skip: bool,
}

impl BlockSpec {
    pub fn skip(&self) -> SkipKind {
        if self.in_channels != self.out_channels {
            SkipKind::Conv
        } else if self.resample != Resample::None {
            SkipKind::Resample
        } else {
            SkipKind::Identity
        }
    }
}

/// The whole network, in forward order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structure {
    pub emb_channels: usize,
    /// `enc.{R}x{R}_conv`: name, in, out channels.
    pub input_conv: (String, usize, usize),
    /// Encoder blocks after the input conv (`_down`, `_block{i}`), in order.
    pub enc: Vec<BlockSpec>,
    /// Decoder blocks (`_in0`, `_in1`, `_up`, `_block{i}`), in order.
    pub dec: Vec<BlockSpec>,
    /// Channels entering `out_norm` / `out_conv`.
    pub final_channels: usize,
}

/// One entry of the reference `state_dict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Full key, e.g. `model.enc.8x8_down.conv0.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    /// A constant buffer (`*.resample_filter`), not a parameter.
    pub buffer: bool,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl Structure {
    /// Derive the module list; fails on configurations the reference could not run
    /// (a GroupNorm whose group count does not divide its channels).
    pub fn new(cfg: &UnetConfig) -> Result<Self> {
        cfg.validate()?;
        let mc = cfg.model_channels;
        let last = cfg.levels() - 1;
        let heads = |attention: bool, c: usize| {
            if attention {
                c / CHANNELS_PER_HEAD
            } else {
                0
            }
        };
        let block = |name: String, res, cin, cout, resample, attention: bool, concat| BlockSpec {
            name,
            resolution: res,
            in_channels: cin,
            out_channels: cout,
            resample,
            num_heads: heads(attention, cout),
            concat_skip: concat,
        };

        // 1. Encoder: the input conv, then per level an optional `_down` and the blocks.
        let res0 = cfg.img_resolution;
        let mut cout = mc * cfg.channel_mult[0];
        let input_conv = (format!("enc.{res0}x{res0}_conv"), cfg.in_channels, cout);
        let mut skips = vec![cout];
        let mut enc = Vec::new();
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            let res = cfg.img_resolution >> level;
            let attn = cfg.attn_resolutions.contains(&res);
            if level > 0 {
                let name = format!("enc.{res}x{res}_down");
                enc.push(block(name, res, cout, cout, Resample::Down, false, false));
                skips.push(cout);
            }
            for idx in 0..cfg.num_blocks {
                let cin = cout;
                cout = mc * mult;
                let name = format!("enc.{res}x{res}_block{idx}");
                enc.push(block(name, res, cin, cout, Resample::None, attn, false));
                skips.push(cout);
            }
        }

        // 2. Decoder: `_in0` (always asks for attention) and `_in1` at the lowest level,
        //    `_up` elsewhere, then num_blocks + 1 blocks that each eat one skip.
        let mut dec = Vec::new();
        for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
            let res = cfg.img_resolution >> level;
            let attn = cfg.attn_resolutions.contains(&res);
            if level == last {
                let (n0, n1) = (
                    format!("dec.{res}x{res}_in0"),
                    format!("dec.{res}x{res}_in1"),
                );
                dec.push(block(n0, res, cout, cout, Resample::None, true, false));
                dec.push(block(n1, res, cout, cout, Resample::None, false, false));
            } else {
                let name = format!("dec.{res}x{res}_up");
                dec.push(block(name, res, cout, cout, Resample::Up, false, false));
            }
            for idx in 0..=cfg.num_blocks {
                let skip = skips.pop().expect("one encoder output per decoder block");
                let cin = cout + skip;
                cout = mc * mult;
                let name = format!("dec.{res}x{res}_block{idx}");
                dec.push(block(name, res, cin, cout, Resample::None, attn, true));
            }
        }
        debug_assert!(skips.is_empty());

        let s = Self {
            emb_channels: cfg.emb_channels(),
            input_conv,
            enc,
            dec,
            final_channels: cout,
        };
        s.check_group_norms()?;
        Ok(s)
    }

    /// Every block, encoder then decoder.
    pub fn blocks(&self) -> impl Iterator<Item = &BlockSpec> {
        self.enc.iter().chain(self.dec.iter())
    }

    fn check_group_norms(&self) -> Result<()> {
        let check = |name: &str, c: usize| -> Result<()> {
            let g = group_norm_groups(c);
            if g == 0 || !c.is_multiple_of(g) {
                bail!(
                    "model config: GroupNorm `{name}` over {c} channels needs min(32, C/4) = {g} \
                     groups to divide C (the reference would fail here too)"
                );
            }
            Ok(())
        };
        for b in self.blocks() {
            check(&format!("{}.norm0", b.name), b.in_channels)?;
            check(&format!("{}.norm1", b.name), b.out_channels)?;
        }
        check("out_norm", self.final_channels)
    }

    /// The reference `state_dict()` of `EDMPrecond` (all keys start with `model.`), in its
    /// order: each module's parameters, then its buffers, then its children.
    pub fn state_dict(&self, cfg: &UnetConfig) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        let mut param = |name: String, shape: Vec<usize>| {
            out.push(TensorSpec {
                name: format!("model.{name}"),
                shape,
                buffer: false,
            })
        };
        let (mc, emb) = (cfg.model_channels, self.emb_channels);
        if cfg.augment_dim > 0 {
            param("map_augment.weight".into(), vec![mc, cfg.augment_dim]);
        }
        param("map_layer0.weight".into(), vec![emb, mc]);
        param("map_layer0.bias".into(), vec![emb]);
        param("map_layer1.weight".into(), vec![emb, emb]);
        param("map_layer1.bias".into(), vec![emb]);
        if cfg.label_dim > 0 {
            param("map_label.weight".into(), vec![emb, cfg.label_dim]);
        }
        let (name, cin, cout) = &self.input_conv;
        param(format!("{name}.weight"), vec![*cout, *cin, 3, 3]);
        param(format!("{name}.bias"), vec![*cout]);
        for b in self.blocks() {
            block_state_dict(b, emb, &mut out);
        }
        let c = self.final_channels;
        let mut param = |name: &str, shape: Vec<usize>| {
            out.push(TensorSpec {
                name: format!("model.{name}"),
                shape,
                buffer: false,
            })
        };
        param("out_norm.weight", vec![c]);
        param("out_norm.bias", vec![c]);
        param("out_conv.weight", vec![cfg.out_channels, c, 3, 3]);
        param("out_conv.bias", vec![cfg.out_channels]);
        out
    }
}

fn block_state_dict(b: &BlockSpec, emb: usize, out: &mut Vec<TensorSpec>) {
    let mut push = |leaf: &str, shape: Vec<usize>, buffer| {
        out.push(TensorSpec {
            name: format!("model.{}.{leaf}", b.name),
            shape,
            buffer,
        })
    };
    let (ci, co) = (b.in_channels, b.out_channels);
    let filter = RESAMPLE_FILTER_SHAPE.to_vec();
    push("norm0.weight", vec![ci], false);
    push("norm0.bias", vec![ci], false);
    push("conv0.weight", vec![co, ci, 3, 3], false);
    push("conv0.bias", vec![co], false);
    if b.resample != Resample::None {
        push("conv0.resample_filter", filter.clone(), true);
    }
    push("affine.weight", vec![2 * co, emb], false);
    push("affine.bias", vec![2 * co], false);
    push("norm1.weight", vec![co], false);
    push("norm1.bias", vec![co], false);
    push("conv1.weight", vec![co, co, 3, 3], false);
    push("conv1.bias", vec![co], false);
    if b.skip() == SkipKind::Conv {
        push("skip.weight", vec![co, ci, 1, 1], false);
        push("skip.bias", vec![co], false);
    }
    if b.skip() != SkipKind::Identity && b.resample != Resample::None {
        push("skip.resample_filter", filter, true);
    }
    if b.num_heads > 0 {
        push("norm2.weight", vec![co], false);
        push("norm2.bias", vec![co], false);
        push("qkv.weight", vec![3 * co, co, 1, 1], false);
        push("qkv.bias", vec![3 * co], false);
        push("proj.weight", vec![co, co, 1, 1], false);
        push("proj.bias", vec![co], false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The multi-head golden case (`uncond8_2heads`): num_blocks = 0, so every encoder
    /// output has model_channels · channel_mult[0] channels (golden README, "num_blocks = 0").
    #[test]
    fn num_blocks_zero_tracks_channels_like_the_reference() {
        let cfg = UnetConfig {
            img_resolution: 8,
            in_channels: 3,
            out_channels: 3,
            label_dim: 0,
            augment_dim: 0,
            model_channels: 8,
            channel_mult: vec![4, 16],
            channel_mult_emb: 4,
            num_blocks: 0,
            attn_resolutions: vec![4],
            dropout: 0.1,
            label_dropout: 0.0,
        };
        let s = Structure::new(&cfg).unwrap();
        let dec: Vec<_> = s
            .dec
            .iter()
            .map(|b| (b.name.as_str(), b.in_channels, b.out_channels, b.num_heads))
            .collect();
        assert_eq!(
            dec,
            vec![
                ("dec.4x4_in0", 32, 32, 0),
                ("dec.4x4_in1", 32, 32, 0),
                ("dec.4x4_block0", 64, 128, 2),
                ("dec.8x8_up", 128, 128, 0),
                ("dec.8x8_block0", 160, 32, 0),
            ]
        );
    }

    #[test]
    fn rejects_group_norm_that_cannot_split() {
        // 8 × 17 = 136 channels: min(32, 136/4) = 32 groups do not divide 136.
        let mut cfg = UnetConfig::tiny();
        cfg.model_channels = 8;
        cfg.channel_mult = vec![1, 17];
        assert!(Structure::new(&cfg).is_err());
    }
}
