//! The `train` stage (issue 5): a learning check for the base (EDM) and relay stages, an
//! exact resume, and a pipeline source/shapes → shard → downsample → two train stages run
//! through the binary.
//!
//! The library tests build their paired shards directly with the data library (shapes
//! rendered at 16², box-reduced to 4², the `downsample` layout), so they need no stages.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use relay::data::image::encode_png;
use relay::data::resample::box_reduce;
use relay::data::shapes;
use relay::data::tar::ShardWriter;
use relay::diffusion::blur_sampler::BlurSamplerConfig;
use relay::diffusion::edm_sampler::EdmSamplerConfig;
use relay::diffusion::loss::{BlurLoss, EdmLoss};
use relay::diffusion::noise::SeedNoise;
use relay::diffusion::schedule::{normal_cdf, P_MEAN, P_STD};
use relay::model::{EdmPrecond, UnetConfig};
use relay::train::augment::AugmentPipe;
use relay::train::optim::seeded_var_builder;
use relay::train::{
    self,
    parallel::{Collective, Solo, ThreadGroup},
    Duration, Monitor, Objective, SamplerDefaults, TrainCancelled, TrainConfig,
};

use crate::common::Project;

const HI: u32 = 16;
const LO: u32 = 4;

/// `shards` shards of `per` shapes pairs (`KEY.16.png`, `KEY.4.png`, `KEY.cls`).
fn write_pairs(dir: &Path, seed: u64, shards: usize, per: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for s in 0..shards {
        let mut w = ShardWriter::create(&dir.join(format!("pairs-{s:06}.tar"))).unwrap();
        for i in 0..per {
            let index = (s * per + i) as u64;
            let (hi, class) = shapes::render(seed, index, 4, HI);
            let lo = box_reduce(&hi, HI / LO);
            let (hi, lo, cls) = (encode_png(&hi), encode_png(&lo), class.to_string());
            w.write_sample(
                &format!("{index:08}"),
                &[("16.png", &hi), ("4.png", &lo), ("cls", cls.as_bytes())],
            )
            .unwrap();
        }
        w.finish().unwrap();
    }
}

/// A small CPU configuration of the tiny preset at 16².
fn config(objective: Objective, steps: u64) -> TrainConfig {
    let sampler = match objective {
        Objective::Edm { .. } => SamplerDefaults::Edm(EdmSamplerConfig {
            s_max: f64::MAX,
            ..Default::default()
        }),
        Objective::Relay { .. } => SamplerDefaults::Blur(BlurSamplerConfig::default()),
    };
    TrainConfig {
        objective,
        model: UnetConfig::tiny().with_resolution(HI as usize),
        cond: false,
        batch: 8,
        micro_batch: 4,
        duration: Duration::Steps(steps),
        seed: 3,
        lr: 2e-3,
        betas: [0.9, 0.999],
        eps: 1e-8,
        lr_rampup_kimg: 0.04,
        ema_halflife_kimg: 0.5,
        ema_rampup_ratio: Some(0.05),
        grad_clip: None,
        loss_scaling: 1.0,
        loss_divisor: 256.0,
        xflip: true,
        shuffle_buffer: 64,
        tick_kimg: 0.08,
        snapshot_kimg: 2.0,
        keep_snapshots: 2,
        preview_images: 0,
        preview_steps: 6,
        sampler,
        bf16: false,
        fp16: false,
        augment: None,
        init_from: None,
    }
}

/// `cfg` with EDM's augmentation pipe at RDM's multipliers and probability `p`, and the
/// network's augmentation input sized for its vector.
fn augmented(mut cfg: TrainConfig, p: f64) -> TrainConfig {
    let pipe = AugmentPipe::rdm(p);
    cfg.model.augment_dim = pipe.label_dim();
    cfg.augment = Some(pipe);
    cfg
}

fn edm() -> Objective {
    Objective::Edm {
        resolution: HI as usize,
        loss: EdmLoss::default(),
    }
}

