//! Golden cases of kind `unet_forward` (golden README, "U-Net forward"): the whole
//! `EDMPrecond` + `DhariwalUNet` in float32 with seeded random weights.
//!
//! Data-driven: the network comes from `params.dhariwal_unet` (+ `params.edm_precond`),
//! the weights from every tensor `{prefix}model.*`, and each `forwards` entry names its
//! inputs, outputs and intermediates. No case id or tensor name is written here.
//!
//! Per case:
//! 1. the state_dict our structure derives equals `weights.keys` (names, shapes, kinds, order);
//! 2. the file's `model.*` tensors are exactly that set (missing/extra keys fail) and the
//!    resample buffers hold the box filter;
//! 3. per forward: D and F within `tolerance.rel`, and c_noise, emb and every block mean
//!    within `tolerance.intermediates_rel`. A failure names the first intermediate that
//!    diverges, in forward order, which points at the module to look at.

use std::collections::HashMap;

use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use relay::model::checkpoint::{check_buffers, check_keys};
use relay::model::structure::Structure;
use relay::model::{EdmPrecond, Trace, UnetConfig};

/// Run one `unet_forward` case; returns the number of comparisons made.
pub fn check(case: &Value, tensors: &HashMap<String, Tensor>) -> Result<usize> {
    let id = case["id"].as_str().unwrap_or("?");
    let params = &case["params"];
    let cfg = config_from_params(params).with_context(|| format!("case `{id}`: params"))?;
    let mut n = 0;

    // 1. Structure: our derived state_dict is the reference's, key for key.
    let structure = Structure::new(&cfg)?;
    let ours = structure.state_dict(&cfg);
    let theirs = case["weights"]["keys"]
        .as_array()
        .ok_or_else(|| anyhow!("case `{id}`: weights.keys is not a list"))?;
    ensure!(
        ours.len() == theirs.len(),
        "case `{id}`: {} state_dict keys derived, {} in the file's list",
        ours.len(),
        theirs.len()
    );
    for (o, t) in ours.iter().zip(theirs) {
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone())?;
        let buffer = t["kind"].as_str() == Some("buffer");
        ensure!(
            t["key"].as_str() == Some(o.name.as_str()) && shape == o.shape && buffer == o.buffer,
            "case `{id}`: state_dict order differs: derived {} {:?} (buffer {}), reference {}",
            o.name,
            o.shape,
            o.buffer,
            t
        );
    }
    n += 1;

    // 2. Weights: every `{prefix}model.*` tensor, nothing missing, nothing extra.
    let prefix = case["weights"]["prefix"]
        .as_str()
        .ok_or_else(|| anyhow!("case `{id}`: weights.prefix missing"))?;
    let weights: HashMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix(prefix)?;
            key.starts_with("model.")
                .then(|| (key.to_string(), v.clone()))
        })
        .collect();
    check_keys(
        weights.iter().map(|(k, v)| (k.as_str(), v.dims().to_vec())),
        &cfg,
    )
    .with_context(|| format!("case `{id}`"))?;
    check_buffers(&weights, &cfg).with_context(|| format!("case `{id}`"))?;
    n += 1;
    let sigma_data = params["edm_precond"]["sigma_data"].as_f64().unwrap_or(0.5);
    // The network runs where the harness put the tensors (the CPU for the stored files).
    let device = tensor(tensors, &case["inputs"]["x"], "inputs.x")?
        .device()
        .clone();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &device);
    let net = EdmPrecond::new(vb, &cfg)?.with_sigma_data(sigma_data);

    // 3. Every forward call.
    let tol = case["tolerance"]["rel"].as_f64().unwrap_or(1e-4);
    let tol_mid = case["tolerance"]["intermediates_rel"]
        .as_f64()
        .unwrap_or(tol);
    let forwards = case["forwards"]
        .as_array()
        .ok_or_else(|| anyhow!("case `{id}`: forwards is not a list"))?;
    for fwd in forwards {
        let name = format!("{id}/{}", fwd["name"].as_str().unwrap_or("?"));
        n += check_forward(&net, case, fwd, tensors, tol, tol_mid)
            .with_context(|| format!("unet_forward `{name}`"))?;
    }
    Ok(n)
}

/// `params.dhariwal_unet` as a [`UnetConfig`], checked against `params.edm_precond`.
fn config_from_params(params: &Value) -> Result<UnetConfig> {
    let mut kwargs = params["dhariwal_unet"].clone();
    let obj = kwargs
        .as_object_mut()
        .ok_or_else(|| anyhow!("params.dhariwal_unet is not an object"))?;
    // RelayDiffusion-only switch for xformers attention: the same softmax(qᵀk/√d).
    obj.remove("eff_attn");
    let cfg: UnetConfig = serde_json::from_value(kwargs)?;
    let pre = &params["edm_precond"];
    if let Some(model_type) = pre["model_type"].as_str() {
        ensure!(
            model_type == "DhariwalUNet",
            "model_type {model_type} is not supported"
        );
    }
    for (key, ours) in [
        ("img_resolution", cfg.img_resolution),
        ("img_channels", cfg.in_channels),
        ("label_dim", cfg.label_dim),
    ] {
        if let Some(v) = pre[key].as_u64() {
            ensure!(
                v as usize == ours,
                "edm_precond.{key} = {v} but the U-Net has {ours}"
            );
        }
    }
    Ok(cfg)
}

