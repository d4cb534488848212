//! Byte-reproducible WebDataset tar shards, and an index of a shard's members.
//!
//! # Writing ([`ShardWriter`])
//! Plain POSIX ustar, the format Python's `tarfile` (and so the `webdataset` library)
//! and the `webdataset` crate read: every member is a regular file with mode 0644,
//! uid/gid 0, empty owner names and mtime 0, so the same samples give the same bytes.
//! The shard is written to a temporary name of the writer's own (`.NAME.tmp.PID.RANDOM`) and
//! renamed to `NAME` by [`ShardWriter::finish`]
//! after an fsync; an interrupted shard never appears under its final name.
//!
//! Keys must not contain a dot: WebDataset splits a member name at the first dot of its
//! file name (`KEY.256.png` → key `KEY`, field `256.png`), so a dotted key would break
//! one sample into several. [`check_key`] enforces it.
//!
//! # Reading offsets ([`index_members`])
//! `source/webdataset` needs random access to shuffle, so it records where each member's
//! bytes are. The scanner understands ustar, GNU long names (`L`) and pax `path` records.
//! Why a second reader beside the `webdataset` crate's (`data/wds.rs`, which the training
//! data loader streams through): that crate yields members in order from a stream and
//! exposes no offsets, so it cannot seek to one member; here only headers are read and the
//! crate's own `base_plus_ext` still splits the names (`source/list.rs`).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{DataError, Result};

const BLOCK: usize = 512;

/// The bytes a member of `len` bytes takes in a tar (header + padded data).
pub fn member_size(len: usize) -> u64 {
    (BLOCK + len.div_ceil(BLOCK) * BLOCK) as u64
}

/// Refuse keys that would break WebDataset sample grouping or the ustar name field.
pub fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.contains('.')
        || key.contains('/')
        || key.starts_with("__")
        || key.len() > 80;
    if bad {
        return Err(DataError::Invalid(format!(
            "sample key `{key}` is not usable in a WebDataset shard: keys must be 1-80 \
             characters without `.` or `/` and must not start with `__`"
        )));
    }
    Ok(())
}

fn octal(field: &mut [u8], value: u64) {
    // `len - 1` octal digits, zero padded, then NUL.
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    assert!(
        s.len() == digits,
        "{value} does not fit a {digits}-digit tar field"
    );
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

fn header(name: &str, size: u64) -> Result<[u8; BLOCK]> {
    if name.len() > 100 {
        return Err(DataError::Invalid(format!(
            "tar member name `{name}` is longer than 100 bytes"
        )));
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// Writes one shard through a temporary file of its own ([`crate::util::temp_path`]); see
/// the module doc.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    bytes: u64,
    samples: u64,
}

impl ShardWriter {
    pub fn create(path: &Path) -> Result<Self> {
        // A name of this writer's own: two processes writing the same shard (a requeued
        // task beside its ghost) never write into one file.
        let tmp = crate::util::temp_path(path);
        let file = File::create(&tmp).map_err(DataError::io("create shard", &tmp))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            bytes: 0,
            samples: 0,
        })
    }

    /// Append one sample: `fields` are `(extension, bytes)`, written as `KEY.EXT`.
    pub fn write_sample(&mut self, key: &str, fields: &[(&str, &[u8])]) -> Result<()> {
        check_key(key)?;
        for (ext, data) in fields {
            let name = format!("{key}.{ext}");
            let h = header(&name, data.len() as u64)?;
            let pad = data.len().div_ceil(BLOCK) * BLOCK - data.len();
            let out = self.out.as_mut().expect("open until finish");
            out.write_all(&h)
                .and_then(|_| out.write_all(data))
                .and_then(|_| out.write_all(&[0u8; BLOCK][..pad]))
                .map_err(|source| DataError::Io {
                    op: "write shard",
                    path: self.tmp.clone(),
                    source,
                })?;
            self.bytes += member_size(data.len());
        }
        self.samples += 1;
        Ok(())
    }

    /// Bytes written so far (without the end-of-archive blocks).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// End the archive, fsync, rename into place. Returns the final size.
    pub fn finish(mut self) -> Result<u64> {
        let mut out = self.out.take().expect("open until finish");
        let io = || DataError::io("finish shard", &self.tmp);
        out.write_all(&[0u8; 2 * BLOCK]).map_err(io())?;
        let file = out.into_inner().map_err(|e| io()(e.into_error()))?;
        file.sync_all().map_err(io())?;
        drop(file);
        crate::base::crash::point("shard:before-rename");
        std::fs::rename(&self.tmp, &self.path)
            .map_err(DataError::io("rename shard into place", &self.path))?;
        crate::base::crash::point("shard:after-rename");
        Ok(self.bytes + 2 * BLOCK as u64)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// One regular file inside a tar: its name and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256 (sizes ≥ 8 GiB)
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// List the regular files of an uncompressed tar with their data offsets.
pub fn index_members(path: &Path) -> Result<Vec<Member>> {
    let what = path.display().to_string();
    let bad = |m: String| DataError::Invalid(format!("tar shard `{what}`: {m}"));
    let name = path.to_string_lossy();
    if name.ends_with(".gz") || name.ends_with(".tgz") || name.ends_with(".zst") {
        return Err(bad(
            "compressed shards cannot be indexed for random access; decompress them \
             (e.g. `gunzip`) and point `path` at the .tar files"
                .into(),
        ));
    }
    let file = File::open(path).map_err(DataError::io("open", path))?;
    let mut r = BufReader::with_capacity(1 << 16, file);
    let io = DataError::io("read", path);
    let mut members = Vec::new();
    let mut pos: u64 = 0;
    let mut long_name: Option<String> = None;
    let mut h = [0u8; BLOCK];
    loop {
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io(e)),
        }
        pos += BLOCK as u64;
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let mut check = h;
        check[148..156].fill(b' ');
        let sum: u64 = check.iter().map(|&b| b as u64).sum();
        if parse_octal(&h[148..156]) != Some(sum) {
            return Err(bad(format!(
                "not a tar archive, or damaged (bad header checksum at byte {})",
                pos - 512
            )));
        }
        let size = parse_octal(&h[124..136])
            .ok_or_else(|| bad(format!("bad size field at byte {}", pos - 512)))?;
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let kind = h[156];
        let mut data_name = || {
            long_name.take().unwrap_or_else(|| {
                let prefix = cstr(&h[345..500]);
                let name = cstr(&h[..100]);
                if &h[257..262] == b"ustar" && !prefix.is_empty() {
                    format!("{prefix}/{name}")
                } else {
                    name
                }
            })
        };
        match kind {
            b'L' | b'x' => {
                let mut buf = vec![0u8; padded as usize];
                r.read_exact(&mut buf)
                    .map_err(DataError::io("read", path))?;
                pos += padded;
                let buf = &buf[..size as usize];
                long_name = if kind == b'L' {
                    Some(cstr(buf))
                } else {
                    pax_path(buf)
                };
                continue;
            }
            b'0' | 0 => members.push(Member {
                name: data_name(),
                offset: pos,
                size,
            }),
            _ => {
                let _ = data_name();
            }
        }
        r.seek(SeekFrom::Current(padded as i64))
            .map_err(DataError::io("seek", path))?;
        pos += padded;
    }
    Ok(members)
}

