//! Feature statistics and the Fréchet distance between two Gaussians (Heusel et al. 2017,
//! "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
//! eq. 6): d² = |μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½).
//!
//! Everything in float64. [`Moments`] accumulates a mean and covariance batch by batch
//! (memory flat in the number of samples), around a shift (the first row) so that the sums
//! do not cancel. The trace of (Σ₁Σ₂)^½ is the sum of the square roots of the eigenvalues of
//! Σ₁Σ₂, which are those of the symmetric positive semi-definite A Σ₂ A with A = Σ₁^½:
//! two symmetric eigendecompositions (faer), no complex arithmetic and no iteration. scipy's
//! `sqrtm` (pytorch-fid, ADM's evaluator) takes the Schur form of the non-symmetric product
//! instead and discards an imaginary part; on well-conditioned covariances both agree
//! (tests: within 1e-6 relative), on singular ones (fewer samples than dimensions) ours
//! clamps the round-off negatives to zero where scipy returns a complex root.

use faer::{Accum, Mat, MatRef, Par, Side};

use super::MetricsError;

/// Running first and second moments of d-dimensional rows.
#[derive(Debug, Clone)]
pub struct Moments {
    dims: usize,
    n: u64,
    shift: Vec<f64>,
    /// Σ (x − shift).
    sum: Vec<f64>,
    /// Σ (x − shift)(x − shift)ᵀ, d×d.
    outer: Mat<f64>,
}

/// A Gaussian fitted to features: mean and covariance (unbiased, as `np.cov`).
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    pub mu: Vec<f64>,
    /// d×d, row-major.
    pub sigma: Vec<f64>,
}

impl Gaussian {
    pub fn dims(&self) -> usize {
        self.mu.len()
    }
    fn sigma(&self) -> MatRef<'_, f64> {
        MatRef::from_row_major_slice(&self.sigma, self.dims(), self.dims())
    }
}

impl Moments {
    pub fn new(dims: usize) -> Self {
        Self {
            dims,
            n: 0,
            shift: Vec::new(),
            sum: vec![0.0; dims],
            outer: Mat::zeros(dims, dims),
        }
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// Add `rows` (row-major, a multiple of `dims` values).
    pub fn add(&mut self, rows: &[f32]) {
        let d = self.dims;
        let n = rows.len() / d;
        if n == 0 {
            return;
        }
        if self.shift.is_empty() {
            self.shift = rows[..d].iter().map(|&x| x as f64).collect();
        }
        let mut x = vec![0f64; n * d];
        for (i, row) in rows.chunks_exact(d).enumerate() {
            for j in 0..d {
                let v = row[j] as f64 - self.shift[j];
                x[i * d + j] = v;
                self.sum[j] += v;
            }
        }
        let x = MatRef::from_row_major_slice(&x, n, d);
        faer::linalg::matmul::matmul(
            self.outer.as_mut(),
            Accum::Add,
            x.transpose(),
            x,
            1.0,
            Par::rayon(0),
        );
        self.n += n as u64;
    }

    /// Mean and unbiased covariance; needs two rows or more.
    pub fn finish(&self) -> Result<Gaussian, MetricsError> {
        if self.n < 2 {
            return Err(MetricsError::BadInput(format!(
                "a covariance needs at least 2 images, got {}",
                self.n
            )));
        }
        let (d, n) = (self.dims, self.n as f64);
        let mean_shifted: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let mu = mean_shifted
            .iter()
            .zip(&self.shift)
            .map(|(m, s)| m + s)
            .collect();
        let mut sigma = vec![0f64; d * d];
        for i in 0..d {
            for j in 0..d {
                // Σ (x−s)(x−s)ᵀ − n m mᵀ, with m the shifted mean; symmetrised.
                let o = 0.5 * (self.outer[(i, j)] + self.outer[(j, i)]);
                sigma[i * d + j] = (o - n * mean_shifted[i] * mean_shifted[j]) / (n - 1.0);
            }
        }
        Ok(Gaussian { mu, sigma })
    }
}

/// tr((Σ₁Σ₂)^½) through the symmetric A Σ₂ A, A = Σ₁^½.
pub fn trace_sqrt_product(s1: MatRef<'_, f64>, s2: MatRef<'_, f64>) -> Result<f64, MetricsError> {
    let evd = s1
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| MetricsError::Numeric(format!("eigendecomposition of Σ₁: {e:?}")))?;
    let (u, s) = (evd.U(), evd.S().column_vector());
    // A = U diag(√max(λ, 0)) Uᵀ.
    let d = s1.nrows();
    let root = Mat::from_fn(d, d, |i, j| u[(i, j)] * s[j].max(0.0).sqrt());
    let a = &root * u.transpose();
    let m = &a * s2 * &a;
    let m = Mat::from_fn(d, d, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let eig = m
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| MetricsError::Numeric(format!("eigenvalues of Σ₁^½ Σ₂ Σ₁^½: {e:?}")))?;
    Ok(eig.iter().map(|l| l.max(0.0).sqrt()).sum())
}

/// The squared Fréchet distance between two fitted Gaussians (FID on pool3, sFID on
/// `mixed_6/conv`).
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64, MetricsError> {
    if a.dims() != b.dims() {
        return Err(MetricsError::BadInput(format!(
            "the statistics have {} and {} dimensions",
            a.dims(),
            b.dims()
        )));
    }
    let d = a.dims();
    let diff: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |g: &Gaussian| (0..d).map(|i| g.sigma[i * d + i]).sum::<f64>();
    let covmean = trace_sqrt_product(a.sigma(), b.sigma())?;
    Ok(diff + trace(a) + trace(b) - 2.0 * covmean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_match_the_two_pass_formulas() {
        // Rows (1, 2), (3, 6), (5, 4): mean (3, 4); np.cov = [[4, 2], [2, 4]].
        let mut m = Moments::new(2);
        m.add(&[1.0, 2.0]);
        m.add(&[3.0, 6.0, 5.0, 4.0]);
        let g = m.finish().unwrap();
        assert_eq!(g.mu, vec![3.0, 4.0]);
        for (got, want) in g.sigma.iter().zip([4.0, 2.0, 2.0, 4.0]) {
            assert!((got - want).abs() < 1e-12, "{:?}", g.sigma);
        }
    }

    #[test]
    fn distance_of_commuting_gaussians() {
        // Σ₁ = diag(4, 9), Σ₂ = I: tr = 13 + 2 − 2 (2 + 3) = 5; |Δμ|² = 1.
        let a = Gaussian {
            mu: vec![1.0, 0.0],
            sigma: vec![4.0, 0.0, 0.0, 9.0],
        };
        let b = Gaussian {
            mu: vec![0.0, 0.0],
            sigma: vec![1.0, 0.0, 0.0, 1.0],
        };
        assert!((frechet_distance(&a, &b).unwrap() - 6.0).abs() < 1e-12);
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-12);
    }
}
