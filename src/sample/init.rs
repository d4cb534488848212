//! Low-resolution images a sampling job starts from instead of noise (super-resolution with
//! the relay stages alone, RDM App. C.3: 64² images plus Gaussian noise of scale 0.1,
//! sampled to 256²). Three sources:
//! * a data stage's shards (`shard` / `downsample` output): every sample's `KEY.<res>.png`
//!   (and `KEY.cls`), in shard and archive order; named `SHARD#KEY`;
//! * a folder of PNG/JPEG/WebP files, in sorted name order; named by file name;
//! * an `.npz` with `arr_0` uint8 `[N, H, W, 3]` (the ADM evaluator's layout); named
//!   `FILE[i]`.
//!
//! Image i of the source goes with the i-th seed of the job. Only as many images as there
//! are seeds are read; every one must have the side the first relay stage starts from.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::data::image::{decode_rgb, has_image_extension};

/// One start image.
#[derive(Debug, Clone)]
pub struct StartImage {
    /// Where it came from, as the manifest records it.
    pub source: String,
    pub image: RgbImage,
    pub class: Option<usize>,
}

/// Reads the first `count` images of `path`: a data stage's output folder (it holds `.tar`
/// shards), another folder of images, or an `.npz` file. `side` is the side they must have.
pub fn read_start_images(
    path: &Path,
    side: usize,
    count: usize,
) -> anyhow::Result<Vec<StartImage>> {
    let out = if path.is_dir() {
        let shards = crate::data::pairs::list_shards(path)?;
        if shards.is_empty() {
            from_folder(path, count)?
        } else {
            from_shards(&shards, side, count)?
        }
    } else if path.extension().is_some_and(|e| e == "npz") {
        from_npz(path, count)?
    } else {
        bail!(
            "`{}` is neither a folder (of images or data shards) nor an .npz file",
            path.display()
        )
    };
    if out.len() < count {
        bail!(
            "`{}` holds {} start image(s) but the job has {count} seeds; give fewer seeds or more images",
            path.display(),
            out.len()
        );
    }
    for s in &out {
        let (w, h) = s.image.dimensions();
        if (w as usize, h as usize) != (side, side) {
            bail!(
                "start image `{}` is {w}x{h}; the first relay stage starts from {side}x{side}",
                s.source
            );
        }
    }
    Ok(out)
}

fn from_shards(shards: &[PathBuf], side: usize, count: usize) -> anyhow::Result<Vec<StartImage>> {
    let field = format!("{side}.png");
    let mut out = Vec::new();
    for shard in shards {
        let name = shard
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for s in crate::data::wds::read_shard(shard)? {
            if out.len() >= count {
                return Ok(out);
            }
            let s = s?;
            let source = format!("{name}#{}", s.key);
            let bytes = s.get(&field).or_else(|| s.get("png")).with_context(|| {
                format!(
                    "`{source}` has no `{field}` member: does the data stage make {side}px images?"
                )
            })?;
            let class = s.label().and_then(|c| usize::try_from(c).ok());
            out.push(StartImage {
                image: decode_rgb(bytes, &source)?,
                source,
                class,
            });
        }
    }
    Ok(out)
}

fn from_folder(dir: &Path, count: usize) -> anyhow::Result<Vec<StartImage>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading `{}`", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && has_image_extension(&p.to_string_lossy()))
        .collect();
    files.sort();
    files
        .iter()
        .take(count)
        .map(|p| {
            let source = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(p).with_context(|| format!("reading `{}`", p.display()))?;
            Ok(StartImage {
                image: decode_rgb(&bytes, &source)?,
                source,
                class: None,
            })
        })
        .collect()
}

/// `arr_0` of an `.npz`: uint8, C order, `[N, H, W, 3]`.
fn from_npz(path: &Path, count: usize) -> anyhow::Result<Vec<StartImage>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("opening `{}`", path.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("`{}` is not an .npz (zip) file", path.display()))?;
    let mut entry = zip
        .by_name("arr_0.npy")
        .with_context(|| format!("`{}` has no `arr_0`", path.display()))?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes)?;
    let (shape, data) =
        parse_npy_u8(&bytes).with_context(|| format!("`{}`: arr_0", path.display()))?;
    let [n, h, w, 3] = shape[..] else {
        bail!(
            "`{}`: arr_0 has shape {shape:?}, expected [N, H, W, 3]",
            path.display()
        )
    };
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let per = h * w * 3;
    (0..n.min(count))
        .map(|i| {
            let raw = data[i * per..(i + 1) * per].to_vec();
            Ok(StartImage {
                source: format!("{name}[{i}]"),
                image: RgbImage::from_raw(w as u32, h as u32, raw).expect("sized above"),
                class: None,
            })
        })
        .collect()
}

/// The shape and data of a `.npy` holding uint8 in C order (format versions 1–3).
fn parse_npy_u8(b: &[u8]) -> anyhow::Result<(Vec<usize>, &[u8])> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!("not a .npy array");
    }
    let (len, start) = match b[6] {
        1 => (usize::from(u16::from_le_bytes([b[8], b[9]])), 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = std::str::from_utf8(b.get(start..start + len).context("truncated header")?)?;
    if !header.contains("'|u1'") && !header.contains("'u1'") {
        bail!("dtype is not uint8 (header {header})");
    }
    if header.contains("'fortran_order': True") {
        bail!("Fortran order is not supported");
    }
    let dims = header
        .split("'shape':")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .context("no shape in the header")?
        .trim()
        .trim_start_matches('(');
    let shape: Vec<usize> = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().with_context(|| format!("shape entry `{d}`")))
        .collect::<anyhow::Result<_>>()?;
    let data = &b[start + len..];
    let n: usize = shape.iter().product();
    if data.len() < n {
        bail!("{} data bytes for shape {shape:?}", data.len());
    }
    Ok((shape, &data[..n]))
}

/// Images as a `[B, 3, h, w]` float32 tensor in [−1, 1] (`uint8 / 127.5 − 1`, RDM's
/// `--sampler_stages=second` reading).
pub fn to_tensor(images: &[&StartImage], device: &Device) -> anyhow::Result<Tensor> {
    let (w, h) = images[0].image.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut v = Vec::with_capacity(images.len() * 3 * h * w);
    for s in images {
        let raw = s.image.as_raw();
        for c in 0..3 {
            v.extend((0..h * w).map(|p| raw[p * 3 + c] as f32 / 127.5 - 1.0));
        }
    }
    Ok(Tensor::from_vec(v, (images.len(), 3, h, w), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made `.npz` (numpy's layout: a zip of `arr_0.npy`, format 1.0) reads back.
    #[test]
    fn reads_an_npz() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("low.npz");
        let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2, 2, 3), }";
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let pad = 64 - (10 + header.len() + 1) % 64;
        let text = format!("{header}{}\n", " ".repeat(pad));
        npy.extend((text.len() as u16).to_le_bytes());
        npy.extend(text.as_bytes());
        npy.extend((0..24u8).map(|i| i * 10));
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path)?);
        z.start_file("arr_0.npy", zip::write::SimpleFileOptions::default())?;
        std::io::Write::write_all(&mut z, &npy)?;
        z.finish()?;
        let imgs = read_start_images(&path, 2, 2)?;
        assert_eq!(imgs[1].source, "low.npz[1]");
        assert_eq!(imgs[1].image.get_pixel(0, 0).0, [120, 130, 140]);
        assert!(read_start_images(&path, 2, 3).is_err(), "3 seeds, 2 images");
        assert!(read_start_images(&path, 4, 1).is_err(), "wrong side");
        Ok(())
    }
}
