//! The trainable state and what updates it: seeded weight initialisation, Adam (Kingma &
//! Ba 2015, as `torch.optim.Adam`), the EMA of the weights (EDM `training_loop.py`), and the
//! gradient clean-up the reference does before each step (`nan_to_num`, optional clipping).
//!
//! Everything is a plain tensor keyed by the weight's state_dict name (`model.enc...`), so
//! a snapshot can save it and a resume can put it back bit for bit.
//!
//! Why our own Adam: candle-nn's optimisers keep their moments private, so they cannot be
//! saved for an exact resume.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{bail, DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::diffusion::rng::Stream;
use crate::model::ops::cuda::Lever;

pub use crate::diffusion::rng::mix;

/// A stable 64-bit hash of a string (FNV-1a), to key a weight's init stream by its name.
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A `VarBuilder` backend that creates every weight as a [`Var`] initialised like candle's
/// [`Init`], but from a Philox stream keyed by `(seed, name)`: the same seed gives the same
/// initial network, whatever the order of construction (candle's CPU generator cannot be
/// seeded).
struct SeededInit {
    seed: u64,
    vars: Mutex<BTreeMap<String, Var>>,
}

#[derive(Clone)]
struct SeededInitRef(Arc<SeededInit>);

fn init_values(shape: &Shape, init: Init, stream: &mut Stream) -> Vec<f64> {
    let n = shape.elem_count();
    let normal = |stream: &mut Stream, mean: f64, std: f64| -> Vec<f64> {
        stream
            .normal(n)
            .into_iter()
            .map(|z| mean + std * z)
            .collect()
    };
    let uniform = |stream: &mut Stream, lo: f64, up: f64| -> Vec<f64> {
        stream
            .uniform(n)
            .into_iter()
            .map(|u| lo + (up - lo) * u)
            .collect()
    };
    match init {
        Init::Const(c) => vec![c; n],
        Init::Randn { mean, stdev } => normal(stream, mean, stdev),
        Init::Uniform { lo, up } => uniform(stream, lo, up),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(stream, -bound, bound)
                }
                NormalOrUniform::Normal => normal(stream, 0.0, std),
            }
        }
    }
}

impl SimpleBackend for SeededInitRef {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut vars = self.0.vars.lock().expect("init lock");
        if let Some(v) = vars.get(name) {
            if v.shape() != &s {
                bail!("weight {name} requested as {s:?} and as {:?}", v.shape());
            }
            return Ok(v.as_tensor().clone());
        }
        let mut stream = Stream::new(mix(&[self.0.seed, hash_str(name)]));
        let values = init_values(&s, h, &mut stream);
        let t = Tensor::from_vec(values, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let vars = self.0.vars.lock().expect("init lock");
        match vars.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype)?.to_device(dev),
            None => bail!("no weight named {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.vars.lock().expect("init lock").contains_key(name)
    }
}

/// A `VarBuilder` that creates seeded, trainable float32 weights, and a handle on the
/// weights it created (filled as the model is built on it).
pub fn seeded_var_builder(
    seed: u64,
    device: &Device,
) -> (VarBuilder<'static>, impl Fn() -> BTreeMap<String, Var>) {
    let inner = Arc::new(SeededInit {
        seed,
        vars: Mutex::new(BTreeMap::new()),
    });
    let handle = inner.clone();
    let vb = VarBuilder::from_backend(Box::new(SeededInitRef(inner)), DType::F32, device.clone());
    (vb, move || handle.vars.lock().expect("init lock").clone())
}

/// Plain tensors keyed by weight name (moments, EMA, gradients).
pub type TensorMap = BTreeMap<String, Tensor>;

/// The current values of `vars` as a `HashMap` in `dtype` (a `VarBuilder::from_tensors`
/// source). In float32 these are the variables themselves, so gradients reach them; in
/// another dtype the cast is part of the graph and the gradient comes back in float32.
pub fn var_tensors(vars: &BTreeMap<String, Var>, dtype: DType) -> Result<HashMap<String, Tensor>> {
    vars.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(dtype)?)))
        .collect()
}

/// A deep copy of the variables' values (no graph, own storage).
pub fn snapshot_vars(vars: &BTreeMap<String, Var>) -> Result<TensorMap> {
    vars.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?)))
        .collect()
}

/// Torch's `nan_to_num(nan=0, posinf=1e5, neginf=-1e5)`, as the reference applies to every
/// gradient before the optimiser step (RDM_NOTES §2).
pub fn nan_to_num(g: &Tensor) -> Result<Tensor> {
    let nan = g.ne(g)?;
    let g = nan.where_cond(&g.zeros_like()?, g)?;
    g.clamp(-1e5f32, 1e5f32)
}

