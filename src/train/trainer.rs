//! The training loop (EDM `training/training_loop.py`, as RelayDiffusion runs it).
//!
//! 1. Build the network on seeded weights; resume weights, Adam moments, EMA, counters,
//!    data position and log from the newest snapshot in `out/snapshots/` if there is one.
//! 2. Each step: set the ramped learning rate; for every micro-batch, draw the noise levels
//!    and noise from per-sample streams keyed by (seed, step, sample), drop labels
//!    (seeded), augment (EDM's pipe, when `augment` is set, keyed the same way), compute the loss ([`EdmLoss`] or [`BlurLoss`]), reduce it as the reference
//!    (`sum · loss_scaling / loss_divisor`) and accumulate its gradients; clean the
//!    gradients (`nan_to_num`, optional clipping); take an Adam step; update the EMA.
//! 3. Each tick: one log row. Each snapshot: EMA weights, training state, preview grid,
//!    `train_log.parquet` and `loss.png`. A NaN loss stops the run naming the step and
//!    the last good snapshot; cancellation saves a snapshot first.
//! 4. At the end: `model.safetensors`, `config.json`, `samples.png` of the last snapshot are
//!    copied to the top of `out`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Result as CResult, Tensor, Var};
use candle_nn::VarBuilder;

use super::augment::SeedAugment;
use super::config::{Cost, Objective, StageConfig, TrainConfig, STAGE_FORMAT};
use super::data::{first_images, DataPosition, DataSpec, PairLoader};
use super::log::{plot, write_parquet, LogRow, TickAcc};
use super::optim::{
    global_norm, mix, nan_to_num, ramped_lr, seeded_var_builder, var_tensors, Adam, Ema, TensorMap,
};
use super::parallel::{self, Collective};
use super::preview::{preview, RelayInputs};
use super::snapshot::{self, Snapshot, StateTensors, TrainState, SAMPLES_PNG, STATE_FORMAT};
use super::{Monitor, TrainCancelled, World};
use crate::diffusion::noise::{one_hot, NoiseSource, SeedNoise};
use crate::diffusion::Denoiser;
use crate::model::dropout::DropoutKey;
use crate::model::{checkpoint, info::flops_per_image, EdmPrecond};

/// Stream purposes mixed into the per-sample keys.
const LABEL_DROP: u64 = 0x1ABE1;
const DROPOUT: u64 = 0xD809;
const AUGMENT: u64 = 0xA06;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub cost: Cost,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// Mean loss of the last tick.
    pub final_loss: Option<f64>,
    /// The last snapshot folder (rank 0's; other ranks write none).
    pub snapshot: PathBuf,
    /// sha256 of the final raw weights (name order, little-endian float32): equal on every
    /// rank of a data-parallel run.
    pub weights_sha256: String,
}

fn weights_sha256(vars: &BTreeMap<String, Var>) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, var) in vars {
        h.update(name.as_bytes());
        let values = var
            .as_tensor()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        h.update(&bytes);
    }
    Ok(crate::util::hex(&h.finalize()))
}

/// The training-mode denoiser: dropout on, its masks drawn from the key (label dropout
/// is done by the loop, seeded); the augmentation vector of the batch, if augmented.
struct Training<'a>(&'a EdmPrecond, DropoutKey, Option<Tensor>);

impl Denoiser for Training<'_> {
    fn denoise(&self, x: &Tensor, sigma: &Tensor, labels: Option<&Tensor>) -> CResult<Tensor> {
        self.0
            .forward_train(x, sigma, labels, self.2.as_ref(), self.1)
    }
    fn label_dim(&self) -> usize {
        self.0.config().label_dim
    }
}

/// Where a run is, and what it needs to go on.
struct Run<'a> {
    cfg: &'a TrainConfig,
    world: World,
    group: &'a dyn Collective,
    device: &'a Device,
    device_name: String,
    out: &'a Path,
    snap_dir: PathBuf,
    vars: BTreeMap<String, Var>,
    adam: Adam,
    ema: Ema,
    state: TrainState,
    relay_inputs: Option<RelayInputs>,
    flops_per_image: u64,
    /// When this process started training, and the wall seconds of earlier runs.
    run_start: Instant,
    wall_before: f64,
    tick_start: Instant,
}

