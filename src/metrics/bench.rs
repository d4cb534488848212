//! `relay bench metrics`: the FID Inception's images/s and the Fréchet distance's matrix
//! square root at 2048×2048, side by side with pytorch-fid and scipy in one run.
//!
//! 1. Scratch files: `count` synthetic shape images (`images.npz`, `arr_0`), the network
//!    with [`synthetic`] weights (`inception.safetensors`: speed does not depend on the
//!    values) and two 2048×2048 covariances from a formula (`cov.npz`).
//! 2. relay: one warm-up batch, then `rounds` passes over the images in batches of `batch`;
//!    then tr((Σ₁Σ₂)^½) ([`trace_sqrt_product`]), timed once.
//! 3. The peer, when a Python with torch and pytorch-fid is found: `benches/torch_fid.py`
//!    on the same files, threads and device (pytorch-fid's `InceptionV3`, scipy's `sqrtm`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use faer::MatRef;
use serde_json::Value;

use super::frechet::trace_sqrt_product;
use super::MetricsError;
use crate::data::npy::NpzWriter;
use crate::model::inception::{synthetic, weights};

/// What was measured, and the peer's numbers when it ran.
#[derive(Debug, Clone)]
pub struct MetricsBench {
    pub device: String,
    pub threads: usize,
    pub images: usize,
    pub side: u32,
    pub batch: usize,
    pub images_per_sec: f64,
    pub sqrtm_seconds: f64,
    pub trace: f64,
    /// `benches/torch_fid.py`'s JSON line, or why it did not run.
    pub peer: Result<Value, String>,
}

fn err(e: impl std::fmt::Display) -> MetricsError {
    MetricsError::Io(e.to_string())
}

/// Two SPD 2048×2048 covariances: Σ = A Aᵀ / 4096 + 0.01 I, A from the synthetic formula.
fn covariances(d: usize) -> [Vec<f64>; 2] {
    ["bench/cov1", "bench/cov2"].map(|name| {
        let a = synthetic::uniform(name, d * 2 * d);
        let a = MatRef::from_row_major_slice(&a, d, 2 * d);
        let s = a * a.transpose();
        let mut out = vec![0f64; d * d];
        for i in 0..d {
            for j in 0..d {
                out[i * d + j] = s[(i, j)] / (2 * d) as f64 + if i == j { 0.01 } else { 0.0 };
            }
        }
        out
    })
}

fn write_inputs(dir: &Path, count: usize, side: u32) -> Result<(), MetricsError> {
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut z = NpzWriter::create(&dir.join("images.npz"))?;
    let w = z.start("arr_0", "|u1", &[count, side as usize, side as usize, 3])?;
    for i in 0..count {
        let (img, _) = crate::data::shapes::render(0, i as u64, 10, side);
        std::io::Write::write_all(w, img.as_raw()).map_err(err)?;
    }
    z.finish()?;
    let t = synthetic::weights(&Default::default())?;
    candle_core::safetensors::save(&t, dir.join("inception.safetensors"))?;
    let [s1, s2] = covariances(2048);
    let mut z = NpzWriter::create(&dir.join("cov.npz"))?;
    z.f64("sigma1", &[2048, 2048], &s1)?;
    z.f64("sigma2", &[2048, 2048], &s2)?;
    Ok(z.finish()?)
}

/// Run the benchmark; `python`: the interpreter for the peer (None: look for one).
#[allow(clippy::too_many_arguments)]
pub fn run(
    dir: &Path,
    device: &Device,
    device_name: &str,
    count: usize,
    side: u32,
    batch: usize,
    rounds: usize,
    python: Option<PathBuf>,
) -> Result<MetricsBench, MetricsError> {
    write_inputs(dir, count, side)?;
    let threads = rayon::current_num_threads();

    // relay's network.
    let net = weights::load(&dir.join("inception.safetensors"), device)?;
    let src = super::ImageSource::open(&dir.join("images.npz"), None)?;
    let mut all = Vec::new();
    src.visit(&mut Collect(&mut all))?;
    let batches: Vec<Tensor> = all
        .chunks(batch)
        .map(|c| {
            let raw: Vec<u8> = c.iter().flat_map(|i| i.as_raw().iter().copied()).collect();
            Tensor::from_vec(raw, (c.len(), side as usize, side as usize, 3), device)
        })
        .collect::<candle_core::Result<_>>()?;
    net.forward_images(&batches[0])?.pool.to_vec2::<f32>()?;
    let t0 = Instant::now();
    for _ in 0..rounds {
        for b in &batches {
            // Reading the result back waits for the device.
            net.forward_images(b)?.pool.to_vec2::<f32>()?;
        }
    }
    let images_per_sec = (rounds * count) as f64 / t0.elapsed().as_secs_f64();

    // The matrix square root.
    let [s1, s2] = covariances(2048);
    let t0 = Instant::now();
    let trace = trace_sqrt_product(
        MatRef::from_row_major_slice(&s1, 2048, 2048),
        MatRef::from_row_major_slice(&s2, 2048, 2048),
    )?;
    let sqrtm_seconds = t0.elapsed().as_secs_f64();

    let peer = peer(dir, python, batch, rounds, threads, device_name);
    Ok(MetricsBench {
        device: device_name.to_string(),
        threads,
        images: count,
        side,
        batch,
        images_per_sec,
        sqrtm_seconds,
        trace,
        peer,
    })
}

