//! Layers of the ADM U-Net with EDM's initialisation (edm `training/networks.py`: `Linear`,
//! `Conv2d`, `GroupNorm`) and the fixed box resampling.
//!
//! The PyTorch `Conv2d` of EDM carries a `resample_filter` buffer ([1,1,2,2] of 0.25) in
//! up/down layers. It is a constant, so it is not read here: [`down2`] and [`up2`] compute
//! with it directly. [`super::checkpoint`] writes and checks the buffers.
//!
//! Initialisation (only used for fresh weights, e.g. from a `VarMap`; loading ignores it):
//! `DhariwalUNet` uses kaiming-uniform × √(1/3), i.e. U(±1/√fan_in) for weights *and*
//! biases, and zeros for `conv1`, `proj` and `out_conv` (and `map_augment`).

use candle_core::{Result, Tensor};
use candle_nn::{Init, Linear, Module, VarBuilder};

use super::ops::{self, group_norm::GroupNorm};
use super::structure::{group_norm_groups, Resample, GROUP_NORM_EPS};

/// U(±1/√fan_in): EDM's `kaiming_uniform` with `init_weight = init_bias = √(1/3)`.
pub fn default_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A linear layer with explicit inits for weight and bias (`None`: no bias).
pub fn linear_init(
    in_dim: usize,
    out_dim: usize,
    (w_init, b_init): (Init, Option<Init>),
    vb: VarBuilder,
) -> Result<Linear> {
    let w = vb.get_with_hints((out_dim, in_dim), "weight", w_init)?;
    let b = match b_init {
        Some(init) => Some(vb.get_with_hints(out_dim, "bias", init)?),
        None => None,
    };
    Ok(Linear::new(w, b))
}

/// A linear layer with the default init.
pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let init = default_init(in_dim);
    linear_init(in_dim, out_dim, (init, bias.then_some(init)), vb)
}

/// A k×k convolution, stride 1, zero padding k/2, with bias (EDM's `Conv2d` without
/// resampling; the resampling is done by the caller).
///
/// On the CPU it runs as im2col + one matrix product ([`ops::conv`]), so that its backward
/// pass is two matrix products and one col2im too: candle 0.11's CPU backward for `conv2d`
/// goes through a direct `conv_transpose2d`, 15× the forward for one tiny-preset layer.
/// Other devices keep the native convolution (there memory is what limits the batch, and
/// im2col costs k² × the input's memory), with the backward of [`ops::conv_grad`]; on CUDA
/// with the `conv` lever of `RELAY_CUDA_OPS` (a `cudnn` build) all three directions go
/// through cuDNN ([`ops::cuda::cudnn`]).
#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if ops::use_custom(x, ops::Kernel::Conv) {
            return ops::conv::conv2d_same(x, &self.weight, &self.bias);
        }
        if x.device().is_cpu() {
            return ops::conv::conv2d_taps(x, &self.weight, &self.bias);
        }
        #[cfg(feature = "cudnn")]
        if ops::cuda::use_cuda(x, ops::cuda::Lever::Conv) {
            return ops::cuda::cudnn::conv2d_same(x, &self.weight, &self.bias);
        }
        ops::conv_grad::conv2d_same(x, &self.weight)?.broadcast_add(&self.bias.reshape((
            1,
            (),
            1,
            1,
        ))?)
    }
}

/// A k×k [`Conv`]; `zero_init` for the layers that ADM starts at zero.
pub fn conv2d(
    in_c: usize,
    out_c: usize,
    k: usize,
    zero_init: bool,
    vb: VarBuilder,
) -> Result<Conv> {
    let init = if zero_init {
        Init::Const(0.)
    } else {
        default_init(in_c * k * k)
    };
    let weight = vb.get_with_hints((out_c, in_c, k, k), "weight", init)?;
    let bias = vb.get_with_hints(out_c, "bias", init)?;
    Ok(Conv { weight, bias })
}

/// GroupNorm with min(32, C/4) groups and eps 1e-5.
pub fn group_norm(c: usize, vb: VarBuilder) -> Result<GroupNorm> {
    GroupNorm::new(group_norm_groups(c), c, GROUP_NORM_EPS, vb)
}

/// 2×2 mean with stride 2: the reference's grouped conv with the [1,1] box filter.
pub fn down2(x: &Tensor) -> Result<Tensor> {
    x.avg_pool2d(2)
}

/// Nearest-neighbour ×2: the reference's transposed conv with 4 × the box filter.
///
/// Written as a broadcast rather than `upsample_nearest2d`: candle 0.11's backward for
/// that op overwrites (instead of adding to) the gradient of its input, which is wrong
/// here because the block input also feeds `norm0`.
pub fn up2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .contiguous()?
        .reshape((b, c, 2 * h, 2 * w))
}

pub fn resample(x: &Tensor, r: Resample) -> Result<Tensor> {
    match r {
        Resample::None => Ok(x.clone()),
        Resample::Up => up2(x),
        Resample::Down => down2(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn resampling_matches_the_box_filter() -> Result<()> {
        let x = Tensor::arange(0f32, 16., &Device::Cpu)?.reshape((1, 1, 4, 4))?;
        // down2: means of the 2×2 tiles [[0,1],[4,5]] = 2.5, ...
        let d = down2(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(d, vec![2.5, 4.5, 10.5, 12.5]);
        // up2: each pixel becomes a 2×2 block.
        let small = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?.reshape((1, 1, 2, 2))?;
        let u = up2(&small)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(
            u,
            vec![1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
        );
        Ok(())
    }

    /// The im2col convolution equals candle's native one, values and gradients.
    #[test]
    fn im2col_conv_matches_native() -> Result<()> {
        let dev = Device::Cpu;
        for k in [1, 3] {
            let x = Var::randn(0f32, 1., (2, 5, 6, 4), &dev)?;
            let weight = Var::randn(0f32, 1., (7, 5, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 1., 7, &dev)?;
            let conv = Conv {
                weight: weight.as_tensor().clone(),
                bias: bias.clone(),
            };
            let ours = conv.forward(x.as_tensor())?;
            let native = x
                .conv2d(&weight, k / 2, 1, 1, 1)?
                .broadcast_add(&bias.reshape((1, 7, 1, 1))?)?;
            let close = |a: &Tensor, b: &Tensor| -> Result<f32> {
                (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
            };
            assert!(close(&ours, &native)? < 1e-4);
            let g1 = (ours.sqr()?.sum_all()?).backward()?;
            let g2 = (native.sqr()?.sum_all()?).backward()?;
            for v in [&x, &weight] {
                let (a, b) = (
                    g1.get(v.as_tensor()).unwrap(),
                    g2.get(v.as_tensor()).unwrap(),
                );
                assert!(close(a, b)? < 1e-3, "k = {k}");
            }
        }
        Ok(())
    }

    /// d/dx [Σ up2(x) + Σ x] = 4 + 1: the gradient of a tensor that feeds both `up2`
    /// and another op must add up (see the note on [`up2`]).
    #[test]
    fn up2_gradient_accumulates() -> Result<()> {
        let x = Var::ones((1, 2, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
        let y = (up2(x.as_tensor())?.sum_all()? + x.as_tensor().sum_all()?)?;
        let g = y.backward()?;
        let gx = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(gx.iter().all(|&v| v == 5.0), "{gx:?}");
        Ok(())
    }
}