/// Train `cfg` on the pairs in `data_dir`, writing into `out` (resuming from its snapshots).
/// `device_name` is what the cost figures call the device (`cpu`, `cuda:0`).
///
/// With a `group` of several ranks (data parallel), every rank calls this with its own
/// device; rank 0 reads and writes `out` (snapshots, logs, weights), the other ranks get
/// its state at the start and write nothing.
pub fn train(
    cfg: &TrainConfig,
    data_dir: &Path,
    out: &Path,
    device: &Device,
    device_name: &str,
    group: &dyn Collective,
    mon: &dyn Monitor,
) -> anyhow::Result<TrainSummary> {
    let world = group.world();
    let lead = world.rank == 0;
    cfg.validate(world.size)?;
    if cfg.fp16 && !device.is_cuda() {
        bail!(
            "fp16 training runs on CUDA only (EDM's use_fp16 is ignored off CUDA too); set \
             `fp16: false` to train on {device_name}"
        );
    }
    let res = cfg.objective.train_resolution();
    let dtype = cfg.network_dtype();

    // 1. Seeded weights, the optimiser and the EMA; then the newest snapshot, if any.
    let mut train_model = cfg.model.clone();
    train_model.label_dropout = 0.0; // done below with seeded draws
    let (vb, created) = seeded_var_builder(cfg.seed, device);
    let net_f32 = EdmPrecond::new(vb, &train_model)?;
    let vars = created();
    let adam = Adam::new(&vars, cfg.betas, cfg.eps)?;
    let ema = Ema::new(&vars, cfg.ema_halflife_kimg, cfg.ema_rampup_ratio)?;
    let snap_dir = out.join("snapshots");
    if lead {
        snapshot::clean_tmp(&snap_dir)?;
    }
    let state = TrainState {
        format: STATE_FORMAT,
        step: 0,
        nimg: 0,
        adam_t: 0,
        data: DataPosition::default(),
        data_ranks: Vec::new(),
        tick: TickAcc::new(0, 0),
        log: Vec::new(),
        wall_seconds: 0.0,
        snapshot_nimg: 0,
        rng: "per-sample Philox streams keyed by mix(seed, step, sample index[, purpose])".into(),
        config: cfg.clone(),
    };
    let relay_inputs = match (&cfg.objective, cfg.preview_images) {
        (Objective::Relay { from, to, .. }, n) if n > 0 && lead => {
            Some(relay_inputs(data_dir, *from, *to, n, device)?)
        }
        _ => None,
    };
    let mut run = Run {
        cfg,
        world,
        group,
        device,
        device_name: device_name.to_string(),
        out,
        snap_dir,
        vars,
        adam,
        ema,
        state,
        relay_inputs,
        flops_per_image: flops_per_image(&cfg.model, res)?,
        run_start: Instant::now(),
        wall_before: 0.0,
        tick_start: Instant::now(),
    };
    let resumed_from = if lead { run.resume(mon)? } else { None };
    let resumed_from = if world.size > 1 {
        run.sync_from_lead()?
    } else {
        resumed_from
    };

    // 2. Steps.
    let total = cfg.total_images();
    let spec = DataSpec {
        dir: data_dir.to_path_buf(),
        side: res,
        label_dim: cfg.cond.then_some(cfg.model.label_dim),
        xflip: cfg.xflip,
        shuffle_buffer: cfg.shuffle_buffer,
        seed: cfg.seed,
        rank: world.rank,
        world: world.size,
        per_rank: cfg.batch / world.size,
    };
    let mut loader = PairLoader::open(spec, run.state.data)?;
    mon.start(total, run.state.nimg);
    let mut last_snapshot = snapshot::list(&run.snap_dir)?.last().cloned();
    while run.state.nimg < total {
        if parallel::any(group, mon.cancelled(), device)? {
            run.gather_positions(&loader)?;
            let dir = if lead {
                run.snapshot(false)?
            } else {
                run.snap_dir.clone()
            };
            return Err(TrainCancelled {
                step: run.state.step,
                snapshot: dir,
            }
            .into());
        }
        let lr = ramped_lr(cfg.lr, cfg.lr_rampup_kimg, run.state.nimg);
        let net = if dtype == DType::F32 {
            net_f32.clone()
        } else {
            let vb = VarBuilder::from_tensors(var_tensors(&run.vars, dtype)?, dtype, device);
            EdmPrecond::new(vb, &train_model)?
        };
        let (grads, step_acc, nan) = run.gradients(&net, &mut loader)?;
        let grads = run.reduce(grads, step_acc, nan, last_snapshot.as_deref())?;
        run.adam.step(&run.vars, &grads, lr)?;
        if lead {
            // Only rank 0 writes snapshots, so only it keeps the EMA.
            let beta = run.ema.beta(run.state.nimg, cfg.batch);
            run.ema.update(&run.vars, beta)?;
        }
        run.state.step += 1;
        run.state.nimg += cfg.batch as u64;
        run.state.adam_t = run.adam.t;
        run.state.data = loader.position();

        // 3. Ticks and snapshots (both functions of the image count, so a resumed run
        //    logs and snapshots where the uninterrupted one does).
        let nimg = run.state.nimg;
        let snap_due = nimg >= total
            || nimg as f64 >= run.state.snapshot_nimg as f64 + cfg.snapshot_kimg * 1000.0;
        let tick_due =
            snap_due || nimg as f64 >= run.state.tick.start_nimg as f64 + cfg.tick_kimg * 1000.0;
        if tick_due {
            let secs = run.state.tick.seconds_before + run.tick_start.elapsed().as_secs_f64();
            let row =
                LogRow::from_tick(&run.state.tick, run.state.step, nimg, lr, secs, run.wall());
            if lead {
                mon.log(&format!(
                    "step {} kimg {:.2} loss {:.4} {:.1} img/s lr {:.3e}",
                    row.step, row.kimg, row.loss, row.images_per_sec, row.lr
                ));
            }
            run.state.log.push(row);
            run.state.tick = TickAcc::new(run.state.step, nimg);
            run.tick_start = Instant::now();
        }
        let shown = run.state.log.last().map_or(f64::NAN, |r| r.loss);
        mon.progress(
            nimg,
            format!("kimg {:.2} loss {shown:.4}", nimg as f64 / 1000.0),
        );
        if snap_due {
            run.gather_positions(&loader)?;
            if lead {
                last_snapshot = Some(run.snapshot(true)?);
            } else {
                // The cadence moves on every rank, so they agree on the next snapshot.
                run.state.snapshot_nimg = nimg;
            }
        }
    }
    if !lead {
        return Ok(TrainSummary {
            cost: run.cost(),
            resumed_from,
            final_loss: run.state.log.last().map(|r| r.loss),
            snapshot: run.snap_dir.clone(),
            weights_sha256: weights_sha256(&run.vars)?,
        });
    }

    // 4. Publish the last snapshot's weights and config at the top of `out`.
    let last = match snapshot::list(&run.snap_dir)?.last() {
        Some(p) if run.state.step > 0 => p.clone(),
        _ => run.snapshot(true)?,
    };
    for name in [
        checkpoint::WEIGHTS_FILE,
        checkpoint::CONFIG_FILE,
        SAMPLES_PNG,
    ] {
        let src = last.join(name);
        if src.is_file() {
            let tmp = out.join(format!(".{name}.tmp"));
            std::fs::copy(&src, &tmp).with_context(|| format!("copying `{}`", src.display()))?;
            std::fs::rename(&tmp, out.join(name))
                .with_context(|| format!("writing `{}`", out.join(name).display()))?;
        }
    }
    run.write_logs()?;
    Ok(TrainSummary {
        cost: run.cost(),
        resumed_from,
        final_loss: run.state.log.last().map(|r| r.loss),
        snapshot: last,
        weights_sha256: weights_sha256(&run.vars)?,
    })
}

