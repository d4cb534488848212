//! The golden harness: every case of every file listed in `index.json` (of `RELAY_GOLDEN_DIR`,
//! default `../shared/golden`) is run and compared with the reference vectors
//! (`shared/golden/README.md`).
//!
//! Data-driven: a case's `kind` picks the function, its `params` and `inputs` feed it, and
//! each of its `outputs` is compared at the tolerance its name selects (`common::Case::
//! tolerance`), by relative error max|a − e|/max|e|. No case id or tensor name is written here,
//! so a held-back folder with other inputs and parameters runs unchanged. An unknown kind, a
//! missing tensor or output, a wrong draw count or a comparison over tolerance fails the
//! case; the test fails if any case does, after listing every failure.
//!
//! `unet_forward` belongs to the network and is checked by `golden/unet.rs`; `augment_pipe`
//! (the `augment/` folder, `RELAY_GOLDEN_DIR=../shared/golden/augment`) by `golden/augment.rs`.

#[path = "golden/augment.rs"]
mod augment;
#[path = "golden/common.rs"]
mod common;
#[path = "golden/unet.rs"]
mod unet;

use std::collections::HashMap;

use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::{DType, Tensor};

use common::{rel_err, vec_tensor, Analytic, Case};
use relay::diffusion::block_noise::{block_constant_noise, rolled_block_noise, BlockNoise};
use relay::diffusion::blur::{dct_blur, scale_pattern, BlurSchedule};
use relay::diffusion::blur_sampler::{blur_sampler, upsample_nearest, BlurSamplerConfig, Churn};
use relay::diffusion::dct::{dct_2d, dct_basis, idct_2d};
use relay::diffusion::edm_sampler::{edm_sampler, EdmSamplerConfig};
use relay::diffusion::loss::{BlurLoss, EdmLoss};
use relay::diffusion::noise::{balanced_class_labels, NoiseSource, RecordedNoise};
use relay::diffusion::precond::PrecondTensors;
use relay::diffusion::schedule::{
    blur_time_steps, churn_gamma, edm_time_steps, rho_schedule, t_hat,
};
use relay::diffusion::{SamplerOutput, Trajectory};

/// What a kind computed: output key → tensor.
type Outputs = HashMap<String, Tensor>;

#[test]
fn golden() -> Result<()> {
    let dir = common::golden_dir();
    let device = common::golden_device()?;
    let index = common::read_json(&dir.join("index.json"))?;
    let files = index["files"]
        .as_array()
        .ok_or_else(|| anyhow!("index.json: no `files` list"))?;

    let (mut total, mut passed, mut comparisons) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for file in files {
        let (Some(json_name), Some(st_name)) = (file["json"].as_str(), file["file"].as_str())
        else {
            bail!("index.json: entry without `json`/`file`: {file}")
        };
        let json = common::read_json(&dir.join(json_name))?;
        let tensors = common::read_tensors(&dir.join(st_name))?;
        let cases = json["cases"]
            .as_array()
            .ok_or_else(|| anyhow!("{json_name}: no `cases` list"))?;
        for case in cases {
            total += 1;
            let case = Case {
                json: case,
                tensors: &tensors,
                device: &device,
            };
            match run_case(&case) {
                Ok(n) => {
                    passed += 1;
                    comparisons += n;
                }
                Err(e) => failures.push(format!(
                    "{json_name} case `{}` ({}): {e:#}",
                    case.id(),
                    case.kind()
                )),
            }
        }
    }

    for f in &failures {
        eprintln!("FAILED {f}");
    }
    ensure!(total > 0, "no golden case found in {}", dir.display());
    ensure!(
        failures.is_empty(),
        "golden: {passed} of {total} cases passed, {} failed (see above)",
        failures.len()
    );
    eprintln!("({comparisons} comparisons on {device:?})");
    println!("golden: {total} cases passed");
    Ok(())
}

