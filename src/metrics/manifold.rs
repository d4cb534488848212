//! Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall
//! Metric for Assessing Generative Models", §2), as ADM's evaluator computes them
//! (`ManifoldEstimator` with `nhood_sizes=(3,)`):
//!
//! 1. Each point's radius is its squared distance to its k-th nearest neighbour in its own
//!    set (k = 3; the point itself is the 0-th).
//! 2. Precision: the fraction of samples within the radius of at least one reference point;
//!    recall: the fraction of reference points within the radius of at least one sample
//!    (`d ≤ r`, as the evaluator).
//!
//! Distances are |u|² − 2u·v + |v|², clamped at 0, in float32 on the network's device, in
//! blocks (a block of rows against a block of columns), like the evaluator; ADM first tries
//! float16 and falls back to float32 only when that overflows, relay always uses float32.
//! The feature sets are held on the device (8 KB per image of pool3).

use candle_core::{DType, Device, Tensor};

use super::MetricsError;

/// ADM's neighbourhood size.
pub const NHOOD: usize = 3;

const ROW_BLOCK: usize = 1024;
const COL_BLOCK: usize = 8192;

/// The outcome, with the counts behind the fractions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecisionRecall {
    pub precision: f64,
    pub recall: f64,
    /// Samples inside the reference manifold.
    pub precision_count: usize,
    /// Reference points inside the sample manifold.
    pub recall_count: usize,
}

/// Squared distances [R, C] between the rows of `a` [R, d] and `b` [C, d].
fn sqdist(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let na = a.sqr()?.sum_keepdim(1)?;
    let nb = b.sqr()?.sum_keepdim(1)?.t()?;
    let ab = a.matmul(&b.t()?)?;
    na.broadcast_add(&nb)?.sub(&ab.affine(2.0, 0.0)?)?.relu()
}

/// Each row's squared distance to its k-th nearest row of `x` (itself the 0-th).
pub fn radii(x: &Tensor, k: usize) -> Result<Vec<f32>, MetricsError> {
    let n = x.dim(0)?;
    let mut out = Vec::with_capacity(n);
    for r0 in (0..n).step_by(ROW_BLOCK) {
        let rows = x.narrow(0, r0, ROW_BLOCK.min(n - r0))?;
        let r = rows.dim(0)?;
        // The k + 1 smallest distances of each row so far, ascending.
        let mut best = vec![vec![f32::INFINITY; k + 1]; r];
        for c0 in (0..n).step_by(COL_BLOCK) {
            let cols = x.narrow(0, c0, COL_BLOCK.min(n - c0))?;
            let d: Vec<Vec<f32>> = sqdist(&rows, &cols)?.to_vec2()?;
            for (b, row) in best.iter_mut().zip(&d) {
                for &v in row {
                    if v < b[k] {
                        let at = b.partition_point(|&x| x <= v);
                        b.insert(at, v);
                        b.pop();
                    }
                }
            }
        }
        out.extend(best.iter().map(|b| b[k]));
    }
    Ok(out)
}

/// Precision and recall of `samples` [N, d] against `reference` [M, d] (same device).
pub fn precision_recall(
    reference: &Tensor,
    samples: &Tensor,
    k: usize,
) -> Result<PrecisionRecall, MetricsError> {
    let (m, n) = (reference.dim(0)?, samples.dim(0)?);
    for (what, count) in [("reference", m), ("sample", n)] {
        if count < k + 1 {
            return Err(MetricsError::BadInput(format!(
                "precision/recall need at least k + 1 = {} {what} images (k = {k} neighbours), got {count}",
                k + 1
            )));
        }
    }
    let device = reference.device();
    let r_ref = radii(reference, k)?;
    let r_s = radii(samples, k)?;
    let to_dev = |v: &[f32]| Tensor::from_slice(v, v.len(), device);
    let (r_ref_t, r_s_t) = (to_dev(&r_ref)?, to_dev(&r_s)?);
    let mut sample_in = vec![false; n];
    let mut ref_in = vec![false; m];
    for r0 in (0..m).step_by(ROW_BLOCK) {
        let rn = ROW_BLOCK.min(m - r0);
        let rows = reference.narrow(0, r0, rn)?;
        let rad_rows = r_ref_t.narrow(0, r0, rn)?.unsqueeze(1)?;
        for c0 in (0..n).step_by(COL_BLOCK) {
            let cn = COL_BLOCK.min(n - c0);
            let d = sqdist(&rows, &samples.narrow(0, c0, cn)?)?;
            let rad_cols = r_s_t.narrow(0, c0, cn)?.unsqueeze(0)?;
            let cols_hit = any(&d.broadcast_le(&rad_rows)?, 0)?;
            let rows_hit = any(&d.broadcast_le(&rad_cols)?, 1)?;
            for (j, h) in cols_hit.into_iter().enumerate() {
                sample_in[c0 + j] |= h;
            }
            for (i, h) in rows_hit.into_iter().enumerate() {
                ref_in[r0 + i] |= h;
            }
        }
    }
    let precision_count = sample_in.iter().filter(|&&b| b).count();
    let recall_count = ref_in.iter().filter(|&&b| b).count();
    Ok(PrecisionRecall {
        precision: precision_count as f64 / n as f64,
        recall: recall_count as f64 / m as f64,
        precision_count,
        recall_count,
    })
}

/// Whether any entry along `dim` of a 0/1 mask is set.
fn any(mask: &Tensor, dim: usize) -> candle_core::Result<Vec<bool>> {
    let v: Vec<f32> = mask.to_dtype(DType::F32)?.max(dim)?.to_vec1()?;
    Ok(v.into_iter().map(|x| x > 0.5).collect())
}

/// Rows (row-major f32, `dims` per row) as a tensor on `device`.
pub fn to_tensor(rows: &[f32], dims: usize, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(rows, (rows.len() / dims, dims), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radii_and_counts_on_a_line() {
        // Points 0, 1, 2, 3, 10 on a line: 3rd-nearest squared distances 9, 4, 4, 9, 81 (10 − 1).
        let x = to_tensor(&[0.0, 1.0, 2.0, 3.0, 10.0], 1, &Device::Cpu).unwrap();
        assert_eq!(radii(&x, 3).unwrap(), vec![9.0, 4.0, 4.0, 9.0, 81.0]);
        // Samples at 1.5 and 30: 1.5 lies in the reference manifold, 30 does not.
        let s = to_tensor(&[1.5, 30.0, 31.0, 32.0], 1, &Device::Cpu).unwrap();
        let pr = precision_recall(&x, &s, 3).unwrap();
        assert_eq!(pr.precision_count, 1);
        assert!(
            precision_recall(&x, &s, 4).is_err(),
            "4 samples < k + 1 = 5"
        );
    }
}