/// The global L2 norm of all gradients. On CUDA with the `norm` lever of `RELAY_CUDA_OPS`
/// it is [`global_norm_on_device`] (issue 17): one synchronisation instead of one per
/// gradient tensor.
pub fn global_norm(grads: &TensorMap) -> Result<f64> {
    let on_device = grads.values().next().is_some_and(|g| g.device().is_cuda())
        && crate::model::ops::cuda::enabled(Lever::Norm);
    if on_device {
        return global_norm_on_device(grads);
    }
    let mut sum = 0f64;
    for g in grads.values() {
        sum += g
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(sum.sqrt())
}

/// [`global_norm`] with every squared norm summed on the gradients' device (in float64,
/// as the host loop sums) and read back once.
pub fn global_norm_on_device(grads: &TensorMap) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let parts = grads
        .values()
        .map(|g| g.sqr()?.sum_all()?.to_dtype(DType::F64))
        .collect::<Result<Vec<_>>>()?;
    let total = Tensor::stack(&parts, 0)?.sum_all()?.to_scalar::<f64>()?;
    Ok(total.sqrt())
}

/// Whether the optimiser may update these tensors in place ([`super::fused_adam`]):
/// contiguous float32 on the CPU, or on CUDA with the `adam` lever of `RELAY_CUDA_OPS`.
/// (No other live tensor reads their elements: weights are copied out for snapshots and
/// the EMA; moments are created, loaded or broadcast fresh.)
fn in_place_ok(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| {
        let device_ok = t.device().is_cpu() || crate::model::ops::cuda::use_cuda(t, Lever::Adam);
        device_ok && t.dtype() == DType::F32 && t.is_contiguous()
    })
}

/// `torch.optim.Adam` (no weight decay, no amsgrad), moments as float32 tensors.
#[derive(Debug, Clone)]
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps taken (t in the bias corrections).
    pub t: u64,
    pub m: TensorMap,
    pub v: TensorMap,
}

impl Adam {
    /// Zero moments for every variable.
    pub fn new(vars: &BTreeMap<String, Var>, betas: [f64; 2], eps: f64) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            beta1: betas[0],
            beta2: betas[1],
            eps,
            t: 0,
            m: vars
                .iter()
                .map(|(k, v)| Ok((k.clone(), zeros(v)?)))
                .collect::<Result<_>>()?,
            v: vars
                .iter()
                .map(|(k, v)| Ok((k.clone(), zeros(v)?)))
                .collect::<Result<_>>()?,
        })
    }

    /// One step with learning rate `lr`:
    /// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε).
    pub fn step(&mut self, vars: &BTreeMap<String, Var>, grads: &TensorMap, lr: f64) -> Result<()> {
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (name, var) in vars {
            let Some(g) = grads.get(name) else {
                bail!("no gradient for {name}: the weight is not used by the loss")
            };
            let (p, m0, v0) = (var.as_tensor(), &self.m[name], &self.v[name]);
            if in_place_ok(&[p, m0, v0]) {
                let betas = (self.beta1, self.beta2);
                super::fused_adam::step(p, m0, v0, g, betas, lr, self.eps, (bc1, bc2))?;
                continue;
            }
            let [p, m, v] = self.tensor_op_update(p, m0, v0, g, lr, (bc1, bc2))?;
            var.set(&p)?;
            self.m.insert(name.clone(), m.detach());
            self.v.insert(name.clone(), v.detach());
        }
        Ok(())
    }

    /// One tensor's update written with tensor ops: the new (p, m, v). The path for the
    /// devices and types without the in-place kernels of [`super::fused_adam`].
    pub fn tensor_op_update(
        &self,
        p: &Tensor,
        m: &Tensor,
        v: &Tensor,
        g: &Tensor,
        lr: f64,
        (bc1, bc2): (f64, f64),
    ) -> Result<[Tensor; 3]> {
        let m = (m.affine(self.beta1, 0.0)? + g.affine(1.0 - self.beta1, 0.0)?)?;
        let v = (v.affine(self.beta2, 0.0)? + g.sqr()?.affine(1.0 - self.beta2, 0.0)?)?;
        let denom = v.sqrt()?.affine(1.0 / bc2.sqrt(), self.eps)?;
        let update = (m.div(&denom)?).affine(lr / bc1, 0.0)?;
        Ok([(p.detach() - update)?, m, v])
    }
}

/// EDM's EMA: half-life `halflife_kimg`·1000 images, limited to `rampup_ratio`·images seen
/// early in training; β = 0.5^(batch / half-life); ema ← lerp(net, ema, β).
#[derive(Debug, Clone)]
pub struct Ema {
    pub halflife_kimg: f64,
    pub rampup_ratio: Option<f64>,
    pub weights: TensorMap,
}

impl Ema {
    pub fn new(
        vars: &BTreeMap<String, Var>,
        halflife_kimg: f64,
        rampup_ratio: Option<f64>,
    ) -> Result<Self> {
        Ok(Self {
            halflife_kimg,
            rampup_ratio,
            weights: snapshot_vars(vars)?,
        })
    }

