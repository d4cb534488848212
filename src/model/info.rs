//! Size and cost of a U-Net, computed from its [`Structure`] without allocating weights:
//! parameter and tensor counts, forward FLOPs per image, and the table printed by
//! `relay model info NAME`.
//!
//! FLOPs count 2 per multiply-add of
//! * every convolution (2·C_in·C_out·k²·H·W at the resolution it runs at; in up/down
//!   blocks `conv0` runs after resampling, at the block's output resolution),
//! * every linear layer (mapping network, `map_label` as a dense matmul, each block's
//!   `affine`),
//! * the two attention matmuls, qᵀk and w·v (2·L²·C each for L = H·W tokens).
//!
//! Not counted (small, memory-bound): GroupNorm, SiLU, softmax, bias and residual adds,
//! resampling, concatenation, dropout and the positional embedding.

use std::collections::BTreeMap;
use std::fmt::Write;

use candle_core::{bail, Result};

use super::config::UnetConfig;
use super::structure::{SkipKind, Structure};

/// Counts for one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Trainable parameters (the reference's `sum(p.numel() for p in parameters())`).
    pub parameters: usize,
    /// Tensors in the state_dict, buffers included (what a checkpoint holds).
    pub state_dict_tensors: usize,
    /// Values in the `resample_filter` buffers (4 per buffer).
    pub buffer_values: usize,
    /// Forward FLOPs for one image at `img_resolution` (see the module doc).
    pub flops_per_image: u64,
    /// Attention blocks per channel count: channels → (heads, number of blocks).
    pub attention: BTreeMap<usize, (usize, usize)>,
}

/// Counts for `cfg`.
pub fn model_info(cfg: &UnetConfig) -> Result<ModelInfo> {
    let s = Structure::new(cfg)?;
    let sd = s.state_dict(cfg);
    let mut attention = BTreeMap::new();
    for b in s.blocks().filter(|b| b.num_heads > 0) {
        attention
            .entry(b.out_channels)
            .or_insert((b.num_heads, 0))
            .1 += 1;
    }
    Ok(ModelInfo {
        parameters: sd.iter().filter(|t| !t.buffer).map(|t| t.numel()).sum(),
        state_dict_tensors: sd.len(),
        buffer_values: sd.iter().filter(|t| t.buffer).map(|t| t.numel()).sum(),
        flops_per_image: flops_per_image(cfg, cfg.img_resolution)?,
        attention,
    })
}

