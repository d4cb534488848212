//! Patch-wise orthonormal 2-D DCT-II and its inverse (DCT-III), the frequency domain in which
//! RDM blurs (`RelayDiffusion: blurring.py dct_2d / idct_2d`, norm = 'ortho'; Teng et al.
//! 2024, arXiv 2309.03350).
//!
//! The image is cut into aligned, non-overlapping p×p tiles (origin at (0, 0)); tile T becomes
//! C T Cᵀ with C[k,n] = s_k cos(π(2n+1)k/2p), s_0 = √(1/p), s_k = √(2/p), and its coefficients
//! are written back in place of the tile. This equals `scipy.fft.dctn(norm='ortho')` per tile.
//!
//! The reference uses an FFT and assumes square images; here both 1-D transforms are a matmul
//! with the p×p basis, so any p dividing H and W works (non-square images too), on any candle
//! device and float dtype.

use candle_core::{bail, DType, Device, Result, Tensor};

/// The orthonormal DCT-II basis C as a row-major p×p matrix: `c[k * p + n] = C[k, n]`.
pub fn dct_basis(p: usize) -> Vec<f64> {
    let mut c = Vec::with_capacity(p * p);
    for k in 0..p {
        let s = if k == 0 {
            (1.0 / p as f64).sqrt()
        } else {
            (2.0 / p as f64).sqrt()
        };
        for n in 0..p {
            let angle = std::f64::consts::PI * (2 * n + 1) as f64 * k as f64 / (2 * p) as f64;
            c.push(s * angle.cos());
        }
    }
    c
}

/// A patch-wise DCT of one patch size, with its basis built once for a dtype and device.
#[derive(Debug, Clone)]
pub struct PatchDct {
    p: usize,
    /// C, `[p, p]`.
    c: Tensor,
    /// Cᵀ, `[p, p]`.
    c_t: Tensor,
}

impl PatchDct {
    pub fn new(p: usize, dtype: DType, device: &Device) -> Result<Self> {
        if p == 0 {
            bail!("DCT patch size must be positive")
        }
        let c = Tensor::from_vec(dct_basis(p), (p, p), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?;
        let c_t = c.t()?.contiguous()?;
        Ok(Self { p, c, c_t })
    }

    pub fn patch_size(&self) -> usize {
        self.p
    }

    /// Forward transform of every p×p tile of `x` (`[..., H, W]`): C T Cᵀ.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, &self.c, &self.c_t)
    }

    /// Inverse transform of every p×p tile of `x` (`[..., H, W]`): Cᵀ T C.
    pub fn inverse(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, &self.c_t, &self.c)
    }

    /// Every tile T ↦ L T R, with L, R p×p.
    fn apply(&self, x: &Tensor, left: &Tensor, right: &Tensor) -> Result<Tensor> {
        let p = self.p;
        let dims = x.dims().to_vec();
        if dims.len() < 2 {
            bail!("patch DCT needs [..., H, W], got {:?}", dims)
        }
        let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        if h % p != 0 || w % p != 0 {
            bail!("patch size {p} does not divide the image size {h}x{w}")
        }
        let x = x.contiguous()?;
        // Along W: every run of p columns is a row vector v ↦ v R.
        let rows = x.elem_count() / p;
        let y = x.reshape((rows, p))?.matmul(right)?;
        // Along H: view as [n_tile_rows, p, W] and multiply each p×W slab by L from the left.
        let slabs = x.elem_count() / (p * w);
        let y = left.broadcast_matmul(&y.reshape((slabs, p, w))?)?;
        y.reshape(dims)
    }
}

/// `dct_2d(x, p, norm='ortho')`: forward patch-wise DCT of `x: [..., H, W]`.
pub fn dct_2d(x: &Tensor, p: usize) -> Result<Tensor> {
    PatchDct::new(p, x.dtype(), x.device())?.forward(x)
}

/// `idct_2d(x, p, norm='ortho')`: inverse patch-wise DCT of `x: [..., H, W]`.
pub fn idct_2d(x: &Tensor, p: usize) -> Result<Tensor> {
    PatchDct::new(p, x.dtype(), x.device())?.inverse(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 17.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn basis_is_orthonormal() -> Result<()> {
        for p in [1, 2, 3, 4, 8] {
            let c = Tensor::from_vec(dct_basis(p), (p, p), &Device::Cpu)?;
            let eye = Tensor::eye(p, DType::F64, &Device::Cpu)?;
            assert!(max_abs(&c.matmul(&c.t()?)?, &eye) < 1e-14, "p = {p}");
        }
        Ok(())
    }

    /// Non-square image, p = 3 (no power of two): round trip, and the DC coefficient of a
    /// tile is p · (tile mean) (both 1-D DC rows are 1/√p).
    #[test]
    fn round_trip_non_square() -> Result<()> {
        let x = ramp(&[2, 3, 6, 9])?;
        let dct = PatchDct::new(3, DType::F64, &Device::Cpu)?;
        let u = dct.forward(&x)?;
        assert!(max_abs(&dct.inverse(&u)?, &x) < 1e-13);
        let tile = x.get(1)?.get(2)?.narrow(0, 3, 3)?.narrow(1, 6, 3)?;
        let mean = tile.sum_all()?.to_scalar::<f64>()? / 9.0;
        let dc = u.get(1)?.get(2)?.get(3)?.get(6)?.to_scalar::<f64>()?;
        assert!((dc - 3.0 * mean).abs() < 1e-12);
        Ok(())
    }

    /// A tile is transformed on its own: changing one tile leaves the others' coefficients.
    #[test]
    fn tiles_are_independent() -> Result<()> {
        let x = ramp(&[1, 1, 8, 8])?;
        let one = Tensor::ones((1, 1, 4, 4), DType::F64, &Device::Cpu)?;
        let bump = x
            .zeros_like()?
            .slice_assign(&[0..1, 0..1, 4..8, 0..4], &one)?;
        let diff = (dct_2d(&(&x + &bump)?, 4)? - dct_2d(&x, 4)?)?;
        let top = diff.narrow(2, 0, 4)?;
        assert!(max_abs(&top, &top.zeros_like()?) < 1e-14);
        assert!(max_abs(&diff, &diff.zeros_like()?) > 1.0);
        Ok(())
    }

    #[test]
    fn rejects_non_dividing_patch() {
        let x = Tensor::zeros((1, 1, 6, 6), DType::F32, &Device::Cpu).unwrap();
        assert!(dct_2d(&x, 4).is_err());
    }
}
