//! Shared helpers of the golden harness: where the vectors live, loading, reading a case's
//! params / inputs / tolerances, the relative error, and the analytic denoiser every sampler
//! case uses (golden README, "Analytic denoiser used by all sampler runs").

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use relay::diffusion::Denoiser;

/// The folder named by `RELAY_GOLDEN_DIR`, else `../shared/golden` next to the crate.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("RELAY_GOLDEN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden")),
    }
}

/// The device the math runs on: `RELAY_GOLDEN_DEVICE` = `cpu` (default), `cuda` or `cuda:N`.
pub fn golden_device() -> Result<Device> {
    let spec = std::env::var("RELAY_GOLDEN_DEVICE").unwrap_or_else(|_| "cpu".into());
    Ok(match spec.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::new_cuda(n)?,
            None => bail!("RELAY_GOLDEN_DEVICE: unknown device `{s}`"),
        },
    })
}

pub fn read_json(path: &std::path::Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every tensor of a safetensors file, on the CPU as stored.
pub fn read_tensors(path: &std::path::Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("loading {}", path.display()))
}

/// max|a − e| / max|e| over the whole tensor (max|a − e| when e is all zeros).
pub fn rel_err(actual: &Tensor, expected: &Tensor) -> Result<f64> {
    if actual.dims() != expected.dims() {
        bail!("shape {:?}, expected {:?}", actual.dims(), expected.dims())
    }
    let a = actual
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let e = expected
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let diff = a
        .iter()
        .zip(&e)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0, f64::max);
    let scale = e.iter().map(|e| e.abs()).fold(0.0, f64::max);
    if a.iter().any(|v| !v.is_finite()) {
        return Ok(f64::INFINITY);
    }
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

/// One case of a golden file, with the tensors of its file.
pub struct Case<'a> {
    pub json: &'a Value,
    pub tensors: &'a HashMap<String, Tensor>,
    pub device: &'a Device,
}

