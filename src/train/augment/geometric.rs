//! Executing the pipe's transforms on a batch of images `[N, C, H, W]` on any candle device:
//! pixel blitting (flips, quarter turns, integer translation with reflection) and the
//! general affine warp of the geometric transforms, done as ADA/EDM do it (Karras et al.
//! 2020, App. B.3; edm `training/augment.py`): reflect padding wide enough for every image,
//! 2× upsampling with the sym6 wavelet low-pass filter, bilinear sampling of the inverse
//! transform (`grid_sample`, zeros outside, `align_corners = False`), 2× downsampling with
//! the same filter. The filters are applied as banded matrix products along each axis
//! (the same sums as the reference's zero-stuffed strided convolutions), the sampling as
//! four gathers; everything stays on the images' device and dtype.
//!
//! Not here: drawing the parameters or building the matrices (`mod.rs`, `matrix.rs`).

use candle_core::{bail, DType, Device, Result, Tensor};

use super::matrix::{mul3, scale2d, translate2d, Mat3};

/// Low-pass decomposition filter of the sym6 wavelet (Daubechies' symlets, 12 taps), the
/// filter the reference resamples with.
const SYM6: [f64; 12] = [
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
];

/// Extra border kept around the image while warping: len(filter)/4 = 3 pixels.
const HZ_PAD: usize = SYM6.len() / 4;

/// A `[n, 1, 1, 1]` choice between `on_true` and `on_false` per image.
pub fn select(mask: &[bool], on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
    if mask.iter().all(|&m| !m) {
        return Ok(on_false.clone());
    }
    if mask.iter().all(|&m| m) {
        return Ok(on_true.clone());
    }
    let m: Vec<u8> = mask.iter().map(|&m| u8::from(m)).collect();
    Tensor::from_vec(m, (mask.len(), 1, 1, 1), on_true.device())?
        .broadcast_as(on_true.shape())?
        .where_cond(on_true, on_false)
}

/// Source index of `i` in `0..len + left + right` for reflect padding (edge not repeated).
fn reflect(i: i64, left: i64, len: i64) -> i64 {
    let period = 2 * (len - 1);
    let k = (i - left).rem_euclid(period.max(1));
    if k < len {
        k
    } else {
        period - k
    }
}

/// Reflect-pads dimension `dim` by `left` and `right` (each below the size, as torch requires).
fn reflect_pad(x: &Tensor, dim: usize, left: usize, right: usize) -> Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    let len = x.dim(dim)?;
    if left >= len || right >= len {
        bail!("reflect padding of {left}/{right} needs more than {len} pixels")
    }
    let idx: Vec<u32> = (0..(len + left + right) as i64)
        .map(|i| reflect(i, left as i64, len as i64) as u32)
        .collect();
    let n = idx.len();
    x.index_select(&Tensor::from_vec(idx, n, x.device())?, dim)
}

/// Integer translation by (tx, ty) per image with reflection at the borders (the reference's
/// `translate_int`: x ← W−1−|W−1−(x−tx) mod (2W−2)|, y ← H−1−|H−1−(y+ty) mod (2H−2)|).
pub fn translate_int(x: &Tensor, tx: &[i64], ty: &[i64]) -> Result<Tensor> {
    let (n, _, h, w) = x.dims4()?;
    if h < 2 || w < 2 {
        bail!("integer translation needs images of at least 2×2 pixels")
    }
    let fold = |v: i64, len: i64| len - 1 - (len - 1 - v.rem_euclid(2 * len - 2)).abs();
    let mut out = Vec::with_capacity(n);
    for b in 0..n {
        let xs: Vec<u32> = (0..w as i64)
            .map(|i| fold(i - tx[b], w as i64) as u32)
            .collect();
        let ys: Vec<u32> = (0..h as i64)
            .map(|i| fold(i + ty[b], h as i64) as u32)
            .collect();
        let img = x.get(b)?;
        let img = img.index_select(&Tensor::from_vec(xs, w, x.device())?, 2)?;
        out.push(img.index_select(&Tensor::from_vec(ys, h, x.device())?, 1)?);
    }
    Tensor::stack(&out, 0)
}

/// A banded resampling matrix `[rows, cols]` with entry `SYM6[f(r, c)]` where defined.
fn band(
    rows: usize,
    cols: usize,
    tap: impl Fn(i64, i64) -> i64,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let mut m = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let k = tap(r as i64, c as i64);
            if (0..SYM6.len() as i64).contains(&k) {
                m[r * cols + c] = SYM6[k as usize] as f32;
            }
        }
    }
    Tensor::from_vec(m, (rows, cols), dev)?.to_dtype(dtype)
}

