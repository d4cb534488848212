//! [`UnetConfig`]: the constructor arguments of EDM's `DhariwalUNet` (the ADM U-Net),
//! with named presets and the JSON form stored next to every checkpoint (`config.json`).
//!
//! This file only describes a network. Which modules exist and how many channels each
//! has is derived in [`super::structure`]; the layers themselves live in [`super::unet`].

use std::path::Path;

use candle_core::{bail, Result};
use serde::{Deserialize, Serialize};

/// The arguments of `DhariwalUNet(...)` (RelayDiffusion/edm `training/networks.py`), under
/// the same names, so the conversion script can copy them from a checkpoint's module.
///
/// The defaults of the optional fields are the reference defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    /// Resolution the network was built for. It names the modules (`enc.64x64_conv`) and
    /// places attention (`attn_resolutions` are absolute sizes). The forward pass accepts
    /// any H×W divisible by 2^(levels−1); the structure stays the one built for this size.
    pub img_resolution: usize,
    /// Colour channels of the input image (3 for RGB).
    pub in_channels: usize,
    /// Channels of the output F (EDM: equal to `in_channels`).
    pub out_channels: usize,
    /// Number of classes; 0 = unconditional (no `map_label`).
    #[serde(default)]
    pub label_dim: usize,
    /// Size of the augmentation label (9 for EDM's `AugmentPipe`); 0 = no `map_augment`.
    #[serde(default)]
    pub augment_dim: usize,
    /// Base channel count; level l has `model_channels * channel_mult[l]` channels.
    pub model_channels: usize,
    /// Per-level channel multipliers; its length is the number of levels.
    pub channel_mult: Vec<usize>,
    /// Embedding width = `model_channels * channel_mult_emb`.
    #[serde(default = "default_channel_mult_emb")]
    pub channel_mult_emb: usize,
    /// Residual blocks per encoder level (the decoder has one more).
    pub num_blocks: usize,
    /// Resolutions whose blocks ask for self-attention (blocks with < 64 channels get none).
    pub attn_resolutions: Vec<usize>,
    /// Dropout probability inside every block (training only).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Probability of dropping the class label during training (classifier-free guidance).
    #[serde(default)]
    pub label_dropout: f64,
}

fn default_channel_mult_emb() -> usize {
    4
}

fn default_dropout() -> f64 {
    0.10
}

/// Names accepted by [`UnetConfig::preset`].
pub const PRESETS: &[&str] = &["tiny", "adm-64", "adm-256"];

impl UnetConfig {
    /// A small network for CPU tests and the quickstart (32 px, unconditional).
    ///
    /// 32 → 64 → 64 channels at 32/16/8 px with one block per level: 1,371,107
    /// parameters, 0.15 / 0.60 / 2.5 GFLOP per image at 16 / 32 / 64 px. A training step
    /// (forward + backward) at 16 px and batch 16 takes about 0.7 s on two busy CPU
    /// cores, so a few hundred steps take minutes.
    ///
    /// Attention sits at the lowest resolution only, the one level with 64 channels:
    /// `DhariwalUNet` fixes 64 channels per head, so a narrower level would silently get
    /// none, and 8×8 = 64 tokens cost little. The preset thereby keeps every code path of
    /// the large networks in use (attention, 1×1 skip convs, up/down blocks, the decoder's
    /// skip concatenation). Dropout is 0: a run of minutes underfits rather than overfits.
    pub fn tiny() -> Self {
        Self {
            img_resolution: 32,
            in_channels: 3,
            out_channels: 3,
            label_dim: 0,
            augment_dim: 0,
            model_channels: 32,
            channel_mult: vec![1, 2, 2],
            channel_mult_emb: 4,
            num_blocks: 1,
            attn_resolutions: vec![8],
            dropout: 0.0,
            label_dropout: 0.0,
        }
    }

    /// ImageNet 64×64, RDM/EDM first stage (`train.py --arch=adm --cond=1`; RDM_NOTES §9):
    /// 192/384/576/768 channels, 3 blocks, attention at 32/16/8, 1000 classes.
    /// 295,899,267 parameters.
    pub fn adm_64() -> Self {
        Self {
            img_resolution: 64,
            in_channels: 3,
            out_channels: 3,
            label_dim: 1000,
            augment_dim: 0,
            model_channels: 192,
            channel_mult: vec![1, 2, 3, 4],
            channel_mult_emb: 4,
            num_blocks: 3,
            attn_resolutions: vec![32, 16, 8],
            dropout: 0.10,
            label_dropout: 0.0,
        }
    }

    /// ImageNet 256×256, the RDM second (relay) stage: 256/256/512/512/1024/1024 channels,
    /// 2 blocks, attention at 32/16/8, 1000 classes. 553,831,171 parameters.
    pub fn adm_256() -> Self {
        Self {
            img_resolution: 256,
            in_channels: 3,
            out_channels: 3,
            label_dim: 1000,
            augment_dim: 0,
            model_channels: 256,
            channel_mult: vec![1, 1, 2, 2, 4, 4],
            channel_mult_emb: 4,
            num_blocks: 2,
            attn_resolutions: vec![32, 16, 8],
            dropout: 0.10,
            label_dropout: 0.0,
        }
    }

