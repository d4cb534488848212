//! A float32 matrix product on the CPU whose backward pass picks the fast layout for the
//! convolutions' weight gradient (issue 10).
//!
//! For `y = W · cols` ([O, K] · [K, N], N = B·H·W) candle's autograd computes
//! `dW = dY · colsᵀ`: an output of O × K from a reduction over N ≈ 10⁴, with the
//! right-hand operand read across its rows. `gemm` runs that layout at 22–63 GFLOP/s on
//! this project's machine, against 77–136 for the same product written
//! `dW = (cols · dYᵀ)ᵀ` (its tiles then run along K = C·k²; measured for the tiny and
//! adm-64 layer shapes). The forward is one `gemm` call into an uninitialised output.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::f32_slice;

struct Matmul;

impl CustomOp2 for Matmul {
    fn name(&self) -> &'static str {
        "relay-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (k2, n) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("relay-matmul: [{m}, {k}] · [{k2}, {n}]");
        }
        let a = f32_slice(s1, l1, self.name())?;
        let b = f32_slice(s2, l2, self.name())?;
        let mut dst: Vec<f32> = Vec::with_capacity(m * n);
        // SAFETY: `gemm` with `read_dst = false` writes every element of the m × n row-major
        // output (alpha is ignored), and reads a (m × k) and b (k × n) within their lengths.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0f32,
                1f32,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(candle_core::utils::get_num_threads()),
            );
            dst.set_len(m * n);
        }
        Ok((CpuStorage::F32(dst), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let da = b.matmul(&grad.t()?)?.t()?;
        let db = a.t()?.matmul(grad)?;
        Ok((Some(da), Some(db)))
    }
}

/// `a` [M, K] · `b` [K, N], float32 on the CPU, differentiable in both.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, Matmul)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::rel_err;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_matmul_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::randn(0f32, 1., (7, 33), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1., (33, 50), &dev)?)?;
        let g = Tensor::randn(0f32, 1., (7, 50), &dev)?;
        let ours = matmul(a.as_tensor(), b.as_tensor())?;
        let theirs = a.as_tensor().matmul(b.as_tensor())?;
        assert!(rel_err(&ours, &theirs)? <= 1e-6);
        let g1 = (ours * &g)?.sum_all()?.backward()?;
        let g2 = (theirs * &g)?.sum_all()?.backward()?;
        for v in [&a, &b] {
            let e = rel_err(g1.get(v).unwrap(), g2.get(v).unwrap())?;
            assert!(e <= 1e-5, "gradient relative error {e}");
        }
        Ok(())
    }
}