struct Collect<'a>(&'a mut Vec<image::RgbImage>);

impl super::images::Visitor for Collect<'_> {
    fn start(&mut self, _: usize, _: usize) -> Result<bool, MetricsError> {
        Ok(true)
    }
    fn image(&mut self, img: image::RgbImage) -> Result<(), MetricsError> {
        self.0.push(img);
        Ok(())
    }
    fn end(&mut self, _: usize) -> Result<(), MetricsError> {
        Ok(())
    }
}

/// A Python that has torch, scipy and pytorch-fid.
fn find_python(given: Option<PathBuf>) -> Option<PathBuf> {
    let candidates = given.into_iter().chain([
        PathBuf::from("target/metrics-torch/venv/bin/python"),
        PathBuf::from("python3"),
    ]);
    candidates.into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import torch, scipy, pytorch_fid, safetensors"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn peer(
    dir: &Path,
    python: Option<PathBuf>,
    batch: usize,
    rounds: usize,
    threads: usize,
    device: &str,
) -> Result<Value, String> {
    let py = find_python(python).ok_or(
        "no Python with torch, scipy, pytorch-fid and safetensors (scripts/make_inception_vectors.py installs them into target/metrics-torch/venv)",
    )?;
    let out = std::process::Command::new(&py)
        .arg("benches/torch_fid.py")
        .arg("--dir")
        .arg(dir)
        .args([
            "--batch",
            &batch.to_string(),
            "--rounds",
            &rounds.to_string(),
        ])
        .args(["--threads", &threads.to_string(), "--device", device])
        .output()
        .map_err(|e| format!("running {}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(format!(
            "benches/torch_fid.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .map_err(|e| format!("benches/torch_fid.py printed no JSON: {e}"))
}

impl MetricsBench {
    /// The side-by-side table.
    /// Speed ratios are relay/peer in throughput (higher: relay faster).
    pub fn table(&self) -> String {
        let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
        let mut s = String::from("| what | device | threads | relay | pytorch-fid / scipy | relay/peer |\n|---|---|---|---|---|---|\n");
        let (ips, sq, tr) = match &self.peer {
            Ok(v) => (f(v, "images_per_sec"), f(v, "sqrtm_seconds"), f(v, "trace")),
            Err(_) => (None, None, None),
        };
        let cell =
            |x: Option<f64>, digits: usize| x.map_or("-".into(), |x| format!("{x:.digits$}"));
        s += &format!(
            "| Inception images/s ({} images {}px, batch {}) | {} | {} | {:.2} | {} | {} |\n",
            self.images,
            self.side,
            self.batch,
            self.device,
            self.threads,
            self.images_per_sec,
            cell(ips, 2),
            cell(ips.map(|p| self.images_per_sec / p), 2)
        );
        s += &format!(
            "| tr sqrt(Σ₁Σ₂) at 2048², seconds | cpu | {} | {:.2} | {} | {} |\n",
            self.threads,
            self.sqrtm_seconds,
            cell(sq, 2),
            cell(sq.map(|p| p / self.sqrtm_seconds), 2)
        );
        s += &format!(
            "| tr sqrt(Σ₁Σ₂) value | | | {:.6} | {} | {} |\n",
            self.trace,
            cell(tr, 6),
            tr.map_or("-".into(), |p| format!(
                "{:.1e} rel.",
                (self.trace - p).abs() / p.abs()
            ))
        );
        if let Err(why) = &self.peer {
            s += &format!("\npeer not run: {why}\n");
        }
        s
    }
}
