//! Softmax over the last dimension with its backward pass, for the attention weights
//! (issue 10). candle-nn's `softmax_last_dim` has no backward in 0.11, and the composite
//! (max, subtract, exp, sum, divide) makes five passes over the L×L logits forward and
//! about as many backward; this is one pass each way, in parallel over rows:
//!
//! ```text
//! y = exp(x − max x) / Σ exp(x − max x)        dx = y · (dy − Σ dy·y)
//! ```
//!
//! On CUDA (the `softmax` lever of `RELAY_CUDA_OPS`) the same op runs the kernels of
//! `kernels/softmax.cu` ([`super::cuda::softmax`]), and the forward writes the weights
//! directly in the network's type: in bfloat16 the backward then keeps only bfloat16 y.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{f32_slice, use_custom, Kernel};

/// Forward; `out`: the type of y (float32 only on the CPU).
#[derive(Debug, Clone, Copy)]
struct SoftmaxLastDim {
    out: DType,
}

/// Backward, (dy, y) → dx; `out`: the type of dx (the forward's input type).
#[derive(Debug, Clone, Copy)]
struct SoftmaxLastDimBwd {
    out: DType,
}

fn cpu_f32_only(name: &str, out: DType) -> Result<()> {
    if out != DType::F32 {
        candle_core::bail!("{name}: the CPU kernel writes float32, asked for {out:?}");
    }
    Ok(())
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "relay-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_f32_only(self.name(), self.out)?;
        let x = f32_slice(s, l, self.name())?;
        let n = l.shape().dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; x.len()];
        if n > 0 {
            out.par_chunks_mut(n)
                .zip(x.par_chunks(n))
                .for_each(|(o, x)| {
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f64;
                    for (o, &v) in o.iter_mut().zip(x) {
                        *o = (v - max).exp();
                        sum += *o as f64;
                    }
                    let inv = (1.0 / sum) as f32;
                    o.iter_mut().for_each(|o| *o *= inv);
                });
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::softmax::forward(s, l, self.out)
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.to_dtype(res.dtype())?.contiguous()?;
        let op = SoftmaxLastDimBwd { out: arg.dtype() };
        Ok(Some(grad.apply_op2_no_bwd(res, &op)?))
    }
}

impl CustomOp2 for SoftmaxLastDimBwd {
    fn name(&self) -> &'static str {
        "relay-softmax-last-dim-bwd"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_f32_only(self.name(), self.out)?;
        let g = f32_slice(gs, gl, self.name())?;
        let y = f32_slice(ys, yl, self.name())?;
        let n = gl.shape().dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; g.len()];
        if n > 0 {
            out.par_chunks_mut(n)
                .zip(g.par_chunks(n).zip(y.par_chunks(n)))
                .for_each(|(o, (g, y))| {
                    let dot: f64 = g.iter().zip(y).map(|(&g, &y)| (g * y) as f64).sum();
                    let dot = dot as f32;
                    for ((o, &g), &y) in o.iter_mut().zip(g).zip(y) {
                        *o = y * (g - dot);
                    }
                });
        }
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        ys: &candle_core::CudaStorage,
        yl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::softmax::backward(gs, gl, ys, yl, self.out)
    }
}

/// The fused op itself, whatever `RELAY_CPU_OPS` / `RELAY_CUDA_OPS` say (the CPU writes
/// float32 only). For the twin tests and the op profile.
pub fn softmax_op(x: &Tensor, out: DType) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxLastDim { out })
}

/// candle's composite softmax with the (detached) row maximum subtracted, in `dtype`.
pub fn softmax_composite(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.to_dtype(dtype)
}

/// Softmax over the last dimension, returned in `dtype`: the fused kernel for float32 on
/// the CPU, the CUDA kernel with the `softmax` lever (which writes `dtype` itself), else
/// the composite with the (detached) row maximum subtracted.
pub fn softmax_last_dim(x: &Tensor, dtype: DType) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if super::cuda::use_cuda(x, super::cuda::Lever::Softmax)
        && super::cuda::softmax::supports(x, dtype)
    {
        return softmax_op(x, dtype);
    }
    if use_custom(x, Kernel::Attention) {
        return softmax_op(x, DType::F32)?.to_dtype(dtype);
    }
    softmax_composite(x, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::rel_err;
    use candle_core::{DType, Device, Var};

    /// Values and gradient against candle's composite softmax (`candle_nn::ops::softmax`)
    /// run in float64 on the same inputs (the float32 composite itself strays past 1e-5 in
    /// the gradient on some draws, so the reference is the exact one).
    #[test]
    fn matches_candle_softmax() -> Result<()> {
        let dev = Device::Cpu;
        for dims in [(3, 5, 7), (2, 1, 64), (1, 4, 2)] {
            let x = Var::randn(0f32, 3., dims, &dev)?;
            let up = Tensor::randn(0f32, 1., dims, &dev)?;
            let ours = x
                .contiguous()?
                .apply_op1(SoftmaxLastDim { out: DType::F32 })?;
            let x64 = Var::from_tensor(&x.to_dtype(DType::F64)?)?;
            let theirs = candle_nn::ops::softmax(&x64, D::Minus1)?;
            let f32_of = |t: &Tensor| t.to_dtype(DType::F32);
            assert!(
                rel_err(&ours, &f32_of(&theirs)?)? <= 1e-5,
                "{dims:?}: forward"
            );
            let g1 = (&ours * &up)?.sum_all()?.backward()?;
            let g2 = (&theirs * up.to_dtype(DType::F64)?)?
                .sum_all()?
                .backward()?;
            // dx = y ⊙ (up − Σ y·up) cancels: measure the error against the size of the
            // terms it is made of, max|y| · max|up|, not against max|dx|.
            let max = |t: &Tensor| t.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>();
            let diff = (g1.get(&x).unwrap() - f32_of(g2.get(&x64).unwrap())?)?;
            let err = max(&diff)? / (max(&ours)? * max(&up)?);
            assert!(err <= 1e-5, "{dims:?}: dx relative error {err}");
        }
        Ok(())
    }
}
