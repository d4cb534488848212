//! The layers of the FID Inception-v3: a convolution with its batch norm folded in, the
//! pools of the 2015 TensorFlow graph, and the five mixed-block types (torchvision's
//! `InceptionA`..`InceptionE` as pytorch-fid patches them: `FIDInceptionA`, `C`, `E_1`,
//! `E_2`; `B` and `D` are torchvision's own).
//!
//! Names follow the state dict of pytorch-fid's weights file (`Mixed_6d.branch7x7_2.conv.weight`,
//! `...bn.running_var`), so a `VarBuilder` over it needs no renaming.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Batch-norm epsilon of every layer (torchvision's `BasicConv2d`, the TF graph's 0.001).
pub const BN_EPS: f64 = 1e-3;

/// `BasicConv2d`: convolution (no bias) → batch norm (inference) → ReLU, with the batch norm
/// folded into the convolution's weight and a bias once, at load time:
/// w' = w · γ/√(var + ε), b' = β − mean · γ/√(var + ε).
#[derive(Debug, Clone)]
pub struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    /// Zero padding (rows, columns); candle's convolution pads both equally, so an
    /// asymmetric one is applied to the input first.
    pad: (usize, usize),
}

impl ConvBn {
    pub fn new(
        vb: VarBuilder,
        (c_in, c_out): (usize, usize),
        (kh, kw): (usize, usize),
        stride: usize,
        pad: (usize, usize),
    ) -> Result<Self> {
        // Folded in float64, then rounded once to the network's type.
        let dtype = vb.dtype();
        let f64 = |t: Tensor| t.to_dtype(DType::F64);
        let w = f64(vb.pp("conv").get((c_out, c_in, kh, kw), "weight")?)?;
        let bn = vb.pp("bn");
        let gamma = f64(bn.get(c_out, "weight")?)?;
        let beta = f64(bn.get(c_out, "bias")?)?;
        let mean = f64(bn.get(c_out, "running_mean")?)?;
        let var = f64(bn.get(c_out, "running_var")?)?;
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let weight = w
            .broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?
            .to_dtype(dtype)?;
        let bias = (beta - (mean * &scale)?)?.to_dtype(dtype)?;
        Ok(Self {
            weight,
            bias: bias.reshape((1, c_out, 1, 1))?,
            stride,
            pad,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (ph, pw) = self.pad;
        let (x, pad) = if ph == pw {
            (x.clone(), ph)
        } else {
            (x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?, 0)
        };
        x.conv2d(&self.weight, pad, self.stride, 1, 1)?
            .broadcast_add(&self.bias)?
            .relu()
    }
}

/// Max pool 3×3, stride 2, no padding (between the stem convolutions, in B and D).
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    x.max_pool2d_with_stride((3, 3), (2, 2))
}

/// Average pool 3×3, stride 1, padding 1, *not* counting the padding
/// (`count_include_pad=False`, the TF graph's `AvgPool` with SAME padding): edge outputs
/// average 6 values, corners 4.
pub fn avg_pool_3x3_same(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let sum = x
        .pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride((3, 3), (1, 1))?;
    // avg_pool2d divided by 9; rescale to the number of real values in each window.
    let span = |i: usize, n: usize| (i.min(1) + 1 + usize::from(i + 1 < n)) as f32;
    let mut fix = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            fix.push(9.0 / (span(i, h) * span(j, w)));
        }
    }
    let fix = Tensor::from_vec(fix, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
    sum.broadcast_mul(&fix)
}

/// Max pool 3×3, stride 1, padding 1 (pytorch-fid's `FIDInceptionE_2`: the TF graph's last
/// block max-pools where torchvision average-pools). Padding with the edge values gives the
/// same maximum as padding with −∞: every window already holds the value it repeats.
pub fn max_pool_3x3_same(x: &Tensor) -> Result<Tensor> {
    x.pad_with_same(2, 1, 1)?
        .pad_with_same(3, 1, 1)?
        .max_pool2d_with_stride((3, 3), (1, 1))
}

/// The pool branch of a mixed block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Avg,
    Max,
}

impl Pool {
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Pool::Avg => avg_pool_3x3_same(x),
            Pool::Max => max_pool_3x3_same(x),
        }
    }
}

fn conv(
    vb: &VarBuilder,
    name: &str,
    io: (usize, usize),
    k: (usize, usize),
    stride: usize,
    pad: (usize, usize),
) -> Result<ConvBn> {
    ConvBn::new(vb.pp(name), io, k, stride, pad)
}

/// `FIDInceptionA` (Mixed_5b/5c/5d): 1×1, 5×5, double 3×3 and pool branches.
#[derive(Debug, Clone)]
pub struct InceptionA {
    b1x1: ConvBn,
    b5x5: [ConvBn; 2],
    b3x3dbl: [ConvBn; 3],
    pool: ConvBn,
}