fn tensor<'a>(
    tensors: &'a HashMap<String, Tensor>,
    entry: &Value,
    what: &str,
) -> Result<&'a Tensor> {
    let name = entry["tensor"]
        .as_str()
        .ok_or_else(|| anyhow!("{what}: no tensor name in {entry}"))?;
    tensors
        .get(name)
        .ok_or_else(|| anyhow!("{what}: tensor `{name}` is not in the file"))
}

/// `e <= tol`, false for NaN.
fn within(e: f64, tol: f64) -> bool {
    e <= tol
}

/// max|a − e| / max|e| over the whole tensor.
fn rel_err(actual: &Tensor, expected: &Tensor) -> Result<f64> {
    ensure!(
        actual.dims() == expected.dims(),
        "shape {:?}, expected {:?}",
        actual.dims(),
        expected.dims()
    );
    let a = actual.to_dtype(DType::F64)?;
    let e = expected.to_dtype(DType::F64)?;
    let num = (a - &e)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let den = e.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(if den == 0.0 { num } else { num / den })
}

fn check_forward(
    net: &EdmPrecond,
    case: &Value,
    fwd: &Value,
    tensors: &HashMap<String, Tensor>,
    tol: f64,
    tol_mid: f64,
) -> Result<usize> {
    let inputs = &case["inputs"];
    let x = tensor(tensors, &inputs["x"], "inputs.x")?.to_dtype(DType::F32)?;
    let sigma = tensor(tensors, &inputs["sigma"], "inputs.sigma")?.to_dtype(DType::F32)?;
    let labels = match fwd["class_labels"].as_str() {
        None => None,
        Some(input) => Some(tensor(tensors, &inputs[input], input)?.to_dtype(DType::F32)?),
    };

    let mut trace = Trace::default();
    let out = net.forward_traced(&x, &sigma, labels.as_ref(), &mut trace)?;

    // Intermediates, in forward order: c_noise, emb, then every module's mean.
    let mids = &fwd["intermediates"];
    let mut diag: Vec<(String, f64)> = Vec::new();
    diag.push((
        "c_noise".into(),
        rel_err(
            &EdmPrecond::c_noise(&sigma)?,
            tensor(tensors, &mids["c_noise"], "c_noise")?,
        )?,
    ));
    let emb = trace
        .emb
        .as_ref()
        .ok_or_else(|| anyhow!("no embedding traced"))?;
    diag.push((
        "emb".into(),
        rel_err(emb, tensor(tensors, &mids["emb"], "emb")?)?,
    ));
    let means = mids["block_means"]
        .as_object()
        .ok_or_else(|| anyhow!("intermediates.block_means is not an object"))?;
    ensure!(
        means.len() == trace.block_means.len(),
        "{} block means in the file, {} modules run",
        means.len(),
        trace.block_means.len()
    );
    for (name, mean) in &trace.block_means {
        let entry = means
            .get(name)
            .ok_or_else(|| anyhow!("module `{name}` has no block mean in the file"))?;
        diag.push((
            format!("block_means[{name}]"),
            rel_err(mean, tensor(tensors, entry, name)?)?,
        ));
    }

    // Outputs.
    let outputs = &case["outputs"];
    let mut results = Vec::new();
    for key in ["D", "F"] {
        let out_name = fwd["outputs"][key]
            .as_str()
            .ok_or_else(|| anyhow!("forwards.outputs.{key} missing"))?;
        let expected = tensor(tensors, &outputs[out_name], out_name)?;
        let actual = if key == "D" { &out.d } else { &out.f };
        results.push((key, rel_err(actual, expected)?));
    }

    let worst_mid = diag.iter().map(|(_, e)| *e).fold(0.0, f64::max);
    println!(
        "unet_forward {:<24} D {:.2e}  F {:.2e}  worst intermediate {:.2e}  (tol {tol:.0e})",
        format!(
            "{}/{}",
            case["id"].as_str().unwrap_or("?"),
            fwd["name"].as_str().unwrap_or("?")
        ),
        results[0].1,
        results[1].1,
        worst_mid
    );
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, e)| !within(*e, tol))
        .map(|(k, e)| format!("{k} rel err {e:.3e} > {tol:.0e}"))
        .collect();
    let first_bad = diag.iter().find(|(_, e)| !within(*e, tol_mid));
    if !failed.is_empty() || first_bad.is_some() {
        let where_ = match first_bad {
            Some((name, e)) => format!("first diverging intermediate: {name} (rel err {e:.3e})"),
            None => "all intermediates within tolerance (look at out_norm/out_conv or the wrapper)"
                .into(),
        };
        let outs = if failed.is_empty() {
            "D and F within tolerance".to_string()
        } else {
            failed.join(", ")
        };
        bail!("{outs}; {where_}");
    }
    Ok(results.len() + diag.len())
}