/// Runs one case; returns the number of comparisons made.
fn run_case(case: &Case) -> Result<usize> {
    let outputs = match case.kind() {
        "unet_forward" => return unet::check(case.json, case.tensors),
        "augment_pipe" => return augment::check(case),
        "dct2d" => dct2d(case)?,
        "dct_blur" => dct_blur_case(case)?,
        "alpha_t" => alpha_t(case)?,
        "block_noise_code" => block_noise_code(case)?,
        "block_noise_paper" => block_noise_paper(case)?,
        "blur_loss_schedule" => blur_loss_schedule(case)?,
        "blur_loss_forward" => blur_loss_forward(case)?,
        "edm_precond" => edm_precond(case)?,
        "edm_loss_schedule" => edm_loss_schedule(case)?,
        "edm_loss_forward" => edm_loss_forward(case)?,
        "edm_time_steps" => edm_steps(case)?,
        "edm_t_hat" => edm_t_hat(case)?,
        "blur_time_steps" => blur_steps(case)?,
        "edm_sampler" | "edm_sde_sampler_celebahq" => edm_sampler_case(case)?,
        "blur_sampler" | "blur_sampler_celebahq" => blur_sampler_case(case)?,
        kind => bail!("unknown kind `{kind}`"),
    };
    compare(case, &outputs)
}

/// Compares every output the case lists; all failures of the case in one error.
fn compare(case: &Case, outputs: &Outputs) -> Result<usize> {
    let listed = case.json["outputs"]
        .as_object()
        .ok_or_else(|| anyhow!("no `outputs`"))?;
    let verbose = std::env::var_os("RELAY_GOLDEN_VERBOSE").is_some();
    let mut errors = Vec::new();
    let mut report = Vec::new();
    for (key, spec) in listed {
        let check = || -> Result<(f64, f64)> {
            let name = spec["tensor"]
                .as_str()
                .ok_or_else(|| anyhow!("names no tensor"))?;
            let expected = case
                .tensors
                .get(name)
                .ok_or_else(|| anyhow!("tensor `{name}` missing"))?;
            let actual = outputs
                .get(key)
                .ok_or_else(|| anyhow!("kind `{}` computes no such output", case.kind()))?;
            let tol = case.tolerance(key)?;
            let err = rel_err(actual, expected)?;
            ensure!(err <= tol, "relative error {err:.3e} > tolerance {tol:.0e}");
            Ok((err, tol))
        };
        match check() {
            Ok((err, tol)) => report.push(format!("{key} {err:.1e}/{tol:.0e}")),
            Err(e) => errors.push(format!("output `{key}`: {e:#}")),
        }
    }
    if verbose {
        eprintln!("{} ({}): {}", case.id(), case.kind(), report.join(", "));
    }
    ensure!(errors.is_empty(), "{}", errors.join("; "));
    Ok(listed.len())
}

fn insert(out: &mut Outputs, key: &str, t: Tensor) {
    out.insert(key.to_string(), t);
}

// ---------------------------------------------------------------------------------------------
// DCT, blur, block noise

fn dct2d(case: &Case) -> Result<Outputs> {
    let p = case.usize("patch_size")?;
    let x = case.input("x")?;
    let (x64, x32) = (x.to_dtype(DType::F64)?, x.to_dtype(DType::F32)?);
    let mut out = Outputs::new();
    insert(&mut out, "dct_f64", dct_2d(&x64, p)?);
    insert(&mut out, "idct_f64", idct_2d(&x64, p)?);
    insert(&mut out, "dct_f32", dct_2d(&x32, p)?);
    insert(&mut out, "idct_f32", idct_2d(&x32, p)?);
    insert(
        &mut out,
        "basis",
        Tensor::from_vec(dct_basis(p), (p, p), &candle_core::Device::Cpu)?,
    );
    Ok(out)
}

