//! The CUDA allocator and synchronisation levers of issue 17, set once per device when a
//! model is built on it ([`tune_device`]), and the memory pool's peak for the benchmarks.
//!
//! * `pool`: cudarc allocates with `cuMemAllocAsync` from the device's current memory pool,
//!   whose release threshold is 0 by default: at every synchronisation the driver takes
//!   back what was freed, and the next step maps it again. A threshold of u64::MAX keeps
//!   it, as PyTorch's caching allocator keeps its blocks.
//! * `events`: cudarc records a CUDA event per allocation and per launch argument so that
//!   several streams can share tensors. candle runs each device on one stream, and NCCL's
//!   collectives on that same stream, so the events only cost time. They stay on by
//!   default: only a process that touches a device from one thread (candle's stream is the
//!   per-thread default stream) may switch them off.
//! * [`pool_peak`] / [`reset_pool_peak`]: the pool's high-water marks of used and reserved
//!   bytes (`CU_MEMPOOL_ATTR_USED_MEM_HIGH`, `…RESERVED_MEM_HIGH`), the counterpart of
//!   `torch.cuda.max_memory_allocated` / `max_memory_reserved`.

use std::collections::HashSet;
use std::ffi::c_void;
use std::sync::Mutex;

use candle_core::cuda_backend::cudarc::driver::{result, sys};
use candle_core::cuda_backend::{DeviceId, WrapErr};
use candle_core::{CudaDevice, Result};

use super::{enabled, Lever};

/// The pool that `cuMemAllocAsync` on `dev` takes memory from, or `None` when the device
/// has no stream-ordered allocator (cudarc then uses `cuMemAlloc`).
fn current_pool(dev: &CudaDevice) -> Result<Option<sys::CUmemoryPool>> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    ctx.bind_to_thread().w()?;
    // SAFETY: `cu_device` is the context's own device handle.
    let pool = unsafe { result::device::get_mem_pool(ctx.cu_device()) }.w()?;
    Ok(Some(pool))
}

fn set_u64(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute, value: u64) -> Result<()> {
    let mut v = value;
    // SAFETY: these attributes are cuuint64_t; `v` outlives the call.
    unsafe { result::mem_pool::set_attribute(pool, attr, &mut v as *mut u64 as *mut c_void) }.w()
}

fn get_u64(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let mut v = 0u64;
    // SAFETY: as in `set_u64`.
    unsafe { result::mem_pool::get_attribute(pool, attr, &mut v as *mut u64 as *mut c_void) }
        .w()?;
    Ok(v)
}

/// Keep freed memory in the pool (release threshold u64::MAX).
pub fn keep_freed_memory(dev: &CudaDevice) -> Result<()> {
    match current_pool(dev)? {
        Some(pool) => set_u64(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            u64::MAX,
        ),
        None => Ok(()),
    }
}

/// The `pool` and `events` levers for `dev`, once per device; called where a model is
/// built, before its weights are allocated.
pub fn tune_device(dev: &CudaDevice) -> Result<()> {
    static DONE: Mutex<Option<HashSet<DeviceId>>> = Mutex::new(None);
    let mut done = DONE.lock().expect("tune lock");
    if !done.get_or_insert_with(HashSet::new).insert(dev.id()) {
        return Ok(());
    }
    if enabled(Lever::Pool) {
        keep_freed_memory(dev)?;
    }
    if enabled(Lever::Events) {
        // SAFETY: the `events` lever is documented for processes that use each device from
        // one thread on candle's one stream (module doc); slices allocated from now on skip
        // cudarc's cross-stream events.
        unsafe { dev.disable_event_tracking() };
    }
    Ok(())
}

/// Peak (used, reserved) bytes of `dev`'s pool since the last [`reset_pool_peak`], or
/// `None` without a stream-ordered allocator.
pub fn pool_peak(dev: &CudaDevice) -> Result<Option<(u64, u64)>> {
    use sys::CUmemPool_attribute::{
        CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, CU_MEMPOOL_ATTR_USED_MEM_HIGH,
    };
    match current_pool(dev)? {
        Some(pool) => Ok(Some((
            get_u64(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
            get_u64(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
        ))),
        None => Ok(None),
    }
}

/// Restart the high-water marks of [`pool_peak`] (the driver accepts only 0).
pub fn reset_pool_peak(dev: &CudaDevice) -> Result<()> {
    use sys::CUmemPool_attribute::{
        CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, CU_MEMPOOL_ATTR_USED_MEM_HIGH,
    };
    if let Some(pool) = current_pool(dev)? {
        set_u64(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)?;
        set_u64(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, 0)?;
    }
    Ok(())
}