fn relay_objective() -> Objective {
    Objective::Relay {
        from: LO as usize,
        to: HI as usize,
        loss: BlurLoss::default(),
    }
}

/// 32 held-out images (another shapes seed) as [−1, 1] tensors.
fn held_out() -> Tensor {
    let mut v = Vec::new();
    for i in 0..32 {
        let (img, _) = shapes::render(999, i, 4, HI);
        let raw = img.as_raw();
        for c in 0..3 {
            for p in 0..(HI * HI) as usize {
                v.push(raw[p * 3 + c] as f32 / 127.5 - 1.0);
            }
        }
    }
    Tensor::from_vec(v, (32, 3, HI as usize, HI as usize), &Device::Cpu).unwrap()
}

/// Mean weighted denoising loss on the held-out images at each σ, with fixed noise.
/// EDM: r = (ln σ − P_mean)/P_std. Relay: the u of that σ on the training schedule, so the
/// input is blurred as the stage trains it (σ = 2 lies just past ℓ = 0.93's top, 1.77).
fn held_out_loss(net: &EdmPrecond, objective: &Objective) -> Vec<f64> {
    let y = held_out();
    [0.2f64, 0.5, 1.0, 2.0]
        .iter()
        .map(|&sigma| {
            let seeds: Vec<u64> = (0..32).map(|i| 10_000 + i).collect();
            let mut noise = SeedNoise::new(&seeds);
            let z = (sigma.ln() - P_MEAN) / P_STD;
            let parts = match objective {
                Objective::Edm { loss, .. } => {
                    loss.loss_at(net, &y, None, &[z; 32], &mut noise).unwrap()
                }
                Objective::Relay { loss, .. } => {
                    let u = normal_cdf(z) / loss.prob_length;
                    loss.loss_at(net, &y, None, &[u; 32], &mut noise).unwrap()
                }
            };
            assert!((parts.sigma[0] - sigma).abs() < 1e-9 * sigma);
            parts
                .loss
                .mean_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        })
        .collect()
}

fn untrained(cfg: &TrainConfig) -> EdmPrecond {
    let (vb, _) = seeded_var_builder(cfg.seed, &Device::Cpu);
    EdmPrecond::new(vb, &cfg.model).unwrap()
}

/// Train, then compare the held-out loss with the untrained network's.
fn learning_check(objective: Objective, steps: u64) -> (Vec<f64>, Vec<f64>) {
    learning_check_with(objective, steps, None)
}

/// The learning check, training with augmentation at probability `augment` when given (the
/// held-out loss is measured on clean images without an augmentation vector, as sampling
/// runs the network).
fn learning_check_with(
    objective: Objective,
    steps: u64,
    augment: Option<f64>,
) -> (Vec<f64>, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs");
    write_pairs(&data, 0, 4, 64);
    let cfg = config(objective.clone(), steps);
    let cfg = match augment {
        Some(p) => augmented(cfg, p),
        None => cfg,
    };
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let cfg = TrainConfig {
        micro_batch: 8,
        lr: 4e-3,
        ..cfg
    };
    let t = std::time::Instant::now();
    let summary =
        train::train(&cfg, &data, &out, &Device::Cpu, "cpu", &Solo, &train::Quiet).unwrap();
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "{}: {steps} steps × {} images in {secs:.1} s ({:.1} img/s), final tick loss {:?}",
        objective.name(),
        cfg.batch,
        (steps * cfg.batch as u64) as f64 / secs,
        summary.final_loss
    );
    for f in [
        "model.safetensors",
        "config.json",
        "train_log.parquet",
        "loss.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let (trained, stage) = train::load_stage_dir(&out, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(stage.cost.images_seen, steps * 8);
    assert_eq!(stage.cost.steps, steps);
    assert!(stage.cost.training_flops > 0.0 && stage.cost.device_hours > 0.0);
    let before = held_out_loss(&untrained(&cfg), &objective);
    let after = held_out_loss(&trained, &objective);
    eprintln!(
        "{} held-out loss at σ = 0.2, 0.5, 1, 2: before {before:.4?}, after {after:.4?}",
        objective.name()
    );
    (before, after)
}

