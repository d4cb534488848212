//! The network's k×k, stride-1, "same" convolution through cuDNN in all three directions
//! (issue 17, cargo feature `cudnn`, lever `conv`): forward with its bias, the input
//! gradient (backward-data) and the weight gradient (backward-filter), with cudarc 0.19's
//! `cudnn::safe` on candle's stream.
//!
//! Why not candle's own `cudnn` feature: it covers the forward only, falls back to the
//! direct kernel for a non-contiguous kernel tensor (which a weight gradient written as a
//! convolution is), and re-creates descriptors, re-runs the algorithm heuristic and
//! allocates a zeroed workspace on every call (CANDLE_GPU.md). Here:
//!
//! 1. A [`Plan`] per (device, type, direction, shape, math mode) holds the descriptors and
//!    the algorithm of cuDNN's heuristic (`cudnnGet…Algorithm_v7`, its first choice), made
//!    on first use and kept for the thread (cuDNN handles are not `Send`).
//! 2. One workspace per device and thread, grown to the largest a plan asked for and
//!    reused: everything runs on candle's one stream, so reuse needs no synchronisation.
//! 3. bfloat16 data computes in float32 (`CUDNN_TENSOR_OP_MATH`); float32 uses TF32 tensor
//!    cores only where `RELAY_TF32=1` (candle's reduced-precision flag, which
//!    `DeviceSpec::device` sets): `CUDNN_DEFAULT_MATH`, else `CUDNN_FMA_MATH` (true float32),
//!    as PyTorch chooses from `allow_tf32`.
//! 4. The bias: added in place by a small kernel after the convolution (one pass over y,
//!    no allocation). `RELAY_CUDNN_BIAS=fused` uses cuDNN's fused conv + bias
//!    (`cudnnConvolutionBiasActivationForward`, identity activation) where y has x's shape;
//!    cuDNN allows only its implicit-precomputed-GEMM algorithm there, so which is faster
//!    is for the profile to say. A shape or type cuDNN refuses falls back to the kernel.
//!
//! Compile-checked only: no GPU has run this yet (docs/gpu-notes.md).

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{
    CudaDevice, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};
use cudarc::cudnn::safe::{ConvBiasActivationForward, ConvForward};
use cudarc::cudnn::{Cudnn, CudnnDataType, CudnnError};
use half::bf16;

use super::elementwise::{bias_add, BiasGrad};
use super::launch::{cuda_only, view};

mod grad;
mod plan;

use grad::{CudnnConvGrad, Grad};
use plan::{Algo, Dir, Key, Plan};

fn cx<T>(r: std::result::Result<T, CudnnError>, what: &str) -> Result<T> {
    r.map_err(|e| candle_core::Error::Msg(format!("cuDNN {what}: {e:?}")))
}

/// The storage types cuDNN runs here.
trait Elem: CudnnDataType + CudaDType + DeviceRepr + WithDType + 'static {}
impl Elem for f32 {}
impl Elem for bf16 {}

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static PLANS: RefCell<HashMap<Key, Rc<dyn Any>>> = RefCell::new(HashMap::new());
    static WORKSPACES: RefCell<HashMap<DeviceId, CudaSlice<u8>>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = cx(Cudnn::new(dev.cuda_stream()), "handle")?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

/// The cached plan for `key`, made by [`Plan::new`] on first use.
fn plan<T: Elem>(dev: &CudaDevice, key: Key) -> Result<Rc<Plan<T>>> {
    if let Some(p) = PLANS.with(|p| p.borrow().get(&key).cloned()) {
        return p
            .downcast::<Plan<T>>()
            .map_err(|_| candle_core::Error::Msg("cuDNN plan cache: type mismatch".into()));
    }
    let p = Rc::new(Plan::<T>::new(&handle(dev)?, key)?);
    PLANS.with(|c| c.borrow_mut().insert(key, p.clone() as Rc<dyn Any>));
    Ok(p)
}

/// Runs `f` with a workspace of at least `bytes` on `dev` (`None` for 0 bytes).
fn with_workspace<R>(
    dev: &CudaDevice,
    bytes: usize,
    f: impl FnOnce(Option<&mut CudaSlice<u8>>) -> Result<R>,
) -> Result<R> {
    if bytes == 0 {
        return f(None);
    }
    let mut ws = match WORKSPACES.with(|w| w.borrow_mut().remove(&dev.id())) {
        Some(ws) if ws.len() >= bytes => ws,
        // SAFETY: a workspace is scratch memory; cuDNN does not expect it initialised.
        _ => unsafe { dev.alloc::<u8>(bytes)? },
    };
    let r = f(Some(&mut ws));
    WORKSPACES.with(|w| w.borrow_mut().insert(dev.id(), ws));
    r
}

/// Whether float32 convolutions may use TF32 tensor cores (`RELAY_TF32=1`).
fn tf32() -> bool {
    candle_core::cuda::gemm_reduced_precision_f32()
}

fn fused_bias() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("RELAY_CUDNN_BIAS").is_ok_and(|v| v == "fused"))
}

fn dims4(l: &Layout) -> Result<[usize; 4]> {
    let (a, b, c, d) = l.shape().dims4()?;
    Ok([a, b, c, d])
}

/// y = conv(x, w) + bias: x [B, C, H, W], w [O, C, k, k], bias [O], one type.
#[derive(Debug, Clone, Copy)]
struct CudnnConv;

