//! GroupNorm → per-(sample, channel) affine → optional SiLU on CUDA (`kernels/group_norm.cu`),
//! the twin of [`crate::model::ops::group_norm`]'s CPU kernel: the same op forward (its
//! `cuda_fwd` calls [`forward`]), and a backward of two kernels ([`backward`]).
//!
//! What the graph keeps: the op's input x (float32 or bfloat16) and the tiny [2, B, C]
//! coefficients; candle-nn's composite kept 11–14 full-size tensors per GroupNorm, several
//! of them float32 upcasts (CANDLE_GPU.md). The backward recomputes the statistics and
//! z = x̂·a + d from x:
//!
//! 1. `gn_bwd_sums`, one block per (sample, group): `side` = [da | dd | a | d | mean, rstd,
//!    m1, m2] in float32 (4·B·C + 4·B·G values);
//! 2. `gn_bwd_dx`, element-wise: dx = rstd·(dz·a − m1 − x̂·m2), in x's type.
//!
//! d(ad) is `side`'s first 2·B·C values, in the [2, B, C] layout of `ad`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use super::block_threads;
use super::launch::{cuda_only, int, output, suffix, view, Kernel, GROUP_NORM};

const WHAT: &str = "CUDA group norm";

/// The sizes every kernel takes: B·C, B·G, C/G, H·W (as the kernels' `int`s).
#[derive(Debug, Clone, Copy)]
struct Dims {
    bc: i32,
    bgs: i32,
    cg: i32,
    hw: i32,
    /// H·W as a count, for launch shapes.
    hw_n: usize,
    elems: usize,
}

impl Dims {
    fn of(l: &Layout, groups: usize) -> Result<Self> {
        let (b, c, h, w) = l.shape().dims4()?;
        if groups == 0 || !c.is_multiple_of(groups) {
            candle_core::bail!("{WHAT}: {groups} groups do not divide {c} channels");
        }
        let hw = h * w;
        int((c / groups) * hw, WHAT)?; // a group's element count is the kernels' `int`
        Ok(Self {
            bc: int(b * c, WHAT)?,
            bgs: int(b * groups, WHAT)?,
            cg: int(c / groups, WHAT)?,
            hw: int(hw, WHAT)?,
            hw_n: hw,
            elems: b * c * hw,
        })
    }

