//! Softmax over the last dimension on CUDA (`kernels/softmax.cu`), the `cuda_fwd` of
//! [`crate::model::ops::softmax`]'s ops: one block per row, the row in registers.
//!
//! Type pairs (input → weights): float32 → float32, float32 → bfloat16 (the attention's
//! float32 logits to a bfloat16 network's weights, so the float32 weights never exist),
//! bfloat16 → bfloat16. The backward takes dy and y in the weights' type and writes dx in
//! the input's. Rows up to [`MAX_LEN`] values.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use super::block_threads;
use super::launch::{int, output, suffix, view, Kernel, SOFTMAX};

const WHAT: &str = "CUDA softmax";
/// Values per thread held in registers (`PER` in kernels/softmax.cu).
const PER: usize = 8;
/// The longest row: `PER` values for each of 1024 threads.
pub const MAX_LEN: usize = PER * 1024;

/// Whether the kernels take `x` with weights in `out`: a type pair they were built for and
/// a last dimension of at most [`MAX_LEN`].
pub fn supports(x: &Tensor, out: DType) -> bool {
    let pair = matches!(
        (x.dtype(), out),
        (DType::F32, DType::F32) | (DType::F32, DType::BF16) | (DType::BF16, DType::BF16)
    );
    let len = x.dims().last().copied().unwrap_or(0);
    pair && len > 0 && len <= MAX_LEN
}

/// One block per row of `len` values.
fn config(rows: usize, len: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (block_threads(len.div_ceil(PER), 1024), 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Rows and row length of a layout, checked against [`MAX_LEN`].
fn rows(l: &Layout) -> Result<(usize, usize)> {
    let len = l.shape().dims().last().copied().unwrap_or(1);
    if len == 0 || len > MAX_LEN {
        candle_core::bail!("{WHAT}: rows of 1..={MAX_LEN} values, got {len}");
    }
    let rows = l.shape().elem_count() / len;
    int(rows, WHAT)?;
    Ok((rows, len))
}

/// y = softmax(x) over the last dimension, y in `out`.
pub fn forward(s: &CudaStorage, l: &Layout, out: DType) -> Result<(CudaStorage, Shape)> {
    match (s.dtype(), out) {
        (DType::F32, DType::F32) => forward_t::<f32, f32>(s, l, out),
        (DType::F32, DType::BF16) => forward_t::<f32, bf16>(s, l, out),
        (DType::BF16, DType::BF16) => forward_t::<bf16, bf16>(s, l, out),
        (i, o) => candle_core::bail!("{WHAT}: no kernel from {i:?} to {o:?}"),
    }
}

fn forward_t<TI: CudaDType + DeviceRepr, TO: CudaDType + DeviceRepr>(
    s: &CudaStorage,
    l: &Layout,
    out: DType,
) -> Result<(CudaStorage, Shape)> {
    let (rows, len) = rows(l)?;
    let dev = s.device();
    let x = view::<TI>(s, l, WHAT)?;
    let mut y = output::<TO>(dev, rows * len)?;
    if rows > 0 {
        let name = format!(
            "softmax_fwd_{}_{}",
            suffix(s.dtype(), WHAT)?,
            suffix(out, WHAT)?
        );
        let k = Kernel::new(dev, SOFTMAX, &name)?;
        let len_i = int(len, WHAT)?;
        let mut b = k.builder();
        b.arg(&x).arg(&mut y).arg(&len_i);
        // SAFETY: argument types and sizes as `softmax_fwd` in kernels/softmax.cu.
        unsafe { b.launch(config(rows, len)) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        l.shape().clone(),
    ))
}

/// dx = y·(dy − Σ dy·y) for dy, y of one type; dx in `out`.
pub fn backward(
    gs: &CudaStorage,
    gl: &Layout,
    ys: &CudaStorage,
    yl: &Layout,
    out: DType,
) -> Result<(CudaStorage, Shape)> {
    if gs.dtype() != ys.dtype() || gl.shape() != yl.shape() {
        candle_core::bail!(
            "{WHAT} backward: dy {:?} {:?} and y {:?} {:?} differ",
            gs.dtype(),
            gl.shape(),
            ys.dtype(),
            yl.shape()
        );
    }
    match (gs.dtype(), out) {
        (DType::F32, DType::F32) => backward_t::<f32, f32>(gs, gl, ys, yl, out),
        (DType::BF16, DType::F32) => backward_t::<bf16, f32>(gs, gl, ys, yl, out),
        (DType::BF16, DType::BF16) => backward_t::<bf16, bf16>(gs, gl, ys, yl, out),
        (i, o) => candle_core::bail!("{WHAT} backward: no kernel from {i:?} to {o:?}"),
    }
}

fn backward_t<TO: CudaDType + DeviceRepr, TI: CudaDType + DeviceRepr>(
    gs: &CudaStorage,
    gl: &Layout,
    ys: &CudaStorage,
    yl: &Layout,
    out: DType,
) -> Result<(CudaStorage, Shape)> {
    let (rows, len) = rows(gl)?;
    let dev = gs.device();
    let (g, y) = (view::<TO>(gs, gl, WHAT)?, view::<TO>(ys, yl, WHAT)?);
    let mut dx = output::<TI>(dev, rows * len)?;
    if rows > 0 {
        let name = format!(
            "softmax_bwd_{}_{}",
            suffix(gs.dtype(), WHAT)?,
            suffix(out, WHAT)?
        );
        let k = Kernel::new(dev, SOFTMAX, &name)?;
        let len_i = int(len, WHAT)?;
        let mut b = k.builder();
        b.arg(&g).arg(&y).arg(&mut dx).arg(&len_i);
        // SAFETY: argument types and sizes as `softmax_bwd` in kernels/softmax.cu.
        unsafe { b.launch(config(rows, len)) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(dx, dev.clone()),
        gl.shape().clone(),
    ))
}
