//! Snapshots: `snapshots/snapshot-<step>/` folders holding everything a run needs to resume
//! exactly, plus the EMA weights in the published layout.
//!
//! | file | what |
//! |------|------|
//! | `model.safetensors` | EMA weights, the reference state_dict (loadable by `model::checkpoint`) |
//! | `config.json` | [`StageConfig`]: architecture, diffusion, sampler defaults, cost |
//! | `training-state.safetensors` | `net/…`, `ema/…`, `adam_m/…`, `adam_v/…` tensors |
//! | `training-state.json` | [`TrainState`]: step, images, Adam t, data position, log, tick sums |
//! | `samples.png` | the preview grid (when previews are on) |
//!
//! Writing is atomic: the files go to `.tmp-snapshot-<step>/`, are fsynced, and the folder
//! is renamed into place. A failure (a full disk) removes the temporary folder and leaves
//! every earlier snapshot valid. Only then are snapshots beyond the last `keep` deleted.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::{StageConfig, TrainConfig};
use super::data::DataPosition;
use super::log::{LogRow, TickAcc};
use super::optim::TensorMap;
use crate::model::{checkpoint, UnetConfig};

pub const STATE_TENSORS: &str = "training-state.safetensors";
pub const STATE_JSON: &str = "training-state.json";
pub const SAMPLES_PNG: &str = "samples.png";
const PREFIX: &str = "snapshot-";
const TMP_PREFIX: &str = ".tmp-snapshot-";

/// The scalar part of the training state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Format of this file (bump on change).
    pub format: u32,
    pub step: u64,
    pub nimg: u64,
    /// Adam's step counter (bias corrections).
    pub adam_t: u64,
    pub data: DataPosition,
    /// Every rank's data position when the run had several processes (rank order);
    /// empty for one process (then `data` is the position).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_ranks: Vec<DataPosition>,
    pub tick: TickAcc,
    pub log: Vec<LogRow>,
    /// Training seconds of every run so far.
    pub wall_seconds: f64,
    /// Images seen at the last snapshot.
    pub snapshot_nimg: u64,
    /// Every random draw of step s, sample k is keyed by mix(seed, s, k, purpose), so the
    /// step counter is the whole RNG state; recorded here for people reading the file.
    pub rng: String,
    pub config: TrainConfig,
}

/// The format of [`TrainState`].
pub const STATE_FORMAT: u32 = 1;

/// Everything tensor-valued.
pub struct StateTensors {
    pub net: TensorMap,
    pub ema: TensorMap,
    pub adam_m: TensorMap,
    pub adam_v: TensorMap,
}

fn io<T>(r: std::io::Result<T>, op: &str, path: &Path) -> anyhow::Result<T> {
    r.with_context(|| format!("cannot {op} `{}`", path.display()))
}

fn sync_file(path: &Path) -> anyhow::Result<()> {
    let f = io(File::open(path), "open", path)?;
    io(f.sync_all(), "sync", path)
}

/// Write the EMA weights as the reference state_dict (plus the constant resample buffers).
pub fn write_weights(ema: &TensorMap, model: &UnetConfig, path: &Path) -> anyhow::Result<()> {
    let device = ema
        .values()
        .next()
        .map_or(Device::Cpu, |t| t.device().clone());
    let mut tensors: HashMap<String, Tensor> =
        ema.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    tensors.extend(checkpoint::buffers(model, &device)?);
    checkpoint::check_keys(
        tensors.iter().map(|(k, v)| (k.as_str(), v.dims().to_vec())),
        model,
    )?;
    candle_core::safetensors::save(&tensors, path)
        .with_context(|| format!("cannot write `{}`", path.display()))
}

/// Write `bytes` to `path` atomically ([`crate::util::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    io(crate::util::write_atomic(path, bytes), "write", path)
}

