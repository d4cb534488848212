//! CUDA kernels against their CPU twins on random inputs (issue 17). Built with the `cuda`
//! feature; each test returns early, saying so, when no CUDA device is present, so they
//! run for real only on a GPU machine (`scripts/gpu-profile.sh` runs them).
//!
//! Tolerances, as max|cuda − cpu| / max|cpu| over a tensor:
//! * float32: values 1e-5, gradients 1e-4 (the two differ only in summation order; a
//!   gradient such as GroupNorm's dx = rstd·(dz·a − m1 − x̂·m2) cancels terms of the size
//!   of its result);
//! * bfloat16: values 8e-3, gradients 1.6e-2 — two and four times the rounding of a
//!   bfloat16 output (2⁻⁸ relative); inputs are rounded to bfloat16 first, so both sides
//!   compute from the same values;
//! * Adam / EMA: bit-identical (the kernels keep the CPU's order and rounding).

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::model::ops::{group_norm::group_norm_act, softmax::softmax_op};

/// The first CUDA device, or `None` (test skipped) on a machine without one.
fn gpu() -> Option<Device> {
    // The error itself is not printed: formatting it asks the driver for its message,
    // which a link-only stub libcuda (scripts/cuda-build.sh) cannot answer.
    let dev = Device::new_cuda(0).ok();
    if dev.is_none() {
        eprintln!("skipped: no CUDA device");
    }
    dev
}

/// max|a − b| / max|b| with both brought to float32 on the CPU.
fn rel(a: &Tensor, b: &Tensor) -> Result<f32> {
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F32);
    crate::model::ops::rel_err(&cpu(a)?, &cpu(b)?)
}

/// (values, gradients) tolerance for a storage type.
fn tol(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::BF16 => (8e-3, 1.6e-2),
        _ => (1e-5, 1e-4),
    }
}

/// A random CPU tensor already rounded to `dtype` (kept as float32).
fn randn_as(dtype: DType, std: f32, mean: f32, shape: &[usize]) -> Result<Tensor> {
    (Tensor::randn(0f32, std, shape, &Device::Cpu)? + mean as f64)?
        .to_dtype(dtype)?
        .to_dtype(DType::F32)
}

fn check(name: &str, err: f32, tol: f32) {
    eprintln!("{name}: relative error {err:.2e} (tolerance {tol:.1e})");
    assert!(err <= tol, "{name}: relative error {err} > {tol}");
}

/// The GroupNorm op (plain and with SiLU; scale-shift is only other coefficients) on CUDA
/// against the CPU kernel: y, dx and d(ad), float32 and bfloat16, including an adm-64
/// shape (192 channels in 32 groups, 16×16) and one with a plane smaller than a warp.
#[test]
fn group_norm_matches_the_cpu_kernel() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (b, c, h, w, groups) in [(2, 8, 5, 3, 4), (3, 64, 8, 8, 16), (2, 192, 16, 16, 32)] {
        for dtype in [DType::F32, DType::BF16] {
            for silu in [false, true] {
                let (tv, tg) = tol(dtype);
                let x = randn_as(dtype, 2.0, 0.7, &[b, c, h, w])?;
                let ad = Tensor::randn(0f32, 1., (2, b, c), &Device::Cpu)?;
                let up = randn_as(dtype, 1.0, 0.0, &[b, c, h, w])?;
                let op = (groups, 1e-5, silu);
                let run = |on: &Device, dt: DType| -> Result<(Tensor, Tensor, Tensor)> {
                    let xv = Var::from_tensor(&x.to_device(on)?.to_dtype(dt)?)?;
                    let adv = Var::from_tensor(&ad.to_device(on)?)?;
                    let y = group_norm_act(xv.as_tensor(), adv.as_tensor(), op)?;
                    let g = (&y * up.to_device(on)?.to_dtype(dt)?)?
                        .sum_all()?
                        .backward()?;
                    let dx = g.get(xv.as_tensor()).expect("dx").clone();
                    let dad = g.get(adv.as_tensor()).expect("dad").clone();
                    Ok((y, dx, dad))
                };
                let (y0, dx0, dad0) = run(&Device::Cpu, DType::F32)?;
                let (y1, dx1, dad1) = run(&dev, dtype)?;
                let what = format!("group norm {b}x{c}x{h}x{w}/{groups} {dtype:?} silu={silu}");
                check(&format!("{what}: y"), rel(&y1, &y0)?, tv);
                check(&format!("{what}: dx"), rel(&dx1, &dx0)?, tg);
                check(&format!("{what}: d(ad)"), rel(&dad1, &dad0)?, tg);
            }
        }
    }
    Ok(())
}