    /// A preset by name (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "adm-64" => Ok(Self::adm_64()),
            "adm-256" => Ok(Self::adm_256()),
            _ => bail!(
                "unknown model preset `{name}` (known: {})",
                PRESETS.join(", ")
            ),
        }
    }

    /// Read a `config.json` written by [`UnetConfig::save`] or `scripts/convert_checkpoint.py`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| candle_core::Error::Msg(format!("reading {}: {e}", path.display())))?;
        Self::from_json(&text)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
    }

    /// Parse the JSON form and check it.
    /// A trained stage's `config.json` (`{"format": "relay-stage/1", "model": {...}, ...}`)
    /// is accepted too: its `model` is the network config.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| candle_core::Error::Msg(format!("invalid model config: {e}")))?;
        let value = match value.get("model") {
            Some(inner) if value.get("format").is_some() => inner.clone(),
            _ => value,
        };
        let cfg: Self = serde_json::from_value(value)
            .map_err(|e| candle_core::Error::Msg(format!("invalid model config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Write the JSON form (pretty-printed).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = serde_json::to_string_pretty(self).map_err(candle_core::Error::wrap)?;
        std::fs::write(path, text + "\n")
            .map_err(|e| candle_core::Error::Msg(format!("writing {}: {e}", path.display())))
    }

    /// A preset name, or a path to a `config.json` (or to a folder holding one).
    pub fn from_name_or_path(name_or_path: &str) -> Result<Self> {
        if PRESETS.contains(&name_or_path) {
            return Self::preset(name_or_path);
        }
        let path = Path::new(name_or_path);
        if path.is_dir() {
            Self::load(path.join("config.json"))
        } else if path.is_file() {
            Self::load(path)
        } else {
            bail!(
                "`{name_or_path}` is neither a model preset ({}) nor a config file",
                PRESETS.join(", ")
            )
        }
    }

    /// The same architecture built for another resolution. Attention stays at the same
    /// *levels* (the attention resolutions are scaled by `res / img_resolution`), so
    /// `adm-64` at 32 px has attention at 16/8/4.
    pub fn with_resolution(mut self, res: usize) -> Self {
        let old = self.img_resolution;
        self.attn_resolutions = self
            .attn_resolutions
            .iter()
            .map(|&r| r * res / old)
            .collect();
        self.img_resolution = res;
        self
    }

    /// The same architecture with another number of classes (0 = unconditional).
    pub fn with_label_dim(mut self, label_dim: usize) -> Self {
        self.label_dim = label_dim;
        self
    }

    /// Number of resolution levels.
    pub fn levels(&self) -> usize {
        self.channel_mult.len()
    }

    /// Embedding width (`model_channels * channel_mult_emb`).
    pub fn emb_channels(&self) -> usize {
        self.model_channels * self.channel_mult_emb
    }

    /// Input sizes must be divisible by this (every level halves the resolution).
    pub fn size_multiple(&self) -> usize {
        1 << self.levels().saturating_sub(1)
    }

    /// Check the values that the reference would only reject deep inside a forward pass.
    /// Channel counts are checked by [`super::structure::Structure::new`].
    pub fn validate(&self) -> Result<()> {
        if self.channel_mult.is_empty() {
            bail!("model config: channel_mult is empty");
        }
        if self.model_channels < 2 || !self.model_channels.is_multiple_of(2) {
            bail!(
                "model config: model_channels must be even (positional embedding), got {}",
                self.model_channels
            );
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.channel_mult_emb == 0 {
            bail!("model config: in_channels, out_channels and channel_mult_emb must be > 0");
        }
        if self.channel_mult.contains(&0) {
            bail!("model config: channel_mult entries must be > 0");
        }
        let m = self.size_multiple();
        if self.img_resolution == 0 || !self.img_resolution.is_multiple_of(m) {
            bail!(
                "model config: img_resolution {} must be a positive multiple of {m} ({} levels)",
                self.img_resolution,
                self.levels()
            );
        }
        for (name, p) in [
            ("dropout", self.dropout),
            ("label_dropout", self.label_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("model config: {name} must be in [0, 1), got {p}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_json() {
        for name in PRESETS {
            let cfg = UnetConfig::preset(name).unwrap();
            cfg.validate().unwrap();
            let text = serde_json::to_string(&cfg).unwrap();
            assert_eq!(UnetConfig::from_json(&text).unwrap(), cfg);
        }
        assert!(UnetConfig::preset("adm-128").is_err());
    }

    #[test]
    fn optional_fields_take_reference_defaults() {
        let cfg = UnetConfig::from_json(
            r#"{"img_resolution": 16, "in_channels": 3, "out_channels": 3,
                "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
                "attn_resolutions": []}"#,
        )
        .unwrap();
        assert_eq!(
            (cfg.label_dim, cfg.augment_dim, cfg.channel_mult_emb),
            (0, 0, 4)
        );
        assert_eq!((cfg.dropout, cfg.label_dropout), (0.1, 0.0));
        // Unknown fields are an error (a typo would otherwise silently take a default).
        assert!(UnetConfig::from_json(
            r#"{"img_resolution": 16, "in_channels": 3, "out_channels": 3,
                "model_channels": 8, "channel_mult": [1], "num_blocks": 1,
                "attn_resolutions": [], "num_block": 2}"#
        )
        .is_err());
    }

    #[test]
    fn with_resolution_keeps_attention_levels() {
        let cfg = UnetConfig::adm_64().with_resolution(32);
        assert_eq!(cfg.attn_resolutions, vec![16, 8, 4]);
        assert_eq!(UnetConfig::adm_256().size_multiple(), 32);
    }
}