/// Applies `m` `[out, in]` along the last axis (`last`) or the one before it, as one 2-D
/// matrix product.
fn along(x: &Tensor, m: &Tensor, last: bool) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let out = m.dim(0)?;
    if last {
        x.reshape((n * c * h, w))?
            .matmul(&m.t()?)?
            .reshape((n, c, h, out))
    } else {
        x.transpose(2, 3)?
            .contiguous()?
            .reshape((n * c * w, h))?
            .matmul(&m.t()?)?
            .reshape((n, c, w, out))?
            .transpose(2, 3)
    }
}

/// 2× upsampling: zero-stuffing then the reversed filter, as the reference's
/// `conv2d(stack([x, 0]), Hz[::-1], padding=6)`: out[j] = Σ_i x[i]·Hz[5 + j − 2i].
fn upsample(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (dt, dev) = (x.dtype(), x.device());
    let uw = band(2 * w, w, |j, i| 5 + j - 2 * i, dt, dev)?;
    let uh = band(2 * h, h, |j, i| 5 + j - 2 * i, dt, dev)?;
    along(&along(x, &uw, true)?, &uh, false)?.contiguous()
}

/// 2× downsampling and crop: `conv2d(x, Hz, stride=2, padding=5)[3:-3]`, i.e.
/// out[j] = Σ_i x[i]·Hz[i − 2j − 1], for the `h`×`w` output.
fn downsample(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, hi, wi) = x.dims4()?;
    let (dt, dev) = (x.dtype(), x.device());
    let dw = band(w, wi, |j, i| i - 2 * j - 1, dt, dev)?;
    let dh = band(h, hi, |j, i| i - 2 * j - 1, dt, dev)?;
    along(&along(x, &dw, true)?, &dh, false)?.contiguous()
}

/// `grid_sample(x, affine_grid(theta, [N, C, ho, wo]), bilinear, zeros, align_corners=False)`
/// with `theta` the first two rows of each image's normalised inverse transform.
fn warp(x: &Tensor, theta: &[Mat3], ho: usize, wo: usize) -> Result<Tensor> {
    let (n, c, hi, wi) = x.dims4()?;
    let (dt, dev) = (x.dtype(), x.device());
    // Output pixel centres in [−1, 1] (affine_grid, align_corners=False).
    let coords = |len: usize| -> Result<Tensor> {
        let v: Vec<f32> = (0..len)
            .map(|i| ((2 * i + 1) as f64 / len as f64 - 1.0) as f32)
            .collect();
        Tensor::from_vec(v, len, dev)?.to_dtype(dt)
    };
    let (gx, gy) = (
        coords(wo)?.reshape((1, 1, wo))?,
        coords(ho)?.reshape((1, ho, 1))?,
    );
    let entry = |r: usize, k: usize| -> Result<Tensor> {
        let v: Vec<f32> = theta.iter().map(|t| t[r][k]).collect();
        Tensor::from_vec(v, (n, 1, 1), dev)?.to_dtype(dt)
    };
    let sample_at = |r: usize, size: usize| -> Result<Tensor> {
        let g = gx
            .broadcast_mul(&entry(r, 0)?)?
            .broadcast_add(&gy.broadcast_mul(&entry(r, 1)?)?)?
            .broadcast_add(&entry(r, 2)?)?;
        // Unnormalise: ((g + 1)·size − 1)/2.
        (g + 1.0)?.affine(size as f64 / 2.0, -0.5)
    };
    let ix = sample_at(0, wi)?.reshape((n, ho * wo))?;
    let iy = sample_at(1, hi)?.reshape((n, ho * wo))?;
    let (x0, y0) = (ix.floor()?, iy.floor()?);
    let (x1, y1) = ((&x0 + 1.0)?, (&y0 + 1.0)?);
    let flat = x.reshape((n, c, hi * wi))?;
    let mut out: Option<Tensor> = None;
    for (xk, wx) in [(&x0, (&x1 - &ix)?), (&x1, (&ix - &x0)?)] {
        for (yk, wy) in [(&y0, (&y1 - &iy)?), (&y1, (&iy - &y0)?)] {
            let inside = (xk.ge(0.0)?.mul(&xk.le((wi - 1) as f64)?)?)
                .mul(&yk.ge(0.0)?.mul(&yk.le((hi - 1) as f64)?)?)?;
            let weight = (wx.mul(&wy)?.mul(&inside.to_dtype(dt)?))?.unsqueeze(1)?;
            let xc = xk.clamp(0.0, (wi - 1) as f64)?;
            let yc = yk.clamp(0.0, (hi - 1) as f64)?;
            let idx = (yc.to_dtype(DType::F64)? * wi as f64 + xc.to_dtype(DType::F64)?)?
                .to_dtype(DType::U32)?
                .unsqueeze(1)?
                .broadcast_as((n, c, ho * wo))?
                .contiguous()?;
            let v = flat.gather(&idx, 2)?.broadcast_mul(&weight)?;
            out = Some(match out {
                Some(o) => (o + v)?,
                None => v,
            });
        }
    }
    out.expect("four corners").reshape((n, c, ho, wo))
}

