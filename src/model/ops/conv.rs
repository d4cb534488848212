//! A k×k, stride-1, zero-padded ("same") convolution as im2col + one matrix product, with
//! col2im for the input gradient (issue 10).
//!
//! ```text
//! cols[c·k² + dy·k + dx, b·H·W + y·W + x] = x[b, c, y + dy − k/2, x + dx − k/2]   (0 outside)
//! cols[C·k², ·] = 1                                    (the bias row)
//! y      = [W | bias] · cols   → [O, B·H·W], then [B, O, H, W]
//! d[W | bias] = dY · colsᵀ     dcols = [W | bias]ᵀ · dY,   dx = col2im(dcols)
//! ```
//! Putting the batch inside the column dimension makes each of the three products a single
//! large GEMM (candle's, multi-threaded), and the row of ones makes the bias and its
//! gradient part of them (a broadcast bias add would cost a reduction over (B, H, W) in
//! candle's strided, slow path backward). The im2col that the model used before (k² strided
//! views stacked by candle) cost k² small copies forward and k² zero-padded full-size
//! gradients backward; here each direction is one pass, split over the rayon pool.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;

/// The columns `[C·k² + 1, B·H·W]` of a contiguous `[B, C, H, W]` input, the last row
/// all ones.
#[derive(Debug, Clone, Copy)]
pub struct Im2Col {
    pub k: usize,
}

/// The adjoint of [`Im2Col`]: `[C·k² + 1, B·H·W]` → `[B, C, H, W]`, summing overlapping
/// taps (the row of ones has no input to go to).
#[derive(Debug, Clone, Copy)]
pub struct Col2Im {
    pub dims: (usize, usize, usize, usize),
    pub k: usize,
}

