//! The one place where a candle [`Device`](candle_core::Device) is chosen (`--device`).

use std::fmt;
use std::str::FromStr;

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
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

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
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

/// Why a device choice cannot be honoured (`--device`, `--devices`, `devices:`): bad input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeviceError(pub String);

impl DeviceSpec {
    /// What `Auto` means on this machine, said once: a `cuda` build with a usable GPU
    /// runs on `cuda:0`; a `cuda` build without one runs on the CPU and returns the
    /// warning to print (the record then says `cpu`, never `cuda:0`). `cuda:N` without
    /// that GPU is an error.
    pub fn resolve(self) -> Result<(DeviceSpec, Option<String>), DeviceError> {
        match self {
            Self::Cpu => Ok((Self::Cpu, None)),
            Self::Cuda(n) => {
                let count = cuda_count().map_err(|e| {
                    DeviceError(format!(
                        "--device cuda:{n}: {e}; use --device cpu (or auto) to run on the CPU"
                    ))
                })?;
                if n >= count {
                    return Err(DeviceError(format!(
                        "--device cuda:{n}: this machine has {count} CUDA device(s){}; use --device cpu, or cuda:0..{}",
                        visible_note(),
                        count.saturating_sub(1)
                    )));
                }
                Ok((self, None))
            }
            // A CPU build: the CPU, as expected.
            Self::Auto if !cfg!(feature = "cuda") => Ok((Self::Cpu, None)),
            Self::Auto => match cuda_count() {
                Ok(n) if n > 0 => Ok((Self::Cuda(0), None)),
                Ok(_) => Ok((
                    Self::Cpu,
                    Some(format!(
                        "relay was built with CUDA but sees no GPU{}: GPU stages run on the CPU \
                         (records say `cpu`); pass --device cpu to silence this",
                        visible_note()
                    )),
                )),
                Err(e) => Ok((
                    Self::Cpu,
                    Some(format!(
                        "relay was built with CUDA but CUDA does not start ({e}): GPU stages run \
                         on the CPU (records say `cpu`); pass --device cpu to silence this"
                    )),
                )),
            },
        }
    }
}

/// How many CUDA devices this process can use (`CUDA_VISIBLE_DEVICES` applies; 0 on a
/// build without CUDA). An error when the driver does not start.
pub fn cuda_count() -> Result<usize, String> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::result;
        result::init().map_err(|e| format!("the CUDA driver does not start: {e:?}"))?;
        let n = result::device::get_count()
            .map_err(|e| format!("the CUDA driver cannot count devices: {e:?}"))?;
        Ok(n.max(0) as usize)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err("relay was built without CUDA (build with `--features cuda`)".into())
    }
}

fn visible_note() -> String {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) => format!(" (CUDA_VISIBLE_DEVICES={v:?})"),
        Err(_) => String::new(),
    }
}

/// One device the executor hands out: where a stage (or one of its workers or ranks)
/// runs, and its name in records and manifests (`cuda:1`, `cpu#2`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceToken {
    pub spec: DeviceSpec,
    pub name: String,
}

impl DeviceToken {
    pub fn cuda(n: usize) -> Self {
        Self {
            spec: DeviceSpec::Cuda(n),
            name: format!("cuda:{n}"),
        }
    }
    pub fn cpu(k: usize) -> Self {
        Self {
            spec: DeviceSpec::Cpu,
            name: format!("cpu#{k}"),
        }
    }
}

