//! Networks in candle-nn: the ADM U-Net (EDM's `DhariwalUNet`) behind EDM preconditioning.
//!
//! The networks see a `VarBuilder`, never a path, and never choose a device; only
//! [`checkpoint`] reads and writes files. Names follow the PyTorch `state_dict` of
//! `EDMPrecond` (`model.enc.64x64_conv.weight`, ...), so an official EDM/RDM checkpoint
//! loads after `scripts/convert_checkpoint.py`.
//!
//! 1. [`UnetConfig`]: constructor arguments, presets (`tiny`, `adm-64`, `adm-256`), JSON.
//! 2. [`structure`]: the module list and channel counts derived from a config (no tensors).
//! 3. [`DhariwalUnet`] ([`unet`], built from [`blocks`], [`attention`], [`embedding`]):
//!    the raw network F.
//! 4. [`EdmPrecond`]: D = c_skip·x + c_out·F(c_in·x, ln σ / 4); implements
//!    [`crate::diffusion::Denoiser`].
//! 5. [`checkpoint`]: `model.safetensors` + `config.json`; [`info`]: sizes and FLOPs.
//!
//! Training: build on a `VarMap` and call [`EdmPrecond::forward_train`]:
//! ```no_run
//! # use candle_core::{DType, Device};
//! # use candle_nn::{VarBuilder, VarMap};
//! # use relay::model::{EdmPrecond, UnetConfig, checkpoint};
//! # fn main() -> candle_core::Result<()> {
//! let cfg = UnetConfig::preset("tiny")?;
//! let varmap = VarMap::new();
//! let net = EdmPrecond::new(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu), &cfg)?;
//! // ... optimise varmap.all_vars() on a loss of
//! //     net.forward_train(x, sigma, labels, None, DropoutKey(step)) ...
//! checkpoint::save_model_dir("out/model", &varmap, &cfg)?;
//! let reloaded = checkpoint::load_model_dir("out/model", DType::F32, &Device::Cpu)?;
//! # Ok(()) }
//! ```

pub mod attention;
pub mod blocks;
pub mod checkpoint;
pub mod config;
pub mod dropout;
pub mod embedding;
pub mod info;
pub mod layers;
pub mod ops;
pub mod precond;
pub mod structure;
pub mod unet;

pub use config::UnetConfig;
pub use info::{model_info, report, ModelInfo};
pub use precond::{EdmPrecond, PrecondOutput};
pub use unet::{DhariwalUnet, Trace};
