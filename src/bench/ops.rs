//! The op profile of issue 17: each hot op of the U-Net at adm-64's shapes, timed alone
//! with a synchronisation around every call, once as candle composes it today and once
//! through relay's own kernel (cuDNN on CUDA for the convolutions); `benches/torch_ops.py`
//! times the same ops in PyTorch and `scripts/gpu-profile.sh` joins the two.
//!
//! Each op calls its implementation directly, whatever `RELAY_CUDA_OPS` says, so one
//! process measures both variants. Rows:
//! * `conv_fwd` (with bias), `conv_dgrad`, `conv_wgrad` (with the bias gradient): the 3×3
//!   convolutions of each level and the 32×32 attention's 1×1 qkv;
//! * `gn_silu_fwd`, `gn_silu_fwd_bwd`: GroupNorm + SiLU of each level (backward through
//!   `(y · up).sum()`, as the PyTorch twin does);
//! * `softmax_fwd`, `softmax_fwd_bwd`: the attention weights at 32×32 and 16×16 (float32
//!   logits to weights of the run's type);
//! * `adam`, `ema`, `grad_norm`: one step over every weight of the network.
//!
//! Run on a GPU: `RELAY_PROFILE_DTYPE=bf16 RELAY_PROFILE_BATCH=32 <lib tests> --ignored
//! profile_ops --nocapture` (what the GPU script does).

use candle_core::{DType, Device, Module, Result, Tensor, Var};

use crate::model::ops::{conv_grad, group_norm::group_norm_act, softmax};
use crate::model::UnetConfig;
use crate::train::optim::{global_norm, global_norm_on_device, Adam, TensorMap};

/// One timing: an op at a shape, through one implementation.
#[derive(Debug, Clone)]
pub struct Row {
    pub op: &'static str,
    pub shape: String,
    pub variant: &'static str,
    pub ms: f64,
}

/// The shapes to time: convolutions ([B, C, H, W], O, k), GroupNorms ([B, C, H, W],
/// groups), softmax logits [N, L, L], and the network whose weights Adam updates.
pub struct Shapes {
    pub convs: Vec<([usize; 4], usize, usize)>,
    pub norms: Vec<([usize; 4], usize)>,
    pub softmax: Vec<[usize; 3]>,
    pub net: UnetConfig,
}

impl Shapes {
    /// adm-64 at `batch` (channels 192·[1, 2, 3, 4] at 64, 32, 16, 8 px; 64-channel
    /// attention heads at 32×32 and 16×16).
    pub fn adm64(batch: usize) -> Result<Self> {
        let levels = [(192, 64), (384, 32), (576, 16), (768, 8)];
        let mut convs: Vec<_> = levels
            .iter()
            .map(|&(c, r)| ([batch, c, r, r], c, 3))
            .collect();
        convs.push(([batch, 384, 32, 32], 3 * 384, 1));
        Ok(Self {
            convs,
            norms: levels
                .iter()
                .map(|&(c, r)| ([batch, c, r, r], 32))
                .collect(),
            softmax: vec![[batch * 6, 1024, 1024], [batch * 9, 256, 256]],
            net: UnetConfig::preset("adm-64")?,
        })
    }
}

/// Median milliseconds of `reps` synchronised calls of `f` (after the warm-up calls).
fn ms(dev: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let s = super::time_steps(reps, dev, || f().map_err(anyhow::Error::from))
        .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
    Ok(s * 1e3)
}

fn randn(shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    Tensor::randn(0f32, 1., shape, dev)?.to_dtype(dtype)
}

fn shape_str(d: &[usize]) -> String {
    d.iter().map(usize::to_string).collect::<Vec<_>>().join("x")
}

