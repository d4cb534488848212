//! NumPy's `.npy` arrays and `.npz` archives (a zip of `.npy` members, what `np.savez`
//! writes), as far as the evaluators' files need them: little-endian `u1`, `f4`, `f8` and
//! `i8` arrays in C order. Reading streams a member (an ADM reference batch's `arr_0` is
//! ~2 GB of images); writing goes through a temporary file renamed into place.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{DataError, Result};

/// The header of one array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// NumPy's type string, e.g. `|u1`, `<f8`.
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
}

impl NpyHeader {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `.npy` header for a C-ordered array (format 1.0, padded to 64 bytes).
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let total = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Read a `.npy` header from `r` (versions 1–3), leaving `r` at the first data byte.
pub fn read_header(r: &mut impl Read, what: &str) -> Result<NpyHeader> {
    let bad = |why: &str| DataError::Invalid(format!("{what} is not a NumPy array: {why}"));
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre).map_err(|_| bad("too short"))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(bad("no \\x93NUMPY magic"));
    }
    let len = if pre[6] == 1 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b).map_err(|_| bad("truncated header"))?;
        u16::from_le_bytes(b) as usize
    } else {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).map_err(|_| bad("truncated header"))?;
        u32::from_le_bytes(b) as usize
    };
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)
        .map_err(|_| bad("truncated header"))?;
    let text = String::from_utf8_lossy(&text);
    let field = |key: &str| -> Option<&str> {
        let at = text.find(&format!("'{key}'"))? + key.len() + 2;
        Some(text[at..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| bad("no `descr`"))?
        .to_string();
    let fortran_order = field("fortran_order")
        .map(|s| s.starts_with("True"))
        .ok_or_else(|| bad("no `fortran_order`"))?;
    let dims = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no `shape`"))?;
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<usize>()
                .map_err(|_| bad("a shape that is not a list of sizes"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(NpyHeader {
        descr,
        fortran_order,
        shape,
    })
}

/// An `.npz` archive open for reading.
pub struct Npz {
    path: PathBuf,
    zip: zip::ZipArchive<BufReader<File>>,
}

impl Npz {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(DataError::io("open", path))?;
        let zip = zip::ZipArchive::new(BufReader::with_capacity(1 << 20, file)).map_err(|e| {
            DataError::Invalid(format!(
                "{} is not an .npz (zip) archive: {e}",
                path.display()
            ))
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            zip,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The arrays' names (`mu`, `arr_0`, ...).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .zip
            .file_names()
            .filter_map(|n| n.ok())
            .filter_map(|n| n.strip_suffix(".npy").map(str::to_string))
            .collect();
        v.sort();
        v
    }

    pub fn has(&self, name: &str) -> bool {
        self.zip.index_for_name(&format!("{name}.npy")).is_some()
    }

    fn what(&self, name: &str) -> String {
        format!("`{name}` in {}", self.path.display())
    }

    /// Stream one array: its header and a reader positioned at its data.
    pub fn open_array(&mut self, name: &str) -> Result<(NpyHeader, impl Read + '_)> {
        let what = self.what(name);
        let mut member = self
            .zip
            .by_name(&format!("{name}.npy"))
            .map_err(|_| DataError::Invalid(format!("{what}: no such array")))?;
        let header = read_header(&mut member, &what)?;
        if header.fortran_order {
            return Err(DataError::Invalid(format!(
                "{what} is in Fortran order; save it in C order (np.ascontiguousarray)"
            )));
        }
        Ok((header, member))
    }

    /// A float array (`<f8` or `<f4`) as f64, with its shape.
    pub fn read_f64(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        let what = self.what(name);
        let (h, mut r) = self.open_array(name)?;
        let size = match h.descr.as_str() {
            "<f8" => 8,
            "<f4" => 4,
            other => {
                return Err(DataError::Invalid(format!(
                    "{what} has dtype `{other}`; expected float64 (`<f8`) or float32 (`<f4`)"
                )))
            }
        };
        let mut bytes = vec![0u8; h.len() * size];
        r.read_exact(&mut bytes)
            .map_err(|_| DataError::Invalid(format!("{what} is truncated")))?;
        let data = if size == 8 {
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        } else {
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                .collect()
        };
        Ok((h.shape, data))
    }
}

/// Writes an `.npz` (stored, not compressed, like `np.savez`) through `NAME.tmp`.
pub struct NpzWriter {
    path: PathBuf,
    tmp: PathBuf,
    zip: zip::ZipWriter<BufWriter<File>>,
}

impl NpzWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        let tmp = path.with_file_name(name);
        let file = File::create(&tmp).map_err(DataError::io("create", &tmp))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            zip: zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Start array `name` of type `descr` and `shape`; write its data into the returned writer.
    pub fn start(&mut self, name: &str, descr: &str, shape: &[usize]) -> Result<&mut impl Write> {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default())
            .large_file(true);
        let err = |e: zip::result::ZipError| {
            DataError::Invalid(format!("writing {}: {e}", self.tmp.display()))
        };
        self.zip
            .start_file(format!("{name}.npy"), opts)
            .map_err(err)?;
        self.zip
            .write_all(&npy_header(descr, shape))
            .map_err(DataError::io("write", &self.tmp))?;
        Ok(&mut self.zip)
    }

    /// A whole float64 array.
    pub fn f64(&mut self, name: &str, shape: &[usize], data: &[f64]) -> Result<()> {
        let tmp = self.tmp.clone();
        let w = self.start(name, "<f8", shape)?;
        for chunk in data.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_all(&bytes).map_err(DataError::io("write", &tmp))?;
        }
        Ok(())
    }

    /// Close the archive, fsync it and rename it into place.
    pub fn finish(self) -> Result<()> {
        let io = DataError::io("write", &self.tmp);
        let mut file = self
            .zip
            .finish()
            .map_err(|e| DataError::Invalid(format!("writing {}: {e}", self.tmp.display())))?;
        file.flush().map_err(io)?;
        let file = file
            .into_inner()
            .map_err(|e| DataError::io("write", &self.tmp)(e.into_error()))?;
        file.sync_all().map_err(DataError::io("sync", &self.tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(DataError::io("rename", &self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_reads_back() {
        let h = npy_header("|u1", &[5, 32, 32, 3]);
        assert_eq!(h.len() % 64, 0);
        let text = String::from_utf8_lossy(&h[10..]);
        assert!(
            text.starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (5, 32, 32, 3), }")
        );
        let back = read_header(&mut h.as_slice(), "x").unwrap();
        assert_eq!(back.shape, vec![5, 32, 32, 3]);
        assert_eq!(back.descr, "|u1");
        let h1 = read_header(&mut npy_header("<i8", &[7]).as_slice(), "x").unwrap();
        assert_eq!(h1.shape, vec![7]);
    }

    #[test]
    fn npz_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npz");
        let mut w = NpzWriter::create(&p).unwrap();
        w.f64("mu", &[3], &[1.0, -2.5, 3.25]).unwrap();
        w.f64("sigma", &[2, 2], &[1.0, 0.5, 0.5, 2.0]).unwrap();
        w.finish().unwrap();
        let mut z = Npz::open(&p).unwrap();
        assert_eq!(z.names(), vec!["mu", "sigma"]);
        assert!(!z.has("arr_0"));
        assert_eq!(z.read_f64("mu").unwrap(), (vec![3], vec![1.0, -2.5, 3.25]));
        assert_eq!(z.read_f64("sigma").unwrap().0, vec![2, 2]);
        let e = z.open_array("arr_0").err().unwrap().to_string();
        assert!(
            e.contains("`arr_0` in") && e.contains("no such array"),
            "{e}"
        );
    }
}