    /// β for a step of `batch` images taken when `nimg` images had been seen.
    pub fn beta(&self, nimg: u64, batch: usize) -> f64 {
        let mut halflife = self.halflife_kimg * 1000.0;
        if let Some(r) = self.rampup_ratio {
            halflife = halflife.min(nimg as f64 * r);
        }
        0.5f64.powf(batch as f64 / halflife.max(1e-8))
    }

    /// ema ← net + β·(ema − net).
    pub fn update(&mut self, vars: &BTreeMap<String, Var>, beta: f64) -> Result<()> {
        for (name, var) in vars {
            let net = var.as_tensor().detach();
            let ema = &self.weights[name];
            if in_place_ok(&[ema, &net]) {
                super::fused_adam::lerp(ema, &net, beta)?;
                continue;
            }
            let new = (&net + (ema - &net)?.affine(beta, 0.0)?)?;
            self.weights.insert(name.clone(), new);
        }
        Ok(())
    }
}

/// EDM's learning-rate ramp: lr·min(nimg / (rampup_kimg·1000), 1), with `nimg` the images
/// seen before the step (so the very first step has lr 0, as in the reference).
pub fn ramped_lr(lr: f64, rampup_kimg: f64, nimg: u64) -> f64 {
    lr * (nimg as f64 / (rampup_kimg * 1000.0).max(1e-8)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adam on f(p) = ½p² from p = 1: the first step moves p by exactly lr (m̂ = g, v̂ = g²),
    /// as torch (with ε ≪ |g|).
    #[test]
    fn adam_first_step_is_lr_sized() -> Result<()> {
        let dev = Device::Cpu;
        let var = Var::new(&[1.0f32, -2.0], &dev)?;
        let vars = BTreeMap::from([("p".to_string(), var.clone())]);
        let mut adam = Adam::new(&vars, [0.9, 0.999], 1e-8)?;
        let grads = BTreeMap::from([("p".to_string(), var.as_tensor().detach().copy()?)]);
        adam.step(&vars, &grads, 0.1)?;
        let p = var.as_tensor().to_vec1::<f32>()?;
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] + 1.9).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(adam.t, 1);
        Ok(())
    }

    #[test]
    fn ema_beta_and_lr_ramp() {
        let ema = Ema {
            halflife_kimg: 500.0,
            rampup_ratio: Some(0.05),
            weights: TensorMap::new(),
        };
        // First step: half-life 0 → β = 0 (the EMA copies the net).
        assert_eq!(ema.beta(0, 512), 0.0);
        // 10 Mimg seen: half-life min(500k, 500k) → β = 0.5^(512/500000).
        let b = ema.beta(10_000_000, 512);
        assert!((b - 0.5f64.powf(512.0 / 500_000.0)).abs() < 1e-15);
        assert_eq!(ramped_lr(1e-4, 10_000.0, 0), 0.0);
        assert!((ramped_lr(1e-4, 10_000.0, 5_000_000) - 5e-5).abs() < 1e-15);
        assert_eq!(ramped_lr(1e-4, 0.0, 5), 1e-4);
    }

    /// The one-synchronisation norm equals the per-tensor loop (here on the CPU).
    #[test]
    fn global_norm_on_device_equals_the_loop() -> Result<()> {
        let grads = TensorMap::from([
            ("a".to_string(), Tensor::new(&[3f32, 4.], &Device::Cpu)?),
            ("b".to_string(), Tensor::new(&[[12f32]], &Device::Cpu)?),
        ]);
        assert_eq!(global_norm(&grads)?, 13.0);
        assert_eq!(global_norm_on_device(&grads)?, 13.0);
        assert_eq!(global_norm_on_device(&TensorMap::new())?, 0.0);
        Ok(())
    }

    #[test]
    fn nan_to_num_matches_torch() -> Result<()> {
        let g = Tensor::new(
            &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.5],
            &Device::Cpu,
        )?;
        assert_eq!(nan_to_num(&g)?.to_vec1::<f32>()?, vec![0.0, 1e5, -1e5, 2.5]);
        Ok(())
    }

    /// The seeded backend gives the same weights for the same seed, others for another seed.
    #[test]
    fn seeded_init_is_reproducible() -> Result<()> {
        let dev = Device::Cpu;
        let build = |seed| -> Result<Vec<f32>> {
            let (vb, vars) = seeded_var_builder(seed, &dev);
            let _ = candle_nn::linear(4, 3, vb.pp("lin"))?;
            let v = vars();
            assert_eq!(v.len(), 2);
            v["lin.weight"].as_tensor().flatten_all()?.to_vec1::<f32>()
        };
        assert_eq!(build(1)?, build(1)?);
        assert_ne!(build(1)?, build(2)?);
        Ok(())
    }
}