/// Every row of [`Shapes`] on `dev` in `dtype` (float32 or bfloat16; the CPU's kernels
/// take float32 only), `reps` timed calls each.
pub fn profile(dev: &Device, dtype: DType, shapes: &Shapes, reps: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut push = |op, shape: String, variant, ms| {
        rows.push(Row {
            op,
            shape,
            variant,
            ms,
        })
    };
    let relay = if dev.is_cuda() {
        "relay-cuda"
    } else {
        "relay-cpu"
    };

    // 1. Convolutions: candle (native conv2d, the backward of ops::conv_grad) and cuDNN.
    for &(x_dims, o, k) in &shapes.convs {
        let shape = format!("{}->{o}k{k}", shape_str(&x_dims));
        let x = randn(&x_dims, dtype, dev)?;
        let w = (randn(&[o, x_dims[1], k, k], dtype, dev)? * 0.05)?;
        let b = randn(&[o], dtype, dev)?;
        let g = randn(&[x_dims[0], o, x_dims[2], x_dims[3]], dtype, dev)?;
        let bias4 = b.reshape((1, o, 1, 1))?;
        let pad = k / 2;
        push(
            "conv_fwd",
            shape.clone(),
            "candle",
            ms(dev, reps, || {
                conv_grad::conv2d_same(&x, &w)?
                    .broadcast_add(&bias4)
                    .map(drop)
            })?,
        );
        push(
            "conv_dgrad",
            shape.clone(),
            "candle",
            ms(dev, reps, || conv_grad::input_grad(&g, &w, pad).map(drop))?,
        );
        push(
            "conv_wgrad",
            shape.clone(),
            "candle",
            ms(dev, reps, || {
                conv_grad::weight_grad(&x, &g, pad)?;
                g.sum((0, 2, 3)).map(drop)
            })?,
        );
        #[cfg(feature = "cudnn")]
        if dev.is_cuda() {
            use crate::model::ops::cuda::{cudnn, elementwise::BiasGrad};
            push(
                "conv_fwd",
                shape.clone(),
                "cudnn",
                ms(dev, reps, || cudnn::conv2d_same(&x, &w, &b).map(drop))?,
            );
            push(
                "conv_dgrad",
                shape.clone(),
                "cudnn",
                ms(dev, reps, || {
                    cudnn::conv2d_backward_data(&g, &w, x_dims).map(drop)
                })?,
            );
            push(
                "conv_wgrad",
                shape.clone(),
                "cudnn",
                ms(dev, reps, || {
                    cudnn::conv2d_backward_filter(&x, &g, k)?;
                    g.apply_op1_no_bwd(&BiasGrad).map(drop)
                })?,
            );
        }
    }

    // 2. GroupNorm + SiLU: candle-nn's GroupNorm then silu, and the fused kernel.
    let fused_ok = dev.is_cuda() || dtype == DType::F32;
    for &(dims, groups) in &shapes.norms {
        let shape = format!("{}/{groups}", shape_str(&dims));
        let c = dims[1];
        let gamma = Tensor::ones(c, dtype, dev)?;
        let beta = Tensor::zeros(c, dtype, dev)?;
        let gn = candle_nn::GroupNorm::new(gamma, beta, c, groups, 1e-5)?;
        let ad = Tensor::stack(
            &[
                Tensor::ones((dims[0], c), DType::F32, dev)?,
                Tensor::zeros((dims[0], c), DType::F32, dev)?,
            ],
            0,
        )?;
        let xv = Var::from_tensor(&randn(&dims, dtype, dev)?)?;
        let adv = Var::from_tensor(&ad)?;
        let up = randn(&dims, dtype, dev)?;
        let composite = |x: &Tensor| gn.forward(x)?.silu();
        let fused = |x: &Tensor, ad: &Tensor| group_norm_act(x, ad, (groups, 1e-5, true));
        push(
            "gn_silu_fwd",
            shape.clone(),
            "candle",
            ms(dev, reps, || composite(&xv.as_tensor().detach()).map(drop))?,
        );
        push(
            "gn_silu_fwd_bwd",
            shape.clone(),
            "candle",
            ms(dev, reps, || {
                (composite(xv.as_tensor())? * &up)?
                    .sum_all()?
                    .backward()
                    .map(drop)
            })?,
        );
        if fused_ok {
            push(
                "gn_silu_fwd",
                shape.clone(),
                relay,
                ms(dev, reps, || fused(&xv.as_tensor().detach(), &ad).map(drop))?,
            );
            push(
                "gn_silu_fwd_bwd",
                shape.clone(),
                relay,
                ms(dev, reps, || {
                    (fused(xv.as_tensor(), adv.as_tensor())? * &up)?
                        .sum_all()?
                        .backward()
                        .map(drop)
                })?,
            );
        }
    }

    // 3. Softmax of float32 logits to weights in `dtype`.
    for &dims in &shapes.softmax {
        let shape = shape_str(&dims);
        let xv = Var::from_tensor(&randn(&dims, DType::F32, dev)?)?;
        let up = randn(&dims, dtype, dev)?;
        type Softmax = fn(&Tensor, DType) -> Result<Tensor>;
        let mut variants: Vec<(&'static str, Softmax)> =
            vec![("candle", softmax::softmax_composite)];
        if dev.is_cuda() || dtype == DType::F32 {
            variants.push((relay, softmax::softmax_op));
        }
        for (variant, f) in variants {
            push(
                "softmax_fwd",
                shape.clone(),
                variant,
                ms(dev, reps, || f(&xv.as_tensor().detach(), dtype).map(drop))?,
            );
            push(
                "softmax_fwd_bwd",
                shape.clone(),
                variant,
                ms(dev, reps, || {
                    (f(xv.as_tensor(), dtype)? * &up)?
                        .sum_all()?
                        .backward()
                        .map(drop)
                })?,
            );
        }
    }

    // 4. The optimiser over every weight of the network (float32 master weights).
    let varmap = candle_nn::VarMap::new();
    crate::model::EdmPrecond::new(
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, dev),
        &shapes.net,
    )?;
    let vars: Vec<Var> = varmap.all_vars();
    let count: usize = vars.iter().map(|v| v.elem_count()).sum();
    let shape = format!("{}x{count}", vars.len());
    let grads: TensorMap = vars
        .iter()
        .enumerate()
        .map(|(i, v)| Ok((format!("{i:05}"), v.randn_like(0., 1e-3)?)))
        .collect::<Result<_>>()?;
    let zeros = |v: &Var| v.zeros_like();
    let moments: Vec<(Tensor, Tensor)> = vars
        .iter()
        .map(|v| Ok((zeros(v)?, zeros(v)?)))
        .collect::<Result<_>>()?;
    let adam = Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        t: 1,
        m: TensorMap::new(),
        v: TensorMap::new(),
    };
    let gs: Vec<&Tensor> = grads.values().collect();
    push(
        "adam",
        shape.clone(),
        "candle",
        ms(dev, reps, || {
            for ((v, (m, s)), g) in vars.iter().zip(&moments).zip(&gs) {
                adam.tensor_op_update(v.as_tensor(), m, s, g, 1e-4, (0.1, 0.001))?;
            }
            Ok(())
        })?,
    );
    let in_place = dev.is_cpu() || cfg!(feature = "cuda");
    if in_place {
        push(
            "adam",
            shape.clone(),
            relay,
            ms(dev, reps, || {
                for ((v, (m, s)), g) in vars.iter().zip(&moments).zip(&gs) {
                    crate::train::fused_adam::step(
                        v.as_tensor(),
                        m,
                        s,
                        g,
                        (0.9, 0.999),
                        1e-4,
                        1e-8,
                        (0.1, 0.001),
                    )?;
                }
                Ok(())
            })?,
        );
    }
    let emas: Vec<Tensor> = vars
        .iter()
        .map(|v| v.as_tensor().copy())
        .collect::<Result<_>>()?;
    push(
        "ema",
        shape.clone(),
        "candle",
        ms(dev, reps, || {
            for (v, e) in vars.iter().zip(&emas) {
                let net = v.as_tensor();
                (net + (e - net)?.affine(0.999, 0.0)?)?;
            }
            Ok(())
        })?,
    );
    if in_place {
        push(
            "ema",
            shape.clone(),
            relay,
            ms(dev, reps, || {
                for (v, e) in vars.iter().zip(&emas) {
                    crate::train::fused_adam::lerp(e, v.as_tensor(), 0.999)?;
                }
                Ok(())
            })?,
        );
    }
    push(
        "grad_norm",
        shape.clone(),
        "candle",
        ms(dev, reps, || global_norm(&grads).map(drop))?,
    );
    push(
        "grad_norm",
        shape,
        "relay-one-sync",
        ms(dev, reps, || global_norm_on_device(&grads).map(drop))?,
    );
    Ok(rows)
}

