//! Resampling RGB8 images: Pillow's separable convolution resampler, bit for bit, and the
//! exact integer box (patch-mean) reduction used for relay pairs.
//!
//! # Pillow's resampler (`libImaging/Resample.c`, Pillow ≥ 7)
//! EDM's dataset_tool and ADM's `center_crop_arr` both resize with `PIL.Image.resize`,
//! so [`resize`] reproduces it exactly: for each output pixel `xx` the source centre is
//! `(xx + 0.5)·scale`, the filter support is widened by `max(scale, 1)` (antialiasing when
//! shrinking), weights are normalised to sum 1 and then quantised to 22-bit fixed point
//! (`PRECISION_BITS = 32 − 8 − 2`); the horizontal pass runs first and its result is
//! rounded to uint8 before the vertical pass. The filters are Pillow's `BOX` (support ½),
//! `BICUBIC` (a = −½, support 2) and `LANCZOS` (a = 3, support 3).
//!
//! # Exact box reduction ([`box_reduce`])
//! For an integer factor `f`, output pixel = the mean of its `f×f` patch, rounded half
//! up: `(Σ + f²/2) div f²`, i.e. `floor(mean + ½)`. So every output value is within ½
//! of the true patch mean. This is the state relay diffusion's blurring process ends
//! in (the per-patch DCT keeps only the DC term, which is the patch mean; see
//! RDM_NOTES §1/§3), so stage 1 is trained on exactly what stage 2 starts from.
//! Pillow's `BOX` at an integer factor computes the same mean but rounds through its
//! fixed-point weights; `box_reduce` is the exact, documented version.

use image::RgbImage;

/// A resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filter {
    Box,
    Bicubic,
    Lanczos,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point weights for one axis: output `i` reads `len[i]` inputs from `start[i]`.