fn same_types(what: &str, ts: &[DType]) -> Result<DType> {
    if ts.windows(2).any(|p| p[0] != p[1]) {
        candle_core::bail!("{what}: operands of one type, got {ts:?}");
    }
    Ok(ts[0])
}

impl CustomOp3 for CudnnConv {
    fn name(&self) -> &'static str {
        "relay-cudnn-conv"
    }

    cuda_only!(3);

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match same_types(self.name(), &[xs.dtype(), ws.dtype(), bs.dtype()])? {
            DType::F32 => forward::<f32>((xs, xl), (ws, wl), (bs, bl)),
            DType::BF16 => forward::<bf16>((xs, xl), (ws, wl), (bs, bl)),
            other => candle_core::bail!("cuDNN conv: float32 or bfloat16, got {other:?}"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.to_dtype(x.dtype())?.contiguous()?;
        let (b, c, h, wd) = x.dims4()?;
        let dx = conv2d_backward_data(&grad, w, [b, c, h, wd])?;
        let dw = conv2d_backward_filter(x, &grad, w.dim(2)?)?;
        let db = grad.apply_op1_no_bwd(&BiasGrad)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

type Operand<'a> = (&'a CudaStorage, &'a Layout);

fn forward<T: Elem>(
    (xs, xl): Operand,
    (ws, wl): Operand,
    (bs, bl): Operand,
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "cuDNN conv forward";
    let dev = xs.device();
    let x_dims = dims4(xl)?;
    let [o, _, k, _] = dims4(wl)?;
    let [b, _, h, w] = x_dims;
    let n = b * o * h * w;
    let (x, wt, bias) = (
        view::<T>(xs, xl, WHAT)?,
        view::<T>(ws, wl, WHAT)?,
        view::<T>(bs, bl, WHAT)?,
    );
    let mut y = super::launch::output::<T>(dev, n)?;
    let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
    let fused = fused_bias() && x_dims[1] == o;
    let key = Key::new(
        dev.id(),
        T::DTYPE,
        Dir::Forward { fused },
        x_dims,
        o,
        k,
        tf32(),
    );
    let p = plan::<T>(dev, key)?;
    let mut done = false;
    if let (Some(algo), Some((bias_d, act)), false) =
        (p.fused_algo, p.bias.as_ref(), p.fused_refused.get())
    {
        let op = ConvBiasActivationForward {
            conv: &p.conv,
            act,
            x: &p.x,
            w: &p.w,
            z: &p.y,
            bias: bias_d,
            y: &p.y,
        };
        // z = x (same shape as y by construction of `fused`), weighted by alpha2 = 0.
        let r = with_workspace(dev, p.fused_workspace, |ws| {
            // SAFETY: the descriptors were made for these buffers' shapes and type.
            Ok(unsafe { op.launch(algo, ws, (one, zero), &x, &wt, &x, &bias, &mut y) })
        })?;
        // A refusal (e.g. a type cuDNN's fused path lacks) is remembered for this plan.
        done = r.is_ok();
        p.fused_refused.set(!done);
    }
    if !done {
        let op = ConvForward {
            conv: &p.conv,
            x: &p.x,
            w: &p.w,
            y: &p.y,
        };
        let Algo::Fwd(algo) = p.algo else {
            candle_core::bail!("{WHAT}: a plan of another direction ({:?})", p.algo)
        };
        with_workspace(dev, p.workspace, |ws| {
            // SAFETY: as above.
            cx(
                unsafe { op.launch(algo, ws, (one, zero), &x, &wt, &mut y) },
                WHAT,
            )
        })?;
        bias_add::<T>(dev, T::DTYPE, &mut y, &bias, (b, o, h * w))?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        Shape::from((b, o, h, w)),
    ))
}

/// `conv2d(x, w, padding = k/2) + bias` through cuDNN, differentiable in all three: `x`
/// [B, C, H, W], `w` [O, C, k, k] (k odd), `bias` [O], all of one type, on CUDA.
pub fn conv2d_same(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let k = w.dim(2)?;
    if k % 2 == 0 || w.dim(3)? != k || w.dim(1)? != x.dim(1)? {
        candle_core::bail!(
            "cuDNN conv: an odd square kernel over x's channels, got {:?} for {:?}",
            w.dims(),
            x.dims()
        );
    }
    let (x, w, bias) = (x.contiguous()?, w.contiguous()?, bias.contiguous()?);
    if !x.track_op() && !w.track_op() && !bias.track_op() {
        return x.apply_op3_no_bwd(&w, &bias, &CudnnConv); // no graph (sampling)
    }
    x.apply_op3(&w, &bias, CudnnConv)
}

/// The input gradient of [`conv2d_same`] for the output gradient `grad` and kernel `w`,
/// `x_dims` the input's [B, C, H, W].
pub fn conv2d_backward_data(grad: &Tensor, w: &Tensor, x_dims: [usize; 4]) -> Result<Tensor> {
    let op = CudnnConvGrad(Grad::Data { x: x_dims });
    grad.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)
}

/// The kernel gradient [O, C, k, k] of [`conv2d_same`] for input `x` and output gradient
/// `grad`.
pub fn conv2d_backward_filter(x: &Tensor, grad: &Tensor, k: usize) -> Result<Tensor> {
    let op = CudnnConvGrad(Grad::Filter { k });
    x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)
}

/// Drop every cached plan and workspace of this thread (a benchmark between settings).
pub fn clear_cache() {
    PLANS.with(|p| p.borrow_mut().clear());
    WORKSPACES.with(|w| w.borrow_mut().clear());
}
