//! One cuDNN convolution plan: the descriptors of a (type, direction, shape, math mode),
//! the algorithm cuDNN's heuristic puts first for it, and the workspace that algorithm
//! needs. Made once per key and thread by [`super::plan`].

use std::cell::Cell;
use std::sync::Arc;

use candle_core::cuda_backend::DeviceId;
use candle_core::{DType, Result};
use cudarc::cudnn::safe::{ConvBackwardData, ConvBackwardFilter, ConvForward};
use cudarc::cudnn::{
    sys, ActivationDescriptor, ConvDescriptor, Cudnn, CudnnDataType, FilterDescriptor,
    TensorDescriptor,
};

use super::cx;

/// Which of the three convolutions; `fused`: the forward with cuDNN's own bias epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    Forward { fused: bool },
    Data,
    Filter,
}

/// What a plan depends on. `x`: [B, C, H, W]; the kernel is [O, C, k, k], padding k/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    dev: DeviceId,
    dtype: DType,
    dir: Dir,
    x: [usize; 4],
    o: usize,
    k: usize,
    tf32: bool,
}

impl Key {
    pub fn new(
        dev: DeviceId,
        dtype: DType,
        dir: Dir,
        x: [usize; 4],
        o: usize,
        k: usize,
        tf32: bool,
    ) -> Self {
        Self {
            dev,
            dtype,
            dir,
            x,
            o,
            k,
            tf32,
        }
    }
}

/// cuDNN's math mode, as PyTorch picks it: tensor cores for bfloat16 (float32
/// accumulation), TF32 for float32 only when allowed, else plain FMA float32.
pub fn math_type(dtype: DType, tf32: bool) -> sys::cudnnMathType_t {
    use sys::cudnnMathType_t::{CUDNN_DEFAULT_MATH, CUDNN_FMA_MATH, CUDNN_TENSOR_OP_MATH};
    match (dtype, tf32) {
        (DType::F32, true) => CUDNN_DEFAULT_MATH,
        (DType::F32, false) => CUDNN_FMA_MATH,
        _ => CUDNN_TENSOR_OP_MATH,
    }
}

fn i32x4(d: [usize; 4]) -> Result<[i32; 4]> {
    let mut out = [0i32; 4];
    for (o, v) in out.iter_mut().zip(d) {
        *o = i32::try_from(v)
            .map_err(|_| candle_core::Error::Msg(format!("cuDNN: dimension {v} exceeds i32")))?;
    }
    Ok(out)
}

