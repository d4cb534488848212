//! The training data stream: the paired WebDataset shards written by `downsample`
//! (`KEY.<res>.png`, `KEY.cls`, `KEY.json`), read in an order that depends only on the seed
//! and the position, so a resumed run sees exactly the images it would have seen.
//!
//! 1. Epoch e visits the shards in a seeded permutation of (seed, e), reading each with
//!    the `webdataset` crate. This is one stream whatever the number of ranks: of every
//!    step's `batch` images, rank r takes the r-th slice of `batch / world` and skips the
//!    others' without decoding them, so W ranks train on exactly the images (and flips)
//!    one process with the whole batch sees, and every rank's position is the same.
//! 2. A shuffle buffer of `shuffle_buffer` samples: fill it, then emit a seeded random
//!    member and refill from the stream; drain it at the end of the epoch.
//! 3. Emitted samples are decoded to float32 CHW in [−1, 1] (uint8 / 127.5 − 1, RDM_NOTES
//!    §10), x-flipped with probability ½ when asked (a draw keyed by the position), and
//!    their `.cls` label is one-hot encoded when the run is conditional.
//!
//! The position is `(epoch, taken)`; reopening at a position replays the epoch's shuffle
//! without decoding the skipped images.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::optim::mix;
use crate::data::image::decode_rgb;
use crate::data::pairs::list_shards;
use crate::data::wds::{read_shard, ShardSample};
use crate::data::{permutation, SplitMix64};

/// Where the stream stands: samples `taken` from epoch `epoch`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub taken: u64,
}

/// What to read and how.
#[derive(Debug, Clone)]
pub struct DataSpec {
    /// The folder of `.tar` shards (a `downsample` output).
    pub dir: PathBuf,
    /// Side of the image to train on; the member read is `KEY.<side>.png`.
    pub side: usize,
    /// Number of classes for one-hot labels; `None`: unconditional (labels are not read).
    pub label_dim: Option<usize>,
    pub xflip: bool,
    pub shuffle_buffer: usize,
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    /// Images each rank takes per step (`batch / world`); used when `world > 1`.
    pub per_rank: usize,
}

/// One decoded micro-batch.
#[derive(Debug)]
pub struct Batch {
    /// `[B, 3, side, side]` float32 in [−1, 1].
    pub images: Tensor,
    /// Class indices when conditional.
    pub classes: Option<Vec<usize>>,
}

type Samples = Box<dyn Iterator<Item = anyhow::Result<(String, ShardSample)>>>;

/// The seeded shuffled stream of one epoch (raw samples, not decoded).
struct Epoch {
    samples: Samples,
    buffer: Vec<(String, ShardSample)>,
    rng: SplitMix64,
    exhausted: bool,
}

/// The fields a training sample needs (`<side>.png`, `cls`); the rest is dropped early so
/// the shuffle buffer holds only what is used.
fn keep_fields(mut s: ShardSample, field: &str) -> ShardSample {
    // Without the field, keep everything: the error then lists what the sample holds.
    if s.get(field).is_some() {
        s.fields.retain(|(name, _)| name == field || name == "cls");
    }
    s
}

impl Epoch {
    fn open(shards: &[PathBuf], spec: &DataSpec, epoch: u64) -> Self {
        let order = permutation(shards.len(), Some(mix(&[spec.seed, epoch, 0x5A4D])));
        let ordered: Vec<PathBuf> = order.iter().map(|&i| shards[i as usize].clone()).collect();
        let field = format!("{}.png", spec.side);
        let samples = ordered.into_iter().flat_map(move |path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let field = field.clone();
            let it: Samples = match read_shard(&path) {
                Ok(it) => Box::new(it.map(move |s| {
                    let s =
                        s.with_context(|| format!("reading training shard `{}`", path.display()))?;
                    Ok((name.clone(), keep_fields(s, &field)))
                })),
                Err(e) => Box::new(std::iter::once(Err(anyhow::Error::new(e)
                    .context(format!("opening training shard `{}`", path.display()))))),
            };
            it
        });
        Self {
            samples: Box::new(samples),
            buffer: Vec::new(),
            rng: SplitMix64::new(mix(&[spec.seed, epoch, 0xB0FF])),
            exhausted: false,
        }
    }

    fn next(&mut self, cap: usize) -> anyhow::Result<Option<(String, ShardSample)>> {
        while !self.exhausted && self.buffer.len() < cap.max(1) {
            match self.samples.next() {
                Some(s) => self.buffer.push(s?),
                None => self.exhausted = true,
            }
        }
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let j = self.rng.below(self.buffer.len() as u64) as usize;
        Ok(Some(self.buffer.swap_remove(j)))
    }
}

