//! Weights on disk: a model folder holds `model.safetensors` (the `EDMPrecond` state_dict
//! under its PyTorch names) and `config.json` (a [`UnetConfig`]).
//!
//! `scripts/convert_checkpoint.py` writes the same layout from an official EDM/RDM `.pkl`
//! or `.pt`, so both load the same way. Every file is checked against
//! [`Structure::state_dict`]: a missing, extra or misshapen tensor is an error naming it.
//! The `*.resample_filter` buffers are part of that state_dict: they are written on save
//! and required (and checked to hold 0.25) on load, but the network never reads them.
//!
//! This is the only file of `model` that touches paths; the networks see a `VarBuilder`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::config::UnetConfig;
use super::precond::EdmPrecond;
use super::structure::{Structure, TensorSpec, RESAMPLE_FILTER_SHAPE, RESAMPLE_FILTER_VALUE};

/// File names inside a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";

/// The expected state_dict of `cfg` (parameters and buffers, reference order).
pub fn expected_tensors(cfg: &UnetConfig) -> Result<Vec<TensorSpec>> {
    Ok(Structure::new(cfg)?.state_dict(cfg))
}

/// Compare a set of (name, shape) against the expected state_dict. Lists every missing,
/// extra or misshapen key (up to a few of each) in one error.
pub fn check_keys<'a>(
    found: impl IntoIterator<Item = (&'a str, Vec<usize>)>,
    cfg: &UnetConfig,
) -> Result<()> {
    let expected: BTreeMap<String, Vec<usize>> = expected_tensors(cfg)?
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect();
    let found: BTreeMap<&str, Vec<usize>> = found.into_iter().collect();
    let missing: Vec<&str> = expected
        .keys()
        .filter(|k| !found.contains_key(k.as_str()))
        .map(String::as_str)
        .collect();
    let extra: Vec<&str> = found
        .keys()
        .filter(|k| !expected.contains_key(**k))
        .copied()
        .collect();
    let misshapen: Vec<String> = found
        .iter()
        .filter_map(|(k, s)| match expected.get(*k) {
            Some(e) if e != s => Some(format!("{k} {s:?} (expected {e:?})")),
            _ => None,
        })
        .collect();
    if missing.is_empty() && extra.is_empty() && misshapen.is_empty() {
        return Ok(());
    }
    let list = |v: Vec<String>| {
        let n = v.len();
        let mut s = v.into_iter().take(5).collect::<Vec<_>>().join(", ");
        if n > 5 {
            s.push_str(&format!(", … ({n} in all)"));
        }
        s
    };
    let mut msg = String::from("weights do not match the model config:");
    if !missing.is_empty() {
        msg += &format!(
            " missing {};",
            list(missing.iter().map(|s| s.to_string()).collect())
        );
    }
    if !extra.is_empty() {
        msg += &format!(
            " unexpected {};",
            list(extra.iter().map(|s| s.to_string()).collect())
        );
    }
    if !misshapen.is_empty() {
        msg += &format!(" wrong shape {};", list(misshapen));
    }
    bail!("{}", msg.trim_end_matches(';'))
}

/// The constant `resample_filter` buffers of `cfg`, as stored by the reference (float32).
pub fn buffers(cfg: &UnetConfig, device: &Device) -> Result<HashMap<String, Tensor>> {
    let filter = Tensor::full(RESAMPLE_FILTER_VALUE, &RESAMPLE_FILTER_SHAPE, device)?;
    Ok(expected_tensors(cfg)?
        .into_iter()
        .filter(|t| t.buffer)
        .map(|t| (t.name, filter.clone()))
        .collect())
}