fn relay_inputs(
    dir: &Path,
    from: usize,
    to: usize,
    n: usize,
    device: &Device,
) -> anyhow::Result<RelayInputs> {
    let low = first_images(dir, from, n)?;
    let high = first_images(dir, to, n)?;
    let k = low.len().min(high.len());
    if k == 0 {
        bail!("no training pair to preview in `{}`", dir.display());
    }
    let stack = |v: &[(Vec<f32>, Option<i64>)], side: usize| -> CResult<Tensor> {
        let flat: Vec<f32> = v
            .iter()
            .take(k)
            .flat_map(|(x, _)| x.iter().copied())
            .collect();
        Tensor::from_vec(flat, (k, 3, side, side), &Device::Cpu)?.to_device(device)
    };
    let classes: Option<Vec<usize>> = low
        .iter()
        .take(k)
        .map(|(_, l)| l.map(|c| c.max(0) as usize))
        .collect();
    Ok(RelayInputs {
        low: stack(&low, from)?,
        high: stack(&high, to)?,
        classes,
    })
}

impl Run<'_> {
    fn wall(&self) -> f64 {
        self.wall_before + self.run_start.elapsed().as_secs_f64()
    }

    fn cost(&self) -> Cost {
        let wall = self.wall();
        let count = self.world.size;
        Cost {
            steps: self.state.step,
            images_seen: self.state.nimg,
            wall_seconds: wall,
            device: self.device_name.clone(),
            device_count: count,
            device_hours: wall * count as f64 / 3600.0,
            forward_flops_per_image: self.flops_per_image,
            training_flops: 3.0 * self.flops_per_image as f64 * self.state.nimg as f64,
        }
    }

    /// Load the newest snapshot, if any. Returns its step.
    fn resume(&mut self, mon: &dyn Monitor) -> anyhow::Result<Option<u64>> {
        let own = snapshot::list(&self.snap_dir)?.last().cloned();
        let (dir, continued) = match (own, &self.cfg.init_from) {
            (Some(d), _) => (d, false),
            (None, Some(init)) => (init.clone(), true),
            (None, None) => return Ok(None),
        };
        let (mut state, t) = snapshot::read(&dir, self.device)?;
        if continued {
            let differ = self.cfg.cannot_continue(&state.config);
            if !differ.is_empty() {
                bail!(
                    "`init_from`: the snapshot `{}` was trained with other {}; a continued run may change only {} (or train from scratch without `init_from`)",
                    dir.display(),
                    differ.join(", "),
                    TrainConfig::EXTENDABLE[..7].join(", ")
                );
            }
            state.config = self.cfg.clone();
            mon.log(&format!(
                "continuing the training of `{}` (init_from)",
                dir.display()
            ));
        }
        if state.config != *self.cfg {
            bail!(
                "the snapshot `{}` was made with other training settings; remove `{}` to start over",
                dir.display(),
                self.snap_dir.display()
            );
        }
        if self.world.size == 1 && state.data_ranks.len() > 1 {
            bail!(
                "the snapshot `{}` was made by {} processes; resume with as many (WORLD_SIZE) or \
                 remove `{}` to start over",
                dir.display(),
                state.data_ranks.len(),
                self.snap_dir.display()
            );
        }
        for (name, var) in &self.vars {
            let Some(v) = t.net.get(name) else {
                bail!("`{}` lacks the weight {name}", dir.display())
            };
            var.set(v)?;
        }
        let check = |m: &TensorMap, what: &str| -> anyhow::Result<()> {
            if m.len() != self.vars.len() || self.vars.keys().any(|k| !m.contains_key(k)) {
                bail!(
                    "`{}`: the {what} tensors do not match the network",
                    dir.display()
                );
            }
            Ok(())
        };
        check(&t.ema, "EMA")?;
        check(&t.adam_m, "Adam")?;
        check(&t.adam_v, "Adam")?;
        self.ema.weights = t.ema;
        self.adam.m = t.adam_m;
        self.adam.v = t.adam_v;
        self.adam.t = state.adam_t;
        self.wall_before = state.wall_seconds;
        self.state = state;
        self.run_start = Instant::now();
        self.tick_start = Instant::now();
        mon.log(&format!(
            "resuming from `{}`: step {}, {:.2} kimg",
            dir.display(),
            self.state.step,
            self.state.nimg as f64 / 1000.0
        ));
        Ok(Some(self.state.step))
    }

    /// Forward + backward over this rank's micro-batches of the step: the summed
    /// gradients, the step's loss sums (for the tick log) and, if a loss was not finite,
    /// what to say about it (then the gradients are zeros and the run stops after the
    /// all-reduce, on every rank).
    fn gradients(
        &mut self,
        net: &EdmPrecond,
        loader: &mut PairLoader,
    ) -> anyhow::Result<(TensorMap, TickAcc, Option<String>)> {
        let cfg = self.cfg;
        let micro = cfg.micro_batch;
        let accum = cfg.batch / (micro * self.world.size);
        let weight = cfg.loss_scaling / cfg.loss_divisor;
        let label_dim = cfg.model.label_dim;
        let mut acc = TickAcc::default();
        let mut sum: Option<TensorMap> = None;
        for m in 0..accum {
            let batch = loader.next_batch(micro, self.device)?;
            let first = ((self.world.rank * accum + m) * micro) as u64;
            let keys: Vec<u64> = (0..micro as u64).map(|j| first + j).collect();
            let seeds: Vec<u64> = keys
                .iter()
                .map(|&k| mix(&[cfg.seed, self.state.step, k]))
                .collect();
            let mut noise = SeedNoise::new(&seeds);
            let labels = match &batch.classes {
                Some(classes) => {
                    let oh = one_hot(classes, label_dim, DType::F32, &Device::Cpu)?;
                    let keep: Vec<f32> = keys
                        .iter()
                        .map(|&k| {
                            let u = (mix(&[cfg.seed, self.state.step, k, LABEL_DROP]) >> 11) as f64
                                / (1u64 << 53) as f64;
                            if u >= cfg.model.label_dropout {
                                1.0
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let keep = Tensor::from_vec(keep, (micro, 1), &Device::Cpu)?;
                    Some(oh.broadcast_mul(&keep)?.to_device(self.device)?)
                }
                None => None,
            };
            // EDM's augmentation pipe, one stream per (seed, step, image); the loss then
            // sees the augmented image (BlurLoss blurs it) and the network its vector.
            let (y, augment_labels) = match &cfg.augment {
                Some(pipe) => {
                    let aug_seeds: Vec<u64> = keys
                        .iter()
                        .map(|&k| mix(&[cfg.seed, self.state.step, k, AUGMENT]))
                        .collect();
                    let a = pipe.apply(&batch.images, &mut SeedAugment::new(&aug_seeds))?;
                    (a.images, Some(a.labels))
                }
                None => (batch.images.clone(), None),
            };
            let y = &y;
            let d = Training(
                net,
                DropoutKey(mix(&[cfg.seed, self.state.step, first, DROPOUT])),
                augment_labels,
            );
            let parts = match &cfg.objective {
                Objective::Edm { loss, .. } => {
                    let r = noise
                        .randn(&[], DType::F64, &Device::Cpu)?
                        .to_vec1::<f64>()?;
                    loss.loss_at(&d, y, labels.as_ref(), &r, &mut noise)?
                }
                Objective::Relay { loss, .. } => {
                    let u = noise.uniform()?;
                    loss.loss_at(&d, y, labels.as_ref(), &u, &mut noise)?
                }
            };
            let per: Vec<f64> = parts
                .loss
                .mean((1, 2, 3))?
                .to_dtype(DType::F64)?
                .to_vec1()?;
            if let Some(j) = per.iter().position(|v| !v.is_finite()) {
                let what = format!(
                    "the loss is {} at step {} (image {}, σ = {:.4})",
                    per[j],
                    self.state.step,
                    self.state.nimg + first + j as u64,
                    parts.sigma[j]
                );
                let zeros = self
                    .vars
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.as_tensor().zeros_like()?)))
                    .collect::<CResult<TensorMap>>()?;
                return Ok((zeros, acc, Some(what)));
            }
            for (s, l) in parts.sigma.iter().zip(&per) {
                acc.add(*s, *l);
            }
            let grads = (parts.loss.sum_all()? * weight)?.backward()?;
            let mut next = TensorMap::new();
            for (name, var) in &self.vars {
                let Some(g) = grads.get(var) else {
                    bail!("no gradient reached {name}")
                };
                let g = g.to_dtype(DType::F32)?;
                let g = match sum.as_mut().and_then(|s| s.remove(name)) {
                    Some(acc) => (acc + g)?,
                    None => g,
                };
                next.insert(name.clone(), g);
            }
            sum = Some(next);
        }
        Ok((sum.unwrap_or_default(), acc, None))
    }

    /// Sum the gradients and the loss sums over the ranks; stop every rank if any had a
    /// non-finite loss; clean the gradients (`nan_to_num`, optional clipping) as the
    /// reference does after DDP's all-reduce.
    fn reduce(
        &mut self,
        grads: TensorMap,
        acc: TickAcc,
        nan: Option<String>,
        last: Option<&Path>,
    ) -> anyhow::Result<TensorMap> {
        let cfg = self.cfg;
        let (grads, acc, nan_ranks) = if self.world.size == 1 {
            (grads, acc, u64::from(nan.is_some()))
        } else {
            let flat = self
                .group
                .all_reduce_sum(&parallel::flatten(&grads, &[])?)?;
            let (summed, _) = parallel::unflatten(&flat, &grads, 0)?;
            let mut sums = acc.sums();
            sums.push(if nan.is_some() { 1.0 } else { 0.0 });
            let sums = self
                .group
                .all_reduce_sum(&Tensor::new(sums.as_slice(), self.device)?)?
                .to_vec1::<f64>()?;
            let flags = sums[sums.len() - 1] as u64;
            (summed, TickAcc::from_sums(&sums), flags)
        };
        if nan_ranks > 0 {
            let snap = match last {
                Some(p) => format!("the last good snapshot is `{}`", p.display()),
                None => "there is no snapshot yet".to_string(),
            };
            let what = nan.unwrap_or_else(|| {
                format!(
                    "the loss is not finite on {nan_ranks} other rank(s) at step {}",
                    self.state.step
                )
            });
            bail!("{what}; {snap}. Lower `lr`, set `grad_clip`, or check the data");
        }
        self.state.tick.merge(&acc);
        let mut out = TensorMap::new();
        for (name, g) in grads {
            out.insert(name, nan_to_num(&g)?);
        }
        if let Some(max) = cfg.grad_clip {
            let norm = global_norm(&out)?;
            if norm > max {
                let scale = max / (norm + 1e-6);
                for g in out.values_mut() {
                    *g = g.affine(scale, 0.0)?;
                }
            }
        }
        Ok(out)
    }

    /// Several ranks: every rank takes rank 0's state (counters, weights, Adam moments)
    /// and its own data position. Returns the step resumed from, if any.
    fn sync_from_lead(&mut self) -> anyhow::Result<Option<u64>> {
        let size = self.world.size;
        // Header: ok flag, step, nimg, adam_t, snapshot_nimg, tick start step and nimg,
        // then every rank's (epoch, taken). Counts stay far below 2^53, exact in f64.
        let st = &self.state;
        let resumed_ok = st.step == 0 || st.data_ranks.len() == size;
        let mut h = vec![
            if resumed_ok {
                1.0
            } else {
                st.data_ranks.len().max(1) as f64
            },
            st.step as f64,
            st.nimg as f64,
            st.adam_t as f64,
            st.snapshot_nimg as f64,
            st.tick.start_step as f64,
            st.tick.start_nimg as f64,
        ];
        for r in 0..size {
            let p = st.data_ranks.get(r).copied().unwrap_or_default();
            h.extend([p.epoch as f64, p.taken as f64]);
        }
        let h = self
            .group
            .broadcast(&Tensor::new(h.as_slice(), self.device)?)?
            .to_vec1::<f64>()?;
        if h[0] != 1.0 {
            bail!(
                "the snapshot in `{}` was made by {} process(es), this run has {size}; resume                  with the same number of processes or remove the snapshots to start over",
                self.snap_dir.display(),
                h[0]
            );
        }
        let rank = self.world.rank;
        let pos = |r: usize| DataPosition {
            epoch: h[7 + 2 * r] as u64,
            taken: h[8 + 2 * r] as u64,
        };
        self.state.step = h[1] as u64;
        self.state.nimg = h[2] as u64;
        self.state.adam_t = h[3] as u64;
        self.state.snapshot_nimg = h[4] as u64;
        if rank != 0 {
            self.state.tick = TickAcc::new(h[5] as u64, h[6] as u64);
        }
        self.state.data = pos(rank);
        self.adam.t = self.state.adam_t;
        let weights =
            parallel::broadcast_map(self.group, &super::optim::snapshot_vars(&self.vars)?)?;
        for (name, var) in &self.vars {
            var.set(&weights[name])?;
        }
        self.adam.m = parallel::broadcast_map(self.group, &self.adam.m)?;
        self.adam.v = parallel::broadcast_map(self.group, &self.adam.v)?;
        Ok((self.state.step > 0).then_some(self.state.step))
    }

    /// Several ranks: record every rank's data position (rank 0 writes them into the
    /// snapshot); one rank: its own.
    fn gather_positions(&mut self, loader: &PairLoader) -> anyhow::Result<()> {
        let p = loader.position();
        self.state.data = p;
        if self.world.size > 1 {
            let mine = Tensor::new(&[p.epoch as f64, p.taken as f64], self.device)?;
            let all = self.group.all_gather(&mine)?.to_vec1::<f64>()?;
            self.state.data_ranks = all
                .chunks(2)
                .map(|c| DataPosition {
                    epoch: c[0] as u64,
                    taken: c[1] as u64,
                })
                .collect();
        }
        Ok(())
    }

    fn stage_config(&self) -> StageConfig {
        StageConfig {
            format: STAGE_FORMAT.to_string(),
            model: self.cfg.model.clone(),
            diffusion: self.cfg.objective.clone(),
            sampler: self.cfg.sampler.clone(),
            training: serde_json::to_value(self.cfg).unwrap_or_default(),
            cost: self.cost(),
            step: self.state.step,
            kimg: self.state.nimg as f64 / 1000.0,
        }
    }

    fn write_logs(&self) -> anyhow::Result<()> {
        write_parquet(&self.state.log, &self.out.join("train_log.parquet"))?;
        let png = self.out.join("loss.png");
        let tmp = self.out.join(".loss.png.tmp.png");
        plot(&self.state.log)?
            .save(&tmp)
            .with_context(|| format!("writing `{}`", tmp.display()))?;
        std::fs::rename(&tmp, &png).with_context(|| format!("writing `{}`", png.display()))?;
        Ok(())
    }

    /// Write a snapshot of the current state. A `periodic` one (the cadence, or the end) has
    /// a preview grid and moves the cadence; one written on cancellation does neither, so a
    /// resumed run snapshots at the same steps as an uninterrupted one.
    fn snapshot(&mut self, periodic: bool) -> anyhow::Result<PathBuf> {
        let samples = if periodic && self.cfg.preview_images > 0 {
            let map = self
                .ema
                .weights
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let vb = VarBuilder::from_tensors(map, DType::F32, self.device);
            let net = EdmPrecond::new(vb, &self.cfg.model)?;
            Some(
                preview(&net, self.cfg, self.relay_inputs.as_ref(), self.device)
                    .context("drawing the preview grid")?,
            )
        } else {
            None
        };
        // The state as it stands between two steps; an open tick keeps its time so far.
        let mut state = self.state.clone();
        state.tick.seconds_before += self.tick_start.elapsed().as_secs_f64();
        state.wall_seconds = self.wall();
        if periodic {
            state.snapshot_nimg = state.nimg;
        }
        let tensors = StateTensors {
            net: super::optim::snapshot_vars(&self.vars)?,
            ema: self.ema.weights.clone(),
            adam_m: self.adam.m.clone(),
            adam_v: self.adam.v.clone(),
        };
        let stage_config = self.stage_config();
        let dir = snapshot::write(
            &self.snap_dir,
            &Snapshot {
                state: &state,
                tensors,
                stage_config: &stage_config,
                samples: samples.as_ref(),
            },
            self.cfg.keep_snapshots,
        )?;
        self.state.snapshot_nimg = state.snapshot_nimg;
        self.write_logs()?;
        Ok(dir)
    }
}
