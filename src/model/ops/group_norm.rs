//! GroupNorm fused with what follows it in the ADM U-Net (issue 10):
//!
//! ```text
//! y = act(x̂ · a[b, c] + d[b, c]),   x̂ = (x − μ_{b,g}) / √(σ²_{b,g} + ε),   act ∈ {id, SiLU}
//! ```
//! * plain GroupNorm (`norm2`): a = γ, d = β;
//! * `norm0`/`out_norm` then SiLU: the same with act = SiLU;
//! * `norm1` with scale-shift and SiLU: a = γ·(1 + scale_b), d = β·(1 + scale_b) + shift_b.
//!
//! candle-nn composes GroupNorm from eight element-wise passes (each with a backward); here
//! the forward reads x twice (statistics, then output) and the backward three times, per
//! (sample, group) block, in parallel over the blocks. The per-(b, c) coefficients `a`, `d`
//! are tiny [B, C] tensors built with candle ops, so γ, β, scale and shift get their
//! gradients from autograd.
//!
//! Backward, with dz = dy · act′(z), per group of n elements:
//! da = Σ_hw dz·x̂, dd = Σ_hw dz, dx = (dz·a − Σ_c a·dd / n − x̂ · Σ_c a·da / n) / σ.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::cuda::{use_cuda, Lever};
use super::{f32_slice, use_custom, Kernel};

/// Whether `x` goes through the fused kernel: the CPU's (float32) or, with the
/// `group_norm` lever of `RELAY_CUDA_OPS`, the CUDA twin's (float32 or bfloat16).
fn use_kernel(x: &Tensor) -> bool {
    use_custom(x, Kernel::GroupNorm) || use_cuda(x, Lever::GroupNorm)
}

/// Forward: inputs `x` [B, C, H, W] and `ad` [2, B, C] (a, then d), both contiguous.
#[derive(Debug, Clone, Copy)]
struct GroupNormAct {
    groups: usize,
    eps: f32,
    silu: bool,
}

/// Backward: inputs `x`, `ad`, `dy`; output [B·C·H·W + 2·B·C] = dx, then d(ad).
#[derive(Debug, Clone, Copy)]
struct GroupNormActBwd(GroupNormAct);

/// Mean and 1/√(var + ε) of one group, two-pass, in eight f32 lanes combined in f64.
fn stats(xs: &[f32], eps: f32) -> (f32, f32) {
    let lanes = |f: &dyn Fn(f32) -> f32| -> f64 {
        let mut acc = [0f32; 8];
        let chunks = xs.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&v| f(v) as f64).sum();
        for ch in chunks {
            for (a, &v) in acc.iter_mut().zip(ch) {
                *a += f(v);
            }
        }
        acc.iter().map(|&a| a as f64).sum::<f64>() + tail
    };
    let n = xs.len() as f64;
    let mean = (lanes(&|v| v) / n) as f32;
    let var = lanes(&|v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var as f32 + eps).sqrt())
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

impl GroupNormAct {
    fn dims(&self, l: &Layout) -> Result<(usize, usize, usize)> {
        let (b, c, h, w) = l.shape().dims4()?;
        if !c.is_multiple_of(self.groups) {
            candle_core::bail!(
                "group norm: {} groups do not divide {c} channels",
                self.groups
            );
        }
        Ok((b, c, h * w))
    }
}

impl CustomOp2 for GroupNormAct {
    fn name(&self) -> &'static str {
        "relay-group-norm-act"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ads: &CpuStorage,
        adl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, hw) = self.dims(xl)?;
        let x = f32_slice(xs, xl, self.name())?;
        let ad = f32_slice(ads, adl, self.name())?;
        let cg = c / self.groups;
        let gsize = cg * hw;
        let mut out = vec![0f32; b * c * hw];
        if gsize > 0 {
            out.par_chunks_mut(gsize).enumerate().for_each(|(bg, o)| {
                let xg = &x[bg * gsize..][..gsize];
                let (mean, rstd) = stats(xg, self.eps);
                for j in 0..cg {
                    let ch = bg * cg + j; // = b·C + g·cg + j
                    let (a, d) = (ad[ch] * rstd, ad[b * c + ch]);
                    let (xr, or) = (&xg[j * hw..][..hw], &mut o[j * hw..][..hw]);
                    if self.silu {
                        for (o, &v) in or.iter_mut().zip(xr) {
                            let z = (v - mean) * a + d;
                            *o = z * sigmoid(z);
                        }
                    } else {
                        for (o, &v) in or.iter_mut().zip(xr) {
                            *o = (v - mean) * a + d;
                        }
                    }
                }
            });
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ads: &candle_core::CudaStorage,
        adl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let op = (self.groups, self.eps, self.silu);
        super::cuda::group_norm::forward(op, xs, xl, ads, adl)
    }

    fn bwd(
        &self,
        x: &Tensor,
        ad: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let op = (self.groups, self.eps, self.silu);
            let (dx, dad) = super::cuda::group_norm::backward(x, ad, grad, op)?;
            return Ok((Some(dx), Some(dad)));
        }
        let grad = grad.contiguous()?;
        let both = x.apply_op3_no_bwd(ad, &grad, &GroupNormActBwd(*self))?;
        let n = x.elem_count();
        let dx = both.narrow(0, 0, n)?.reshape(x.shape())?;
        let dad = both.narrow(0, n, ad.elem_count())?.reshape(ad.shape())?;
        Ok((Some(dx), Some(dad)))
    }
}

