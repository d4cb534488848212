//! Where the samplers and losses get their randomness: the [`NoiseSource`] trait, with one
//! stream per sample ([`SeedNoise`], as EDM's `StackedRandomGenerator`) or a recording played
//! back in order ([`RecordedNoise`], for the golden vectors).
//!
//! Every draw returns `[B, ...]` where row b comes from sample b's own stream, so a seed's
//! image is the same whatever batch it was generated in, and a retried or re-sharded stage
//! reproduces it. The draw *order* is part of the algorithms (RDM_NOTES §11.8): the samplers
//! draw exactly where the reference code calls `randn_like`, including draws it discards.

use super::blur::host_tensor;
use super::rng::Stream;
use candle_core::{bail, DType, Device, Result, Tensor};

/// A batch of per-sample random streams.
pub trait NoiseSource {
    /// B, the number of rows every draw returns.
    fn batch_size(&self) -> usize;

    /// Standard normal noise `[B, shape...]` (`shape` is per sample, e.g. `[C, H, W]`; `[]`
    /// gives one value per sample, `[B]`).
    fn randn(&mut self, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor>;

    /// One U[0, 1) value per sample (BlurLoss's `torch.rand`).
    fn uniform(&mut self) -> Result<Vec<f64>>;

    /// How many draws (`randn` and `uniform` calls) were made so far.
    fn draws(&self) -> usize;
}

/// One Philox stream per seed ([`Stream`]); values are generated on the host in f64 and cast.
#[derive(Debug, Clone)]
pub struct SeedNoise {
    seeds: Vec<u64>,
    streams: Vec<Stream>,
    draws: usize,
}

impl SeedNoise {
    pub fn new(seeds: &[u64]) -> Self {
        Self {
            seeds: seeds.to_vec(),
            streams: seeds.iter().map(|&s| Stream::new(s)).collect(),
            draws: 0,
        }
    }

    pub fn seeds(&self) -> &[u64] {
        &self.seeds
    }

    /// EDM-style random labels (edm: `generate.py`, `class_labels = eye(L)[randint(L)]`): one
    /// class per sample drawn from its own stream, as one-hot `[B, L]`.
    pub fn random_class_labels(
        &mut self,
        label_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if label_dim == 0 {
            bail!("random class labels need label_dim > 0")
        }
        self.draws += 1;
        let classes: Vec<usize> = self
            .streams
            .iter_mut()
            .map(|s| s.below(label_dim as u64) as usize)
            .collect();
        one_hot(&classes, label_dim, dtype, device)
    }
}

impl NoiseSource for SeedNoise {
    fn batch_size(&self) -> usize {
        self.streams.len()
    }

    fn randn(&mut self, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let per_sample: usize = shape.iter().product();
        let mut v = Vec::with_capacity(per_sample * self.streams.len());
        for s in &mut self.streams {
            v.extend(s.normal(per_sample));
        }
        let mut full = vec![self.streams.len()];
        full.extend_from_slice(shape);
        self.draws += 1;
        host_tensor(v, &full, dtype, device)
    }

    fn uniform(&mut self) -> Result<Vec<f64>> {
        self.draws += 1;
        Ok(self.streams.iter_mut().map(|s| s.uniform(1)[0]).collect())
    }

    fn draws(&self) -> usize {
        self.draws
    }
}

/// Plays back recorded normal draws in order, and optionally recorded uniforms. Tests
/// assert [`NoiseSource::draws`] equals the number recorded at the end.
#[derive(Debug, Clone)]
pub struct RecordedNoise {
    normals: Vec<Tensor>,
    next: usize,
    uniforms: Vec<Vec<f64>>,
    next_uniform: usize,
}

impl RecordedNoise {
    /// `normals: [K, B, ...]`: draw k returns `normals[k]`.
    pub fn new(normals: &Tensor) -> Result<Self> {
        if normals.rank() < 2 {
            bail!(
                "recorded noise must be [K, B, ...], got {:?}",
                normals.dims()
            )
        }
        let draws = (0..normals.dim(0)?)
            .map(|k| normals.get(k))
            .collect::<Result<_>>()?;
        Self::from_draws(draws)
    }

    /// One `[B, ...]` tensor per draw; shapes may differ between draws (e.g. the paper's
    /// low-resolution block noise) but not in B.
    pub fn from_draws(normals: Vec<Tensor>) -> Result<Self> {
        let batch: Vec<usize> = normals
            .iter()
            .map(|t| t.dims().first().copied().unwrap_or(0))
            .collect();
        if batch.windows(2).any(|w| w[0] != w[1]) {
            bail!("recorded draws disagree on the batch size: {batch:?}")
        }
        Ok(Self {
            normals,
            next: 0,
            uniforms: Vec::new(),
            next_uniform: 0,
        })
    }

    /// Recorded `uniform()` results, one `Vec` of B values per call.
    pub fn with_uniforms(mut self, uniforms: Vec<Vec<f64>>) -> Self {
        self.uniforms = uniforms;
        self
    }