/// The resumable, seeded stream of training images of one rank.
pub struct PairLoader {
    spec: DataSpec,
    shards: Vec<PathBuf>,
    epoch: Epoch,
    pos: DataPosition,
    /// Images this rank took of its slice of the current step (several ranks).
    in_step: usize,
}

impl PairLoader {
    /// Open the stream at `pos` (replaying the epoch up to it).
    pub fn open(spec: DataSpec, pos: DataPosition) -> anyhow::Result<Self> {
        let all = list_shards(&spec.dir)?;
        if all.is_empty() {
            bail!(
                "no .tar shards in `{}`; a train stage needs a `downsample` stage under `needs:`",
                spec.dir.display()
            );
        }
        if spec.world > 1 && spec.per_rank == 0 {
            bail!("{} ranks need at least one image each per step", spec.world);
        }
        let shards = all;
        let mut epoch = Epoch::open(&shards, &spec, pos.epoch);
        for i in 0..pos.taken {
            if epoch.next(spec.shuffle_buffer)?.is_none() {
                bail!(
                    "cannot resume the data stream at epoch {} sample {}: the epoch has only {i} samples \
                     (did the shards change?)",
                    pos.epoch,
                    pos.taken
                );
            }
        }
        Ok(Self {
            spec,
            shards,
            epoch,
            pos,
            in_step: 0,
        })
    }

    /// The next sample of this rank: with several ranks, the others' slices of the step
    /// are passed over (read, not decoded).
    fn next_mine(&mut self) -> anyhow::Result<(String, ShardSample, DataPosition)> {
        if self.spec.world == 1 {
            return self.next_raw();
        }
        let per = self.spec.per_rank;
        if self.in_step == 0 {
            for _ in 0..self.spec.rank * per {
                self.next_raw()?;
            }
        }
        let got = self.next_raw()?;
        self.in_step += 1;
        if self.in_step == per {
            self.in_step = 0;
            for _ in 0..(self.spec.world - 1 - self.spec.rank) * per {
                self.next_raw()?;
            }
        }
        Ok(got)
    }

    pub fn position(&self) -> DataPosition {
        self.pos
    }

    /// The next raw sample, moving to the next epoch when one ends.
    fn next_raw(&mut self) -> anyhow::Result<(String, ShardSample, DataPosition)> {
        loop {
            let at = self.pos;
            if let Some((shard, s)) = self.epoch.next(self.spec.shuffle_buffer)? {
                self.pos.taken += 1;
                return Ok((shard, s, at));
            }
            if self.pos.taken == 0 {
                bail!(
                    "the training shards in `{}` hold no samples",
                    self.spec.dir.display()
                );
            }
            self.pos = DataPosition {
                epoch: self.pos.epoch + 1,
                taken: 0,
            };
            self.epoch = Epoch::open(&self.shards, &self.spec, self.pos.epoch);
        }
    }

    /// The next `n` images as a batch on `device`.
    pub fn next_batch(&mut self, n: usize, device: &Device) -> anyhow::Result<Batch> {
        let side = self.spec.side;
        let plane = side * side;
        let mut values = Vec::with_capacity(n * 3 * plane);
        let mut classes = self.spec.label_dim.map(|_| Vec::with_capacity(n));
        for _ in 0..n {
            let (shard, s, at) = self.next_mine()?;
            let what = format!("{shard}#{}", s.key);
            let field = format!("{side}.png");
            let Some(bytes) = s.get(&field) else {
                bail!(
                    "`{what}` has no `{field}` member; the pairs hold {} (check `resolutions` of the \
                     downsample stage)",
                    list_members(&s)
                );
            };
            let img = decode_rgb(bytes, &what)?;
            if img.width() as usize != side || img.height() as usize != side {
                bail!(
                    "`{what}`: `{field}` is {}x{}, expected {side}x{side}",
                    img.width(),
                    img.height()
                );
            }
            let flip =
                self.spec.xflip && mix(&[self.spec.seed, at.epoch, at.taken, 0xF11F]) & 1 == 1;
            let raw = img.as_raw();
            for c in 0..3 {
                for y in 0..side {
                    for x in 0..side {
                        let sx = if flip { side - 1 - x } else { x };
                        let v = raw[(y * side + sx) * 3 + c];
                        values.push(v as f32 / 127.5 - 1.0);
                    }
                }
            }
            if let (Some(dim), Some(classes)) = (self.spec.label_dim, classes.as_mut()) {
                let Some(label) = s.label() else {
                    bail!(
                        "`{what}` has no `.cls` label, but the stage trains with `cond: true`; \
                         use labelled data or set `cond: false`"
                    );
                };
                if label < 0 || label as usize >= dim {
                    bail!("`{what}`: class {label} is outside 0..{dim} (set `classes:`)");
                }
                classes.push(label as usize);
            }
        }
        let images =
            Tensor::from_vec(values, (n, 3, side, side), &Device::Cpu)?.to_device(device)?;
        Ok(Batch { images, classes })
    }
}