impl CustomOp3 for GroupNormActBwd {
    fn name(&self) -> &'static str {
        "relay-group-norm-act-bwd"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ads: &CpuStorage,
        adl: &Layout,
        dys: &CpuStorage,
        dyl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.0;
        let (b, c, hw) = op.dims(xl)?;
        let x = f32_slice(xs, xl, self.name())?;
        let ad = f32_slice(ads, adl, self.name())?;
        let dy = f32_slice(dys, dyl, self.name())?;
        let cg = c / op.groups;
        let gsize = cg * hw;
        let nx = b * c * hw;
        let mut out = vec![0f32; nx + 2 * b * c];
        let (dx, dad) = out.split_at_mut(nx);
        let (da_all, dd_all) = dad.split_at_mut(b * c);
        if gsize > 0 {
            dx.par_chunks_mut(gsize)
                .zip(da_all.par_chunks_mut(cg).zip(dd_all.par_chunks_mut(cg)))
                .enumerate()
                .for_each(|(bg, (dxg, (dag, ddg)))| {
                    let xg = &x[bg * gsize..][..gsize];
                    let dyg = &dy[bg * gsize..][..gsize];
                    let (mean, rstd) = stats(xg, op.eps);
                    // 1. dz (kept in dx), and per channel da = Σ dz·x̂, dd = Σ dz.
                    let (mut m1, mut m2) = (0f64, 0f64);
                    for j in 0..cg {
                        let ch = bg * cg + j;
                        let (a, d) = (ad[ch], ad[b * c + ch]);
                        let (mut da, mut dd) = (0f64, 0f64);
                        let rows = xg[j * hw..][..hw].iter().zip(&dyg[j * hw..][..hw]);
                        for (dz, (&v, &g)) in dxg[j * hw..][..hw].iter_mut().zip(rows) {
                            let xh = (v - mean) * rstd;
                            let g = if op.silu {
                                let z = xh * a + d;
                                let s = sigmoid(z);
                                g * s * (1.0 + z * (1.0 - s))
                            } else {
                                g
                            };
                            *dz = g;
                            da += (g * xh) as f64;
                            dd += g as f64;
                        }
                        dag[j] = da as f32;
                        ddg[j] = dd as f32;
                        m1 += a as f64 * dd;
                        m2 += a as f64 * da;
                    }
                    // 2. dx = (dz·a − mean(dz·a) − x̂·mean(dz·a·x̂)) / σ.
                    let n = gsize as f64;
                    let (m1, m2) = ((m1 / n) as f32, (m2 / n) as f32);
                    for j in 0..cg {
                        let a = ad[bg * cg + j];
                        let xr = &xg[j * hw..][..hw];
                        for (dz, &v) in dxg[j * hw..][..hw].iter_mut().zip(xr) {
                            let xh = (v - mean) * rstd;
                            *dz = rstd * (*dz * a - m1 - xh * m2);
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from(nx + 2 * b * c)))
    }
}

/// The fused op itself, whatever `RELAY_CPU_OPS` / `RELAY_CUDA_OPS` say: `ad` [2, B, C]
/// float32 (a, then d). For the twin tests and the op profile.
pub fn group_norm_act(
    x: &Tensor,
    ad: &Tensor,
    (groups, eps, silu): (usize, f32, bool),
) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&ad.contiguous()?, GroupNormAct { groups, eps, silu })
}