impl Case<'_> {
    pub fn id(&self) -> &str {
        self.json["id"].as_str().unwrap_or("?")
    }

    pub fn kind(&self) -> &str {
        self.json["kind"].as_str().unwrap_or("?")
    }

    pub fn param(&self, name: &str) -> Option<&Value> {
        self.json["params"].get(name).filter(|v| !v.is_null())
    }

    /// A numeric param; the string "inf" is +∞.
    pub fn f64(&self, name: &str) -> Result<f64> {
        let v = self
            .param(name)
            .ok_or_else(|| anyhow!("param `{name}` missing"))?;
        match v {
            Value::String(s) if s == "inf" => Ok(f64::INFINITY),
            Value::String(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
            v => v
                .as_f64()
                .ok_or_else(|| anyhow!("param `{name}` is not a number: {v}")),
        }
    }

    pub fn f64_or(&self, name: &str, default: f64) -> Result<f64> {
        if self.param(name).is_some() {
            self.f64(name)
        } else {
            Ok(default)
        }
    }

    pub fn usize(&self, name: &str) -> Result<usize> {
        let v = self.f64(name)?;
        if v < 0.0 || v.fract() != 0.0 {
            bail!("param `{name}` = {v} is not a count")
        }
        Ok(v as usize)
    }

    /// The input named `name` (its `tensor`), on the harness device, or `None` when the case
    /// has no such input (or it is `null`).
    pub fn input_opt(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(spec) = self.json["inputs"].get(name).filter(|v| v.is_object()) else {
            return Ok(None);
        };
        let tensor = spec["tensor"]
            .as_str()
            .ok_or_else(|| anyhow!("input `{name}` names no tensor"))?;
        let t = self
            .tensors
            .get(tensor)
            .ok_or_else(|| anyhow!("input `{name}`: tensor `{tensor}` missing"))?;
        Ok(Some(t.to_device(self.device)?))
    }

    pub fn input(&self, name: &str) -> Result<Tensor> {
        self.input_opt(name)?
            .ok_or_else(|| anyhow!("input `{name}` missing"))
    }

    /// Names of the inputs that are tensors, sorted.
    pub fn tensor_inputs(&self) -> Vec<String> {
        let mut names: Vec<String> = self.json["inputs"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| v.is_object())
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The expected shape of output `name`.
    pub fn output_shape(&self, name: &str) -> Result<Vec<usize>> {
        let shape = &self.json["outputs"][name]["shape"];
        serde_json::from_value(shape.clone()).with_context(|| format!("output `{name}`: shape"))
    }

    /// The tolerance for output `name`, chosen from the case's `tolerance` keys by the
    /// output's suffix: `*_f64` → f64_rel; `*code*` → (loss_)code(_f32)_rel; `*_f32` →
    /// (loss_)f32_rel, else the code tolerance; anything else (sampler trajectories, time
    /// steps) → f64_rel.
    pub fn tolerance(&self, name: &str) -> Result<f64> {
        let tol = &self.json["tolerance"];
        if let Some(t) = tol.as_f64() {
            return Ok(t);
        }
        let loss = name.starts_with("loss");
        let mut keys: Vec<&str> = Vec::new();
        if name.ends_with("_f64") {
            keys.push("f64_rel");
        } else if name.contains("code") {
            if loss {
                keys.push("loss_code_rel");
            }
            if name.ends_with("_f32") {
                keys.push("code_f32_rel");
            }
            keys.extend(["code_rel", "code_f32_rel"]);
        } else if name.ends_with("_f32") {
            if loss {
                keys.push("loss_f32_rel");
            }
            // A file without an f32 tolerance states the float32 behaviour as `code`.
            keys.extend(["f32_rel", "code_rel", "code_f32_rel"]);
        } else {
            keys.push("f64_rel");
        }
        keys.iter()
            .find_map(|k| tol.get(*k).and_then(Value::as_f64))
            .ok_or_else(|| anyhow!("no tolerance for output `{name}` among {keys:?} in {tol}"))
    }
}

/// A `Vec<f64>` as a 1-D f64 tensor.
pub fn vec_tensor(v: Vec<f64>) -> Result<Tensor> {
    let n = v.len();
    Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
}

/// D(x, σ, c) = (s² x + σ² μ_c)/(s² + σ²), s = 0.5: the posterior mean for data ~ N(μ_c, s²)
/// per pixel, with μ_c = μ + Σ_l c[b,l]·offsets[l] for a conditional call and μ for `None`.
pub struct Analytic {
    /// `[1, C, H, W]` float64.
    pub mu: Tensor,
    /// `[L, C·H·W]` float64, when the case is conditional.
    pub offsets: Option<Tensor>,
}

impl Analytic {
    pub const S2: f64 = 0.25;

    pub fn new(mu: &Tensor, offsets: Option<&Tensor>) -> Result<Self> {
        let offsets = match offsets {
            Some(o) => Some(o.to_dtype(DType::F64)?.flatten_from(1)?),
            None => None,
        };
        Ok(Self {
            mu: mu.to_dtype(DType::F64)?,
            offsets,
        })
    }
}

impl Denoiser for Analytic {
    fn denoise(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        labels: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mu_c = match (labels, &self.offsets) {
            (Some(c), Some(off)) => self
                .mu
                .broadcast_add(&c.to_dtype(DType::F64)?.matmul(off)?.reshape(x.shape())?)?,
            _ => self.mu.broadcast_as(x.shape())?.contiguous()?,
        };
        let sig2 = sigma.sqr()?.reshape((x.dim(0)?, 1, 1, 1))?;
        let num = ((x * Self::S2)? + mu_c.broadcast_mul(&sig2)?)?;
        num.broadcast_div(&(sig2 + Self::S2)?)
    }

    fn label_dim(&self) -> usize {
        self.offsets.as_ref().map_or(0, |o| o.dim(0).unwrap_or(0))
    }
}

/// D(x, σ) = s² x/(s² + σ²), s = 0.5, in the dtype of `x`: the denoiser of the loss cases.
pub fn shrink(x: &Tensor, sigma: &Tensor, _labels: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let c = (sigma.sqr()? + Analytic::S2)?
        .recip()?
        .affine(Analytic::S2, 0.0)?;
    x.broadcast_mul(&c.reshape((x.dim(0)?, 1, 1, 1))?)
}