fn list_members(s: &ShardSample) -> String {
    let names: Vec<String> = s.fields.iter().map(|(n, _)| format!("`{n}`")).collect();
    if names.is_empty() {
        "no image".into()
    } else {
        names.join(", ")
    }
}

/// The first `n` samples of the first shard (in archive order), decoded at `side`: fixed
/// inputs for the relay stage's preview grids.
pub fn first_images(
    dir: &Path,
    side: usize,
    n: usize,
) -> anyhow::Result<Vec<(Vec<f32>, Option<i64>)>> {
    let shards = list_shards(dir)?;
    let Some(first) = shards.first() else {
        bail!("no .tar shards in `{}`", dir.display())
    };
    let field = format!("{side}.png");
    let mut out = Vec::new();
    for s in read_shard(first)?.take(n) {
        let s = s?;
        let what = format!("{}#{}", first.display(), s.key);
        let Some(bytes) = s.get(&field) else {
            bail!(
                "`{what}` has no `{field}` member; the pairs hold {}",
                list_members(&s)
            )
        };
        let img = decode_rgb(bytes, &what)?;
        if img.width() as usize != side || img.height() as usize != side {
            bail!(
                "`{what}`: `{field}` is {}x{}, expected {side}x{side}",
                img.width(),
                img.height()
            );
        }
        let mut v = Vec::with_capacity(3 * side * side);
        let raw = img.as_raw();
        for c in 0..3 {
            for p in 0..side * side {
                v.push(raw[p * 3 + c] as f32 / 127.5 - 1.0);
            }
        }
        out.push((v, s.label()));
    }
    Ok(out)
}