impl InceptionA {
    pub fn new(vb: VarBuilder, c_in: usize, pool_features: usize) -> Result<Self> {
        Ok(Self {
            b1x1: conv(&vb, "branch1x1", (c_in, 64), (1, 1), 1, (0, 0))?,
            b5x5: [
                conv(&vb, "branch5x5_1", (c_in, 48), (1, 1), 1, (0, 0))?,
                conv(&vb, "branch5x5_2", (48, 64), (5, 5), 1, (2, 2))?,
            ],
            b3x3dbl: [
                conv(&vb, "branch3x3dbl_1", (c_in, 64), (1, 1), 1, (0, 0))?,
                conv(&vb, "branch3x3dbl_2", (64, 96), (3, 3), 1, (1, 1))?,
                conv(&vb, "branch3x3dbl_3", (96, 96), (3, 3), 1, (1, 1))?,
            ],
            pool: conv(&vb, "branch_pool", (c_in, pool_features), (1, 1), 1, (0, 0))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b1x1.forward(x)?;
        let b = chain(&self.b5x5, x)?;
        let c = chain(&self.b3x3dbl, x)?;
        let d = self.pool.forward(&avg_pool_3x3_same(x)?)?;
        Tensor::cat(&[a, b, c, d], 1)
    }
}

/// torchvision's `InceptionB` (Mixed_6a): grid reduction 35 → 17.
#[derive(Debug, Clone)]
pub struct InceptionB {
    b3x3: ConvBn,
    b3x3dbl: [ConvBn; 3],
}

impl InceptionB {
    pub fn new(vb: VarBuilder, c_in: usize) -> Result<Self> {
        Ok(Self {
            b3x3: conv(&vb, "branch3x3", (c_in, 384), (3, 3), 2, (0, 0))?,
            b3x3dbl: [
                conv(&vb, "branch3x3dbl_1", (c_in, 64), (1, 1), 1, (0, 0))?,
                conv(&vb, "branch3x3dbl_2", (64, 96), (3, 3), 1, (1, 1))?,
                conv(&vb, "branch3x3dbl_3", (96, 96), (3, 3), 2, (0, 0))?,
            ],
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b3x3.forward(x)?;
        let b = chain(&self.b3x3dbl, x)?;
        let c = max_pool_3x3_s2(x)?;
        Tensor::cat(&[a, b, c], 1)
    }
}

/// `FIDInceptionC` (Mixed_6b..6e): factorised 7×7 branches. The TF graph's `mixed_6/conv`
/// (the spatial features of sFID) is Mixed_6d's `branch1x1`.
#[derive(Debug, Clone)]
pub struct InceptionC {
    pub(crate) b1x1: ConvBn,
    b7x7: [ConvBn; 3],
    b7x7dbl: [ConvBn; 5],
    pool: ConvBn,
}

impl InceptionC {
    pub fn new(vb: VarBuilder, c_in: usize, c7: usize) -> Result<Self> {
        let (k17, k71, p17, p71) = ((1, 7), (7, 1), (0, 3), (3, 0));
        Ok(Self {
            b1x1: conv(&vb, "branch1x1", (c_in, 192), (1, 1), 1, (0, 0))?,
            b7x7: [
                conv(&vb, "branch7x7_1", (c_in, c7), (1, 1), 1, (0, 0))?,
                conv(&vb, "branch7x7_2", (c7, c7), k17, 1, p17)?,
                conv(&vb, "branch7x7_3", (c7, 192), k71, 1, p71)?,
            ],
            b7x7dbl: [
                conv(&vb, "branch7x7dbl_1", (c_in, c7), (1, 1), 1, (0, 0))?,
                conv(&vb, "branch7x7dbl_2", (c7, c7), k71, 1, p71)?,
                conv(&vb, "branch7x7dbl_3", (c7, c7), k17, 1, p17)?,
                conv(&vb, "branch7x7dbl_4", (c7, c7), k71, 1, p71)?,
                conv(&vb, "branch7x7dbl_5", (c7, 192), k17, 1, p17)?,
            ],
            pool: conv(&vb, "branch_pool", (c_in, 192), (1, 1), 1, (0, 0))?,
        })
    }

    /// The block's output, and its `branch1x1` output (ReLU'd) for the spatial features.
    pub fn forward_with_1x1(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let a = self.b1x1.forward(x)?;
        let b = chain(&self.b7x7, x)?;
        let c = chain(&self.b7x7dbl, x)?;
        let d = self.pool.forward(&avg_pool_3x3_same(x)?)?;
        Ok((Tensor::cat(&[&a, &b, &c, &d], 1)?, a))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_1x1(x)?.0)
    }
}

/// torchvision's `InceptionD` (Mixed_7a): grid reduction 17 → 8.
#[derive(Debug, Clone)]
pub struct InceptionD {
    b3x3: [ConvBn; 2],
    b7x7x3: [ConvBn; 4],
}

impl InceptionD {
    pub fn new(vb: VarBuilder, c_in: usize) -> Result<Self> {
        Ok(Self {
            b3x3: [
                conv(&vb, "branch3x3_1", (c_in, 192), (1, 1), 1, (0, 0))?,
                conv(&vb, "branch3x3_2", (192, 320), (3, 3), 2, (0, 0))?,
            ],
            b7x7x3: [
                conv(&vb, "branch7x7x3_1", (c_in, 192), (1, 1), 1, (0, 0))?,
                conv(&vb, "branch7x7x3_2", (192, 192), (1, 7), 1, (0, 3))?,
                conv(&vb, "branch7x7x3_3", (192, 192), (7, 1), 1, (3, 0))?,
                conv(&vb, "branch7x7x3_4", (192, 192), (3, 3), 2, (0, 0))?,
            ],
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = chain(&self.b3x3, x)?;
        let b = chain(&self.b7x7x3, x)?;
        let c = max_pool_3x3_s2(x)?;
        Tensor::cat(&[a, b, c], 1)
    }
}

/// `FIDInceptionE_1` (Mixed_7b, average pool) and `FIDInceptionE_2` (Mixed_7c, max pool):
/// branches that split into 1×3 and 3×1 halves.
#[derive(Debug, Clone)]
pub struct InceptionE {
    b1x1: ConvBn,
    b3x3_1: ConvBn,
    b3x3_2: [ConvBn; 2],
    b3x3dbl_1: [ConvBn; 2],
    b3x3dbl_3: [ConvBn; 2],
    pool_conv: ConvBn,
    pool: Pool,
}

impl InceptionE {
    pub fn new(vb: VarBuilder, c_in: usize, pool: Pool) -> Result<Self> {
        let (k13, k31, p13, p31) = ((1, 3), (3, 1), (0, 1), (1, 0));
        Ok(Self {
            b1x1: conv(&vb, "branch1x1", (c_in, 320), (1, 1), 1, (0, 0))?,
            b3x3_1: conv(&vb, "branch3x3_1", (c_in, 384), (1, 1), 1, (0, 0))?,
            b3x3_2: [
                conv(&vb, "branch3x3_2a", (384, 384), k13, 1, p13)?,
                conv(&vb, "branch3x3_2b", (384, 384), k31, 1, p31)?,
            ],
            b3x3dbl_1: [
                conv(&vb, "branch3x3dbl_1", (c_in, 448), (1, 1), 1, (0, 0))?,
                conv(&vb, "branch3x3dbl_2", (448, 384), (3, 3), 1, (1, 1))?,
            ],
            b3x3dbl_3: [
                conv(&vb, "branch3x3dbl_3a", (384, 384), k13, 1, p13)?,
                conv(&vb, "branch3x3dbl_3b", (384, 384), k31, 1, p31)?,
            ],
            pool_conv: conv(&vb, "branch_pool", (c_in, 192), (1, 1), 1, (0, 0))?,
            pool,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b1x1.forward(x)?;
        let t = self.b3x3_1.forward(x)?;
        let b = Tensor::cat(
            &[self.b3x3_2[0].forward(&t)?, self.b3x3_2[1].forward(&t)?],
            1,
        )?;
        let t = chain(&self.b3x3dbl_1, x)?;
        let c = Tensor::cat(
            &[
                self.b3x3dbl_3[0].forward(&t)?,
                self.b3x3dbl_3[1].forward(&t)?,
            ],
            1,
        )?;
        let d = self.pool_conv.forward(&self.pool.apply(x)?)?;
        Tensor::cat(&[a, b, c, d], 1)
    }
}

/// Run `x` through `layers` in order.
fn chain(layers: &[ConvBn], x: &Tensor) -> Result<Tensor> {
    let mut x = x.clone();
    for l in layers {
        x = l.forward(&x)?;
    }
    Ok(x)
}

/// Global average pool: [N, C, H, W] → [N, C].
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean(D::Minus1)?.mean(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn avg_pool_ignores_padding() {
        // A constant image stays constant: every window averages only real values.
        let x = Tensor::full(2f32, (1, 1, 4, 5), &Device::Cpu).unwrap();
        let y: Vec<f32> = avg_pool_3x3_same(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(y.iter().all(|v| (v - 2.0).abs() < 1e-6), "{y:?}");
        // The corner of [[0,1],[2,3]] averages all four values.
        let x = Tensor::new(&[[[[0f32, 1.], [2., 3.]]]], &Device::Cpu).unwrap();
        let y: Vec<f32> = avg_pool_3x3_same(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y, vec![1.5; 4]);
    }

    #[test]
    fn max_pool_same_keeps_the_size_and_takes_the_window_max() {
        let x = Tensor::new(&[[[[-5f32, -1.], [-2., -3.]]]], &Device::Cpu).unwrap();
        let y: Vec<f32> = max_pool_3x3_same(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y, vec![-1.0; 4]);
    }
}