/// Parse a device list: `0,1,3` or `cuda:0,cuda:1` (CUDA devices, checked against what
/// this machine has), `cpu*4` (four CPU workers) or `cpu`. `cuda_count` is
/// [`cuda_count`], passed in so that the parser is tested without a GPU.
pub fn parse_devices(
    s: &str,
    cuda_count: &dyn Fn() -> Result<usize, String>,
) -> Result<Vec<DeviceToken>, DeviceError> {
    let s = s.trim();
    let bad = |why: String| DeviceError(format!("devices `{s}`: {why}"));
    if let Some(n) = s.strip_prefix("cpu*") {
        let n: usize = n
            .trim()
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad("after `cpu*` give how many CPU workers, e.g. cpu*4".into()))?;
        return Ok((0..n).map(DeviceToken::cpu).collect());
    }
    if s == "cpu" {
        return Ok(vec![DeviceToken::cpu(0)]);
    }
    let mut ids = Vec::new();
    for part in s.split(',') {
        let p = part.trim();
        let id: usize = p.strip_prefix("cuda:").unwrap_or(p).parse().map_err(|_| {
            bad(format!(
                "`{p}` is not a device: give CUDA device numbers (0,1,2), cuda:N, or cpu*N"
            ))
        })?;
        if ids.contains(&id) {
            return Err(bad(format!("device {id} is listed twice")));
        }
        ids.push(id);
    }
    if ids.is_empty() {
        return Err(bad("no devices listed".into()));
    }
    let count =
        cuda_count().map_err(|e| bad(format!("{e}; use --devices cpu*N for CPU workers")))?;
    if let Some(&missing) = ids.iter().find(|&&i| i >= count) {
        return Err(bad(format!(
            "this machine has no CUDA device {missing}: it has {count}{} ({}); list only those, or use cpu*N",
            visible_note(),
            if count == 0 {
                "none".to_string()
            } else {
                format!("0..{}", count - 1)
            }
        )));
    }
    Ok(ids.into_iter().map(DeviceToken::cuda).collect())
}

/// The devices a run hands out: `--devices` (or the pipeline's `devices:`) if given;
/// else every CUDA device when GPU stages run on CUDA; else none (CPU stages share the
/// machine through job slots only, as before).
pub fn run_devices(
    list: Option<&str>,
    device: DeviceSpec,
) -> Result<Vec<DeviceToken>, DeviceError> {
    if let Some(l) = list {
        return parse_devices(l, &cuda_count);
    }
    match device {
        DeviceSpec::Cpu => Ok(vec![]),
        DeviceSpec::Cuda(n) => {
            device.resolve()?;
            Ok(vec![DeviceToken::cuda(n)])
        }
        DeviceSpec::Auto => match cuda_count() {
            Ok(n) if n > 0 => Ok((0..n).map(DeviceToken::cuda).collect()),
            _ => Ok(vec![]),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> Result<usize, String> {
        Ok(2)
    }
    fn no_cuda() -> Result<usize, String> {
        Err("relay was built without CUDA".into())
    }

    #[test]
    fn device_lists() {
        let names = |v: Vec<DeviceToken>| v.into_iter().map(|t| t.name).collect::<Vec<_>>();
        assert_eq!(
            names(parse_devices("cpu*3", &no_cuda).unwrap()),
            ["cpu#0", "cpu#1", "cpu#2"]
        );
        assert_eq!(
            names(parse_devices("0, cuda:1", &two).unwrap()),
            ["cuda:0", "cuda:1"]
        );
        let e = parse_devices("7", &two).unwrap_err().0;
        assert!(e.contains("no CUDA device 7") && e.contains("0..1"), "{e}");
        let e = parse_devices("0", &no_cuda).unwrap_err().0;
        assert!(e.contains("without CUDA") && e.contains("cpu*N"), "{e}");
        assert!(parse_devices("cpu*0", &two).is_err());
        assert!(parse_devices("0,0", &two).is_err());
        assert!(parse_devices("gpu", &two).is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_on_a_cpu_build_is_refused_and_auto_is_the_cpu() {
        let e = DeviceSpec::Cuda(0).resolve().unwrap_err().0;
        assert!(
            e.contains("without CUDA") && e.contains("--device cpu"),
            "{e}"
        );
        assert_eq!(DeviceSpec::Auto.resolve().unwrap(), (DeviceSpec::Cpu, None));
        assert!(run_devices(None, DeviceSpec::Auto).unwrap().is_empty());
    }
}