/// The `path` record of a pax extended header.
fn pax_path(buf: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(buf);
    let mut rest: &str = &text;
    while let Some((len, _)) = rest.split_once(' ') {
        let n: usize = len.parse().ok()?;
        let record = rest.get(..n)?;
        let (_, kv) = record.split_once(' ')?;
        if let Some(p) = kv.strip_prefix("path=") {
            return Some(p.trim_end_matches('\n').to_string());
        }
        rest = &rest[n..];
    }
    None
}

/// Read `size` bytes at `offset` of `path` (one member found by [`index_members`]).
pub fn read_member(file: &mut File, path: &Path, offset: u64, size: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(DataError::io("read member of", path))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Temporary files of `name` in `dir`.
    fn temp_files(dir: &Path, name: &str) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                let f = e.file_name().to_string_lossy().into_owned();
                f.starts_with(&format!(".{name}.tmp."))
            })
            .count()
    }

    #[test]
    fn writes_reproducible_readable_tars() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let path = dir.path().join(name);
            let mut w = ShardWriter::create(&path).unwrap();
            w.write_sample("00000001", &[("png", b"abc"), ("cls", b"3")])
                .unwrap();
            w.write_sample("00000002", &[("256.png", &[7u8; 600][..])])
                .unwrap();
            assert_eq!(w.bytes(), 2 * 1024 + 512 + 1024);
            // Written under a temporary name of its own, not the final one.
            assert_eq!(temp_files(dir.path(), name), 1);
            assert!(!dir.path().join(name).exists());
            w.finish().unwrap();
            assert_eq!(temp_files(dir.path(), name), 0);
            std::fs::read(path).unwrap()
        };
        let a = write("a.tar");
        assert_eq!(a, write("b.tar"));
        assert_eq!(a.len(), 2 * 1024 + 512 + 1024 + 1024);

        let members = index_members(&dir.path().join("a.tar")).unwrap();
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["00000001.png", "00000001.cls", "00000002.256.png"]);
        let mut f = File::open(dir.path().join("a.tar")).unwrap();
        let m = &members[2];
        let data = read_member(&mut f, Path::new("a.tar"), m.offset, m.size).unwrap();
        assert_eq!(data, vec![7u8; 600]);
    }

    #[test]
    fn dotted_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::create(&dir.path().join("x.tar")).unwrap();
        let e = w.write_sample("img.001", &[("png", b"")]).unwrap_err();
        assert!(e.to_string().contains("without `.`"), "{e}");
        drop(w);
        assert_eq!(temp_files(dir.path(), "x.tar"), 0);
        assert!(!dir.path().join("x.tar").exists());
    }

    #[test]
    fn pax_path_record() {
        let rec = b"27 path=some/long/name.png\n";
        assert_eq!(pax_path(rec).as_deref(), Some("some/long/name.png"));
    }
}
