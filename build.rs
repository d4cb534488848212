//! Compiles relay's own CUDA kernels (`kernels/*.cu`) to PTX when the `cuda` feature is on
//! (issue 17); the default CPU build runs nothing here and needs no CUDA toolkit.
//!
//! nvcc is `$NVCC`, else `$CUDA_HOME/bin/nvcc` (also `CUDA_PATH`, `CUDA_ROOT`), else `nvcc`
//! on the PATH: the PyPI toolkit of `scripts/cuda-check.sh` and `scripts/cuda-build.sh`
//! works, no GPU is needed. The PTX targets `compute_$CUDA_COMPUTE_CAP` (default 80, the
//! oldest architecture with bfloat16 conversions in hardware); the driver compiles it for
//! the GPU at first use, as it does candle's own kernels. `scripts/ptx-check.sh` runs
//! ptxas on the same sources with the same flags to report registers and spills.

use std::path::PathBuf;
use std::process::Command;

/// The kernel files, each embedded as `$OUT_DIR/<name>.ptx`.
const KERNELS: [&str; 3] = ["group_norm", "softmax", "elementwise"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "CUDA_COMPUTE_CAP",
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_ROOT",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap = cap.trim().trim_start_matches("sm_").replace('.', "");
    for name in KERNELS {
        let src = format!("kernels/{name}.cu");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args([
                "--ptx",
                "-O3",
                "-std=c++17",
                &format!("-arch=compute_{cap}"),
            ])
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run nvcc ({nvcc:?}) for {src}: {e}; set NVCC or CUDA_HOME")
            });
        assert!(status.success(), "nvcc failed on {src} ({status})");
    }
}

fn nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return p.into();
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(home) = std::env::var_os(var) {
            let p = PathBuf::from(home).join("bin/nvcc");
            if p.is_file() {
                return p;
            }
        }
    }
    "nvcc".into()
}