/// The largest label + 1 (the class count when none is given), or `None` when no sample
/// has one: from the `label` column of the pairs' `manifest.parquet` when there is one,
/// else by reading every shard's `.cls`.
pub fn count_classes(dir: &Path) -> anyhow::Result<Option<usize>> {
    let manifest = dir.join(crate::data::prep::MANIFEST_FILE);
    let mut max: Option<i64> = None;
    let mut see = |l: i64| max = Some(max.map_or(l, |m: i64| m.max(l)));
    if manifest.is_file() {
        let (columns, rows) = crate::manifest::read_rows(&manifest)?;
        if let Some(i) = columns.iter().position(|c| c == "label") {
            rows.iter().filter_map(|r| r[i].as_i64()).for_each(&mut see);
            return Ok(max.map(|m| (m + 1).max(1) as usize));
        }
    }
    for shard in list_shards(dir)? {
        for s in read_shard(&shard)? {
            if let Some(l) = s?.label() {
                see(l);
            }
        }
    }
    Ok(max.map(|m| (m + 1).max(1) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image::encode_png;
    use crate::data::tar::ShardWriter;
    use image::RgbImage;

    fn write_shards(dir: &Path, shards: usize, per: usize) {
        for s in 0..shards {
            let mut w = ShardWriter::create(&dir.join(format!("pairs-{s:06}.tar"))).unwrap();
            for i in 0..per {
                let id = (s * per + i) as u8;
                let img = RgbImage::from_fn(4, 4, |x, _| image::Rgb([id, x as u8 * 60, 0]));
                let png = encode_png(&img);
                let cls = format!("{}", id % 3);
                w.write_sample(
                    &format!("{:08}", s * per + i),
                    &[("4.png", &png), ("cls", cls.as_bytes())],
                )
                .unwrap();
            }
            w.finish().unwrap();
        }
    }

    fn spec(dir: &Path) -> DataSpec {
        DataSpec {
            dir: dir.to_path_buf(),
            side: 4,
            label_dim: Some(3),
            xflip: true,
            shuffle_buffer: 5,
            seed: 7,
            rank: 0,
            world: 1,
            per_rank: 0,
        }
    }

    fn ids(b: &Batch) -> Vec<u8> {
        // Red channel of pixel (0,0) encodes the sample id.
        let v = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (0..b.images.dim(0).unwrap())
            .map(|i| ((v[i * 48] + 1.0) * 127.5).round() as u8)
            .collect()
    }

    /// Every sample once per epoch, a different order per epoch, and a stream reopened at a
    /// position continues exactly as the uninterrupted one.
    #[test]
    fn epochs_are_permutations_and_resume_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        write_shards(dir.path(), 3, 4);
        let dev = Device::Cpu;
        let mut a = PairLoader::open(spec(dir.path()), DataPosition::default()).unwrap();
        let e0 = ids(&a.next_batch(12, &dev).unwrap());
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..12).collect::<Vec<u8>>());
        let first = a.next_batch(5, &dev).unwrap();
        let pos = a.position();
        assert_eq!(pos, DataPosition { epoch: 1, taken: 5 });
        let rest = a.next_batch(9, &dev).unwrap();
        assert_ne!(ids(&first), e0[..5].to_vec());
        let mut b = PairLoader::open(spec(dir.path()), pos).unwrap();
        let again = b.next_batch(9, &dev).unwrap();
        let x = rest.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = again
            .images
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(x, y);
        assert_eq!(rest.classes, again.classes);
    }

    /// Three ranks, each taking its slice of every step of 6 (two micro-batches of 1), see
    /// together exactly the one-rank stream — images, flips and labels — and stand at the
    /// same position after every step.
    #[test]
    fn ranks_take_slices_of_the_one_process_stream() {
        let dir = tempfile::tempdir().unwrap();
        write_shards(dir.path(), 3, 4);
        let dev = Device::Cpu;
        let mut one = PairLoader::open(spec(dir.path()), DataPosition::default()).unwrap();
        let mut ranks: Vec<PairLoader> = (0..3)
            .map(|rank| {
                let s = DataSpec {
                    rank,
                    world: 3,
                    per_rank: 2,
                    ..spec(dir.path())
                };
                PairLoader::open(s, DataPosition::default()).unwrap()
            })
            .collect();
        for _step in 0..5 {
            let want = one.next_batch(6, &dev).unwrap();
            let mut got = Vec::new();
            let mut classes = Vec::new();
            for r in ranks.iter_mut() {
                for _micro in 0..2 {
                    let b = r.next_batch(1, &dev).unwrap();
                    got.extend(b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                    classes.extend(b.classes.unwrap());
                }
            }
            assert_eq!(
                got,
                want.images.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            assert_eq!(Some(classes), want.classes);
            for r in &ranks {
                assert_eq!(r.position(), one.position());
            }
        }
    }

    #[test]
    fn missing_labels_and_wrong_sizes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::create(&dir.path().join("pairs-000000.tar")).unwrap();
        let png = encode_png(&RgbImage::new(8, 8));
        w.write_sample("00000000", &[("4.png", &png)]).unwrap();
        w.finish().unwrap();
        let mut l = PairLoader::open(spec(dir.path()), DataPosition::default()).unwrap();
        let e = l.next_batch(1, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("is 8x8, expected 4x4"), "{e}");
        let mut s = spec(dir.path());
        s.side = 8;
        let mut l = PairLoader::open(s.clone(), DataPosition::default()).unwrap();
        let e = l.next_batch(1, &Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("no `8.png` member; the pairs hold `4.png`"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::create(&dir.path().join("pairs-000000.tar")).unwrap();
        w.write_sample("00000000", &[("8.png", &png)]).unwrap();
        w.finish().unwrap();
        s.dir = dir.path().to_path_buf();
        let mut l = PairLoader::open(s, DataPosition::default()).unwrap();
        let e = l.next_batch(1, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("has no `.cls` label"), "{e}");
    }
}
