//! The two gradients of the cuDNN convolution as one op: backward-data (inputs dy and the
//! kernel, output dx [B, C, H, W]) and backward-filter (inputs x and dy, output dW
//! [O, C, k, k]), each with its cached [`Plan`] and the shared workspace.

use candle_core::backend::BackendStorage;
use candle_core::{CudaStorage, CustomOp2, DType, Layout, Result, Shape};
use cudarc::cudnn::safe::{ConvBackwardData, ConvBackwardFilter};
use half::bf16;

use super::super::launch::{cuda_only, output, view};
use super::plan::{Algo, Dir, Key, Plan};
use super::{cx, dims4, plan, same_types, tf32, with_workspace, Elem, Operand};

/// Which gradient, with what its output's shape needs.
#[derive(Debug, Clone, Copy)]
pub enum Grad {
    /// dx from (dy, w); `x`: the input's [B, C, H, W].
    Data { x: [usize; 4] },
    /// dW from (x, dy); `k`: the kernel size.
    Filter { k: usize },
}

#[derive(Debug, Clone, Copy)]
pub struct CudnnConvGrad(pub Grad);

impl CustomOp2 for CudnnConvGrad {
    fn name(&self) -> &'static str {
        match self.0 {
            Grad::Data { .. } => "relay-cudnn-conv-backward-data",
            Grad::Filter { .. } => "relay-cudnn-conv-backward-filter",
        }
    }

    cuda_only!(2);

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match same_types(self.name(), &[s1.dtype(), s2.dtype()])? {
            DType::F32 => self.run::<f32>((s1, l1), (s2, l2)),
            DType::BF16 => self.run::<bf16>((s1, l1), (s2, l2)),
            other => candle_core::bail!("{}: float32 or bfloat16, got {other:?}", self.name()),
        }
    }
}

impl CudnnConvGrad {
    fn run<T: Elem>(&self, a: Operand, b: Operand) -> Result<(CudaStorage, Shape)> {
        let what = self.name();
        let dev = a.0.device();
        let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
        let (va, vb) = (view::<T>(a.0, a.1, what)?, view::<T>(b.0, b.1, what)?);
        let plan_for = |dir, x: [usize; 4], o, k| -> Result<std::rc::Rc<Plan<T>>> {
            plan::<T>(dev, Key::new(dev.id(), T::DTYPE, dir, x, o, k, tf32()))
        };
        let (out, shape) = match self.0 {
            Grad::Data { x } => {
                // a = dy [B, O, H, W], b = w [O, C, k, k].
                let [o, _, k, _] = dims4(b.1)?;
                let p = plan_for(Dir::Data, x, o, k)?;
                let Algo::Data(algo) = p.algo else {
                    candle_core::bail!("{what}: a plan of another direction ({:?})", p.algo)
                };
                let op = ConvBackwardData {
                    conv: &p.conv,
                    dx: &p.x,
                    w: &p.w,
                    dy: &p.y,
                };
                let mut dx = output::<T>(dev, x.iter().product())?;
                with_workspace(dev, p.workspace, |ws| {
                    // SAFETY: the descriptors were made for these buffers' shapes and type.
                    cx(
                        unsafe { op.launch(algo, ws, (one, zero), &mut dx, &vb, &va) },
                        what,
                    )
                })?;
                (dx, Shape::from(x.to_vec()))
            }
            Grad::Filter { k } => {
                // a = x [B, C, H, W], b = dy [B, O, H, W].
                let x = dims4(a.1)?;
                let o = dims4(b.1)?[1];
                let p = plan_for(Dir::Filter, x, o, k)?;
                let Algo::Filter(algo) = p.algo else {
                    candle_core::bail!("{what}: a plan of another direction ({:?})", p.algo)
                };
                let op = ConvBackwardFilter {
                    conv: &p.conv,
                    x: &p.x,
                    dw: &p.w,
                    dy: &p.y,
                };
                let mut dw = output::<T>(dev, o * x[1] * k * k)?;
                with_workspace(dev, p.workspace, |ws| {
                    // SAFETY: as above.
                    cx(
                        unsafe { op.launch(algo, ws, (one, zero), &va, &mut dw, &vb) },
                        what,
                    )
                })?;
                (dw, Shape::from((o, x[1], k, k)))
            }
        };
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
    }
}
