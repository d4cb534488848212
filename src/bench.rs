//! `relay bench model`: how fast the U-Net trains and samples on a device (issue 10).
//!
//! It times exactly the work that training and sampling do, on random data, and nothing
//! that depends on a dataset:
//! 1. Train step: the training loop's own EDM loss ([`EdmLoss::loss_at`] on
//!    [`EdmPrecond::forward_train`], noise from each image's seed stream as in training),
//!    `backward`, and one step of the training loop's own [`Adam`] over every weight.
//! 2. Sample forward: D(x; σ = 80) in eval mode, on a network loaded from plain tensors, as
//!    `sample` stages load it (so no autograd graph is kept).
//!
//! Each is warmed up, then timed step by step; images/s = batch / median step time.
//! `benches/torch_unet.py` times the same work in PyTorch (`scripts/bench-vs-torch.sh`).
//! FLOP/s counts the forward FLOPs of [`flops_per_image`] (matmuls and convolutions only);
//! a training step is counted as three forwards (backward ≈ 2× forward). On CUDA the
//! memory pool's peak (used and reserved bytes) is reported for each part, the
//! counterpart of PyTorch's `max_memory_allocated` / `max_memory_reserved`.
//!
//! [`ops`]: the per-op profile (issue 17).

pub mod ops;

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::device::DeviceSpec;
use crate::diffusion::loss::EdmLoss;
use crate::diffusion::noise::{NoiseSource, SeedNoise};
use crate::model::dropout::DropoutKey;
use crate::model::info::{flops_per_image, model_info};
use crate::model::{EdmPrecond, UnetConfig};
use crate::train::optim::{seeded_var_builder, var_tensors, Adam, Ema, TensorMap};

/// Warm-up steps before timing (allocator, thread pool and page faults settle).
const WARMUP: usize = 2;

/// What [`model`] measured.
#[derive(Debug, Clone)]
pub struct ModelBench {
    pub config: String,
    pub device: String,
    /// Threads candle's CPU kernels use (`RAYON_NUM_THREADS`, else all cores).
    pub threads: usize,
    pub resolution: usize,
    pub batch: usize,
    pub steps: usize,
    pub parameters: usize,
    /// Forward FLOPs of one image at `resolution`.
    pub flops_per_image: u64,
    /// Median seconds of one training step (forward + backward + Adam).
    pub train_seconds: f64,
    /// Medians of the training step's forward (with the loss), backward, and Adam step.
    pub train_phases: [f64; 3],
    /// Median seconds of one sampling forward.
    pub sample_seconds: f64,
    /// Peak (used, reserved) GB of the CUDA memory pool while training / sampling.
    pub train_peak_gb: Option<(f64, f64)>,
    pub sample_peak_gb: Option<(f64, f64)>,
}

impl ModelBench {
    pub fn train_images_per_sec(&self) -> f64 {
        self.batch as f64 / self.train_seconds
    }

    pub fn sample_images_per_sec(&self) -> f64 {
        self.batch as f64 / self.sample_seconds
    }

    /// Achieved FLOP/s of training, counting 3 forward passes per image.
    pub fn train_flops_per_sec(&self) -> f64 {
        3.0 * self.flops_per_image as f64 * self.train_images_per_sec()
    }

    pub fn sample_flops_per_sec(&self) -> f64 {
        self.flops_per_image as f64 * self.sample_images_per_sec()
    }

    /// The table `relay bench model` prints, then `key=value` lines for scripts.
    pub fn table(&self) -> String {
        let gflop = self.flops_per_image as f64 / 1e9;
        let mut s = format!(
            "relay (candle {}), {} threads on {}, {} at {}px, batch {}, {} steps (median), \
             {} parameters, {gflop:.3} GFLOP/image forward\n",
            CANDLE_VERSION,
            self.threads,
            self.device,
            self.config,
            self.resolution,
            self.batch,
            self.steps,
            self.parameters,
        );
        s += "| work | s/step | images/s | GFLOP/s |\n|---|---|---|---|\n";
        s += &format!(
            "| train (fwd + bwd + Adam + EMA) | {:.3} | {:.2} | {:.1} |\n",
            self.train_seconds,
            self.train_images_per_sec(),
            self.train_flops_per_sec() / 1e9
        );
        s += &format!(
            "| sample (fwd, no grad) | {:.3} | {:.2} | {:.1} |\n",
            self.sample_seconds,
            self.sample_images_per_sec(),
            self.sample_flops_per_sec() / 1e9
        );
        let [f, b, a] = self.train_phases;
        s += &format!("train step: forward {f:.3} s, backward {b:.3} s, Adam + EMA {a:.3} s\n");
        let ops = std::env::var("RELAY_CUDA_OPS").unwrap_or_else(|_| "none".into());
        s += &format!("relay_cuda_ops={ops}\n");
        s += &format!("relay_train_phases_s={f:.4},{b:.4},{a:.4}\n");
        for (part, peak) in [
            ("train", self.train_peak_gb),
            ("sample", self.sample_peak_gb),
        ] {
            if let Some((used, reserved)) = peak {
                s += &format!(
                    "relay_{part}_peak_gb={used:.3}\nrelay_{part}_reserved_gb={reserved:.3}\n"
                );
            }
        }
        s += &format!("relay_parameters={}\n", self.parameters);
        s += &format!(
            "relay_train_images_per_sec={:.4}\n",
            self.train_images_per_sec()
        );
        s += &format!(
            "relay_sample_images_per_sec={:.4}",
            self.sample_images_per_sec()
        );
        s
    }
}