/// The budget: 100 steps of 8 images (0.8 kimg) at lr 4e-3 on 256 training pairs.
const STEPS: u64 = 100;

/// The threshold. Measured on this machine (seed 3; see the report of issue 5), the
/// held-out loss after / before at σ = 0.2, 0.5, 1, 2 was 0.51, 0.43, 0.43, 0.54 (edm) and
/// 0.38, 0.35, 0.41, 0.55 (relay), means 0.48 and 0.42 (an earlier build of the model
/// gave 0.49–0.67: the numbers move a little with float details). σ = 2 improves least
/// because the untrained net (F ≡ 0, so D = c_skip·x) is already the best *linear*
/// denoiser there. We ask for every σ below 0.8× and the mean below 0.6×: room for float
/// differences between machines, while a run that does not learn (a broken gradient or
/// optimiser, ~1.0×) or learns only one noise level fails.
const RATIO_EACH: f64 = 0.8;
const RATIO_MEAN: f64 = 0.6;

fn assert_learned(before: &[f64], after: &[f64]) {
    let ratios: Vec<f64> = before.iter().zip(after).map(|(b, a)| a / b).collect();
    for (i, r) in ratios.iter().enumerate() {
        assert!(
            *r < RATIO_EACH,
            "σ #{i}: after/before = {r:.3} (ratios {ratios:.3?})"
        );
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    assert!(
        mean < RATIO_MEAN,
        "mean after/before = {mean:.3} (ratios {ratios:.3?})"
    );
}

#[test]
fn base_stage_learns() {
    let (before, after) = learning_check(edm(), STEPS);
    assert_learned(&before, &after);
}

#[test]
fn relay_stage_learns() {
    let (before, after) = learning_check(relay_objective(), STEPS);
    assert_learned(&before, &after);
}

/// With RDM's CelebA-HQ augmentation (p = 0.2) the loss on clean held-out images still
/// falls (issue 19): the network learns the clean distribution through the 9-dim vector.
#[test]
fn stages_learn_with_augmentation() {
    let (before, after) = learning_check_with(relay_objective(), STEPS, Some(0.2));
    assert_learned(&before, &after);
    let (before, after) = learning_check_with(edm(), STEPS, Some(0.2));
    assert_learned(&before, &after);
}

/// Cancels once `after` images were seen.
struct CancelAfter(u64, std::cell::Cell<u64>);

impl Monitor for CancelAfter {
    fn progress(&self, nimg: u64, _: String) {
        self.1.set(nimg);
    }
    fn cancelled(&self) -> bool {
        self.1.get() >= self.0
    }
}

fn weights(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let t = candle_core::safetensors::load(dir.join("training-state.safetensors"), &Device::Cpu)
        .unwrap();
    let mut v: Vec<(String, Vec<u32>)> = t
        .into_iter()
        .map(|(k, t)| {
            let bits = t
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (k, bits)
        })
        .collect();
    v.sort();
    v
}

/// N steps straight vs N/2, cancel, resume to N: the same weights, EMA and Adam moments bit
/// for bit, and a log that continues (same steps, same losses) instead of restarting.
/// `cond`: train on the 4 shape classes with label dropout (seeded draws too).
fn exact_resume(objective: Objective, cond: bool) {
    exact_resume_with(objective, cond, 0.0)
}

fn exact_resume_with(objective: Objective, cond: bool, dropout: f64) {
    exact_resume_cfg(config(objective, 8), cond, dropout)
}

fn exact_resume_cfg(cfg: TrainConfig, cond: bool, dropout: f64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs");
    write_pairs(&data, 0, 3, 16);
    let mut cfg = cfg;
    cfg.tick_kimg = 0.016; // a row every 2 steps of 8 images
    cfg.snapshot_kimg = 0.032; // a snapshot every 4 steps
    cfg.preview_images = 2;
    cfg.preview_steps = 3;
    cfg.shuffle_buffer = 7;
    cfg.model.dropout = dropout;
    if cond {
        cfg.cond = true;
        cfg.model = cfg.model.with_label_dim(4);
        cfg.model.label_dropout = 0.25;
    }
    let straight = dir.path().join("straight");
    let resumed = dir.path().join("resumed");
    std::fs::create_dir_all(&straight).unwrap();
    std::fs::create_dir_all(&resumed).unwrap();
    let a = train::train(
        &cfg,
        &data,
        &straight,
        &Device::Cpu,
        "cpu",
        &Solo,
        &train::Quiet,
    )
    .unwrap();
    // Cancel after step 3 (24 images): the run saves a snapshot at step 3 and stops.
    let err = train::train(
        &cfg,
        &data,
        &resumed,
        &Device::Cpu,
        "cpu",
        &Solo,
        &CancelAfter(24, 0.into()),
    )
    .unwrap_err();
    let c = err
        .downcast_ref::<TrainCancelled>()
        .expect("a cancellation");
    assert_eq!(c.step, 3);
    let b = train::train(
        &cfg,
        &data,
        &resumed,
        &Device::Cpu,
        "cpu",
        &Solo,
        &train::Quiet,
    )
    .unwrap();
    assert_eq!(b.resumed_from, Some(3));
    assert_eq!(a.snapshot.file_name(), b.snapshot.file_name());
    let (wa, wb) = (weights(&a.snapshot), weights(&b.snapshot));
    assert_eq!(wa.len(), wb.len());
    for ((ka, va), (kb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(ka, kb);
        assert!(va == vb, "{ka} differs after resume");
    }
    let log = |p: &Path| -> Vec<(u64, u64)> {
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p.join("training-state.json")).unwrap())
                .unwrap();
        s["log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["step"].as_u64().unwrap(),
                    r["loss"].as_f64().unwrap().to_bits(),
                )
            })
            .collect()
    };
    let (la, lb) = (log(&a.snapshot), log(&b.snapshot));
    assert_eq!(la.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 4, 6, 8]);
    assert_eq!(la, lb, "the loss log continues exactly");
    // keep_snapshots: 2 → steps 4 and 8 remain (the cancel snapshot at 3 was pruned).
    let snaps: Vec<String> = std::fs::read_dir(resumed.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert!(resumed.join("samples.png").is_file());
}

