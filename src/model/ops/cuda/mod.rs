//! The U-Net's hot spots on CUDA (issue 17): cuDNN convolutions, fused kernels, and the
//! allocator and synchronisation settings, each behind the run-time switch
//! `RELAY_CUDA_OPS`. **Off by default**: with the switch unset a CUDA build computes
//! exactly as before (candle's own ops), so nothing changes until a GPU run has measured a
//! lever (docs/gpu-notes.md says how). Everything here is compile-checked only until then.
//!
//! 1. [`Lever`]s and the switch: `RELAY_CUDA_OPS` = `all`, `none` (default), or a comma
//!    list of `conv`, `group_norm`, `softmax`, `adam`, `norm`, `pool`, `events`. Read once
//!    per process, so a benchmark compares levers across processes.
//! 2. Kernels (`kernels/*.cu`, PTX built by `build.rs` with nvcc, embedded in the binary):
//!    GroupNorm + scale-shift + SiLU ([`group_norm`]), softmax ([`softmax`]), the conv bias
//!    and the in-place Adam / EMA updates ([`elementwise`]). Each is the twin of a CPU
//!    kernel in `src/model/ops/` (same formula, float32 arithmetic) and is tested against
//!    it on random inputs (`tests`, run on a GPU only).
//! 3. cuDNN ([`cudnn`], cargo feature `cudnn`): the convolution and both of its gradients,
//!    descriptors, algorithm and workspace cached per shape.
//! 4. The runtime ([`runtime`]): the memory pool keeps freed memory, no per-allocation
//!    events, and the pool's peak for the benchmarks.
//!
//! The composite (candle) paths stay the reference: every caller asks [`use_cuda`] and
//! otherwise runs them, as the CPU kernels' callers ask `use_custom`.

#[cfg(feature = "cudnn")]
pub mod cudnn;
#[cfg(feature = "cuda")]
pub mod elementwise;
#[cfg(feature = "cuda")]
pub mod group_norm;
#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
pub mod runtime;
#[cfg(feature = "cuda")]
pub mod softmax;
#[cfg(all(test, feature = "cuda"))]
mod tests;

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

/// What `RELAY_CUDA_OPS` switches on, one lever of issue 17 each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lever {
    /// cuDNN for the convolution and its two gradients (needs the `cudnn` feature).
    Conv,
    /// The fused GroupNorm (+ scale-shift) (+ SiLU) kernels, forward and backward.
    GroupNorm,
    /// The fused softmax (bf16 weights kept for the backward) and the attention operands
    /// passed to cuBLAS as transposed views instead of copies.
    Softmax,
    /// Adam and the EMA updated in place, one kernel per pass.
    Adam,
    /// The global gradient norm summed on the device, one synchronisation per step.
    Norm,
    /// The stream-ordered memory pool keeps what is freed (release threshold u64::MAX).
    Pool,
    /// No cudarc events per allocation and launch (safe with one stream per device).
    Events,
}

const LEVERS: [(Lever, &str); 7] = [
    (Lever::Conv, "conv"),
    (Lever::GroupNorm, "group_norm"),
    (Lever::Softmax, "softmax"),
    (Lever::Adam, "adam"),
    (Lever::Norm, "norm"),
    (Lever::Pool, "pool"),
    (Lever::Events, "events"),
];

/// The levers named by a `RELAY_CUDA_OPS` value (`None`: unset), or an error naming an
/// unknown entry.
fn parse(value: Option<&str>) -> Result<[bool; 7], String> {
    let mut on = [false; 7];
    let Some(v) = value else { return Ok(on) };
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "all" => on = [true; 7],
            "none" => on = [false; 7],
            _ => match LEVERS.iter().find(|(_, name)| *name == part) {
                Some((lever, _)) => on[*lever as usize] = true,
                None => {
                    let names: Vec<&str> = LEVERS.iter().map(|(_, n)| *n).collect();
                    return Err(format!(
                        "RELAY_CUDA_OPS: unknown lever `{part}` (all, none, {})",
                        names.join(", ")
                    ));
                }
            },
        }
    }
    Ok(on)
}

/// Whether `lever` is on in this process. An unknown name in `RELAY_CUDA_OPS` is reported
/// once on stderr and switches every lever off (a typo must not half-enable a run).
pub fn enabled(lever: Lever) -> bool {
    static ON: OnceLock<[bool; 7]> = OnceLock::new();
    let on = ON.get_or_init(|| {
        let value = std::env::var("RELAY_CUDA_OPS").ok();
        let mut on = parse(value.as_deref()).unwrap_or_else(|e| {
            eprintln!("warning: {e}; every CUDA lever stays off");
            [false; 7]
        });
        if on[Lever::Conv as usize] && !cfg!(feature = "cudnn") {
            if value
                .as_deref()
                .is_some_and(|v| v.split(',').any(|p| p.trim() == "conv"))
            {
                eprintln!(
                    "warning: RELAY_CUDA_OPS=conv needs relay built with `--features cudnn`; \
                     convolutions stay candle's"
                );
            }
            on[Lever::Conv as usize] = false;
        }
        on
    });
    on[lever as usize]
}

/// Whether `x` goes through `lever`'s CUDA path: a CUDA tensor of a type the kernels take
/// (float32, bfloat16), with the lever switched on.
pub fn use_cuda(x: &Tensor, lever: Lever) -> bool {
    x.device().is_cuda() && matches!(x.dtype(), DType::F32 | DType::BF16) && enabled(lever)
}

/// Threads per block for a loop over `n` elements per block: `n` rounded up to a warp,
/// between one warp and `max`.
pub fn block_threads(n: usize, max: u32) -> u32 {
    let warps = n.div_ceil(32).clamp(1, (max / 32) as usize);
    (warps * 32) as u32
}

#[cfg(test)]
mod switch_tests {
    use super::*;

    #[test]
    fn parses_lever_lists() {
        assert_eq!(parse(None).unwrap(), [false; 7]);
        assert_eq!(parse(Some("all")).unwrap(), [true; 7]);
        assert_eq!(parse(Some("none")).unwrap(), [false; 7]);
        let on = parse(Some("conv, softmax,pool")).unwrap();
        assert!(
            on[Lever::Conv as usize] && on[Lever::Softmax as usize] && on[Lever::Pool as usize]
        );
        assert!(!on[Lever::GroupNorm as usize] && !on[Lever::Events as usize]);
        // Later entries win: everything, then nothing, then one.
        let on = parse(Some("all,none,norm")).unwrap();
        assert!(on[Lever::Norm as usize] && !on[Lever::Conv as usize]);
        let err = parse(Some("conv,fast")).unwrap_err();
        assert!(err.contains("unknown lever `fast`"), "{err}");
    }

    #[test]
    fn block_sizes_cover_a_loop_in_whole_warps() {
        assert_eq!(block_threads(0, 512), 32);
        assert_eq!(block_threads(15, 512), 32);
        assert_eq!(block_threads(64, 512), 64);
        assert_eq!(block_threads(100, 512), 128);
        assert_eq!(block_threads(4096, 512), 512);
        assert_eq!(block_threads(1 << 20, 1024), 1024);
    }

    /// CPU tensors never take a CUDA path, whatever the switch says.
    #[test]
    fn cpu_tensors_stay_on_the_cpu_paths() -> candle_core::Result<()> {
        let x = Tensor::zeros(4, DType::F32, &candle_core::Device::Cpu)?;
        for (lever, _) in LEVERS {
            assert!(!use_cuda(&x, lever));
        }
        Ok(())
    }
}