/// GroupNorm with learned γ (`weight`) and β (`bias`), the parameters of candle-nn's
/// `GroupNorm` under the same names, with fused variants for what follows it in a block.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// `weight` initialised to 1 and `bias` to 0, as candle-nn's `group_norm`.
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {groups} groups must divide {channels} channels");
        }
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", Init::Const(1.))?,
            bias: vb.get_with_hints(channels, "bias", Init::Const(0.))?,
            groups,
            eps,
        })
    }

    /// candle-nn's composite GroupNorm (the path for other devices and dtypes).
    fn reference(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(1)?;
        candle_nn::GroupNorm::new(
            self.weight.clone(),
            self.bias.clone(),
            c,
            self.groups,
            self.eps,
        )?
        .forward(x)
    }

    /// act(x̂·a + d) through the fused kernel, `a` and `d` [B, C] or [C] (broadcast); the
    /// coefficients go in as float32 whatever x's type (a no-op on the CPU).
    fn fused(&self, x: &Tensor, a: &Tensor, d: &Tensor, silu: bool) -> Result<Tensor> {
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let ad = Tensor::stack(&[a.broadcast_as((b, c))?, d.broadcast_as((b, c))?], 0)?
            .to_dtype(candle_core::DType::F32)?;
        let op = GroupNormAct {
            groups: self.groups,
            eps: self.eps as f32,
            silu,
        };
        x.contiguous()?.apply_op2(&ad, op)
    }

    /// SiLU(GroupNorm(x)) (`norm0`, `out_norm`).
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        if use_kernel(x) {
            self.fused(x, &self.weight, &self.bias, true)
        } else {
            self.reference(x)?.silu()
        }
    }

    /// SiLU(GroupNorm(x)·(1 + scale) + shift) with `scale`, `shift` [B, C] (`norm1` with
    /// ADM's scale-shift conditioning).
    pub fn forward_scale_shift_silu(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
    ) -> Result<Tensor> {
        if use_kernel(x) {
            // The [B, C] coefficients in float32 (no-op casts on the CPU): in a bfloat16
            // network they would otherwise be rounded to 8 bits before the kernel sees them.
            let f32_of = |t: &Tensor| t.to_dtype(candle_core::DType::F32);
            let s1 = (f32_of(scale)? + 1.0)?;
            let a = s1.broadcast_mul(&f32_of(&self.weight)?.unsqueeze(0)?)?;
            let d = s1
                .broadcast_mul(&f32_of(&self.bias)?.unsqueeze(0)?)?
                .add(&f32_of(shift)?)?;
            self.fused(x, &a, &d, true)
        } else {
            let (s1, shift) = ((scale + 1.0)?.unsqueeze(2)?, shift.unsqueeze(2)?);
            self.reference(x)?
                .broadcast_mul(&s1.unsqueeze(3)?)?
                .broadcast_add(&shift.unsqueeze(3)?)?
                .silu()
        }
    }
}

impl Module for GroupNorm {
    /// GroupNorm(x)·γ + β.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if use_kernel(x) {
            self.fused(x, &self.weight, &self.bias, false)
        } else {
            self.reference(x)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::rel_err;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// The three fused forms against candle-nn's GroupNorm followed by candle ops: values and
    /// the gradients of x, γ, β, scale and shift, on random inputs with a non-zero mean.
    #[test]
    fn matches_candle_group_norm() -> Result<()> {
        let dev = Device::Cpu;
        for (b, c, h, w, groups) in [(2, 8, 5, 3, 4), (3, 12, 4, 4, 3), (1, 4, 1, 1, 1)] {
            let vm = VarMap::new();
            let gn = GroupNorm::new(
                groups,
                c,
                1e-5,
                VarBuilder::from_varmap(&vm, DType::F32, &dev),
            )?;
            // Random γ, β rather than the 1/0 init, so their gradients are exercised.
            for v in vm.all_vars() {
                v.set(&Tensor::randn(0f32, 1., v.shape(), &dev)?)?;
            }
            let x = Var::from_tensor(&(Tensor::randn(0f32, 2., (b, c, h, w), &dev)? + 0.7)?)?;
            let scale = Var::randn(0f32, 0.5, (b, c), &dev)?;
            let shift = Var::randn(0f32, 0.5, (b, c), &dev)?;
            let up = Tensor::randn(0f32, 1., (b, c, h, w), &dev)?;
            let plain =
                candle_nn::GroupNorm::new(gn.weight.clone(), gn.bias.clone(), c, groups, 1e-5)?;
            let ss = |t: &Tensor| -> Result<Tensor> {
                t.broadcast_mul(&(scale.as_tensor() + 1.0)?.reshape((b, c, 1, 1))?)?
                    .broadcast_add(&shift.reshape((b, c, 1, 1))?)?
                    .silu()
            };
            let cases = [
                ("plain", gn.forward(&x)?, plain.forward(&x)?),
                ("silu", gn.forward_silu(&x)?, plain.forward(&x)?.silu()?),
                (
                    "scale-shift-silu",
                    gn.forward_scale_shift_silu(&x, &scale, &shift)?,
                    ss(&plain.forward(&x)?)?,
                ),
            ];
            for (name, ours, theirs) in cases {
                let err = rel_err(&ours, &theirs)?;
                assert!(
                    err <= 1e-5,
                    "{name} {b}x{c}x{h}x{w}/{groups}: forward {err}"
                );
                let g1 = (&ours * &up)?.sum_all()?.backward()?;
                let g2 = (&theirs * &up)?.sum_all()?.backward()?;
                let vars = [
                    ("x", x.as_tensor()),
                    ("weight", &gn.weight),
                    ("bias", &gn.bias),
                    ("scale", scale.as_tensor()),
                    ("shift", shift.as_tensor()),
                ];
                for (v, t) in vars {
                    match (g1.get(t), g2.get(t)) {
                        (Some(a), Some(e)) => {
                            let err = rel_err(a, e)?;
                            assert!(err <= 1e-5, "{name}: d{v} relative error {err}");
                        }
                        (None, None) => {}
                        _ => panic!("{name}: d{v} exists on one side only"),
                    }
                }
            }
        }
        Ok(())
    }
}