const CANDLE_VERSION: &str = "0.11.1";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median seconds of `steps` calls of `f` after [`WARMUP`] untimed ones.
fn time_steps(
    steps: usize,
    dev: &Device,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..WARMUP {
        f()?;
    }
    dev.synchronize()?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t0 = Instant::now();
        f()?;
        dev.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// Restart the CUDA pool's peak counters (no-op elsewhere).
fn reset_peak(dev: &Device) -> anyhow::Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        crate::model::ops::cuda::runtime::reset_pool_peak(d)?;
    }
    let _ = dev;
    Ok(())
}

/// The CUDA pool's peak (used, reserved) GB since [`reset_peak`] (`None` elsewhere).
fn peak_gb(dev: &Device) -> anyhow::Result<Option<(f64, f64)>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        let peak = crate::model::ops::cuda::runtime::pool_peak(d)?;
        return Ok(peak.map(|(u, r)| (u as f64 / 1e9, r as f64 / 1e9)));
    }
    let _ = dev;
    Ok(None)
}

/// One-hot labels of random classes, or `None` for an unconditional net.
fn random_labels(cfg: &UnetConfig, batch: usize, dev: &Device) -> anyhow::Result<Option<Tensor>> {
    if cfg.label_dim == 0 {
        return Ok(None);
    }
    let classes = Tensor::rand(0f32, cfg.label_dim as f32, batch, dev)?
        .floor()?
        .clamp(0f32, (cfg.label_dim - 1) as f32)?
        .to_dtype(DType::U32)?;
    let eye = Tensor::eye(cfg.label_dim, DType::F32, dev)?;
    Ok(Some(eye.index_select(&classes, 0)?))
}

/// Time `steps` training steps and `steps` sampling forwards of the preset (or config
/// file) `config` at `batch` images of `resolution` px (default: the config's own).
pub fn model(
    config: &str,
    batch: usize,
    steps: usize,
    resolution: Option<usize>,
    device: &DeviceSpec,
    bf16: bool,
) -> anyhow::Result<ModelBench> {
    anyhow::ensure!(batch > 0 && steps > 0, "batch and steps must be positive");
    anyhow::ensure!(
        !bf16 || device.is_accelerator(),
        "--bf16 runs on CUDA only (candle's CPU bf16 kernels are slow); drop it or use --device cuda"
    );
    let dtype = if bf16 { DType::BF16 } else { DType::F32 };
    let mut cfg = UnetConfig::from_name_or_path(config)?;
    if let Some(res) = resolution {
        cfg = cfg.with_resolution(res);
    }
    let res = cfg.img_resolution;
    let dev = device.device()?;
    let parameters = model_info(&cfg)?.parameters;
    let c = cfg.in_channels;

    // 1. Training: seeded trainable weights, EDM loss, backward, Adam.
    let (vb, vars) = seeded_var_builder(0, &dev);
    let net = EdmPrecond::new(vb, &cfg)?;
    let vars = vars();
    let mut adam = Adam::new(&vars, [0.9, 0.999], 1e-8)?;
    // EDM's EMA (half-life 500 kimg, ramp-up 0.05), updated after every step as in training.
    let mut ema = Ema::new(&vars, 500.0, Some(0.05))?;
    let y = (Tensor::randn(0f32, 1., (batch, c, res, res), &dev)? * EdmLoss::default().sigma_data)?;
    let labels = random_labels(&cfg, batch, &dev)?;
    let mut phases: Vec<[f64; 3]> = Vec::new();
    reset_peak(&dev)?;
    let train_seconds = time_steps(steps, &dev, || {
        let t0 = Instant::now();
        let step = phases.len() as u64;
        let seeds: Vec<u64> = (0..batch as u64).map(|j| (step << 32) | j).collect();
        let mut noise = SeedNoise::new(&seeds);
        let r = noise
            .randn(&[], DType::F64, &Device::Cpu)?
            .to_vec1::<f64>()?;
        // bf16: the step's network on bf16 copies of the float32 weights, as the trainer.
        let cast;
        let net = if bf16 {
            cast = EdmPrecond::new(
                VarBuilder::from_tensors(var_tensors(&vars, dtype)?, dtype, &dev),
                &cfg,
            )?;
            &cast
        } else {
            &net
        };
        let d = |x: &Tensor, s: &Tensor, l: Option<&Tensor>| {
            net.forward_train(x, s, l, None, DropoutKey(step))
        };
        let loss = EdmLoss::default()
            .loss_at(&d, &y, labels.as_ref(), &r, &mut noise)?
            .loss
            .sum_all()?;
        dev.synchronize()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        dev.synchronize()?;
        let t2 = Instant::now();
        let mut map = TensorMap::new();
        for (name, var) in &vars {
            let g = grads
                .get(var)
                .ok_or_else(|| anyhow::anyhow!("no gradient reached {name}"))?;
            map.insert(name.clone(), g.clone());
        }
        adam.step(&vars, &map, 1e-4)?;
        ema.update(&vars, ema.beta((phases.len() * batch) as u64, batch))?;
        dev.synchronize()?;
        let t3 = Instant::now();
        phases.push([t1 - t0, t2 - t1, t3 - t2].map(|d| d.as_secs_f64()));
        Ok(())
    })?;
    let phase = |i: usize| median(phases[WARMUP..].iter().map(|p| p[i]).collect());
    let train_phases = [phase(0), phase(1), phase(2)];
    let train_peak_gb = peak_gb(&dev)?;
    drop((net, adam, ema));

    // 2. Sampling: the same weights as plain tensors (no graph), eval mode.
    let weights: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().to_dtype(dtype)?)))
        .collect::<candle_core::Result<_>>()?;
    drop(vars);
    let net = EdmPrecond::new(VarBuilder::from_tensors(weights, dtype, &dev), &cfg)?;
    let x = (Tensor::randn(0f32, 1., (batch, c, res, res), &dev)? * 80.0)?;
    let sigma = Tensor::full(80f32, batch, &dev)?;
    reset_peak(&dev)?;
    let sample_seconds = time_steps(steps, &dev, || {
        net.forward(&x, &sigma, labels.as_ref())?;
        Ok(())
    })?;
    let sample_peak_gb = peak_gb(&dev)?;

    Ok(ModelBench {
        config: config.to_string(),
        device: format!("{}{}", device.describe(), if bf16 { " (bf16)" } else { "" }),
        threads: candle_core::utils::get_num_threads(),
        resolution: res,
        batch,
        steps,
        parameters,
        flops_per_image: flops_per_image(&cfg, res)?,
        train_seconds,
        train_phases,
        sample_seconds,
        train_peak_gb,
        sample_peak_gb,
    })
}

