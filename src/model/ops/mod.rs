//! Hand-written CPU kernels for the U-Net's hot spots, as candle custom ops with their own
//! backward passes (issue 10). candle 0.11 builds these layers from many small tensor ops
//! on the CPU (an im2col from k² copies, a GroupNorm from eight element-wise passes, each
//! with its own backward), so memory traffic, not arithmetic, bounded training there.
//!
//! * [`conv`]: im2col / col2im for a k×k, stride-1, "same" convolution, so that a conv and
//!   both of its gradients are one matrix product each plus one pass over memory.
//! * [`conv_grad`] (CUDA and other devices): candle's native convolution with a backward
//!   pass of forward convolutions instead of candle's direct `conv_transpose2d`.
//! * [`matmul`]: the convolutions' matrix product, with the weight gradient in the layout
//!   that `gemm` runs fastest.
//! * [`softmax`]: softmax over the last dimension with a one-pass backward (attention).
//! * [`group_norm`]: GroupNorm → per-(sample, channel) affine → optional SiLU in one pass
//!   forward and three backward (norm0/norm1/norm2/out_norm of every block).
//!
//! * [`tune_cpu_runtime`]: candle's worker spin limit and glibc's mmap threshold, set once
//!   when a CPU model is built (spin-waits and page faults were 60 % of a step's samples).
//!
//! Only the CPU runs these kernels. Every caller checks [`use_custom`] and otherwise
//! composes candle's own ops, which is also what the unit tests compare against
//! (values and gradients, relative error ≤ 1e-5 in f32). `RELAY_CPU_OPS` switches them
//! off one by one, to measure each (`scripts/bench-vs-torch.sh`).
//!
//! * [`cuda`] (issue 17): the CUDA twins of the GroupNorm and softmax kernels and of the
//!   in-place Adam, cuDNN convolutions, allocator settings; off unless `RELAY_CUDA_OPS`
//!   names them.

pub mod conv;
pub mod conv_grad;
pub mod cuda;
pub mod group_norm;
pub mod matmul;
pub mod softmax;

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

/// The kernels that `RELAY_CPU_OPS` can switch off (to measure each one's gain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Conv,
    GroupNorm,
    /// The softmax kernel and the copy-free attention layout.
    Attention,
    /// The thread and allocator settings of [`tune_cpu_runtime`].
    Runtime,
}

/// Which kernels are on: `RELAY_CPU_OPS` = `all` (default), `none`, or a comma list of
/// `conv`, `group_norm`, `attention`, `runtime`. Read once per process.
fn enabled(kernel: Kernel) -> bool {
    static ON: OnceLock<[bool; 4]> = OnceLock::new();
    let on = ON.get_or_init(|| match std::env::var("RELAY_CPU_OPS") {
        Err(_) => [true; 4],
        Ok(v) => {
            let has = |k: &str| v == "all" || v.split(',').any(|p| p.trim() == k);
            [
                has("conv"),
                has("group_norm"),
                has("attention"),
                has("runtime"),
            ]
        }
    });
    on[kernel as usize]
}

/// Whether `x` goes through the custom `kernel`: float32 on the CPU, unless switched off.
/// Other devices and dtypes keep candle's own ops (CUDA has cuDNN/cuBLAS paths; bf16 is
/// rare on the CPU).
pub fn use_custom(x: &Tensor, kernel: Kernel) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && enabled(kernel)
}

/// The f32 data of a contiguous CPU storage (custom ops are only called on such inputs).
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: expects a contiguous input, got {l:?}"),
    }
}

/// [`f32_slice`] for the storage an in-place op writes.
pub(crate) fn f32_slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((a, b))) => Ok(&mut data[a..b]),
        _ => candle_core::bail!("{what}: expects a contiguous float32 input, got {l:?}"),
    }
}

/// candle's spin limit for its element-wise worker threads, unless the user set one.
const BARRIER_POOL_SPIN_LIMIT: &str = "1000";

/// Process settings for candle's CPU kernels, applied once, before the first model runs.
///
/// 1. Threads. candle 0.11 runs element-wise ops on its own "barrier pool" beside the rayon
///    pool that its matrix products (and our kernels) use. After every op its workers spin
///    25,000 times before they sleep, and the caller spins until they are done: on 2 cores
///    they took the cores from the next matrix product, and half of a training step's CPU
///    samples were spin-waits (perf, tiny preset). A short spin limit keeps both pools.
///    `CANDLE_BARRIER_POOL_SPIN_LIMIT` is read once when the pool starts, so this only acts
///    if no element-wise op ran before; a value the user set is kept.
/// 2. Memory. Every candle op allocates its output, and glibc serves blocks above its mmap
///    threshold with a fresh mmap (page faults on first touch, munmap on free): ~10 % of
///    the CPU samples. Raising the threshold to its maximum (32 MiB) and never trimming the
///    heap lets freed activations be reused. Blocks above 32 MiB (adm-64's im2col columns
///    are 56–113 MiB at batch 2) still went to mmap, and zeroing their fresh pages was 23 %
///    of an adm-64 training step's samples (perf): with no mmap at all (`M_MMAP_MAX` 0)
///    they come from the heap too, and the step took 13 % less. The process keeps its peak
///    heap until it exits, as PyTorch's caching allocators do.
pub fn tune_cpu_runtime() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if !enabled(Kernel::Runtime) {
            return;
        }
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", BARRIER_POOL_SPIN_LIMIT);
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; glibc takes its own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_MMAP_MAX, 0);
        }
    });
}

/// Relative difference ‖a − b‖∞ / ‖b‖∞ (the tests' measure).
#[cfg(test)]
pub(crate) fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(diff / scale.max(f32::MIN_POSITIVE))
}