    /// One block per (sample, group), a block of up to 512 threads over a channel plane.
    fn per_group(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.bgs as u32, 1, 1),
            block_dim: (block_threads(self.hw_n, 512), 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Blocks over the B·C planes × slices of a plane (element-wise kernels).
    fn per_plane(&self) -> LaunchConfig {
        let threads = block_threads(self.hw_n, 256);
        let slices = self.hw_n.div_ceil(threads as usize).clamp(1, 65_535) as u32;
        LaunchConfig {
            grid_dim: (self.bc as u32, slices, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// The forward kernel: `x` [B, C, H, W], `ad` [2, B, C] float32 → y like x.
pub fn forward(
    (groups, eps, silu): (usize, f32, bool),
    xs: &CudaStorage,
    xl: &Layout,
    ads: &CudaStorage,
    adl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    match xs.dtype() {
        DType::F32 => forward_t::<f32>((groups, eps, silu), xs, xl, ads, adl),
        DType::BF16 => forward_t::<bf16>((groups, eps, silu), xs, xl, ads, adl),
        other => candle_core::bail!("{WHAT}: float32 or bfloat16, got {other:?}"),
    }
}

fn forward_t<T: CudaDType + DeviceRepr>(
    (groups, eps, silu): (usize, f32, bool),
    xs: &CudaStorage,
    xl: &Layout,
    ads: &CudaStorage,
    adl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let d = Dims::of(xl, groups)?;
    let dev = xs.device();
    let x = view::<T>(xs, xl, WHAT)?;
    let ad = view::<f32>(ads, adl, WHAT)?;
    let mut y = output::<T>(dev, d.elems)?;
    if d.elems > 0 {
        let k = Kernel::new(
            dev,
            GROUP_NORM,
            &format!("gn_fwd_{}", suffix(xs.dtype(), WHAT)?),
        )?;
        let silu = i32::from(silu);
        let mut b = k.builder();
        b.arg(&x).arg(&ad).arg(&mut y);
        b.arg(&d.bc).arg(&d.cg).arg(&d.hw).arg(&eps).arg(&silu);
        // SAFETY: argument types and sizes as `gn_fwd` in kernels/group_norm.cu.
        unsafe { b.launch(d.per_group()) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        xl.shape().clone(),
    ))
}

/// The two backward kernels, one op: inputs (x, aux, dy), aux float32.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// aux = ad [2, B, C] → `side` (see the module doc).
    Sums,
    /// aux = `side` → dx like x.
    Dx,
}

#[derive(Debug, Clone, Copy)]
struct GnBwd {
    stage: Stage,
    groups: usize,
    eps: f32,
    silu: bool,
}

impl CustomOp3 for GnBwd {
    fn name(&self) -> &'static str {
        match self.stage {
            Stage::Sums => "relay-cuda-group-norm-bwd-sums",
            Stage::Dx => "relay-cuda-group-norm-bwd-dx",
        }
    }

    cuda_only!(3);

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        auxs: &CudaStorage,
        auxl: &Layout,
        dys: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let ops = [(xs, xl), (auxs, auxl), (dys, dyl)];
        match xs.dtype() {
            DType::F32 => self.run::<f32>(ops),
            DType::BF16 => self.run::<bf16>(ops),
            other => candle_core::bail!("{WHAT}: float32 or bfloat16, got {other:?}"),
        }
    }
}

impl GnBwd {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        [(xs, xl), (auxs, auxl), (dys, dyl)]: [(&CudaStorage, &Layout); 3],
    ) -> Result<(CudaStorage, Shape)> {
        let d = Dims::of(xl, self.groups)?;
        let dev = xs.device();
        let (x, dy) = (view::<T>(xs, xl, WHAT)?, view::<T>(dys, dyl, WHAT)?);
        let aux = view::<f32>(auxs, auxl, WHAT)?;
        let ty = suffix(xs.dtype(), WHAT)?;
        let kernel = |name: &str| Kernel::new(dev, GROUP_NORM, &format!("{name}_{ty}"));
        match self.stage {
            Stage::Sums => {
                let n = 4 * (d.bc + d.bgs) as usize;
                let mut side = output::<f32>(dev, n)?;
                let k = kernel("gn_bwd_sums")?;
                self.launch(&k, (&x, &aux, &dy), &mut side, &d, d.per_group())?;
                let side = CudaStorage::wrap_cuda_slice(side, dev.clone());
                Ok((side, Shape::from(n)))
            }
            Stage::Dx => {
                let mut dx = output::<T>(dev, d.elems)?;
                let k = kernel("gn_bwd_dx")?;
                self.launch(&k, (&x, &aux, &dy), &mut dx, &d, d.per_plane())?;
                Ok((
                    CudaStorage::wrap_cuda_slice(dx, dev.clone()),
                    xl.shape().clone(),
                ))
            }
        }
    }

    /// Either kernel: (x, aux, dy, out, B·C, B·G, C/G, H·W, eps, silu).
    fn launch<T, O>(
        &self,
        k: &Kernel,
        (x, aux, dy): (&CudaView<T>, &CudaView<f32>, &CudaView<T>),
        out: &mut CudaSlice<O>,
        d: &Dims,
        cfg: LaunchConfig,
    ) -> Result<()> {
        if d.elems == 0 {
            return Ok(());
        }
        let silu = i32::from(self.silu);
        let mut b = k.builder();
        b.arg(x).arg(aux).arg(dy).arg(out);
        b.arg(&d.bc).arg(&d.bgs).arg(&d.cg).arg(&d.hw);
        b.arg(&self.eps).arg(&silu);
        // SAFETY: argument types and sizes as both kernels take them (kernels/group_norm.cu).
        unsafe { b.launch(cfg) }.w().map(drop)
    }
}

/// The gradients (dx, d(ad)) of y = act(x̂·a + d) for the upstream gradient `grad`: `x`
/// [B, C, H, W] and `grad` contiguous, of one type; `ad` [2, B, C] float32.
pub fn backward(
    x: &Tensor,
    ad: &Tensor,
    grad: &Tensor,
    (groups, eps, silu): (usize, f32, bool),
) -> Result<(Tensor, Tensor)> {
    let grad = grad.to_dtype(x.dtype())?.contiguous()?;
    let op = |stage| GnBwd {
        stage,
        groups,
        eps,
        silu,
    };
    let side = x.apply_op3_no_bwd(ad, &grad, &op(Stage::Sums))?;
    let dx = x.apply_op3_no_bwd(&side, &grad, &op(Stage::Dx))?;
    let dad = side.narrow(0, 0, ad.elem_count())?.reshape(ad.shape())?;
    Ok((dx, dad))
}
