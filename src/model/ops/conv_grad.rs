//! A k×k, stride-1, "same" convolution on candle's native kernels with a backward pass
//! made of forward convolutions (issue 10, CUDA).
//!
//! candle 0.11 differentiates `conv2d` through `conv_transpose2d`, which on CUDA is a
//! direct kernel with no matrix units: on an H200 it made the adm-64 backward pass 4× the
//! forward. For stride 1 and padding k/2 the input gradient is itself a convolution:
//!
//! ```text
//! dx = conv2d(dy, flip(W)ᵀ, padding k/2)     flip: both spatial axes; ᵀ: swap in/out
//! dW = conv2d(xᵀ, dyᵀ, padding k/2)ᵀ         ᵀ: swap batch and channels (candle's own)
//! ```
//!
//! both of which candle runs as im2col + one GEMM. The forward is candle's `conv2d` on
//! detached inputs; a ternary custom op hands its result on (one copy of the output) and
//! carries the backward above.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

struct ConvGrad {
    pad: usize,
}

impl CustomOp3 for ConvGrad {
    fn name(&self) -> &'static str {
        "relay-conv-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((y.try_clone(yl)?, yl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        yl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((y.try_clone(yl)?, yl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = input_grad(&grad, w, self.pad)?;
        let dw = weight_grad(x, &grad, self.pad)?;
        Ok((Some(dx), Some(dw), None))
    }
}

/// dx = conv2d(dy, flip(W)ᵀ, padding k/2), for a contiguous `grad` dy.
pub fn input_grad(grad: &Tensor, w: &Tensor, pad: usize) -> Result<Tensor> {
    let k = w.dim(2)?;
    let flipped = if k > 1 {
        let rev: Vec<u32> = (0..k as u32).rev().collect();
        let idx = Tensor::new(rev.as_slice(), w.device())?;
        w.index_select(&idx, 2)?.index_select(&idx, 3)?
    } else {
        w.clone()
    };
    let wt = flipped.transpose(0, 1)?.contiguous()?;
    grad.conv2d(&wt, pad, 1, 1, 1)
}

/// dW = conv2d(xᵀ, dyᵀ, padding k/2)ᵀ, for a contiguous `grad` dy.
pub fn weight_grad(x: &Tensor, grad: &Tensor, pad: usize) -> Result<Tensor> {
    x.transpose(0, 1)?
        .conv2d(&grad.transpose(0, 1)?, pad, 1, 1, 1)?
        .transpose(0, 1)
}

/// `x` [B, C, H, W] ⋆ `w` [O, C, k, k] (k odd), stride 1, padding k/2, no bias.
pub fn conv2d_same(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let k = w.dim(2)?;
    if k % 2 == 0 || w.dim(3)? != k {
        candle_core::bail!("conv2d_same needs an odd square kernel, got {:?}", w.dims());
    }
    let pad = k / 2;
    let y = x.detach().conv2d(&w.detach(), pad, 1, 1, 1)?;
    if !x.track_op() && !w.track_op() {
        return Ok(y); // no graph to carry (sampling)
    }
    x.apply_op3(w, &y, ConvGrad { pad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::rel_err;
    use candle_core::{Device, Var};

    /// Value and both gradients equal candle's own conv2d autograd (k = 3 and 1).
    #[test]
    fn matches_candle_conv2d_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (c, o, k) in [(5, 7, 3), (4, 6, 1)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, c, 9, 8), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 1., (o, c, k, k), &dev)?)?;
            let dy = Tensor::randn(0f32, 1., (2, o, 9, 8), &dev)?;
            let ours = conv2d_same(x.as_tensor(), w.as_tensor())?;
            let theirs = x.as_tensor().conv2d(w.as_tensor(), k / 2, 1, 1, 1)?;
            assert!(rel_err(&ours, &theirs)? <= 1e-6);
            let g1 = (ours * &dy)?.sum_all()?.backward()?;
            let g2 = (theirs * &dy)?.sum_all()?.backward()?;
            for v in [&x, &w] {
                let e = rel_err(g1.get(v).unwrap(), g2.get(v).unwrap())?;
                assert!(e <= 1e-5, "k {k}: gradient relative error {e}");
            }
        }
        Ok(())
    }
}