/// Check that every buffer among `tensors` holds the constant filter.
pub fn check_buffers(tensors: &HashMap<String, Tensor>, cfg: &UnetConfig) -> Result<()> {
    for t in expected_tensors(cfg)?.into_iter().filter(|t| t.buffer) {
        let Some(v) = tensors.get(&t.name) else {
            bail!("weights: missing buffer {}", t.name)
        };
        let v = v.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if v.iter().any(|&x| x != RESAMPLE_FILTER_VALUE) {
            bail!(
                "weights: {} is {v:?}, not the [1,1] box filter (0.25)",
                t.name
            );
        }
    }
    Ok(())
}

/// Save the weights of a model built on `varmap` (root prefix, i.e. `EdmPrecond::new`
/// on `VarBuilder::from_varmap`) plus the resample buffers, as a reference state_dict.
pub fn save_varmap(varmap: &VarMap, cfg: &UnetConfig, path: impl AsRef<Path>) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = {
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    };
    let device = match tensors.values().next() {
        Some(t) => t.device().clone(),
        None => bail!("save_varmap: the VarMap is empty (build the model on it first)"),
    };
    tensors.extend(buffers(cfg, &device)?);
    check_keys(
        tensors.iter().map(|(k, v)| (k.as_str(), v.dims().to_vec())),
        cfg,
    )?;
    candle_core::safetensors::save(&tensors, path.as_ref())
}

/// Overwrite the variables of `varmap` (a model built on it) with a saved file, after
/// checking the file against `cfg`. Used to resume training.
pub fn load_varmap(varmap: &mut VarMap, cfg: &UnetConfig, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    check_file(path, cfg)?;
    varmap.load(path)
}

/// Check a safetensors file against `cfg` (keys, shapes and buffer values).
pub fn check_file(path: &Path, cfg: &UnetConfig) -> Result<()> {
    // SAFETY: the file is only read; the usual mmap caveat (do not modify it while open).
    let st = unsafe { MmapedSafetensors::new(path)? };
    let views = st.tensors();
    check_keys(
        views.iter().map(|(k, v)| (k.as_str(), v.shape().to_vec())),
        cfg,
    )
    .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    let mut bufs = HashMap::new();
    for t in expected_tensors(cfg)?.into_iter().filter(|t| t.buffer) {
        let v = st.load(&t.name, &Device::Cpu)?;
        bufs.insert(t.name, v);
    }
    check_buffers(&bufs, cfg)
}

/// A `VarBuilder` over a checked safetensors file (memory-mapped), converting to `dtype`.
pub fn load_weights(
    path: impl AsRef<Path>,
    cfg: &UnetConfig,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let path = path.as_ref();
    check_file(path, cfg)?;
    // SAFETY: as in `check_file`.
    let st = unsafe { MmapedSafetensors::new(path)? };
    Ok(VarBuilder::from_backend(
        Box::new(st),
        dtype,
        device.clone(),
    ))
}