/// The algorithm of a plan, by direction.
#[derive(Debug, Clone, Copy)]
pub enum Algo {
    Fwd(sys::cudnnConvolutionFwdAlgo_t),
    Data(sys::cudnnConvolutionBwdDataAlgo_t),
    Filter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// Descriptors (x: the input or its gradient, w: the kernel or its gradient, y: the output
/// or its gradient), algorithm and workspace bytes of one key.
pub struct Plan<T> {
    pub conv: ConvDescriptor<f32>,
    pub x: TensorDescriptor<T>,
    pub w: FilterDescriptor<T>,
    pub y: TensorDescriptor<T>,
    pub algo: Algo,
    pub workspace: usize,
    /// The fused forward's bias descriptor [1, O, 1, 1] and identity activation.
    pub bias: Option<(TensorDescriptor<T>, ActivationDescriptor<f32>)>,
    /// The only algorithm cuDNN allows for the fused forward with identity activation.
    pub fused_algo: Option<sys::cudnnConvolutionFwdAlgo_t>,
    pub fused_workspace: usize,
    /// Set when cuDNN refused the fused forward once: the plan then adds the bias itself.
    pub fused_refused: Cell<bool>,
}

impl<T: CudnnDataType> Plan<T> {
    pub fn new(cudnn: &Arc<Cudnn>, key: Key) -> Result<Self> {
        use sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW as NCHW;
        let [b, c, h, w] = key.x;
        let (o, k) = (key.o, key.k);
        let pad = i32::try_from(k / 2).unwrap_or(0);
        let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
        let mut conv = cx(
            cudnn.create_conv2d::<f32>([pad, pad], [1, 1], [1, 1], mode),
            "conv descriptor",
        )?;
        cx(
            conv.set_math_type(math_type(key.dtype, key.tf32)),
            "math type",
        )?;
        let x = cx(
            cudnn.create_4d_tensor::<T>(NCHW, i32x4(key.x)?),
            "x descriptor",
        )?;
        let wd = cx(
            cudnn.create_4d_filter::<T>(NCHW, i32x4([o, c, k, k])?),
            "w descriptor",
        )?;
        let y = cx(
            cudnn.create_4d_tensor::<T>(NCHW, i32x4([b, o, h, w])?),
            "y descriptor",
        )?;
        // The heuristic's first algorithm and its workspace, for one of cudarc's three ops
        // (the same two methods on three types).
        macro_rules! choose {
            ($variant:ident, $what:literal, $op:expr) => {{
                let op = $op;
                let a = cx(op.pick_algorithm(), concat!($what, " algorithm"))?;
                let bytes = cx(op.get_workspace_size(a), concat!($what, " workspace"))?;
                (Algo::$variant(a), bytes)
            }};
        }
        let (conv_r, w_r) = (&conv, &wd);
        let (algo, workspace) = match key.dir {
            Dir::Forward { .. } => choose!(
                Fwd,
                "forward",
                ConvForward {
                    conv: conv_r,
                    x: &x,
                    w: w_r,
                    y: &y
                }
            ),
            Dir::Data => choose!(
                Data,
                "backward-data",
                ConvBackwardData {
                    conv: conv_r,
                    dx: &x,
                    w: w_r,
                    dy: &y
                }
            ),
            Dir::Filter => choose!(
                Filter,
                "backward-filter",
                ConvBackwardFilter {
                    conv: conv_r,
                    x: &x,
                    dw: w_r,
                    dy: &y
                }
            ),
        };
        let (mut bias, mut fused_algo, mut fused_workspace) = (None, None, 0);
        if key.dir == (Dir::Forward { fused: true }) {
            let fa =
                sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
            let op = ConvForward {
                conv: &conv,
                x: &x,
                w: &wd,
                y: &y,
            };
            // A shape the fused algorithm cannot run keeps the unfused path.
            if let Ok(bytes) = op.get_workspace_size(fa) {
                let bd = cx(
                    cudnn.create_4d_tensor::<T>(NCHW, i32x4([1, o, 1, 1])?),
                    "bias descriptor",
                )?;
                let act = cx(
                    cudnn.create_activation::<f32>(
                        sys::cudnnActivationMode_t::CUDNN_ACTIVATION_IDENTITY,
                        sys::cudnnNanPropagation_t::CUDNN_NOT_PROPAGATE_NAN,
                        0.0,
                    ),
                    "activation descriptor",
                )?;
                bias = Some((bd, act));
                fused_algo = Some(fa);
                fused_workspace = bytes;
            }
        }
        Ok(Self {
            conv,
            x,
            w: wd,
            y,
            algo,
            workspace,
            bias,
            fused_algo,
            fused_workspace,
            fused_refused: Cell::new(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's choice: `allow_tf32` → CUDNN_DEFAULT_MATH, else FMA; half types → tensor ops.
    #[test]
    fn math_types_follow_pytorch() {
        use sys::cudnnMathType_t::*;
        assert_eq!(math_type(DType::F32, false), CUDNN_FMA_MATH);
        assert_eq!(math_type(DType::F32, true), CUDNN_DEFAULT_MATH);
        assert_eq!(math_type(DType::BF16, false), CUDNN_TENSOR_OP_MATH);
        assert_eq!(math_type(DType::BF16, true), CUDNN_TENSOR_OP_MATH);
    }
}