struct Coeffs {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    k: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` from Pillow's Resample.c.
fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut c = Coeffs {
        ksize,
        start: Vec::with_capacity(out_size),
        len: Vec::with_capacity(out_size),
        k: vec![0; out_size * ksize],
    };
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero; the clamp makes that equal to floor.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        for (x, &wx) in w.iter().enumerate().take(n) {
            let v = if ww != 0.0 { wx / ww } else { wx };
            let fixed = v * (1u32 << PRECISION_BITS) as f64;
            c.k[xx * ksize + x] = if v < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        c.start.push(xmin);
        c.len.push(n);
    }
    c
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize to `width × height` exactly as `PIL.Image.resize((width, height), filter)`
/// does for an RGB image.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    assert!(width > 0 && height > 0, "resize to an empty image");
    let (w0, h0) = (img.width() as usize, img.height() as usize);
    let (w1, h1) = (width as usize, height as usize);
    if (w0, h0) == (w1, h1) {
        return img.clone();
    }
    let half = 1i32 << (PRECISION_BITS - 1);

    // Horizontal pass (only if the width changes), rounded to uint8.
    let horizontal;
    let (src, src_w): (&[u8], usize) = if w1 != w0 {
        let c = coeffs(w0, w1, filter);
        let mut out = vec![0u8; w1 * h0 * 3];
        for y in 0..h0 {
            let row = &img.as_raw()[y * w0 * 3..(y + 1) * w0 * 3];
            let dst = &mut out[y * w1 * 3..(y + 1) * w1 * 3];
            for xx in 0..w1 {
                let k = &c.k[xx * c.ksize..xx * c.ksize + c.len[xx]];
                let taps = &row[c.start[xx] * 3..(c.start[xx] + k.len()) * 3];
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (px, &kx) in taps.chunks_exact(3).zip(k) {
                    s0 += px[0] as i32 * kx;
                    s1 += px[1] as i32 * kx;
                    s2 += px[2] as i32 * kx;
                }
                dst[xx * 3] = clip8(s0);
                dst[xx * 3 + 1] = clip8(s1);
                dst[xx * 3 + 2] = clip8(s2);
            }
        }
        horizontal = out;
        (&horizontal, w1)
    } else {
        (img.as_raw(), w0)
    };

    // Vertical pass (only if the height changes).
    let stride = src_w * 3;
    let out = if h1 != h0 {
        let c = coeffs(h0, h1, filter);
        let mut out = vec![0u8; stride * h1];
        let mut acc = vec![0i32; stride];
        for yy in 0..h1 {
            acc.fill(half);
            let k = &c.k[yy * c.ksize..yy * c.ksize + c.len[yy]];
            for (t, &ky) in k.iter().enumerate() {
                let row = &src[(c.start[yy] + t) * stride..(c.start[yy] + t + 1) * stride];
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v as i32 * ky;
                }
            }
            for (o, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
                *o = clip8(a);
            }
        }
        out
    } else {
        src.to_vec()
    };
    RgbImage::from_raw(width, height, out).expect("buffer matches the size")
}

/// The exact mean of every `factor × factor` patch, rounded half up (see the module doc).
/// The image's sides must be multiples of `factor`.
pub fn box_reduce(img: &RgbImage, factor: u32) -> RgbImage {
    assert!(factor > 0, "box factor 0");
    let (w, h) = img.dimensions();
    assert!(
        w % factor == 0 && h % factor == 0,
        "{w}x{h} is not a multiple of {factor}"
    );
    if factor == 1 {
        return img.clone();
    }
    let f = factor as usize;
    let (w1, h1) = (w as usize / f, h as usize / f);
    let n = (f * f) as u32;
    let stride = w as usize * 3;
    let mut out = vec![0u8; w1 * h1 * 3];
    let mut acc = vec![0u32; w1 * 3];
    for oy in 0..h1 {
        acc.fill(0);
        for row in img.as_raw()[oy * f * stride..(oy + 1) * f * stride].chunks_exact(stride) {
            for (ox, patch) in row.chunks_exact(f * 3).enumerate() {
                let a = &mut acc[ox * 3..ox * 3 + 3];
                for px in patch.chunks_exact(3) {
                    a[0] += px[0] as u32;
                    a[1] += px[1] as u32;
                    a[2] += px[2] as u32;
                }
            }
        }
        for (o, &s) in out[oy * w1 * 3..(oy + 1) * w1 * 3].iter_mut().zip(&acc) {
            *o = ((s + n / 2) / n) as u8;
        }
    }
    RgbImage::from_raw(w1 as u32, h1 as u32, out).expect("buffer matches the size")
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn ramp(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 255 / (w - 1).max(1)) as u8,
                (y * 255 / (h - 1).max(1)) as u8,
                ((x * 7 + y * 13) % 256) as u8,
            ])
        })
    }

    #[test]
    fn box_reduce_is_the_rounded_patch_mean() {
        // 2x2 patch [1, 2; 2, 2] has mean 1.75 -> 2; [0, 0; 0, 1] -> 0.25 -> 0;
        // [1, 1; 0, 0] -> 0.5 -> 1 (half rounds up).
        let vals = [[1u8, 2, 0, 0, 1, 1], [2, 2, 0, 1, 0, 0]];
        let img = RgbImage::from_fn(6, 2, |x, y| {
            let v = vals[y as usize][x as usize];
            Rgb([v, v, 255 - v])
        });
        let out = box_reduce(&img, 2);
        let got: Vec<u8> = out.pixels().map(|p| p.0[0]).collect();
        assert_eq!(got, [2, 0, 1]);
        // 255 - v: 253.25 -> 253, 254.75 -> 255, 254.5 -> 255 (half up)
        let got: Vec<u8> = out.pixels().map(|p| p.0[2]).collect();
        assert_eq!(got, [253, 255, 255]);
    }

    #[test]
    fn box_reduce_matches_float_mean_within_half() {
        let img = ramp(64, 48);
        for f in [1, 2, 4, 8, 16] {
            let low = box_reduce(&img, f);
            for (x, y, p) in low.enumerate_pixels() {
                for c in 0..3 {
                    let mut s = 0.0;
                    for dy in 0..f {
                        for dx in 0..f {
                            s += img.get_pixel(x * f + dx, y * f + dy).0[c] as f64;
                        }
                    }
                    let mean = s / (f * f) as f64;
                    assert!((p.0[c] as f64 - mean).abs() <= 0.5, "f={f} ({x},{y})");
                }
            }
        }
    }

    #[test]
    fn lanczos_weights_are_normalised_and_symmetric() {
        let c = coeffs(750, 256, Filter::Lanczos);
        for i in 0..256 {
            let k = &c.k[i * c.ksize..i * c.ksize + c.len[i]];
            let s: i32 = k.iter().sum();
            assert!((s - (1 << PRECISION_BITS)).abs() <= k.len() as i32, "{s}");
        }
        // Output 0 and output 255 mirror each other.
        let first: Vec<i32> = c.k[..c.len[0]].to_vec();
        let last = &c.k[255 * c.ksize..255 * c.ksize + c.len[255]];
        let mut rev = last.to_vec();
        rev.reverse();
        assert_eq!(first, rev);
    }

    #[test]
    fn constant_images_stay_constant() {
        let img = RgbImage::from_pixel(97, 61, Rgb([200, 13, 77]));
        for f in [Filter::Box, Filter::Bicubic, Filter::Lanczos] {
            for (w, h) in [(32, 32), (200, 100), (97, 30)] {
                let out = resize(&img, w, h, f);
                assert_eq!(out.dimensions(), (w, h));
                assert!(out.pixels().all(|p| p.0 == [200, 13, 77]), "{f:?} {w}x{h}");
            }
        }
    }

    #[test]
    fn symmetric_taps_give_the_midpoint() {
        // 8 inputs 0, 30, ..., 210 shrunk to 3: output 1 is centred on input 3.5 with
        // symmetric taps over a linear ramp, so it is the midpoint (90 + 120) / 2 = 105.
        let img = RgbImage::from_fn(8, 1, |x, _| Rgb([(x * 30) as u8, 0, (255 - x * 30) as u8]));
        let mid = resize(&img, 3, 1, Filter::Lanczos).get_pixel(1, 0).0;
        assert_eq!(mid, [105, 0, 150]);
        let mid = resize(&img, 3, 1, Filter::Bicubic).get_pixel(1, 0).0;
        assert_eq!(mid, [105, 0, 150]);
    }
}
