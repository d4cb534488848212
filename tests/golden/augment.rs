//! Golden cases of kind `augment_pipe` (golden README, `augment/`): EDM's `AugmentPipe` with
//! every random draw recorded in call order.
//!
//! Data-driven: the pipe is built from `params` (every key must be a setting the pipe knows,
//! so a held-back case with an unknown transform fails instead of passing untested), the
//! recorded `draws` are replayed in order (each must be asked for with the same function,
//! range and size, and all must be used), and each output is compared at the case's
//! `{output}_f32_rel` (or `{output}_rel`) tolerance.

use anyhow::{anyhow, ensure, Context, Result};
use candle_core::{DType, Tensor};
use serde_json::Value;

use super::common::{rel_err, Case};
use relay::train::augment::{AugmentPipe, AugmentRng};

/// The recorded draws, played back in order.
struct Replay {
    draws: Vec<(String, Option<u32>, Tensor)>,
    next: usize,
    batch: usize,
}

impl Replay {
    /// The next draw as image-major values: a `[per, N, ...]` record is transposed.
    fn take(&mut self, fun: &str, high: Option<u32>, per: usize) -> candle_core::Result<Tensor> {
        let Some((f, h, t)) = self.draws.get(self.next) else {
            candle_core::bail!(
                "the pipe asked for draw {} ({fun}), only {} recorded",
                self.next,
                self.draws.len()
            )
        };
        if f != fun || *h != high || t.elem_count() != per * self.batch {
            candle_core::bail!(
                "draw {}: the pipe asked for {fun}(high {high:?}) × {per} per image, the record holds {f}(high {h:?}) {:?}",
                self.next,
                t.dims()
            )
        }
        self.next += 1;
        let flat = t.flatten_all()?;
        if per == 1 {
            Ok(flat)
        } else {
            flat.reshape((per, self.batch))?.t()?.flatten_all()
        }
    }
}

impl AugmentRng for Replay {
    fn randint(&mut self, high: u32, per: usize) -> candle_core::Result<Vec<i64>> {
        self.take("randint", Some(high), per)?
            .to_dtype(DType::I64)?
            .to_vec1()
    }
    fn rand(&mut self, per: usize) -> candle_core::Result<Vec<f32>> {
        self.take("rand", None, per)?
            .to_dtype(DType::F32)?
            .to_vec1()
    }
    fn randn(&mut self, per: usize) -> candle_core::Result<Vec<f32>> {
        self.take("randn", None, per)?
            .to_dtype(DType::F32)?
            .to_vec1()
    }
}

/// Runs one `augment_pipe` case; returns the number of comparisons made.
pub fn check(case: &Case) -> Result<usize> {
    let pipe: AugmentPipe =
        serde_json::from_value(case.json["params"].clone()).context("params")?;
    let x = case.input("x")?.to_dtype(DType::F32)?;
    let draws = case.json["draws"]
        .as_array()
        .ok_or_else(|| anyhow!("no `draws` list"))?
        .iter()
        .map(|d| {
            let name = d["tensor"]
                .as_str()
                .ok_or_else(|| anyhow!("a draw names no tensor: {d}"))?;
            let t = case
                .tensors
                .get(name)
                .ok_or_else(|| anyhow!("draw tensor `{name}` missing"))?;
            let fun = d["fn"].as_str().unwrap_or("?").to_string();
            Ok((fun, d["high"].as_u64().map(|h| h as u32), t.clone()))
        })
        .collect::<Result<Vec<_>>>()?;
    let recorded = draws.len();
    let mut rng = Replay {
        draws,
        next: 0,
        batch: x.dim(0)?,
    };
    let out = pipe.apply(&x, &mut rng)?;
    ensure!(
        rng.next == recorded,
        "the pipe used {} of the {recorded} recorded draws",
        rng.next
    );

    let outputs = case.json["outputs"]
        .as_object()
        .ok_or_else(|| anyhow!("no `outputs`"))?;
    let mut errors = Vec::new();
    let mut report = Vec::new();
    for (key, spec) in outputs {
        let check = || -> Result<(f64, f64)> {
            let actual = match key.as_str() {
                "images" => &out.images,
                "labels" => &out.labels,
                k => anyhow::bail!("the pipe computes no output `{k}`"),
            };
            let name = spec["tensor"]
                .as_str()
                .ok_or_else(|| anyhow!("names no tensor"))?;
            let expected = case
                .tensors
                .get(name)
                .ok_or_else(|| anyhow!("tensor `{name}` missing"))?;
            let tol = &case.json["tolerance"];
            let tol = [format!("{key}_f32_rel"), format!("{key}_rel")]
                .iter()
                .find_map(|k| tol.get(k).and_then(Value::as_f64))
                .ok_or_else(|| anyhow!("no tolerance for `{key}` in {tol}"))?;
            let err = rel_err(actual, expected)?;
            ensure!(err <= tol, "relative error {err:.3e} > tolerance {tol:.0e}");
            Ok((err, tol))
        };
        match check() {
            Ok((err, tol)) => report.push(format!("{key} {err:.1e}/{tol:.0e}")),
            Err(e) => errors.push(format!("output `{key}`: {e:#}")),
        }
    }
    if std::env::var_os("RELAY_GOLDEN_VERBOSE").is_some() {
        eprintln!("{} ({}): {}", case.id(), case.kind(), report.join(", "));
    }
    ensure!(errors.is_empty(), "{}", errors.join("; "));
    Ok(outputs.len())
}
