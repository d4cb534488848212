//! The one place where a candle [`Device`](candle_core::Device) is chosen (`--device`).

use std::fmt;
use std::str::FromStr;

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA device 0 when relay was built with `--features cuda` and a GPU is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`: use cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The candle device. `Auto` falls back to the CPU when CUDA is not available.
    /// `RELAY_TF32=1` lets float32 matrix products on CUDA (and so the convolutions, which
    /// are im2col + GEMM) use TF32 tensor cores, as PyTorch's convolutions do by default
    /// (`torch.backends.cudnn.allow_tf32`); relative error about 1e-3 instead of 1e-6.
    pub fn device(&self) -> candle_core::Result<candle_core::Device> {
        if std::env::var("RELAY_TF32").is_ok_and(|v| v == "1") {
            candle_core::cuda::set_gemm_reduced_precision_f32(true);
        }
        match self {
            Self::Cpu => Ok(candle_core::Device::Cpu),
            Self::Cuda(n) => candle_core::Device::new_cuda(*n),
            Self::Auto => {
                if candle_core::utils::cuda_is_available() {
                    candle_core::Device::new_cuda(0).or(Ok(candle_core::Device::Cpu))
                } else {
                    Ok(candle_core::Device::Cpu)
                }
            }
        }
    }

    /// Whether this resolves to an accelerator (stages that want one then hold it).
    pub fn is_accelerator(&self) -> bool {
        match self {
            Self::Cpu => false,
            Self::Cuda(_) => true,
            Self::Auto => candle_core::utils::cuda_is_available(),
        }
    }

    /// A short name for records and manifests (`cpu`, `cuda:0`).
    pub fn describe(&self) -> String {
        match self {
            Self::Auto if self.is_accelerator() => "cuda:0".into(),
            Self::Auto => "cpu".into(),
            other => other.to_string(),
        }
    }
}