/// Warps every image by its inverse transform `g_inv` (pixel coordinates centred on the
/// image), the reference's "Execute geometric transformations" block, including its
/// batch-wide margins.
pub fn resample(x: &Tensor, g_inv: &[Mat3]) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let (fx, fy) = (cx as f32, cy as f32);
    // 1. Margins: how far the transformed corners reach, over the whole batch.
    let corners = [[-fx, -fy], [fx, -fy], [fx, fy], [-fx, fy]];
    let mut m = [f32::NEG_INFINITY; 4];
    for g in g_inv {
        for [px, py] in corners {
            let tx = g[0][0] * px + g[0][1] * py + g[0][2];
            let ty = g[1][0] * px + g[1][1] * py + g[1][2];
            m = [m[0].max(-tx), m[1].max(-ty), m[2].max(tx), m[3].max(ty)];
        }
    }
    let pad = (HZ_PAD * 2) as f64;
    let off = [(pad - cx) as f32, (pad - cy) as f32];
    let limit = [(w - 1) as f32, (h - 1) as f32];
    let margin: Vec<usize> = (0..4)
        .map(|k| (m[k] + off[k % 2]).max(0.0).min(limit[k % 2]).ceil() as usize)
        .collect();
    let (mx0, my0, mx1, my1) = (margin[0], margin[1], margin[2], margin[3]);

    // 2. Pad and move the origin.
    let x = reflect_pad(&reflect_pad(x, 3, mx0, mx1)?, 2, my0, my1)?;
    let shift = translate2d(
        (mx0 as f32 - mx1 as f32) / 2.0,
        (my0 as f32 - my1 as f32) / 2.0,
    );

    // 3. Upsample; the transform in upsampled pixel coordinates.
    let x = upsample(&x)?;
    let (hu, wu) = (x.dim(2)?, x.dim(3)?);
    let (ho, wo) = ((h + HZ_PAD * 2) * 2, (w + HZ_PAD * 2) * 2);
    let to_norm = scale2d((2.0 / wu as f64) as f32, (2.0 / hu as f64) as f32);
    let from_norm = scale2d(
        (1.0 / (2.0 / wo as f64)) as f32,
        (1.0 / (2.0 / ho as f64)) as f32,
    );
    let theta: Vec<Mat3> = g_inv
        .iter()
        .map(|g| {
            let g = mul3(&shift, g);
            let g = mul3(&mul3(&scale2d(2.0, 2.0), &g), &scale2d(0.5, 0.5));
            let g = mul3(&mul3(&translate2d(-0.5, -0.5), &g), &translate2d(0.5, 0.5));
            mul3(&mul3(&to_norm, &g), &from_norm)
        })
        .collect();

    // 4. Sample, then downsample and crop back to h × w.
    let x = warp(&x, &theta, ho, wo)?;
    downsample(&x, h, w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::augment::matrix::I3;

    /// Reflection repeats no edge pixel: [a b c d] padded by 2 is [c b a b c d c b].
    #[test]
    fn reflect_padding() -> Result<()> {
        let x = Tensor::new(&[0f32, 1., 2., 3.], &Device::Cpu)?.reshape((1, 1, 1, 4))?;
        let y = reflect_pad(&x, 3, 2, 2)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y, [2., 1., 0., 1., 2., 3., 2., 1.]);
        Ok(())
    }

    /// The identity warp is the wavelet round trip alone: a constant image stays constant
    /// inside (the sym6 low-pass sums to √2, so up then down multiplies by 2·(√2/2)² = 1),
    /// a smooth ramp changes by little.
    #[test]
    fn identity_warp_is_nearly_the_identity() -> Result<()> {
        let dev = Device::Cpu;
        let ramp: Vec<f32> = (0..3 * 16 * 16)
            .map(|i| ((i % 16) as f32 / 15.0) - 0.5)
            .collect();
        let x = Tensor::from_vec(ramp, (1, 3, 16, 16), &dev)?;
        let y = resample(&x, &[I3])?;
        assert_eq!(y.dims(), x.dims());
        let err = (y - &x)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-3, "identity warp moved a ramp by {err}");
        Ok(())
    }
}