/// Load a model folder (`config.json` + `model.safetensors`) for sampling.
pub fn load_model_dir(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<EdmPrecond> {
    let dir = dir.as_ref();
    let cfg = UnetConfig::load(dir.join(CONFIG_FILE))?;
    let vb = load_weights(dir.join(WEIGHTS_FILE), &cfg, dtype, device)?;
    EdmPrecond::new(vb, &cfg)
}

/// Write a model folder from a model built on `varmap`.
pub fn save_model_dir(dir: impl AsRef<Path>, varmap: &VarMap, cfg: &UnetConfig) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir)
        .map_err(|e| candle_core::Error::Msg(format!("creating {}: {e}", dir.display())))?;
    save_varmap(varmap, cfg, dir.join(WEIGHTS_FILE))?;
    cfg.save(dir.join(CONFIG_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny16() -> UnetConfig {
        UnetConfig::tiny().with_resolution(16).with_label_dim(3)
    }

    /// Save → load reproduces every tensor bit for bit, and the reloaded model computes
    /// exactly what the trained one does.
    #[test]
    fn save_load_round_trip_is_bit_identical() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = tiny16();
        let varmap = VarMap::new();
        let net = EdmPrecond::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), &cfg)?;
        // Fresh weights zero the output layers; randomise everything so F is not trivial.
        for var in varmap.all_vars() {
            var.set(&Tensor::randn(0f32, 0.2, var.shape(), &dev)?)?;
        }
        let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
        save_model_dir(dir.path(), &varmap, &cfg)?;

        let saved = candle_core::safetensors::load(dir.path().join(WEIGHTS_FILE), &dev)?;
        let data = varmap.data().lock().unwrap();
        for (k, v) in data.iter() {
            let a = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let b = saved[k].flatten_all()?.to_vec1::<f32>()?;
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{k}"
            );
        }
        drop(data);
        assert_eq!(saved.len(), expected_tensors(&cfg)?.len());

        let loaded = load_model_dir(dir.path(), DType::F32, &dev)?;
        let x = Tensor::randn(0f32, 1., (2, 3, 16, 16), &dev)?;
        let sigma = Tensor::new(&[0.5f32, 3.0], &dev)?;
        let labels = Tensor::new(&[[1f32, 0., 0.], [0., 0., 1.]], &dev)?;
        let a = net
            .forward(&x, &sigma, Some(&labels))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = loaded
            .forward(&x, &sigma, Some(&labels))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        Ok(())
    }

    #[test]
    fn loading_rejects_missing_and_extra_keys() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = tiny16();
        let varmap = VarMap::new();
        EdmPrecond::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), &cfg)?;
        let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
        let path = dir.path().join(WEIGHTS_FILE);
        save_varmap(&varmap, &cfg, &path)?;
        let mut tensors = candle_core::safetensors::load(&path, &dev)?;
        tensors.remove("model.enc.8x8_down.skip.resample_filter");
        tensors.insert("model.extra".into(), Tensor::zeros(1, DType::F32, &dev)?);
        candle_core::safetensors::save(&tensors, &path)?;
        let err = match load_weights(&path, &cfg, DType::F32, &dev) {
            Ok(_) => panic!("a file with a missing and an extra key loaded"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("missing model.enc.8x8_down.skip.resample_filter"),
            "{err}"
        );
        assert!(err.contains("unexpected model.extra"), "{err}");
        Ok(())
    }

    /// An official checkpoint with an augmentation input (`augment_dim = 9`, RDM's CelebA-HQ
    /// networks), converted by `scripts/convert_checkpoint.py` from the reference code's own
    /// `EDMPrecond` (`scripts/augment_checkpoint_vectors.py`, random weights incl.
    /// `map_augment`): D equals the reference's without an augmentation vector (sampling)
    /// and with one (training, `map_augment` before the mapping MLP), which differ by 17 %.
    #[test]
    fn converted_checkpoint_with_augment_dim_matches_the_reference() -> Result<()> {
        let dev = Device::Cpu;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/convert_augment");
        let net = load_model_dir(&dir, DType::F32, &dev)?;
        assert_eq!(net.config().augment_dim, 9);
        let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &dev)?;
        let rel = |a: &Tensor, e: &Tensor| -> Result<f64> {
            let d = (a - e)?.abs()?.max_all()?.to_scalar::<f32>()?;
            Ok(f64::from(d) / f64::from(e.abs()?.max_all()?.to_scalar::<f32>()?))
        };
        let d = net.forward(&r["x"], &r["sigma"], None)?;
        let err = rel(&d, &r["d_none"])?;
        assert!(
            err < 1e-5,
            "D without augmentation: relative error {err:.2e}"
        );
        let key = crate::model::dropout::DropoutKey(0); // dropout 0: no mask is drawn
        let d = net.forward_train(&r["x"], &r["sigma"], None, Some(&r["augment_labels"]), key)?;
        let err = rel(&d, &r["d_augment"])?;
        assert!(err < 1e-5, "D with augmentation: relative error {err:.2e}");
        Ok(())
    }
}