fn dct_blur_case(case: &Case) -> Result<Outputs> {
    let p = case.usize("patch_size")?;
    let m = case.f64("min_scale")?;
    let x = case.input("x")?;
    let sigmas = match case.input_opt("sigma_vec")? {
        Some(v) => v.to_dtype(DType::F64)?.to_vec1::<f64>()?,
        None => vec![case.f64("blur_sigmas")?],
    };
    let mut pattern = Vec::new();
    for &s in &sigmas {
        pattern.extend(scale_pattern(p, s, m));
    }
    let pattern_shape = if case.input_opt("sigma_vec")?.is_some() {
        vec![sigmas.len(), p, p]
    } else {
        vec![p, p]
    };
    let mut out = Outputs::new();
    insert(
        &mut out,
        "y_f64",
        dct_blur(&x.to_dtype(DType::F64)?, p, &sigmas, m)?,
    );
    insert(
        &mut out,
        "y_f32",
        dct_blur(&x.to_dtype(DType::F32)?, p, &sigmas, m)?,
    );
    insert(
        &mut out,
        "scale_pattern_f64",
        Tensor::from_vec(pattern, pattern_shape, &candle_core::Device::Cpu)?,
    );
    Ok(out)
}

fn blur_schedule(case: &Case, prob_length_param: &str) -> Result<BlurSchedule> {
    let d = BlurSchedule::default();
    Ok(BlurSchedule {
        prob_length: case.f64(prob_length_param)?,
        blur_sigma_max: case.f64("blur_sigma_max")?,
        min_scale: case.f64_or("min_scale", d.min_scale)?,
        p_mean: case.f64_or("P_mean", d.p_mean)?,
        p_std: case.f64_or("P_std", d.p_std)?,
    })
}