/// Softmax over the last dimension and its backward against the CPU kernel, for the
/// three type pairs, rows from 7 values to adm-64's 32×32 attention (1024) and the
/// kernel's longest row (8192).
#[test]
fn softmax_matches_the_cpu_kernel() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let pairs = [
        (DType::F32, DType::F32),
        (DType::F32, DType::BF16),
        (DType::BF16, DType::BF16),
    ];
    for dims in [[3, 5, 7], [2, 64, 1024], [1, 3, 8192]] {
        for (input, out) in pairs {
            let (tv, tg) = tol(if input == DType::BF16 || out == DType::BF16 {
                DType::BF16
            } else {
                DType::F32
            });
            let x = randn_as(input, 3.0, 0.0, &dims)?;
            let up = randn_as(out, 1.0, 0.0, &dims)?;
            let x0 = Var::from_tensor(&x)?;
            let y0 = softmax_op(x0.as_tensor(), DType::F32)?;
            let g0 = (&y0 * &up)?.sum_all()?.backward()?;
            let x1 = Var::from_tensor(&x.to_device(&dev)?.to_dtype(input)?)?;
            let y1 = softmax_op(x1.as_tensor(), out)?;
            assert_eq!(y1.dtype(), out);
            let g1 = (&y1 * up.to_device(&dev)?.to_dtype(out)?)?
                .sum_all()?
                .backward()?;
            let dx1 = g1.get(x1.as_tensor()).expect("dx");
            assert_eq!(dx1.dtype(), input);
            let what = format!("softmax {dims:?} {input:?}->{out:?}");
            check(&format!("{what}: y"), rel(&y1, &y0)?, tv);
            // dx = y·(dy − Σ dy·y) cancels: error against max|y|·max|dy| (the CPU test's measure).
            let max = |t: &Tensor| t.abs()?.max_all()?.to_scalar::<f32>();
            let dx0 = g0.get(x0.as_tensor()).expect("dx");
            let diff = (dx1.to_device(&Device::Cpu)?.to_dtype(DType::F32)? - dx0)?;
            check(
                &format!("{what}: dx"),
                max(&diff)? / (max(&y0)? * max(&up)?),
                tg,
            );
        }
    }
    Ok(())
}

/// Three Adam steps and an EMA update on CUDA equal the CPU's in-place kernels bit for bit.
#[test]
fn adam_and_ema_match_the_cpu_kernels_exactly() -> Result<()> {
    use crate::train::fused_adam::{lerp, step};
    let Some(dev) = gpu() else { return Ok(()) };
    let n = 100_003;
    let (b1, b2, eps, lr) = (0.9, 0.999, 1e-8, 1e-3);
    let p0 = Tensor::randn(0f32, 1., n, &Device::Cpu)?;
    let state = |on: &Device| -> Result<[Tensor; 3]> {
        let p = p0.to_device(on)?.copy()?;
        Ok([p.zeros_like()?, p.zeros_like()?, p])
    };
    let [m0, v0, q0] = state(&Device::Cpu)?;
    let [m1, v1, q1] = state(&dev)?;
    for t in 1..=3 {
        let g = Tensor::randn(0f32, 1., n, &Device::Cpu)?;
        let bc = (1.0 - f64::powi(b1, t), 1.0 - f64::powi(b2, t));
        step(&q0, &m0, &v0, &g, (b1, b2), lr, eps, bc)?;
        step(&q1, &m1, &v1, &g.to_device(&dev)?, (b1, b2), lr, eps, bc)?;
    }
    let net = Tensor::randn(0f32, 1., n, &Device::Cpu)?;
    lerp(&m0, &net, 0.99)?;
    lerp(&m1, &net.to_device(&dev)?, 0.99)?;
    for (name, a, b) in [("p", &q1, &q0), ("m then EMA", &m1, &m0), ("v", &v1, &v0)] {
        let diff = (a.to_device(&Device::Cpu)? - b)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{name}: CUDA and CPU differ by up to {diff}");
    }
    Ok(())
}