/// For a tap shifted by `shift` along a row of `w`: the output range `lo..hi` whose source
/// `x + shift` lies inside the row.
fn valid_range(w: usize, shift: isize) -> (usize, usize) {
    let lo = (-shift).clamp(0, w as isize) as usize;
    let hi = (w as isize - shift).clamp(lo as isize, w as isize) as usize;
    (lo, hi)
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "relay-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let x = f32_slice(s, l, self.name())?;
        let (k, p) = (self.k, (self.k / 2) as isize);
        let (kk, hw) = (k * k, h * w);
        let n = b * hw;
        let mut out = vec![0f32; (c * kk + 1) * n];
        out[c * kk * n..].fill(1.0);
        if n > 0 {
            out[..c * kk * n]
                .par_chunks_mut(n)
                .enumerate()
                .for_each(|(row, o)| {
                    let (ci, t) = (row / kk, row % kk);
                    let (dy, dx) = ((t / k) as isize - p, (t % k) as isize - p);
                    let (lo, hi) = valid_range(w, dx);
                    for bi in 0..b {
                        let plane = &x[(bi * c + ci) * hw..][..hw];
                        let ob = &mut o[bi * hw..][..hw];
                        for y in 0..h {
                            let sy = y as isize + dy;
                            if sy < 0 || sy >= h as isize || lo == hi {
                                continue; // stays zero
                            }
                            let src = &plane[sy as usize * w..][..w];
                            let dst = &mut ob[y * w..][..w];
                            let (a, z) = ((lo as isize + dx) as usize, (hi as isize + dx) as usize);
                            dst[lo..hi].copy_from_slice(&src[a..z]);
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((c * kk + 1, n))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let col2im = Col2Im {
            dims: arg.dims4()?,
            k: self.k,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&col2im)?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "relay-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = self.dims;
        let cols = f32_slice(s, l, self.name())?;
        let (k, p) = (self.k, (self.k / 2) as isize);
        let (kk, hw) = (k * k, h * w);
        let n = b * hw;
        if l.shape().dims() != [c * kk + 1, n] {
            candle_core::bail!(
                "col2im: got {:?}, expected [{}, {n}]",
                l.shape(),
                c * kk + 1
            );
        }
        let mut out = vec![0f32; b * c * hw];
        if hw > 0 {
            out.par_chunks_mut(hw).enumerate().for_each(|(plane, o)| {
                let (bi, ci) = (plane / c, plane % c);
                for t in 0..kk {
                    let (dy, dx) = ((t / k) as isize - p, (t % k) as isize - p);
                    let (lo, hi) = valid_range(w, dx);
                    let src = &cols[(ci * kk + t) * n + bi * hw..][..hw];
                    for y in 0..h {
                        let sy = y as isize + dy;
                        if sy < 0 || sy >= h as isize || lo == hi {
                            continue;
                        }
                        let (a, z) = ((lo as isize + dx) as usize, (hi as isize + dx) as usize);
                        let dst = &mut o[sy as usize * w..][a..z];
                        for (d, v) in dst.iter_mut().zip(&src[y * w + lo..y * w + hi]) {
                            *d += v;
                        }
                    }
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?.apply_op1_no_bwd(&Im2Col { k: self.k })?,
        ))
    }
}

/// `conv2d(x, weight, padding = k/2) + bias` for an odd k×k `weight` [O, C, k, k] on a
/// float32 CPU tensor `x` [B, C, H, W], differentiable in all three.
pub fn conv2d_same(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, _, k, _) = weight.dims4()?;
    let cols = x.contiguous()?.apply_op1(Im2Col { k })?; // [C·k² + 1, B·H·W]
    let wb = Tensor::cat(&[weight.reshape((o, c * k * k))?, bias.reshape((o, 1))?], 1)?;
    let y = super::matmul::matmul(&wb, &cols)?; // [O, B·H·W]
    y.reshape((o, b, h, w))?.transpose(0, 1)?.contiguous()
}

/// The same convolution from candle ops only: k² shifted views of the padded input stacked
/// into columns, and a batched matrix product (the model's CPU path before these kernels,
/// kept to measure them against: `RELAY_CPU_OPS=none`).
pub fn conv2d_taps(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, _, k, _) = weight.dims4()?;
    let cols = if k == 1 {
        x.reshape((b, c, h * w))?
    } else {
        let p = k / 2;
        let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
        let mut taps = Vec::with_capacity(k * k);
        for dy in 0..k {
            for dx in 0..k {
                taps.push(xp.narrow(2, dy, h)?.narrow(3, dx, w)?);
            }
        }
        Tensor::stack(&taps, 2)?.reshape((b, c * k * k, h * w))?
    };
    let wm = weight.reshape((o, c * k * k))?;
    wm.broadcast_matmul(&cols)?
        .reshape((b, o, h, w))?
        .broadcast_add(&bias.reshape((1, o, 1, 1))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::rel_err;
    use candle_core::{Device, Var};

    /// Values and all three gradients against candle's `conv2d`, for 1×1, 3×3 and 5×5
    /// kernels, odd and even sizes, and a row narrower than the kernel.
    #[test]
    fn matches_candle_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        for (k, (b, c, h, w), o) in [
            (1, (2, 5, 6, 4), 7),
            (3, (3, 4, 7, 5), 6),
            (3, (1, 2, 1, 3), 2),
            (5, (2, 3, 6, 6), 4),
        ] {
            let x = Var::randn(0f32, 1., (b, c, h, w), &dev)?;
            let weight = Var::randn(0f32, 1., (o, c, k, k), &dev)?;
            let bias = Var::randn(0f32, 1., o, &dev)?;
            // A random upstream gradient, so every output element is weighted differently.
            let up = Tensor::randn(0f32, 1., (b, o, h, w), &dev)?;
            let ours = conv2d_same(&x, &weight, &bias)?;
            let native = x
                .conv2d(&weight, k / 2, 1, 1, 1)?
                .broadcast_add(&bias.reshape((1, o, 1, 1))?)?;
            assert!(rel_err(&ours, &native)? <= 1e-5, "k = {k}: forward");
            let g1 = (&ours * &up)?.sum_all()?.backward()?;
            let g2 = (&native * &up)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("weight", &weight), ("bias", &bias)] {
                let (a, e) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                let err = rel_err(a, e)?;
                assert!(err <= 1e-5, "k = {k}: d{name} relative error {err}");
            }
        }
        Ok(())
    }

    /// col2im is the adjoint of im2col: <im2col(x), c> = <x, col2im(c)> (without the bias row).
    #[test]
    fn col2im_is_the_adjoint() -> Result<()> {
        let dev = Device::Cpu;
        let dims = (2, 3, 5, 4);
        let x = Tensor::randn(0f32, 1., dims, &dev)?;
        let cols = x.apply_op1_no_bwd(&Im2Col { k: 3 })?;
        let c = Tensor::randn(0f32, 1., cols.shape(), &dev)?;
        let back = c.apply_op1_no_bwd(&Col2Im { dims, k: 3 })?;
        // The last row (ones, for the bias) has no input: leave it out of the product.
        let r = cols.dim(0)? - 1;
        let lhs = (cols.narrow(0, 0, r)? * c.narrow(0, 0, r)?)?
            .sum_all()?
            .to_scalar::<f32>()?;
        let rhs = (x * back)?.sum_all()?.to_scalar::<f32>()?;
        assert!(
            (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
        Ok(())
    }
}