/// `relay bench allreduce`: one NCCL all-reduce (sum) of `millions` million float32 values
/// per rank, checked (rank r contributes r + 1 everywhere), then timed `reps` times.
/// Returns the table line of rank 0 (other ranks return their check only).
pub fn allreduce(millions: usize, reps: usize) -> anyhow::Result<String> {
    #[cfg(feature = "nccl")]
    {
        use crate::train::parallel::{Collective, Nccl};
        let world = crate::train::World::from_env()?;
        let dev = Device::new_cuda(world.local_rank)?;
        let group = Nccl::new(world, &dev)?;
        let n = millions.max(1) * 1_000_000;
        let x = Tensor::full((world.rank + 1) as f32, n, &dev)?;
        let want = (world.size * (world.size + 1) / 2) as f32;
        let y = group.all_reduce_sum(&x)?;
        let (lo, hi) = (y.min(0)?.to_scalar::<f32>()?, y.max(0)?.to_scalar::<f32>()?);
        anyhow::ensure!(
            lo == want && hi == want,
            "all-reduce over {} rank(s) gave values in [{lo}, {hi}], expected {want}",
            world.size
        );
        let b = group.broadcast(&x)?.max(0)?.to_scalar::<f32>()?;
        anyhow::ensure!(b == 1.0, "broadcast from rank 0 gave {b}, expected 1");
        let seconds = time_steps(reps.max(1), &dev, || {
            group.all_reduce_sum(&x)?;
            Ok(())
        })?;
        let bytes = (n * 4) as f64;
        // Bus bandwidth as nccl-tests reports it: 2(W−1)/W of the buffer crosses each link.
        let w = world.size as f64;
        let bus = bytes * 2.0 * (w - 1.0) / w / seconds;
        Ok(format!(
            "rank {} of {}: all-reduce of {millions}M float32 ({:.0} MB) checked; median {:.3} ms, \
             algorithm bandwidth {:.1} GB/s, bus bandwidth {:.1} GB/s",
            world.rank,
            world.size,
            bytes / 1e6,
            seconds * 1e3,
            bytes / seconds / 1e9,
            bus / 1e9
        ))
    }
    #[cfg(not(feature = "nccl"))]
    {
        let _ = (millions, reps);
        anyhow::bail!("`relay bench allreduce` needs NCCL: build relay with `--features nccl`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of each kind on a small input: the timings are positive and the FLOP
    /// count is the model's.
    #[test]
    fn times_the_tiny_preset() -> anyhow::Result<()> {
        let b = model("tiny", 2, 1, Some(16), &DeviceSpec::Cpu, false)?;
        assert_eq!(b.parameters, 1_371_107);
        assert_eq!(b.flops_per_image, flops_per_image(&UnetConfig::tiny(), 16)?);
        assert!(b.train_seconds > 0.0 && b.sample_seconds > 0.0);
        assert!(b.table().contains("relay_train_images_per_sec="));
        Ok(())
    }
}
