//! How relay's PTX kernels are found and called: the modules `build.rs` compiled from
//! `kernels/*.cu`, the name suffix of each storage type, and views of candle's storage at
//! a layout's offset. Loading a module is candle's own (`get_or_load_custom_func`: once per
//! device, then cached).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchArgs,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result};

/// One `kernels/*.cu` file as PTX.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    name: &'static str,
    ptx: &'static str,
}

pub const GROUP_NORM: Module = Module {
    name: "relay-group-norm",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/group_norm.ptx")),
};
pub const SOFTMAX: Module = Module {
    name: "relay-softmax",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/softmax.ptx")),
};
pub const ELEMENTWISE: Module = Module {
    name: "relay-elementwise",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/elementwise.ptx")),
};

/// A loaded kernel and the device's stream it launches on.
pub struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    /// The kernel `name` of `module` on `dev`.
    pub fn new(dev: &CudaDevice, module: Module, name: &str) -> Result<Self> {
        let func = dev
            .get_or_load_custom_func(name, module.name, module.ptx)?
            .into_cuda_function();
        Ok(Self {
            func,
            stream: dev.cuda_stream(),
        })
    }

    /// The argument list of one launch (then `.arg(..)`s and `launch(config)`).
    pub fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// The suffix the kernels' names carry for a storage type.
pub fn suffix(dtype: DType, what: &str) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => candle_core::bail!("{what}: float32 or bfloat16 on CUDA, got {other:?}"),
    }
}

/// The contiguous elements of `s` that `l` describes, as a device view.
pub fn view<'a, T: CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("{what}: expects a contiguous input, got {l:?}"),
    }
}

/// [`view`] for a storage an in-place op writes.
pub fn view_mut<'a, T: CudaDType + DeviceRepr>(
    s: &'a mut CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<CudaViewMut<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice_mut::<T>()?.slice_mut(a..b)),
        None => candle_core::bail!("{what}: expects a contiguous input, got {l:?}"),
    }
}

/// An output buffer of `n` elements that the kernel will write in full.
pub fn output<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every caller launches a kernel that writes all `n` elements before anything
    // reads them.
    unsafe { dev.alloc::<T>(n.max(1)) }
}

/// `n` as the `int` the kernels take, or an error naming the op.
pub fn int(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{what}: {n} exceeds i32")))
}

/// The `cpu_fwd` of an op that exists only on CUDA (a backward step of a CUDA kernel): an
/// error naming the op. `cuda_only!(n)` inside an `impl CustomOp{n}`, n = 1, 2, 3.
macro_rules! cuda_only {
    (1) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} runs on CUDA only", self.name())
        }
    };
    (2) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} runs on CUDA only", self.name())
        }
    };
    (3) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} runs on CUDA only", self.name())
        }
    };
}
pub(crate) use cuda_only;
