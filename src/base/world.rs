//! This process's place among the data-parallel processes of one stage. Only `relay exec`
//! (what a launcher — torchrun, srun — starts) reads it from the environment; `relay run`
//! always runs as one process unless it launches ranks itself.

/// This process's place among the data-parallel processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
}

impl Default for World {
    fn default() -> Self {
        Self {
            rank: 0,
            size: 1,
            local_rank: 0,
        }
    }
}

impl World {
    /// `RANK` / `WORLD_SIZE` / `LOCAL_RANK` (torchrun), else `SLURM_PROCID` / `SLURM_NTASKS` /
    /// `SLURM_LOCALID`, else one process.
    pub fn from_env() -> anyhow::Result<Self> {
        let get =
            |k: &str| -> anyhow::Result<Option<usize>> {
                match std::env::var(k) {
                    Ok(v) => v.trim().parse().map(Some).map_err(|_| {
                        anyhow::anyhow!("environment variable {k}={v:?} is not a number")
                    }),
                    Err(_) => Ok(None),
                }
            };
        let pick = |a: &str, b: &str| -> anyhow::Result<Option<usize>> { Ok(get(a)?.or(get(b)?)) };
        let w = Self {
            rank: pick("RANK", "SLURM_PROCID")?.unwrap_or(0),
            size: pick("WORLD_SIZE", "SLURM_NTASKS")?.unwrap_or(1).max(1),
            local_rank: pick("LOCAL_RANK", "SLURM_LOCALID")?.unwrap_or(0),
        };
        if w.rank >= w.size {
            anyhow::bail!("rank {} is not below the world size {}", w.rank, w.size);
        }
        Ok(w)
    }
}

/// Where rank 0 of a launch listens: `MASTER_ADDR` (default 127.0.0.1) and `MASTER_PORT`
/// (default 29500) plus `offset` — torchrun's agent keeps `MASTER_PORT` itself; relay uses
/// `+ 1` for the NCCL id and `+ 2` for the launch handshake.
pub fn master_from_env(offset: u16) -> anyhow::Result<(String, u16)> {
    use anyhow::Context;
    let addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    let port: u16 = match std::env::var("MASTER_PORT") {
        Ok(p) => p
            .trim()
            .parse()
            .with_context(|| format!("MASTER_PORT={p:?} is not a port number"))?,
        Err(_) => 29500,
    };
    let port = port.checked_add(offset).with_context(|| {
        format!(
            "MASTER_PORT is above {}; relay listens on MASTER_PORT + {offset}: pick a lower port",
            u16::MAX - offset
        )
    })?;
    Ok((addr, port))
}