/// cuDNN's convolution and its three gradients against the CPU's im2col convolution, for
/// 3×3 and 1×1 kernels, float32 (true float32: run without RELAY_TF32) and bfloat16.
#[cfg(feature = "cudnn")]
#[test]
fn cudnn_conv_matches_the_cpu_kernel() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, (b, c, h, w), o) in [
        (3, (2, 5, 9, 8), 7),
        (1, (2, 6, 4, 4), 18),
        (3, (4, 64, 16, 16), 64),
    ] {
        for dtype in [DType::F32, DType::BF16] {
            let (tv, tg) = tol(dtype);
            let x = randn_as(dtype, 1.0, 0.0, &[b, c, h, w])?;
            let wt = randn_as(dtype, 0.2, 0.0, &[o, c, k, k])?;
            let bias = randn_as(dtype, 1.0, 0.0, &[o])?;
            let up = randn_as(dtype, 1.0, 0.0, &[b, o, h, w])?;
            let run = |on: &Device, dt: DType| -> Result<Vec<Tensor>> {
                let vars = [&x, &wt, &bias].map(|t| {
                    t.to_device(on)
                        .and_then(|t| t.to_dtype(dt))
                        .and_then(|t| Var::from_tensor(&t))
                });
                let [xv, wv, bv] = vars;
                let (xv, wv, bv) = (xv?, wv?, bv?);
                let y = if on.is_cpu() {
                    crate::model::ops::conv::conv2d_same(&xv, &wv, &bv)?
                } else {
                    super::cudnn::conv2d_same(&xv, &wv, &bv)?
                };
                let g = (&y * up.to_device(on)?.to_dtype(dt)?)?
                    .sum_all()?
                    .backward()?;
                let grads =
                    [&xv, &wv, &bv].map(|v| g.get(v.as_tensor()).expect("gradient").clone());
                Ok([vec![y], grads.to_vec()].concat())
            };
            let (cpu, gpu) = (run(&Device::Cpu, DType::F32)?, run(&dev, dtype)?);
            let what = format!("cuDNN conv k={k} {b}x{c}x{h}x{w}->{o} {dtype:?}");
            for (i, name) in ["y", "dx", "dw", "dbias"].iter().enumerate() {
                let t = if i == 0 { tv } else { tg };
                check(&format!("{what}: {name}"), rel(&gpu[i], &cpu[i])?, t);
            }
        }
    }
    Ok(())
}

/// One training forward and backward of the tiny U-Net on CUDA against the CPU, same
/// weights and inputs, float32, with whichever levers `RELAY_CUDA_OPS` switches on (the
/// GPU script runs it with none and with all): D within 1e-4, every weight's gradient
/// within 1e-3 of the CPU's.
#[test]
fn tiny_unet_step_matches_the_cpu() -> Result<()> {
    use crate::model::dropout::DropoutKey;
    use crate::model::{EdmPrecond, UnetConfig};
    use crate::train::optim::seeded_var_builder;
    let Some(dev) = gpu() else { return Ok(()) };
    // No dropout: its masks come from different generators on the two devices.
    let mut cfg = UnetConfig::tiny().with_resolution(16);
    cfg.dropout = 0.0;
    let x = Tensor::randn(0f32, 1., (3, 3, 16, 16), &Device::Cpu)?;
    let sigma = Tensor::new(&[0.3f32, 2.0, 30.0], &Device::Cpu)?;
    let run = |on: &Device| -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let (vb, vars) = seeded_var_builder(7, on);
        let net = EdmPrecond::new(vb, &cfg)?;
        let d = net.forward_train(
            &x.to_device(on)?,
            &sigma.to_device(on)?,
            None,
            None,
            DropoutKey(3),
        )?;
        let g = d.sqr()?.sum_all()?.backward()?;
        let grads = vars()
            .into_iter()
            .filter_map(|(k, v)| g.get(v.as_tensor()).map(|t| (k, t.clone())))
            .collect();
        Ok((d, grads))
    };
    let ((d0, g0), (d1, g1)) = (run(&Device::Cpu)?, run(&dev)?);
    eprintln!("RELAY_CUDA_OPS={:?}", std::env::var("RELAY_CUDA_OPS").ok());
    check("tiny U-Net D", rel(&d1, &d0)?, 1e-4);
    let names = |g: &[(String, Tensor)]| g.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(names(&g1), names(&g0), "the same weights get gradients");
    let mut worst = (0f32, String::new());
    for ((name, a), (_, b)) in g1.iter().zip(&g0) {
        let e = rel(a, b)?;
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    check(
        &format!("tiny U-Net gradients (worst: {})", worst.1),
        worst.0,
        1e-3,
    );
    Ok(())
}
