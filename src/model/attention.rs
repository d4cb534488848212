//! Self-attention of EDM's `UNetBlock` (`norm2`, `qkv`, `proj`, `AttentionOp`).
//!
//! The layout is the reference's, and getting it wrong moves F by 7–60 % (golden README,
//! "Attention"):
//! * `qkv` is a 1×1 conv C → 3C whose channels are *interleaved*: q_c, k_c, v_c are qkv
//!   channels 3c, 3c+1, 3c+2 — i.e. the output reshaped to [B·heads, C/heads, 3, H·W];
//! * heads are contiguous: head n owns channels [64n, 64n + 64);
//! * logits are divided by √(C/heads) (= 8), and the logits and softmax are computed in
//!   float32 whatever the input dtype.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Module, VarBuilder};

use super::layers::{conv2d, group_norm, Conv};
use super::ops::{self, group_norm::GroupNorm};

/// softmax(qᵀk / √d) v for q, k, v of shape [N, d, L]; returns [N, d, L].
///
/// On the CPU the operands go to the matrix products as strided views (candle's gemm takes
/// any strides) and the softmax is one fused kernel ([`ops::softmax`]); the L×L weights are
/// never copied or transposed in memory. On CUDA with the `softmax` lever of
/// `RELAY_CUDA_OPS`, qᵀ and the weights' transpose go to cuBLAS as transposed views (its
/// "T" operands) and the softmax writes the weights in the network's type; otherwise every
/// operand is made contiguous.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let d = q.dim(1)?;
    let dtype = q.dtype();
    let strided = ops::use_custom(q, ops::Kernel::Attention);
    let transposed = strided || ops::cuda::use_cuda(q, ops::cuda::Lever::Softmax);
    let operand = |t: Tensor| if strided { Ok(t) } else { t.contiguous() };
    let q = q.to_dtype(DType::F32)?;
    // [N, Lq, d]: a transposed view needs q itself contiguous on CUDA (a slice of qkv is not).
    let q = if transposed && !strided {
        q.contiguous()?.transpose(1, 2)?
    } else {
        operand(q.transpose(1, 2)?)?
    };
    let k = operand((k.to_dtype(DType::F32)? / (d as f64).sqrt())?)?; // [N, d, Lk]
    let logits = q.matmul(&k)?; // [N, Lq, Lk]
    let w = ops::softmax::softmax_last_dim(&logits, dtype)?;
    // a[c, q] = Σ_k v[c, k] w[q, k]
    let wt = w.transpose(1, 2)?;
    let wt = if transposed { wt } else { wt.contiguous()? };
    operand(v.clone())?.matmul(&wt)
}

/// The attention half of a block: `x + proj(attention(qkv(norm2(x))))`.
#[derive(Debug, Clone)]
pub struct Attention {
    norm2: GroupNorm,
    qkv: Conv,
    proj: Conv,
    num_heads: usize,
}

impl Attention {
    /// `vb` is the *block's* prefix: the layers are `{block}.norm2`, `.qkv`, `.proj`.
    pub fn new(vb: &VarBuilder, channels: usize, num_heads: usize) -> Result<Self> {
        Ok(Self {
            norm2: group_norm(channels, vb.pp("norm2"))?,
            qkv: conv2d(channels, 3 * channels, 1, false, vb.pp("qkv"))?,
            proj: conv2d(channels, channels, 1, true, vb.pp("proj"))?,
            num_heads,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = b * self.num_heads;
        let qkv = self.qkv.forward(&self.norm2.forward(x)?)?.reshape((
            n,
            c / self.num_heads,
            3,
            h * w,
        ))?;
        let part = |i| qkv.narrow(2, i, 1)?.squeeze(2);
        let a = attention(&part(0)?, &part(1)?, &part(2)?)?;
        self.proj.forward(&a.reshape((b, c, h, w))?)? + x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One query, two keys, d = 1: logits [q·k0, q·k1] = [0, 2] (no scaling at d = 1), so
    /// w = [1, e²]/(1 + e²) and a = w·v.
    #[test]
    fn attention_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::new(&[[[1f32]]], &dev)?; // N=1, d=1, Lq=1
        let k = Tensor::new(&[[[0f32, 2.]]], &dev)?; // Lk=2
        let v = Tensor::new(&[[[10f32, 20.]]], &dev)?;
        let a = attention(&q, &k, &v)?.flatten_all()?.to_vec1::<f32>()?;
        let e2 = 2f32.exp();
        let expected = (10. + 20. * e2) / (1. + e2);
        assert!((a[0] - expected).abs() < 1e-5, "{a:?} vs {expected}");
        Ok(())
    }
}
