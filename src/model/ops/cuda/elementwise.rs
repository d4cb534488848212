//! The small kernels of `kernels/elementwise.cu`: a convolution's bias and its gradient
//! (for [`super::cudnn`]), and the in-place Adam and EMA passes that
//! [`crate::train::fused_adam`]'s ops run on CUDA (the `adam` lever), float32 arithmetic
//! in the CPU twin's order and rounding.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, CustomOp1, DType, Layout, Result, Shape};
use half::bf16;

use super::block_threads;
use super::launch::{cuda_only, int, output, suffix, view, view_mut, Kernel, ELEMENTWISE};

/// A grid-stride launch over `n` elements, 256 threads a block.
fn flat(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// y[b, c, ·] += bias[c] in place, y a [B, C, hw] buffer of `T`.
pub fn bias_add<T: CudaDType + DeviceRepr>(
    dev: &CudaDevice,
    dtype: DType,
    y: &mut CudaSlice<T>,
    bias: &CudaView<T>,
    (b, c, hw): (usize, usize, usize),
) -> Result<()> {
    const WHAT: &str = "CUDA bias add";
    if b * c * hw == 0 {
        return Ok(());
    }
    let k = Kernel::new(
        dev,
        ELEMENTWISE,
        &format!("bias_add_{}", suffix(dtype, WHAT)?),
    )?;
    let threads = block_threads(hw, 256);
    let cfg = LaunchConfig {
        grid_dim: (
            int(b * c, WHAT)? as u32,
            hw.div_ceil(threads as usize).clamp(1, 65_535) as u32,
            1,
        ),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let (c, hw) = (int(c, WHAT)?, int(hw, WHAT)?);
    let mut a = k.builder();
    a.arg(y).arg(bias).arg(&c).arg(&hw);
    // SAFETY: argument types and sizes as `bias_add` in kernels/elementwise.cu.
    unsafe { a.launch(cfg) }.w()?;
    Ok(())
}

/// db[c] = Σ_{b, h, w} dy[b, c, h, w]: dy [B, C, H, W] → [C] of dy's type.
#[derive(Debug, Clone, Copy)]
pub struct BiasGrad;

impl CustomOp1 for BiasGrad {
    fn name(&self) -> &'static str {
        "relay-cuda-bias-grad"
    }

    cuda_only!(1);

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        match s.dtype() {
            DType::F32 => bias_grad::<f32>(s, l),
            DType::BF16 => bias_grad::<bf16>(s, l),
            other => candle_core::bail!("CUDA bias gradient: float32 or bfloat16, got {other:?}"),
        }
    }
}

fn bias_grad<T: CudaDType + DeviceRepr>(
    s: &CudaStorage,
    l: &Layout,
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "CUDA bias gradient";
    let (b, c, h, w) = l.shape().dims4()?;
    let dev = s.device();
    let dy = view::<T>(s, l, WHAT)?;
    let mut db = output::<T>(dev, c)?;
    if c > 0 {
        let k = Kernel::new(
            dev,
            ELEMENTWISE,
            &format!("bias_grad_{}", suffix(s.dtype(), WHAT)?),
        )?;
        let cfg = LaunchConfig {
            grid_dim: (c as u32, 1, 1),
            block_dim: (block_threads(h * w, 512), 1, 1),
            shared_mem_bytes: 0,
        };
        let (bi, ci, hwi) = (int(b, WHAT)?, int(c, WHAT)?, int(h * w, WHAT)?);
        let mut a = k.builder();
        a.arg(&dy).arg(&mut db).arg(&bi).arg(&ci).arg(&hwi);
        // SAFETY: argument types and sizes as `bias_grad` in kernels/elementwise.cu.
        unsafe { a.launch(cfg) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(db, dev.clone()),
        Shape::from(c),
    ))
}

/// Float32 only, one length: what the optimiser's in-place kernels accept.
fn check_f32(what: &str, stores: &[(&CudaStorage, &Layout)]) -> Result<usize> {
    let n = stores[0].1.shape().elem_count();
    for (s, l) in stores {
        if s.dtype() != DType::F32 || l.shape().elem_count() != n {
            candle_core::bail!(
                "{what}: float32 tensors of one size, got {:?} {:?}",
                s.dtype(),
                l.shape()
            );
        }
    }
    Ok(n)
}

/// m ← β·m + (1−β)·g (g² with `square`), in place.
pub fn adam_moment(
    (ms, ml): (&mut CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
    (beta, one_minus_beta, square): (f32, f32, bool),
) -> Result<()> {
    const WHAT: &str = "CUDA Adam moment";
    let n = check_f32(WHAT, &[(&*ms, ml), (gs, gl)])?;
    let dev = gs.device().clone();
    let g = view::<f32>(gs, gl, WHAT)?;
    let mut m = view_mut::<f32>(ms, ml, WHAT)?;
    if n > 0 {
        let k = Kernel::new(&dev, ELEMENTWISE, "adam_moment")?;
        let (sq, n64) = (i32::from(square), n);
        let mut a = k.builder();
        a.arg(&mut m)
            .arg(&g)
            .arg(&beta)
            .arg(&one_minus_beta)
            .arg(&sq)
            .arg(&n64);
        // SAFETY: argument types and sizes as `adam_moment` in kernels/elementwise.cu.
        unsafe { a.launch(flat(n)) }.w()?;
    }
    Ok(())
}

/// p ← p − step · m / (√v · inv_sqrt_bc2 + eps), in place.
pub fn adam_param(
    (ps, pl): (&mut CudaStorage, &Layout),
    (ms, ml): (&CudaStorage, &Layout),
    (vs, vl): (&CudaStorage, &Layout),
    (step, inv_sqrt_bc2, eps): (f32, f32, f32),
) -> Result<()> {
    const WHAT: &str = "CUDA Adam step";
    let n = check_f32(WHAT, &[(&*ps, pl), (ms, ml), (vs, vl)])?;
    let dev = ms.device().clone();
    let (m, v) = (view::<f32>(ms, ml, WHAT)?, view::<f32>(vs, vl, WHAT)?);
    let mut p = view_mut::<f32>(ps, pl, WHAT)?;
    if n > 0 {
        let k = Kernel::new(&dev, ELEMENTWISE, "adam_param")?;
        let mut a = k.builder();
        a.arg(&mut p)
            .arg(&m)
            .arg(&v)
            .arg(&step)
            .arg(&inv_sqrt_bc2)
            .arg(&eps)
            .arg(&n);
        // SAFETY: argument types and sizes as `adam_param` in kernels/elementwise.cu.
        unsafe { a.launch(flat(n)) }.w()?;
    }
    Ok(())
}

/// ema ← net + β·(ema − net), in place.
pub fn ema_lerp(
    (es, el): (&mut CudaStorage, &Layout),
    (ns, nl): (&CudaStorage, &Layout),
    beta: f32,
) -> Result<()> {
    const WHAT: &str = "CUDA EMA update";
    let n = check_f32(WHAT, &[(&*es, el), (ns, nl)])?;
    let dev = ns.device().clone();
    let net = view::<f32>(ns, nl, WHAT)?;
    let mut e = view_mut::<f32>(es, el, WHAT)?;
    if n > 0 {
        let k = Kernel::new(&dev, ELEMENTWISE, "ema_lerp")?;
        let mut a = k.builder();
        a.arg(&mut e).arg(&net).arg(&beta).arg(&n);
        // SAFETY: argument types and sizes as `ema_lerp` in kernels/elementwise.cu.
        unsafe { a.launch(flat(n)) }.w()?;
    }
    Ok(())
}