#[test]
fn base_stage_resumes_exactly() {
    exact_resume(edm(), true);
}

#[test]
fn relay_stage_resumes_exactly() {
    exact_resume(relay_objective(), false);
}

/// Dropout masks are drawn from (seed, step, micro-batch) keys, so a run with dropout
/// resumes bit for bit too.
#[test]
fn resume_is_exact_with_dropout() {
    exact_resume_with(edm(), false, 0.2);
}

/// fp16 is EDM's CUDA-only `use_fp16`: on the CPU the run refuses before it starts, naming
/// the way out (issue 19).
#[test]
fn fp16_refuses_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs");
    write_pairs(&data, 0, 1, 8);
    let mut cfg = config(edm(), 1);
    cfg.fp16 = true;
    let out = dir.path().join("out");
    let err =
        train::train(&cfg, &data, &out, &Device::Cpu, "cpu", &Solo, &train::Quiet).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("fp16 training runs on CUDA only") && msg.contains("`fp16: false`"),
        "{msg}"
    );
}

/// Augmentation draws from (seed, step, image) streams, so an augmented run resumes bit for
/// bit too (issue 19); p = 0.5 so that most steps transform some image.
#[test]
fn resume_is_exact_with_augmentation() {
    exact_resume_cfg(augmented(config(relay_objective(), 8), 0.5), false, 0.0);
    exact_resume_cfg(augmented(config(edm(), 8), 0.5), true, 0.1);
}