/// Forward FLOPs of one image of `resolution`² pixels (which need not be the configured
/// `img_resolution`: the structure stays, every feature map scales).
pub fn flops_per_image(cfg: &UnetConfig, resolution: usize) -> Result<u64> {
    let m = cfg.size_multiple();
    if resolution == 0 || !resolution.is_multiple_of(m) {
        bail!("resolution {resolution} is not a positive multiple of {m}");
    }
    let s = Structure::new(cfg)?;
    // Pixels of a feature map at configured resolution `r`, scaled to the input size.
    let pixels = |r: usize| {
        let side = r * resolution / cfg.img_resolution;
        (side * side) as u64
    };
    let conv = |ci: usize, co: usize, k: usize, px: u64| 2 * (ci * co * k * k) as u64 * px;
    let lin = |i: usize, o: usize| 2 * (i * o) as u64;
    let (mc, e) = (cfg.model_channels as u64, s.emb_channels);

    // 1. Mapping network.
    let mut flops = lin(cfg.model_channels, e) + lin(e, e);
    flops += lin(cfg.label_dim, e) + 2 * cfg.augment_dim as u64 * mc;

    // 2. Input and output convolutions.
    let px0 = pixels(cfg.img_resolution);
    let (_, cin, c0) = s.input_conv;
    flops += conv(cin, c0, 3, px0) + conv(s.final_channels, cfg.out_channels, 3, px0);

    // 3. Blocks.
    for b in s.blocks() {
        let (ci, co, px) = (b.in_channels, b.out_channels, pixels(b.resolution));
        flops += conv(ci, co, 3, px) + lin(e, 2 * co) + conv(co, co, 3, px);
        if b.skip() == SkipKind::Conv {
            flops += conv(ci, co, 1, px);
        }
        if b.num_heads > 0 {
            flops += conv(co, 3 * co, 1, px) + conv(co, co, 1, px);
            flops += 2 * 2 * px * px * co as u64; // qᵀk and w·v over all heads
        }
    }
    Ok(flops)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The table printed by `relay model info NAME`: a preset name or a path to a
/// `config.json` (or a model folder).
pub fn report(name_or_path: &str) -> Result<String> {
    let cfg = UnetConfig::from_name_or_path(name_or_path)?;
    let s = Structure::new(&cfg)?;
    let info = model_info(&cfg)?;
    let mut out = String::new();
    let w = &mut out;
    let r = cfg.img_resolution;
    let _ = writeln!(w, "model            {name_or_path}");
    let _ = writeln!(
        w,
        "architecture     DhariwalUNet (ADM) + EDMPrecond, {r}×{r}, {} → {} channels",
        cfg.in_channels, cfg.out_channels
    );
    let cond = match cfg.label_dim {
        0 => "unconditional".to_string(),
        l => format!("{l} classes (label dropout {})", cfg.label_dropout),
    };
    let _ = writeln!(
        w,
        "conditioning     {cond}, augment_dim {}",
        cfg.augment_dim
    );
    let _ = writeln!(
        w,
        "channels         {} × {:?}, embedding {}, dropout {}",
        cfg.model_channels, cfg.channel_mult, s.emb_channels, cfg.dropout
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "level  resolution  channels  enc modules  dec modules  attention"
    );
    for (level, &mult) in cfg.channel_mult.iter().enumerate() {
        let res = r >> level;
        let tag = format!("{res}x{res}_");
        let enc = s.enc.iter().filter(|b| b.name.contains(&tag)).count();
        let dec = s.dec.iter().filter(|b| b.name.contains(&tag)).count();
        let heads: Vec<String> = s
            .blocks()
            .filter(|b| b.name.contains(&tag) && b.num_heads > 0)
            .map(|b| b.num_heads.to_string())
            .collect();
        let heads = if heads.is_empty() {
            "-".to_string()
        } else {
            format!("{} heads in {} blocks", heads[0], heads.len())
        };
        let _ = writeln!(
            w,
            "{level:<6} {:<11} {:<9} {enc:<12} {dec:<12} {heads}",
            format!("{res}×{res}"),
            cfg.model_channels * mult
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "parameters       {} ({:.1} MB as float32)",
        thousands(info.parameters as u64),
        info.parameters as f64 * 4.0 / 1e6
    );
    let _ = writeln!(
        w,
        "state_dict       {} tensors ({} resample_filter buffers)",
        info.state_dict_tensors,
        info.buffer_values / 4
    );
    let _ = writeln!(
        w,
        "forward FLOPs    {:.2} G per image at {r}×{r} (convs, linears, attention matmuls)",
        info.flops_per_image as f64 / 1e9
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `reference_configurations` in golden/unet.json (counted by the reference constructor).
    #[test]
    fn reference_parameter_counts() -> Result<()> {
        let adm64 = model_info(&UnetConfig::adm_64())?;
        assert_eq!(adm64.parameters, 295_899_267);
        assert_eq!(adm64.state_dict_tensors, 553);
        assert_eq!(adm64.buffer_values, 48);
        let heads: Vec<_> = adm64.attention.iter().map(|(c, h)| (*c, *h)).collect();
        assert_eq!(heads, vec![(384, (6, 7)), (576, (9, 7)), (768, (12, 8))]);

        let adm256 = model_info(&UnetConfig::adm_256())?;
        assert_eq!(adm256.parameters, 553_831_171);
        assert_eq!(adm256.state_dict_tensors, 587);
        assert_eq!(adm256.buffer_values, 80);
        let heads: Vec<_> = adm256.attention.iter().map(|(c, h)| (*c, *h)).collect();
        assert_eq!(heads, vec![(512, (8, 5)), (1024, (16, 11))]);

        // CelebA-HQ networks: unconditional, augment_dim 9.
        let mut celeba64 = UnetConfig::adm_64().with_label_dim(0);
        celeba64.augment_dim = 9;
        assert_eq!(model_info(&celeba64)?.parameters, 295_132_995);
        let mut celeba256 = UnetConfig::adm_256().with_label_dim(0);
        celeba256.augment_dim = 9;
        assert_eq!(model_info(&celeba256)?.parameters, 552_809_475);
        Ok(())
    }

    /// FLOPs scale with the pixel count except for the (tiny) mapping network and the
    /// attention matmuls, which grow with the square of it.
    #[test]
    fn flops_grow_with_resolution() -> Result<()> {
        let cfg = UnetConfig::tiny();
        let f16 = flops_per_image(&cfg, 16)?;
        let f32_ = flops_per_image(&cfg, 32)?;
        assert!(
            f32_ > 4 * f16 - 4 * 100_000 && f32_ < 5 * f16,
            "{f16} {f32_}"
        );
        assert!(flops_per_image(&cfg, 18).is_err());
        Ok(())
    }

    #[test]
    fn report_names_the_counts() -> Result<()> {
        let text = report("adm-64")?;
        assert!(text.contains("295,899,267"), "{text}");
        assert!(report("no-such-model").is_err());
        Ok(())
    }
}