/// The snapshot folders of `dir`, oldest first.
pub fn list(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in io(std::fs::read_dir(dir), "read", dir)? {
        let e = io(e, "read", dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(PREFIX) && e.path().join(STATE_JSON).is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Remove temporary folders an interrupted write left.
pub fn clean_tmp(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in io(std::fs::read_dir(dir), "read", dir)? {
        let e = io(e, "read", dir)?;
        if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            io(std::fs::remove_dir_all(e.path()), "remove", &e.path())?;
        }
    }
    Ok(())
}

/// What one snapshot writes.
pub struct Snapshot<'a> {
    pub state: &'a TrainState,
    pub tensors: StateTensors,
    pub stage_config: &'a StageConfig,
    pub samples: Option<&'a image::RgbImage>,
}

/// Write a snapshot atomically into `dir`, then keep only the newest `keep`. Returns its folder.
pub fn write(dir: &Path, snap: &Snapshot<'_>, keep: usize) -> anyhow::Result<PathBuf> {
    io(std::fs::create_dir_all(dir), "create", dir)?;
    let name = format!("{:010}", snap.state.step);
    let tmp = dir.join(format!("{TMP_PREFIX}{name}"));
    let fin = dir.join(format!("{PREFIX}{name}"));
    if tmp.exists() {
        io(std::fs::remove_dir_all(&tmp), "remove", &tmp)?;
    }
    io(std::fs::create_dir_all(&tmp), "create", &tmp)?;
    let result = write_files(&tmp, snap).and_then(|()| {
        if fin.exists() {
            // A snapshot of the same step from an interrupted run: the same content.
            io(std::fs::remove_dir_all(&fin), "replace", &fin)?;
        }
        io(std::fs::rename(&tmp, &fin), "rename into place", &fin)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        let last = list(dir).ok().and_then(|l| l.last().cloned());
        let hint = match last {
            Some(p) => format!("the last good snapshot `{}` is intact", p.display()),
            None => "there is no earlier snapshot".to_string(),
        };
        return Err(e.context(format!(
            "writing snapshot at step {} failed; {hint}",
            snap.state.step
        )));
    }
    let all = list(dir)?;
    for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        io(std::fs::remove_dir_all(old), "remove old snapshot", old)?;
    }
    Ok(fin)
}

fn write_files(tmp: &Path, snap: &Snapshot<'_>) -> anyhow::Result<()> {
    let model = &snap.stage_config.model;
    let weights = tmp.join(checkpoint::WEIGHTS_FILE);
    write_weights(&snap.tensors.ema, model, &weights)?;
    sync_file(&weights)?;

    let mut all: HashMap<String, Tensor> = HashMap::new();
    for (prefix, map) in [
        ("net", &snap.tensors.net),
        ("ema", &snap.tensors.ema),
        ("adam_m", &snap.tensors.adam_m),
        ("adam_v", &snap.tensors.adam_v),
    ] {
        for (k, v) in map {
            all.insert(format!("{prefix}/{k}"), v.clone());
        }
    }
    let state = tmp.join(STATE_TENSORS);
    candle_core::safetensors::save(&all, &state)
        .with_context(|| format!("cannot write `{}`", state.display()))?;
    sync_file(&state)?;

    if let Some(img) = snap.samples {
        let p = tmp.join(SAMPLES_PNG);
        img.save(&p)
            .with_context(|| format!("cannot write `{}`", p.display()))?;
        sync_file(&p)?;
    }
    let cfg = serde_json::to_vec_pretty(snap.stage_config)?;
    write_atomic(&tmp.join(checkpoint::CONFIG_FILE), &cfg)?;
    // The state file last: a folder with it is complete.
    let json = serde_json::to_vec_pretty(snap.state)?;
    write_atomic(&tmp.join(STATE_JSON), &json)
}

/// Read a snapshot's state back onto `device`.
pub fn read(dir: &Path, device: &Device) -> anyhow::Result<(TrainState, StateTensors)> {
    let json = dir.join(STATE_JSON);
    let text = io(std::fs::read_to_string(&json), "read", &json)?;
    let state: TrainState = serde_json::from_str(&text)
        .with_context(|| format!("`{}` is not a training state", json.display()))?;
    if state.format != STATE_FORMAT {
        bail!(
            "`{}` has format {}, this relay reads {STATE_FORMAT}",
            json.display(),
            state.format
        );
    }
    let path = dir.join(STATE_TENSORS);
    let all = candle_core::safetensors::load(&path, device)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let mut t = StateTensors {
        net: TensorMap::new(),
        ema: TensorMap::new(),
        adam_m: TensorMap::new(),
        adam_v: TensorMap::new(),
    };
    for (k, v) in all {
        let Some((prefix, name)) = k.split_once('/') else {
            bail!("`{}`: unexpected tensor `{k}`", path.display())
        };
        let map = match prefix {
            "net" => &mut t.net,
            "ema" => &mut t.ema,
            "adam_m" => &mut t.adam_m,
            "adam_v" => &mut t.adam_v,
            _ => bail!("`{}`: unexpected tensor `{k}`", path.display()),
        };
        map.insert(name.to_string(), v);
    }
    Ok((state, t))
}