/// A markdown table of `rows`, then one `profile op=… shape=… variant=… ms=…` line each
/// (what the GPU script joins with PyTorch's).
pub fn table(rows: &[Row], dev: &str, dtype: DType) -> String {
    let mut s = format!("relay op profile on {dev}, {dtype:?}, median ms per synchronised call\n");
    s += "| op | shape | variant | ms |\n|---|---|---|---|\n";
    for r in rows {
        s += &format!("| {} | {} | {} | {:.3} |\n", r.op, r.shape, r.variant, r.ms);
    }
    for r in rows {
        s += &format!(
            "profile op={} shape={} dtype={dtype:?} variant={} ms={:.4}\n",
            r.op, r.shape, r.variant, r.ms
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row runs on the CPU at small shapes (both variants where the CPU has one).
    #[test]
    fn profiles_small_shapes_on_the_cpu() -> Result<()> {
        let shapes = Shapes {
            convs: vec![([2, 4, 6, 6], 5, 3), ([2, 4, 6, 6], 12, 1)],
            norms: vec![([2, 8, 4, 4], 4)],
            softmax: vec![[3, 16, 16]],
            net: UnetConfig::tiny(),
        };
        let rows = profile(&Device::Cpu, DType::F32, &shapes, 1)?;
        let count = |op: &str| rows.iter().filter(|r| r.op == op).count();
        assert_eq!(count("conv_fwd"), 2);
        assert_eq!(count("gn_silu_fwd_bwd"), 2);
        assert_eq!(count("softmax_fwd"), 2);
        assert_eq!((count("adam"), count("ema"), count("grad_norm")), (2, 2, 2));
        assert!(rows.iter().all(|r| r.ms >= 0.0));
        assert!(table(&rows, "cpu", DType::F32).contains("profile op=adam"));
        Ok(())
    }

    /// The GPU profile (scripts/gpu-profile.sh): adm-64 shapes on CUDA device 0, batch
    /// `RELAY_PROFILE_BATCH` (32), type `RELAY_PROFILE_DTYPE` (`f32` or `bf16`).
    #[test]
    #[ignore = "needs a GPU; run by scripts/gpu-profile.sh"]
    fn profile_ops() -> Result<()> {
        let dev = Device::new_cuda(0)?;
        let batch = std::env::var("RELAY_PROFILE_BATCH")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(32);
        let dtype = match std::env::var("RELAY_PROFILE_DTYPE").as_deref() {
            Ok("bf16") => DType::BF16,
            _ => DType::F32,
        };
        let rows = profile(&dev, dtype, &Shapes::adm64(batch)?, 10)?;
        print!("{}", table(&rows, &format!("cuda:0, batch {batch}"), dtype));
        Ok(())
    }
}
