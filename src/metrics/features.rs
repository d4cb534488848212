//! Inception features of an image set, computed unit by unit and cached on disk, so that a
//! long run that is interrupted (Ctrl-C, kill -9) resumes at the first unit without a file.
//!
//! A [`FeatureStore`] is a folder of `unit-000000.feat` files, each written through a
//! temporary file and renamed: pool3, `mixed_6/conv` and logits of one unit as float32
//! (header `RELAYFT1`, then the row count and the three widths). [`extract`] fills it;
//! [`FeatureStore::read`] reads a unit back.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::images::{ImageSource, Visitor};
use super::MetricsError;
use crate::model::inception::{FidInception, LOGITS_DIMS, POOL_DIMS, SPATIAL_DIMS};

const MAGIC: &[u8; 8] = b"RELAYFT1";

/// One unit's features, row-major float32.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnitFeatures {
    pub n: usize,
    /// n × 2048.
    pub pool: Vec<f32>,
    /// n × 2023.
    pub spatial: Vec<f32>,
    /// n × 1008, or empty when the network has no classifier.
    pub logits: Vec<f32>,
}

/// A folder of per-unit feature files.
#[derive(Debug, Clone)]
pub struct FeatureStore {
    dir: PathBuf,
}

impl FeatureStore {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, unit: usize) -> PathBuf {
        self.dir.join(format!("unit-{unit:06}.feat"))
    }

    pub fn has(&self, unit: usize) -> bool {
        self.path(unit).is_file()
    }

    pub fn write(&self, unit: usize, f: &UnitFeatures) -> Result<(), MetricsError> {
        let mut bytes =
            Vec::with_capacity(32 + 4 * (f.pool.len() + f.spatial.len() + f.logits.len()));
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(f.n as u64).to_le_bytes());
        for w in [POOL_DIMS, SPATIAL_DIMS, f.logits.len() / f.n.max(1)] {
            bytes.extend_from_slice(&(w as u32).to_le_bytes());
        }
        bytes.extend_from_slice(&[0u8; 4]);
        for v in [&f.pool, &f.spatial, &f.logits] {
            for x in v.iter() {
                bytes.write_all(&x.to_le_bytes()).expect("vec write");
            }
        }
        let path = self.path(unit);
        crate::util::write_atomic(&path, &bytes)
            .map_err(|e| MetricsError::Io(format!("writing {}: {e}", path.display())))
    }

    pub fn read(&self, unit: usize) -> Result<UnitFeatures, MetricsError> {
        let path = self.path(unit);
        let bytes = std::fs::read(&path)
            .map_err(|e| MetricsError::Io(format!("reading {}: {e}", path.display())))?;
        let corrupt = || {
            MetricsError::Io(format!(
                "{} is not a relay feature file; delete it",
                path.display()
            ))
        };
        if bytes.len() < 32 || &bytes[..8] != MAGIC {
            return Err(corrupt());
        }
        let n = u64::from_le_bytes(bytes[8..16].try_into().expect("8")) as usize;
        let w = |i: usize| {
            u32::from_le_bytes(bytes[16 + 4 * i..20 + 4 * i].try_into().expect("4")) as usize
        };
        let (wp, ws, wl) = (w(0), w(1), w(2));
        if wp != POOL_DIMS || ws != SPATIAL_DIMS || bytes.len() != 32 + 4 * n * (wp + ws + wl) {
            return Err(corrupt());
        }
        let floats = |from: usize, count: usize| -> Vec<f32> {
            bytes[32 + 4 * from..32 + 4 * (from + count)]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                .collect()
        };
        Ok(UnitFeatures {
            n,
            pool: floats(0, n * wp),
            spatial: floats(n * wp, n * ws),
            logits: floats(n * (wp + ws), n * wl),
        })
    }
}

/// What [`extract`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extracted {
    pub images: usize,
    /// Images whose features were computed in this call (the rest were cached).
    pub computed: usize,
    pub units_cached: usize,
}

/// Compute the features of every unit of `source` not yet in `store`. `batch` images per
/// forward; `progress` gets the number of images done (cached units count at once);
/// `stop` is polled between batches.
pub fn extract(
    source: &ImageSource,
    net: &FidInception,
    device: &Device,
    store: &FeatureStore,
    batch: usize,
    progress: &mut dyn FnMut(usize),
    stop: &dyn Fn() -> bool,
) -> Result<Extracted, MetricsError> {
    std::fs::create_dir_all(store.dir())
        .map_err(|e| MetricsError::Io(format!("creating {}: {e}", store.dir().display())))?;
    let mut x = Extractor {
        net,
        device,
        store,
        batch: batch.max(1),
        pending: Vec::new(),
        unit: UnitFeatures::default(),
        done: Extracted::default(),
        progress,
        stop,
    };
    source.visit(&mut x)?;
    Ok(x.done)
}

struct Extractor<'a> {
    net: &'a FidInception,
    device: &'a Device,
    store: &'a FeatureStore,
    batch: usize,
    pending: Vec<RgbImage>,
    unit: UnitFeatures,
    done: Extracted,
    progress: &'a mut dyn FnMut(usize),
    stop: &'a dyn Fn() -> bool,
}

impl Extractor<'_> {
    /// Run the network on the pending images (in runs of equal size) into the unit.
    fn flush(&mut self) -> Result<(), MetricsError> {
        if (self.stop)() {
            return Err(MetricsError::Cancelled);
        }
        let images = std::mem::take(&mut self.pending);
        let mut start = 0;
        while start < images.len() {
            let dims = images[start].dimensions();
            let end = start
                + images[start..]
                    .iter()
                    .take_while(|i| i.dimensions() == dims)
                    .count();
            let (w, h) = (dims.0 as usize, dims.1 as usize);
            let mut raw = Vec::with_capacity((end - start) * h * w * 3);
            for img in &images[start..end] {
                raw.extend_from_slice(img.as_raw());
            }
            let t = Tensor::from_vec(raw, (end - start, h, w, 3), self.device)?;
            let f = self.net.forward_images(&t)?;
            let host = |t: &Tensor| -> candle_core::Result<Vec<f32>> { t.flatten_all()?.to_vec1() };
            self.unit.pool.extend(host(&f.pool)?);
            self.unit.spatial.extend(host(&f.spatial)?);
            if let Some(l) = &f.logits {
                self.unit.logits.extend(host(l)?);
            }
            self.unit.n += end - start;
            (self.progress)(end - start);
            self.done.computed += end - start;
            start = end;
        }
        Ok(())
    }
}

impl Visitor for Extractor<'_> {
    fn start(&mut self, unit: usize, len: usize) -> Result<bool, MetricsError> {
        self.done.images += len;
        if self.store.has(unit) {
            self.done.units_cached += 1;
            (self.progress)(len);
            return Ok(false);
        }
        self.unit = UnitFeatures::default();
        Ok(true)
    }

    fn image(&mut self, img: RgbImage) -> Result<(), MetricsError> {
        self.pending.push(img);
        if self.pending.len() >= self.batch {
            self.flush()?;
        }
        Ok(())
    }

    fn end(&mut self, unit: usize) -> Result<(), MetricsError> {
        self.flush()?;
        debug_assert!(
            self.unit.logits.is_empty() || self.unit.logits.len() == self.unit.n * LOGITS_DIMS
        );
        self.store.write(unit, &std::mem::take(&mut self.unit))
    }
}