fn alpha_t(case: &Case) -> Result<Outputs> {
    let sched = blur_schedule(case, "prob_length")?;
    let p = case.usize("patch_size")?;
    let side = p * case.usize("repeat_dims")?;
    let t = case.input("t")?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let dev = candle_core::Device::Cpu;
    let alphas = t
        .iter()
        .map(|&t| {
            sched
                .alpha_t(t, p, side, side, DType::F64, &dev)?
                .reshape((side, side))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let alpha = Tensor::stack(&alphas, 0)?;
    let mut out = Outputs::new();
    insert(&mut out, "alpha_f64", alpha.clone());
    insert(&mut out, "alpha_code_f32", alpha);
    insert(
        &mut out,
        "u",
        vec_tensor(t.iter().map(|&t| sched.u(t)).collect())?,
    );
    insert(
        &mut out,
        "blur_sigma",
        vec_tensor(t.iter().map(|&t| sched.blur_sigma(t)).collect())?,
    );
    Ok(out)
}

fn block_noise_code(case: &Case) -> Result<Outputs> {
    let g = case.input("g")?.to_dtype(DType::F64)?;
    let mut out = Outputs::new();
    insert(
        &mut out,
        "out_f64",
        rolled_block_noise(&g, case.usize("block_size")?)?,
    );
    Ok(out)
}

fn block_noise_paper(case: &Case) -> Result<Outputs> {
    let s = case.usize("block_size")?;
    let alpha = case.f64("alpha")?;
    let g = case.input("g")?.to_dtype(DType::F64)?;
    let z = case.input("z_low")?.to_dtype(DType::F64)?;
    // The mixing goes through the sampler's own draw path: ε = g first, then the base z.
    let mut noise = RecordedNoise::from_draws(vec![g.clone(), z.clone()])?;
    let mixed =
        BlockNoise::Paper.draw(&mut noise, &g.dims()[1..], s, alpha, DType::F64, g.device())?;
    let want = if alpha > 0.0 { 2 } else { 1 };
    let made = noise.draws();
    ensure!(
        made == want,
        "paper block noise made {made} draws, expected {want}"
    );
    let mut out = Outputs::new();
    insert(&mut out, "block_f64", block_constant_noise(&z, s)?);
    insert(&mut out, "mixed_normalised_f64", mixed);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Losses and EDM coefficients

fn blur_loss(case: &Case) -> Result<BlurLoss> {
    let d = BlurLoss::default();
    Ok(BlurLoss {
        p_mean: case.f64_or("P_mean", d.p_mean)?,
        p_std: case.f64_or("P_std", d.p_std)?,
        sigma_data: case.f64_or("sigma_data", d.sigma_data)?,
        up_scale: case.usize("up_scale")?,
        prob_length: case.f64("prob_length")?,
        blur_sigma_max: case.f64("blur_sigma_max")?,
        min_scale: case.f64_or("min_scale", d.min_scale)?,
        block_scale: case.f64_or("block_scale", 0.0)?,
        block_noise: BlockNoise::Rolled,
        truncate_sigma: case.f64_or("truncate_sigma", d.truncate_sigma)?,
        weight_max: case.f64_or("weight_clamp_max", d.weight_max)?,
    })
}

/// A derived scalar the case states in its params must match ours to 1e-12 relative.
fn check_param(case: &Case, name: &str, ours: f64) -> Result<()> {
    if case.param(name).is_some() {
        let theirs = case.f64(name)?;
        ensure!(
            (ours - theirs).abs() <= 1e-12 * theirs.abs(),
            "param `{name}` = {theirs}, ours {ours}"
        );
    }
    Ok(())
}

fn blur_loss_schedule(case: &Case) -> Result<Outputs> {
    let loss = blur_loss(case)?;
    check_param(case, "truncate_p", loss.truncate_u())?;
    check_param(case, "effective_min_sigma", loss.level(0.0).sigma)?;
    let mut out = Outputs::new();
    for (input, suffix) in [("u_f64", "f64"), ("u_f32", "code")] {
        let Some(u) = case.input_opt(input)? else {
            continue;
        };
        let levels: Vec<_> = u
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .iter()
            .map(|&u| loss.level(u))
            .collect();
        let col = |f: fn(&relay::diffusion::loss::BlurLevel) -> f64| {
            vec_tensor(levels.iter().map(f).collect())
        };
        let (u_c, sb, s, w) = (
            col(|l| l.u)?,
            col(|l| l.blur_sigma)?,
            col(|l| l.sigma)?,
            col(|l| l.weight)?,
        );
        if suffix == "f64" {
            insert(&mut out, "u_clamped_f64", u_c);
            insert(&mut out, "blur_sigma_f64", sb);
            insert(&mut out, "sigma_f64", s);
            insert(&mut out, "weight_f64", w);
        } else {
            insert(&mut out, "u_clamped_code", u_c);
            insert(&mut out, "blur_sigma_code_f32", sb.clone());
            insert(&mut out, "blur_sigma_code", sb);
            insert(&mut out, "sigma_code", s);
            insert(&mut out, "weight_code", w);
        }
    }
    Ok(out)
}

/// The recorded normal draws of a loss case: its `noise*` / `eps*` inputs in name order.
fn loss_noise(case: &Case, dtype: DType) -> Result<RecordedNoise> {
    let draws = case
        .tensor_inputs()
        .iter()
        .filter(|n| n.starts_with("noise") || n.starts_with("eps"))
        .map(|n| Ok(case.input(n)?.to_dtype(dtype)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordedNoise::from_draws(draws)?)
}

fn blur_loss_forward(case: &Case) -> Result<Outputs> {
    let loss = blur_loss(case)?;
    let y = case.input("y")?;
    let u = case
        .input("u")?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let mut out = Outputs::new();
    for dtype in [DType::F64, DType::F32] {
        let mut noise = loss_noise(case, dtype)?;
        let parts = loss.loss_at(&common::shrink, &y.to_dtype(dtype)?, None, &u, &mut noise)?;
        ensure!(
            noise.draws() == noise.len(),
            "{} draws made, {} recorded",
            noise.draws(),
            noise.len()
        );
        if dtype == DType::F64 {
            insert(&mut out, "y_blurred_f64", parts.y_clean);
            insert(&mut out, "n_f64", parts.n);
            insert(&mut out, "y_noisy_f64", parts.y_noisy.clone());
            insert(&mut out, "sigma_f64", vec_tensor(parts.sigma)?);
            insert(&mut out, "loss_f64", parts.loss.clone());
            insert(&mut out, "y_noisy_code", parts.y_noisy);
            insert(&mut out, "loss_code", parts.loss);
        } else {
            insert(&mut out, "y_blurred_f32", parts.y_clean);
        }
    }
    Ok(out)
}

fn edm_precond(case: &Case) -> Result<Outputs> {
    let sigma_data = case.f64_or("sigma_data", relay::diffusion::precond::SIGMA_DATA)?;
    let sigma = case.input("sigma")?;
    let mut out = Outputs::new();
    for (dtype, suffix) in [(DType::F64, "f64"), (DType::F32, "code_f32")] {
        let c = PrecondTensors::new(&sigma.to_dtype(dtype)?, sigma_data)?;
        insert(&mut out, &format!("c_skip_{suffix}"), c.c_skip);
        insert(&mut out, &format!("c_out_{suffix}"), c.c_out);
        insert(&mut out, &format!("c_in_{suffix}"), c.c_in);
        insert(&mut out, &format!("c_noise_{suffix}"), c.c_noise);
    }
    Ok(out)
}

fn edm_loss(case: &Case) -> Result<EdmLoss> {
    let d = EdmLoss::default();
    Ok(EdmLoss {
        p_mean: case.f64_or("P_mean", d.p_mean)?,
        p_std: case.f64_or("P_std", d.p_std)?,
        sigma_data: case.f64_or("sigma_data", d.sigma_data)?,
    })
}

fn edm_loss_schedule(case: &Case) -> Result<Outputs> {
    let loss = edm_loss(case)?;
    let r = case.input("r")?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let sigma: Vec<f64> = r.iter().map(|&r| loss.sigma(r)).collect();
    let weight = vec_tensor(sigma.iter().map(|&s| loss.weight(s)).collect())?;
    let sigma = vec_tensor(sigma)?;
    let mut out = Outputs::new();
    insert(&mut out, "sigma_f64", sigma.clone());
    insert(&mut out, "weight_f64", weight.clone());
    insert(&mut out, "sigma_code_f32", sigma);
    insert(&mut out, "weight_code_f32", weight);
    Ok(out)
}

fn edm_loss_forward(case: &Case) -> Result<Outputs> {
    let loss = edm_loss(case)?;
    let y = case.input("y")?;
    let r = case
        .input("r")?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let mut out = Outputs::new();
    for (dtype, suffix) in [(DType::F64, "f64"), (DType::F32, "f32")] {
        let mut noise = loss_noise(case, dtype)?;
        let parts = loss.loss_at(&common::shrink, &y.to_dtype(dtype)?, None, &r, &mut noise)?;
        ensure!(
            noise.draws() == noise.len(),
            "{} draws made, {} recorded",
            noise.draws(),
            noise.len()
        );
        insert(&mut out, &format!("y_noisy_{suffix}"), parts.y_noisy);
        insert(
            &mut out,
            &format!("sigma_{suffix}"),
            vec_tensor(parts.sigma)?,
        );
        insert(&mut out, &format!("loss_{suffix}"), parts.loss);
    }
    Ok(out)
}

fn edm_steps(case: &Case) -> Result<Outputs> {
    let t = edm_time_steps(
        case.usize("num_steps")?,
        case.f64("sigma_min")?,
        case.f64("sigma_max")?,
        case.f64("rho")?,
    );
    Ok(Outputs::from([("t_steps".to_string(), vec_tensor(t)?)]))
}

fn edm_t_hat(case: &Case) -> Result<Outputs> {
    let n = case.usize("num_steps")?;
    let t = edm_time_steps(
        n,
        case.f64("sigma_min")?,
        case.f64("sigma_max")?,
        case.f64("rho")?,
    );
    let (s_churn, s_min, s_max) = (case.f64("S_churn")?, case.f64("S_min")?, case.f64("S_max")?);
    let hat = t[..n]
        .iter()
        .map(|&t| t_hat(t, churn_gamma(t, n, s_churn, s_min, s_max)))
        .collect();
    let mut out = Outputs::new();
    insert(&mut out, "t_steps", vec_tensor(t)?);
    insert(&mut out, "t_hat", vec_tensor(hat)?);
    Ok(out)
}

fn blur_steps(case: &Case) -> Result<Outputs> {
    let (n, s_min, s_max, rho) = (
        case.usize("num_steps")?,
        case.f64("sigma_min")?,
        case.f64("sigma_max")?,
        case.f64("rho")?,
    );
    let t = blur_time_steps(n, s_min, s_max, rho, case.f64("truncation_sigma")?);
    let kept = t.len() - 1;
    if case.param("steps_kept").is_some() {
        ensure!(
            kept == case.usize("steps_kept")?,
            "{kept} steps kept, expected {}",
            case.usize("steps_kept")?
        );
    }
    let mut out = Outputs::new();
    if case.json["outputs"]
        .get("alpha_pattern_at_t_steps")
        .is_some()
    {
        // α is never evaluated at the last step: rows i = 0..n−2, patch size from the shape.
        let shape = case.output_shape("alpha_pattern_at_t_steps")?;
        let p = *shape
            .last()
            .ok_or_else(|| anyhow!("alpha_pattern_at_t_steps has no shape"))?;
        let sched = blur_schedule(case, "truncation_t")?;
        let rows: Vec<f64> = t[..kept.saturating_sub(1)]
            .iter()
            .flat_map(|&t| sched.alpha_pattern(t, p))
            .collect();
        insert(
            &mut out,
            "alpha_pattern_at_t_steps",
            Tensor::from_vec(rows, shape, &candle_core::Device::Cpu)?,
        );
    }
    insert(
        &mut out,
        "t_full",
        vec_tensor(rho_schedule(n, s_min, s_max, rho))?,
    );
    insert(&mut out, "t_steps", vec_tensor(t)?);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Samplers (analytic denoiser, recorded noise)

/// The analytic denoiser, class labels and recorded noise of a sampler case.
struct SamplerInputs {
    net: Analytic,
    labels: Option<Tensor>,
    noise: RecordedNoise,
}

fn sampler_inputs(case: &Case) -> Result<SamplerInputs> {
    let offsets = case.input_opt("offsets")?;
    let net = Analytic::new(&case.input("mu")?, offsets.as_ref())?;
    let label_dim = case.f64_or(
        "label_dim",
        offsets.as_ref().map_or(0, |o| o.dim(0).unwrap_or(0)) as f64,
    )? as usize;
    let seeds: Option<Vec<u64>> = case
        .param("seeds")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let stored = match case.input_opt("class_labels")? {
        Some(l) => Some(l.to_dtype(DType::F64)?),
        None => None,
    };
    let derived = match (&seeds, label_dim) {
        (Some(seeds), l) if l > 0 => {
            Some(balanced_class_labels(seeds, l, DType::F64, case.device)?)
        }
        _ => None,
    };
    if let (Some(s), Some(d)) = (&stored, &derived) {
        ensure!(
            rel_err(d, s)? == 0.0,
            "class labels eye(L)[seed mod L] differ from the stored ones"
        );
    }
    let noise = RecordedNoise::new(&case.input("noise")?.to_dtype(DType::F64)?)?;
    Ok(SamplerInputs {
        net,
        labels: stored.or(derived),
        noise,
    })
}

/// The outputs every sampler case shares: the result under each listed `x_out*` key, and the
/// trajectory of first-evaluation inputs.
fn sampler_outputs(
    case: &Case,
    result: SamplerOutput,
    trace: Trajectory,
    noise: &RecordedNoise,
) -> Result<Outputs> {
    ensure!(
        noise.draws() == noise.len(),
        "{} draws made, {} recorded",
        noise.draws(),
        noise.len()
    );
    let mut out = Outputs::new();
    if let Some(listed) = case.json["outputs"].as_object() {
        for key in listed.keys().filter(|k| k.starts_with("x_out")) {
            insert(&mut out, key, result.x.clone());
        }
    }
    insert(&mut out, "euler_inputs", Tensor::stack(&trace.x, 0)?);
    insert(&mut out, "euler_sigmas", vec_tensor(trace.sigma)?);
    Ok(out)
}

fn edm_sampler_case(case: &Case) -> Result<Outputs> {
    let d = EdmSamplerConfig::default();
    let cfg = EdmSamplerConfig {
        num_steps: case.usize("num_steps")?,
        sigma_min: case.f64("sigma_min")?,
        sigma_max: case.f64("sigma_max")?,
        rho: case.f64("rho")?,
        s_churn: case.f64_or("S_churn", d.s_churn)?,
        s_min: case.f64_or("S_min", d.s_min)?,
        s_max: case.f64_or("S_max", d.s_max)?,
        s_noise: case.f64_or("S_noise", d.s_noise)?,
        cfg_scale: case.f64_or("cfg_scale", d.cfg_scale)?,
        sde_scale: match case.kind() {
            "edm_sde_sampler_celebahq" => Some(case.f64("sde_scale")?),
            _ => None,
        },
        ..d
    };
    let mut inputs = sampler_inputs(case)?;
    let latents = case.input("latents")?;
    let mut trace = Trajectory::default();
    let result = edm_sampler(
        &inputs.net,
        &latents,
        inputs.labels.as_ref(),
        &cfg,
        &mut inputs.noise,
        Some(&mut trace),
    )
    .context("edm_sampler")?;
    sampler_outputs(case, result, trace, &inputs.noise)
}

fn blur_sampler_case(case: &Case) -> Result<Outputs> {
    let d = BlurSamplerConfig::default();
    let churn = match case.kind() {
        "blur_sampler_celebahq" => {
            let c = Churn::default();
            Some(Churn {
                s_churn: case.f64_or("S_churn", c.s_churn)?,
                s_min: case.f64_or("S_min", c.s_min)?,
                s_max: case.f64_or("S_max", c.s_max)?,
                s_noise: case.f64_or("S_noise", c.s_noise)?,
            })
        }
        _ => None,
    };
    let cfg = BlurSamplerConfig {
        num_steps: case.usize("num_steps")?,
        sigma_min: case.f64("sigma_min")?,
        sigma_max: case.f64("sigma_max")?,
        rho: case.f64("rho")?,
        truncation_sigma: case.f64("truncation_sigma")?,
        truncation_t: case.f64("truncation_t")?,
        up_scale: case.usize("up_scale")?,
        blur_sigma_max: case.f64("blur_sigma_max")?,
        min_scale: case.f64_or("min_scale", d.min_scale)?,
        cfg_scale: case.f64_or("cfg_scale", d.cfg_scale)?,
        s_block: case.f64("s_block")?,
        s_noise: case.f64("s_noise")?,
        churn,
        ..d
    };
    let mut inputs = sampler_inputs(case)?;

    // The hand-off: nearest upsampling of the low-resolution image, checked against the
    // stored latents when the case has them.
    let low = case.input("low_res")?;
    let stored = case.input_opt("latents")?;
    let side = match &stored {
        Some(l) => l.dim(3)?,
        None => case.usize("image_size")?,
    };
    ensure!(
        side % low.dim(3)? == 0,
        "image size {side} is not a multiple of the low resolution"
    );
    let latents = upsample_nearest(&low.to_dtype(DType::F64)?, side / low.dim(3)?)?;
    if let Some(stored) = &stored {
        let err = rel_err(&latents, stored)?;
        ensure!(
            err == 0.0,
            "upsampled low_res differs from the stored latents ({err:.3e})"
        );
    }

    let mut trace = Trajectory::default();
    let result = blur_sampler(
        &inputs.net,
        &latents,
        inputs.labels.as_ref(),
        &cfg,
        &mut inputs.noise,
        Some(&mut trace),
    )
    .context("blur_sampler")?;
    sampler_outputs(case, result, trace, &inputs.noise)
}
