//! The FID Inception's weights on disk: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
//! (a PyTorch state dict, zip or legacy format: [`super::pth`]) or a `.safetensors` with the
//! same tensor names. With [`super::pth`], the only files of the network that touch paths.
//!
//! A file of another network is refused before anything runs, with a message that names the
//! file and what is wrong with it (torchvision's ImageNet Inception-v3 has the same layer
//! names but 1000 classes and an auxiliary head; a U-Net has none of the names).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{bail, Context, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::{FidInception, LOGITS_DIMS, POOL_DIMS};

/// pytorch-fid's file name (its sha256 starts with the last 8 hex digits).
pub const PYTORCH_FID_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";

/// Tensors that the FID network has and others lack, checked first for a clear message.
const SIGNATURE: [(&str, &[usize]); 3] = [
    ("Conv2d_1a_3x3.conv.weight", &[32, 3, 3, 3]),
    ("Mixed_6d.branch7x7_2.conv.weight", &[160, 160, 1, 7]),
    ("Mixed_7c.branch_pool.conv.weight", &[192, 2048, 1, 1]),
];

/// Every tensor of a weights file, on the CPU, by its name (`.pth` zip or `.safetensors`).
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    let mut magic = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let magic = &magic[..n];
    if magic.starts_with(b"PK") {
        return super::pth::read_zip(path).with_context(|| {
            format!(
                "{} is a zip that relay cannot read as a PyTorch state dict; if it is one, \
                 convert it once: python -c \"import torch; from safetensors.torch import \
                 save_file; save_file(torch.load('{}'), 'fid.safetensors')\"",
                path.display(),
                path.display()
            )
        });
    }
    // The legacy format starts with a pickled magic number: PROTO 2, LONG1 of 10 bytes.
    if magic.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        return super::pth::read_legacy(path)
            .with_context(|| format!("{} is not a readable legacy PyTorch file", path.display()));
    }
    candle_core::safetensors::load(path, &Device::Cpu).with_context(|| {
        format!(
            "{} is neither a PyTorch .pth (zip) nor a .safetensors file",
            path.display()
        )
    })
}

/// Check that `tensors` are the FID Inception's (names and shapes of the signature layers,
/// the 1008-class classifier when present, no auxiliary head). `what` names the file.
pub fn check(tensors: &HashMap<String, Tensor>, what: &str) -> Result<()> {
    let not_fid = |why: String| -> Result<()> {
        let mut names: Vec<&str> = tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        let shown = names
            .iter()
            .take(3)
            .copied()
            .collect::<Vec<_>>()
            .join("`, `");
        bail!(
            "{what} is not the FID Inception-v3 (pytorch-fid's {PYTORCH_FID_FILE}): {why} \
             (it holds {} tensors, e.g. `{shown}`)",
            tensors.len()
        )
    };
    if tensors.keys().any(|k| k.starts_with("AuxLogits.")) {
        return not_fid(
            "it has an `AuxLogits` head, as torchvision's ImageNet Inception-v3 does".into(),
        );
    }
    for (name, shape) in SIGNATURE {
        match tensors.get(name) {
            None => return not_fid(format!("it has no tensor `{name}`")),
            Some(t) if t.dims() != shape => {
                return not_fid(format!("`{name}` is {:?}, expected {shape:?}", t.dims()))
            }
            _ => {}
        }
    }
    if let Some(fc) = tensors.get("fc.weight") {
        if fc.dims() != [LOGITS_DIMS, POOL_DIMS] {
            return not_fid(format!(
                "its classifier `fc.weight` is {:?}, the FID graph's has {LOGITS_DIMS} classes",
                fc.dims()
            ));
        }
    }
    Ok(())
}

/// The network from `tensors` on `device` (batch norms folded in). `with_classifier`: also
/// read `fc.weight` (required for the Inception Score).
pub fn build(
    tensors: HashMap<String, Tensor>,
    what: &str,
    with_classifier: bool,
    device: &Device,
) -> Result<FidInception> {
    build_as(tensors, what, with_classifier, DType::F32, device)
}

/// [`build`] computing in `dtype` (float64: the reference test).
pub fn build_as(
    tensors: HashMap<String, Tensor>,
    what: &str,
    with_classifier: bool,
    dtype: DType,
    device: &Device,
) -> Result<FidInception> {
    check(&tensors, what)?;
    if with_classifier && !tensors.contains_key("fc.weight") {
        bail!(
            "{what} has no classifier (`fc.weight`): the Inception Score needs it; \
             leave `is` out of the metrics or use pytorch-fid's full {PYTORCH_FID_FILE}"
        );
    }
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    FidInception::new(vb, with_classifier)
        .with_context(|| format!("{what} does not fit the FID Inception-v3"))
}

/// [`read`] + [`build`]; the classifier is read when the file has one.
pub fn load(path: &Path, device: &Device) -> Result<FidInception> {
    let tensors = read(path)?;
    let with_classifier = tensors.contains_key("fc.weight");
    build(
        tensors,
        &path.display().to_string(),
        with_classifier,
        device,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_networks_by_name() {
        let mut t = HashMap::new();
        t.insert(
            "enc.64x64_conv.weight".to_string(),
            Tensor::zeros((4, 3, 3, 3), DType::F32, &Device::Cpu).unwrap(),
        );
        let e = check(&t, "unet.safetensors").unwrap_err().to_string();
        assert!(
            e.contains("unet.safetensors is not the FID Inception-v3"),
            "{e}"
        );
        assert!(e.contains("no tensor `Conv2d_1a_3x3.conv.weight`"), "{e}");

        let mut t = super::super::synthetic::weights(&HashMap::new()).unwrap();
        check(&t, "x").unwrap();
        t.insert(
            "fc.weight".into(),
            Tensor::zeros((1000, 2048), DType::F32, &Device::Cpu).unwrap(),
        );
        let e = check(&t, "tv.pth").unwrap_err().to_string();
        assert!(e.contains("1008 classes"), "{e}");
    }
}