    /// The number of recorded normal draws.
    pub fn len(&self) -> usize {
        self.normals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.normals.is_empty()
    }

    /// Normal draws played back so far.
    pub fn normal_draws(&self) -> usize {
        self.next
    }
}

impl NoiseSource for RecordedNoise {
    fn batch_size(&self) -> usize {
        self.normals.first().map_or(0, |t| t.dims()[0])
    }

    fn randn(&mut self, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        if self.next >= self.len() {
            bail!(
                "recorded noise exhausted: draw {} of {} recorded",
                self.next + 1,
                self.len()
            )
        }
        let t = &self.normals[self.next];
        if &t.dims()[1..] != shape {
            bail!(
                "recorded draw {} has per-sample shape {:?}, the algorithm asked for {:?}",
                self.next,
                &t.dims()[1..],
                shape
            )
        }
        self.next += 1;
        t.to_dtype(dtype)?.to_device(device)
    }

    fn uniform(&mut self) -> Result<Vec<f64>> {
        let Some(u) = self.uniforms.get(self.next_uniform) else {
            bail!(
                "no recorded uniform draw left ({} played back)",
                self.next_uniform
            )
        };
        self.next_uniform += 1;
        Ok(u.clone())
    }

    fn draws(&self) -> usize {
        self.next + self.next_uniform
    }
}

/// One-hot rows `[B, L]`: row b has a 1 at `classes[b]`.
pub fn one_hot(
    classes: &[usize],
    label_dim: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut v = vec![0.0; classes.len() * label_dim];
    for (b, &c) in classes.iter().enumerate() {
        if c >= label_dim {
            bail!("class {c} out of range for label_dim {label_dim}")
        }
        v[b * label_dim + c] = 1.0;
    }
    host_tensor(v, &[classes.len(), label_dim], dtype, device)
}

/// RDM's class-balanced labels (`RelayDiffusion: generate*.py`): `eye(L)[seed mod L]`, so
/// consecutive seeds cycle through the classes. Both stages get the same labels.
pub fn balanced_class_labels(
    seeds: &[u64],
    label_dim: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    if label_dim == 0 {
        bail!("class labels need label_dim > 0")
    }
    let classes: Vec<usize> = seeds
        .iter()
        .map(|&s| (s % label_dim as u64) as usize)
        .collect();
    one_hot(&classes, label_dim, dtype, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seed's noise is the same in a batch of 1 and at any position of a batch of 7, for
    /// every draw of a sequence.
    #[test]
    fn seed_noise_is_batch_independent() -> Result<()> {
        let dev = Device::Cpu;
        let seeds: Vec<u64> = vec![11, 5, 80000, 3, 1 << 40, 42, 7];
        let mut batch = SeedNoise::new(&seeds);
        let draws_b: Vec<Tensor> = (0..3)
            .map(|_| batch.randn(&[3, 5, 4], DType::F64, &dev))
            .collect::<Result<_>>()?;
        for (pos, &seed) in seeds.iter().enumerate() {
            let mut single = SeedNoise::new(&[seed]);
            for draw in &draws_b {
                let alone = single.randn(&[3, 5, 4], DType::F64, &dev)?;
                let a = alone.get(0)?.flatten_all()?.to_vec1::<f64>()?;
                let b = draw.get(pos)?.flatten_all()?.to_vec1::<f64>()?;
                assert_eq!(a, b, "seed {seed} at position {pos}");
            }
        }
        assert_eq!(batch.draws(), 3);
        Ok(())
    }

    #[test]
    fn recorded_noise_plays_back_and_counts() -> Result<()> {
        let rec = Tensor::arange(0f32, 12., &Device::Cpu)?.reshape((3, 2, 2))?;
        let mut n = RecordedNoise::new(&rec)?.with_uniforms(vec![vec![0.25, 0.5]]);
        let d0 = n.randn(&[2], DType::F64, &Device::Cpu)?;
        assert_eq!(d0.to_vec2::<f64>()?, vec![vec![0., 1.], vec![2., 3.]]);
        assert!(n.randn(&[3], DType::F64, &Device::Cpu).is_err());
        assert_eq!(n.uniform()?, vec![0.25, 0.5]);
        assert!(n.uniform().is_err());
        n.randn(&[2], DType::F32, &Device::Cpu)?;
        n.randn(&[2], DType::F32, &Device::Cpu)?;
        assert!(n.randn(&[2], DType::F32, &Device::Cpu).is_err());
        assert_eq!((n.normal_draws(), n.draws()), (3, 4));
        Ok(())
    }

    #[test]
    fn labels() -> Result<()> {
        let l = balanced_class_labels(&[10000, 10001, 10999], 1000, DType::F32, &Device::Cpu)?;
        assert_eq!(l.argmax(1)?.to_vec1::<u32>()?, vec![0, 1, 999]);
        let mut n = SeedNoise::new(&[1, 2, 3]);
        let r = n.random_class_labels(10, DType::F64, &Device::Cpu)?;
        assert_eq!(r.sum(1)?.to_vec1::<f64>()?, vec![1.0; 3]);
        Ok(())
    }
}