/// Data parallel over two ranks (threads of this process, [`ThreadGroup`]; NCCL is the
/// same protocol between processes): the ranks end with the same weights, only rank 0
/// writes, a cancellation raised on rank 1 stops both at the same step, and the resumed
/// two-rank run ends exactly where the uninterrupted one did. A one-process run refuses
/// the two-rank snapshot.
#[test]
fn two_ranks_stay_in_step_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs");
    write_pairs(&data, 0, 4, 8);
    let mut cfg = config(edm(), 6);
    cfg.tick_kimg = 0.016;
    cfg.snapshot_kimg = 0.032;
    cfg.shuffle_buffer = 5;
    cfg.model.dropout = 0.1;
    let run2 = |name: &str, cancel_at: u64| -> Vec<anyhow::Result<train::TrainSummary>> {
        let outs = [
            dir.path().join(name),
            dir.path().join(format!("{name}-rank1")),
        ];
        for o in &outs {
            std::fs::create_dir_all(o).unwrap();
        }
        let group = ThreadGroup::new(2);
        std::thread::scope(|s| {
            let hs: Vec<_> = group
                .iter()
                .zip(&outs)
                .map(|(g, out)| {
                    let (cfg, data) = (&cfg, &data);
                    s.spawn(move || {
                        // Only rank 1 asks to stop: both must.
                        let at = if g.world().rank == 1 {
                            cancel_at
                        } else {
                            u64::MAX
                        };
                        train::train(
                            cfg,
                            data,
                            out,
                            &Device::Cpu,
                            "cpu",
                            g,
                            &CancelAfter(at, 0.into()),
                        )
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let straight = run2("straight", u64::MAX);
    let (s0, s1) = (straight[0].as_ref().unwrap(), straight[1].as_ref().unwrap());
    assert_eq!(s0.weights_sha256, s1.weights_sha256, "the ranks diverged");
    assert_eq!(s0.cost.device_count, 2);
    assert!(dir.path().join("straight/model.safetensors").is_file());
    assert!(
        !dir.path().join("straight-rank1/snapshots").exists(),
        "rank 1 wrote snapshots"
    );

    let cancelled = run2("resumed", 24);
    for r in &cancelled {
        let e = r.as_ref().unwrap_err();
        let c = e.downcast_ref::<TrainCancelled>().expect("a cancellation");
        assert_eq!(c.step, 3);
    }
    let one = train::train(
        &cfg,
        &data,
        &dir.path().join("resumed"),
        &Device::Cpu,
        "cpu",
        &Solo,
        &train::Quiet,
    )
    .unwrap_err();
    assert!(
        format!("{one:#}").contains("made by 2 processes"),
        "{one:#}"
    );

    let resumed = run2("resumed", u64::MAX);
    let r0 = resumed[0].as_ref().unwrap();
    assert_eq!(r0.resumed_from, Some(3));
    assert_eq!(resumed[1].as_ref().unwrap().resumed_from, Some(3));
    assert_eq!(r0.weights_sha256, s0.weights_sha256, "resume is not exact");
    let (wa, wb) = (weights(&s0.snapshot), weights(&r0.snapshot));
    assert!(wa == wb, "EMA / Adam state differs after resume");
}

/// A NaN loss stops the run with the step and the last good snapshot.
#[test]
fn nan_loss_names_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs");
    write_pairs(&data, 0, 1, 16);
    let mut cfg = config(edm(), 4);
    cfg.lr = 1e30; // step 0 has lr 0 (EDM's ramp); step 1 blows the weights up
    cfg.lr_rampup_kimg = 0.0;
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let e = train::train(&cfg, &data, &out, &Device::Cpu, "cpu", &Solo, &train::Quiet).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("at step 2") && msg.contains("there is no snapshot yet"),
        "{msg}"
    );
}

/// source/shapes → shard → downsample → base + relay `train` stages through the binary:
/// both train (concurrently: neither waits for the other), write their outputs and cost
/// figures, and a second run is cached.
#[test]
fn pipeline_trains_both_stages() {
    let p = Project::new();
    p.write(
        "pipeline.yaml",
        r#"
name: train-it
workdir: runs
stages:
  images:
    uses: source/shapes
    with: { count: 48, resolution: 16, classes: 4, seed: 1 }
  shards:
    uses: shard
    needs: [images]
    with: { samples_per_shard: 16 }
  pairs:
    uses: downsample
    needs: [shards]
    with: { resolutions: [16, 4] }
  base:
    uses: train
    needs: [pairs]
    with: { diffusion: edm, resolution: 16, model: tiny, batch: 8, steps: 6, cond: true, label_dropout: 0.1,
            lr: 1e-3, lr_rampup_kimg: 0, tick_kimg: 0.016, snapshot_kimg: 0.024, preview_images: 4, preview_steps: 4 }
  relay:
    uses: train
    needs: [pairs]
    with: { diffusion: relay, from: 4, to: 16, model: tiny, batch: 8, steps: 6,
            lr: 1e-3, lr_rampup_kimg: 0, tick_kimg: 0.016, snapshot_kimg: 0.024, preview_images: 4, preview_steps: 6 }
"#,
    );
    let run = p.run(&["run", "pipeline.yaml", "--device", "cpu"]);
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    for stage in ["base", "relay"] {
        let out = p.path().join("runs").join(stage);
        for f in [
            "model.safetensors",
            "config.json",
            "train_log.parquet",
            "loss.png",
            "samples.png",
        ] {
            assert!(out.join(f).is_file(), "{stage}/{f} missing");
        }
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["cost"]["images_seen"], 48);
        assert_eq!(cfg["cost"]["device"], "cpu");
    }
    let records = p.records();
    let rec = |s: &str| {
        records
            .iter()
            .find(|r| r["stage"] == s && r["status"] == "ok")
            .cloned()
            .unwrap()
    };
    let (base, relay) = (rec("base"), rec("relay"));
    let text = serde_json::to_string(&base).unwrap();
    assert!(
        text.contains("training_flops") && text.contains("device_hours"),
        "{text}"
    );
    // Concurrent: each started before the other ended.
    let span = |r: &serde_json::Value| {
        let s = |k: &str| r[k].as_str().unwrap().to_string();
        (s("started"), s("ended"))
    };
    let ((bs, be), (rs, re)) = (span(&base), span(&relay));
    assert!(bs <= re && rs <= be, "base {bs}..{be}, relay {rs}..{re}");
    let again = p.run(&["run", "pipeline.yaml", "--device", "cpu"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(p.ok_runs("base"), 1, "the second run must be cached");
    assert_eq!(p.ok_runs("relay"), 1);

    // Rank 1 of a two-process launch (`relay exec` under torchrun or srun): on the CPU the
    // train stage refuses with what to do; other kinds refuse to run on several ranks; the
    // rank's scratch folder does not outlive it.
    let rank1 = |stage: &str| {
        let out = p
            .relay(&["exec", "pipeline.yaml", stage, "--device", "cpu"])
            .env("RANK", "1")
            .env("WORLD_SIZE", "2")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = rank1("base");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("one process per CUDA GPU"), "{err}");
    assert!(!p.path().join("runs/.relay/ranks/base.rank1").exists());
    let (code, err) = rank1("pairs");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("runs as one process"), "{err}");
}

/// Records when each step ended.
struct Clock(std::cell::RefCell<Vec<std::time::Instant>>);

impl Monitor for Clock {
    fn progress(&self, _: u64, _: String) {
        self.0.borrow_mut().push(std::time::Instant::now());
    }
}

/// Training images/s on this machine (by hand: `cargo test --release --test it
/// train::throughput -- --ignored --nocapture`; `THROUGHPUT=adm-64` adds the ADM-64
/// measurement at batch 2, micro-batch 1: minutes per step on two cores, and
/// micro-batch 4 ran out of the 23 GB of this machine). The first step is left out (warm-up).
#[test]
#[ignore]
fn throughput() {
    let dir = tempfile::tempdir().unwrap();
    let mut runs = vec![("tiny", 32usize, 16usize, 16usize, 4u64)];
    if std::env::var("THROUGHPUT").as_deref() == Ok("adm-64") {
        runs.push(("adm-64", 64, 2, 1, 2));
    }
    for (name, side, batch, micro, steps) in runs {
        let data = dir.path().join(format!("pairs-{side}"));
        std::fs::create_dir_all(&data).unwrap();
        let mut w = ShardWriter::create(&data.join("pairs-000000.tar")).unwrap();
        for i in 0..64u64 {
            let (img, class) = shapes::render(0, i, 4, side as u32);
            let png = encode_png(&img);
            w.write_sample(
                &format!("{i:08}"),
                &[
                    (&format!("{side}.png"), &png),
                    ("cls", class.to_string().as_bytes()),
                ],
            )
            .unwrap();
        }
        w.finish().unwrap();
        let mut cfg = config(
            Objective::Edm {
                resolution: side,
                loss: EdmLoss::default(),
            },
            steps,
        );
        cfg.model = UnetConfig::preset(name)
            .unwrap()
            .with_resolution(side)
            .with_label_dim(0);
        cfg.batch = batch;
        cfg.micro_batch = micro;
        cfg.tick_kimg = 1000.0;
        cfg.snapshot_kimg = 1000.0;
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let clock = Clock(Default::default());
        train::train(&cfg, &data, &out, &Device::Cpu, "cpu", &Solo, &clock).unwrap();
        let t = clock.0.borrow();
        let secs = t[t.len() - 1].duration_since(t[0]).as_secs_f64();
        let images = (steps - 1) * batch as u64;
        eprintln!(
            "{name} at {side}², batch {batch} (micro {micro}): {:.2} img/s ({:.1} s/step over {} steps)",
            images as f64 / secs,
            secs / (steps - 1) as f64,
            steps - 1
        );
    }
}

/// kill -9 in the middle of training, then rerun: training resumes from the last snapshot
/// (the step count and the loss log continue; they do not restart at 0).
#[test]
fn kill_9_mid_training_resumes_from_the_last_snapshot() {
    let p = Project::new();
    p.write(
        "pipeline.yaml",
        r#"
name: train-kill
workdir: runs
stages:
  images:
    uses: source/shapes
    with: { count: 64, resolution: 8, classes: 2, seed: 1 }
  shards:
    uses: shard
    needs: [images]
    with: { samples_per_shard: 32 }
  pairs:
    uses: downsample
    needs: [shards]
    with: { resolutions: [8, 4] }
  base:
    uses: train
    needs: [pairs]
    with: { diffusion: edm, resolution: 4, model: tiny, batch: 8, steps: 300,
            lr: 1e-3, lr_rampup_kimg: 0, tick_kimg: 0.08, snapshot_kimg: 0.08, preview_images: 0 }
"#,
    );
    let partial = p.path().join("runs/.relay/partial");
    p.kill_9_when(
        &["run", "pipeline.yaml", "--device", "cpu"],
        std::time::Duration::from_secs(120),
        "no snapshot was written",
        || {
            std::fs::read_dir(&partial)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("base."))
                .any(|e| {
                    std::fs::read_dir(e.path().join("snapshots"))
                        .map(|mut d| {
                            d.any(|x| {
                                x.is_ok_and(|x| {
                                    x.file_name().to_string_lossy().starts_with("snapshot-")
                                })
                            })
                        })
                        .unwrap_or(false)
                })
                .then_some(())
        },
    );
    assert!(
        !p.path().join("runs/base").exists(),
        "nothing published after kill -9"
    );

    let run = p.run(&["run", "pipeline.yaml", "--device", "cpu"]);
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(run.stderr.contains("resuming from"), "{}", run.stderr);
    let (cols, rows) =
        relay::manifest::read_rows(&p.path().join("runs/base/train_log.parquet")).unwrap();
    let c = cols.iter().position(|x| x == "step").unwrap();
    let steps: Vec<u64> = rows.iter().map(|r| r[c].as_u64().unwrap()).collect();
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "the loss log continues: {steps:?}"
    );
    assert_eq!(steps.last(), Some(&300));
}
