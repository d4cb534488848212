//! Nearest-neighbour upsampling: how a low-resolution image is handed to the next stage
//! (RDM `generate.py`) and how block-constant noise is spread over its blocks.

use candle_core::{bail, Result, Tensor};

/// The stage hand-off (`F.interpolate(images, scale)`, mode 'nearest'): every pixel of
/// `x: [..., h, w]` repeated `factor`×`factor`.
pub fn upsample_nearest(x: &Tensor, factor: usize) -> Result<Tensor> {
    if factor == 1 {
        return Ok(x.clone());
    }
    let dims = x.dims().to_vec();
    let r = dims.len();
    if r < 2 || factor == 0 {
        bail!("upsample_nearest: need [..., h, w] and factor ≥ 1, got {dims:?}, {factor}")
    }
    let (h, w) = (dims[r - 2], dims[r - 1]);
    let lead = &dims[..r - 2];
    let spread: Vec<usize> = [lead, &[h, 1, w, 1]].concat();
    let target: Vec<usize> = [lead, &[h, factor, w, factor]].concat();
    let out: Vec<usize> = [lead, &[h * factor, w * factor]].concat();
    x.reshape(spread)?
        .broadcast_as(target)?
        .contiguous()?
        .reshape(out)
}
