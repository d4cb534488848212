//! PyTorch `torch.save` state dicts, read without PyTorch: the pickled dict is run through
//! candle's pickle machine ([`candle_core::pickle::Stack`]), which also describes each tensor
//! (storage key, dtype, shape, offset); the storages' bytes are read here, for both formats:
//!
//! * zip (PyTorch ≥ 1.6): `ARCHIVE/data.pkl` and one member `ARCHIVE/data/KEY` per storage.
//!   Read with the `zip` crate (candle 0.11's own zip reader refuses PyTorch 2's archives:
//!   "Invalid Central Directory header");
//! * legacy (before 1.6, e.g. files from 2019): five pickles — magic number, protocol, system
//!   info, the dict, the sorted storage keys — then each storage as its element count (u64,
//!   little-endian) and its bytes. The magic number is skipped by hand (candle's LONG1
//!   decoder overflows on its 10 bytes).

use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{bail, Context, Device, Result, Tensor};

/// One pickle from `r`.
fn unpickle(r: &mut impl std::io::BufRead) -> Result<Object> {
    let mut s = Stack::empty();
    s.read_loop(r)?;
    s.finalize()
}

/// The tensors a pickled state dict describes; `dir` prefixes their storage paths.
fn infos(obj: Object, dir: &str) -> Result<Vec<TensorInfo>> {
    let Object::Dict(entries) = obj else {
        bail!("its object is not a state dict");
    };
    entries
        .into_iter()
        .filter_map(|(k, v)| v.into_tensor_info(k, Path::new(dir)).transpose())
        .collect()
}

/// A contiguous tensor from `r`, positioned at the start of its storage.
fn tensor(info: &TensorInfo, r: &mut impl Read) -> Result<Tensor> {
    if !info.layout.is_contiguous() {
        bail!("`{}` is not contiguous", info.name);
    }
    let skip = info.layout.start_offset() as u64;
    std::io::copy(&mut r.by_ref().take(skip), &mut std::io::sink())?;
    let shape = info.layout.shape().clone();
    let mut bytes = vec![0u8; shape.elem_count() * info.dtype.size_in_bytes()];
    r.read_exact(&mut bytes)?;
    Tensor::from_raw_buffer(&bytes, info.dtype, shape.dims(), &Device::Cpu)
}

/// The zip format.
pub fn read_zip(path: &Path) -> Result<HashMap<String, Tensor>> {
    let file = std::fs::File::open(path)?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(candle_core::Error::wrap)?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl"))
        .map(|n| n.to_string())
        .context("no data.pkl in the archive")?;
    let dir = format!("{}data", pkl.trim_end_matches("data.pkl"));
    let obj = unpickle(&mut BufReader::new(
        zip.by_name(&pkl).map_err(candle_core::Error::wrap)?,
    ))?;
    let mut out = HashMap::new();
    for info in infos(obj, &dir)? {
        let mut member = zip.by_name(&info.path).map_err(candle_core::Error::wrap)?;
        out.insert(info.name.clone(), tensor(&info, &mut member)?);
    }
    Ok(out)
}

/// The legacy format.
pub fn read_legacy(path: &Path) -> Result<HashMap<String, Tensor>> {
    let mut r = BufReader::new(std::fs::File::open(path)?);
    // PROTO 2, LONG1 10 bytes (the magic number), STOP.
    let mut magic = [0u8; 15];
    r.read_exact(&mut magic)?;
    if magic[..4] != [0x80, 0x02, 0x8a, 0x0a] || magic[14] != b'.' {
        bail!("no legacy PyTorch magic number");
    }
    unpickle(&mut r)?; // protocol version
    unpickle(&mut r)?; // system info
    let infos = infos(unpickle(&mut r)?, "")?;
    let keys: Vec<String> = match unpickle(&mut r)? {
        Object::List(v) | Object::Tuple(v) => {
            v.into_iter().filter_map(|k| k.unicode().ok()).collect()
        }
        _ => bail!("no list of storage keys after the state dict"),
    };
    let key_of = |i: &TensorInfo| i.path.trim_start_matches('/').to_string();
    // Where each storage's bytes start.
    let mut starts = HashMap::new();
    for key in keys {
        let mut n = [0u8; 8];
        r.read_exact(&mut n)?;
        let size = infos
            .iter()
            .find(|i| key_of(i) == key)
            .map_or(1, |i| i.dtype.size_in_bytes());
        starts.insert(key, r.stream_position()?);
        r.seek(SeekFrom::Current(
            (u64::from_le_bytes(n) as usize * size) as i64,
        ))?;
    }
    let mut out = HashMap::new();
    for info in infos {
        let key = key_of(&info);
        let start = *starts
            .get(&key)
            .with_context(|| format!("no storage `{key}` for `{}`", info.name))?;
        r.seek(SeekFrom::Start(start))?;
        out.insert(info.name.clone(), tensor(&info, &mut r)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OrderedDict(w=x[2:8].view(2, 3), v=x, d=arange(3, dtype=float64)) with x = arange(10.),
    /// saved by torch.save in each format (scripts/make_inception_vectors.py).
    fn check(t: &HashMap<String, Tensor>) {
        let w: Vec<Vec<f32>> = t["w"].to_vec2().unwrap();
        assert_eq!(w, vec![vec![2.0, 3.0, 4.0], vec![5.0, 6.0, 7.0]]);
        assert_eq!(t["v"].dims(), &[10]);
        assert_eq!(t["d"].to_vec1::<f64>().unwrap(), vec![0.0, 1.0, 2.0]);
    }

    #[test]
    fn reads_both_pytorch_formats() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/metrics");
        check(&read_legacy(&Path::new(dir).join("legacy.pth")).unwrap());
        check(&read_zip(&Path::new(dir).join("zip.pth")).unwrap());
    }
}
