//! `train`: train one stage of a relay cascade on the pairs of a `downsample` stage — the
//! EDM base stage (`diffusion: edm`) or a relay (blurring) stage (`diffusion: relay`).
//! Resumable: an interrupted run continues from its last snapshot (see [`crate::train`]).
//!
//! ```yaml
//! base:
//!   uses: train                      # or a template: stages/edm-adm-64.yaml
//!   needs: [pairs]
//!   with: { diffusion: edm, resolution: 64, model: adm-64, batch: 512, duration_kimg: 200000 }
//! relay:
//!   uses: train
//!   needs: [pairs]
//!   with: { diffusion: relay, from: 64, to: 256, model: adm-256, batch: 512, steps: 100000 }
//! ```
//!
//! Parameters (defaults are EDM/RDM `train.py`'s, RDM_NOTES §2, §4, §7):
//!
//! | key | meaning | default |
//! |-----|---------|---------|
//! | `diffusion` | `edm` (base stage) or `relay` (blurring stage) | required |
//! | `resolution` | edm: side of the pair image trained on (`KEY.<resolution>.png`) | required for edm |
//! | `from`, `to` | relay: low and high side; trains on `KEY.<to>.png`; `to % from == 0` | required for relay |
//! | `model` | preset (`tiny`, `adm-64`, `adm-256`) or a `config.json` path (relative to the pipeline) | required |
//! | `cond` | train on the `.cls` labels | false |
//! | `classes` | label count when `cond` (else the model's `label_dim`, else max label + 1 in the data) | – |
//! | `batch` | images per optimiser step (all devices) | required |
//! | `micro_batch` | images per forward/backward on one device; gradients accumulate | `batch` |
//! | `steps` / `duration_kimg` | length in steps or in thousands of images (exactly one) | required |
//! | `seed` | weights, noise, shuffle, flips, label dropout | 0 |
//! | `lr`, `betas`, `eps` | Adam | 1e-4, [0.9, 0.999], 1e-8 |
//! | `lr_rampup_kimg` | linear learning-rate warm-up | 10000 |
//! | `ema_halflife_kimg`, `ema_rampup_ratio` | EMA half-life and its ramp-up (null: off) | 500, 0.05 |
//! | `dropout`, `label_dropout` | override the model config's | model's |
//! | `grad_clip` | clip the global gradient norm (null: off) | null |
//! | `loss_scaling`, `loss_divisor` | loss = Σ · scaling / divisor; divisor null = 32 at 64 px, else 256 (RDM) | 1, null |
//! | `xflip` | random horizontal flips | false |
//! | `shuffle_buffer` | samples in the shuffle buffer | 1000 |
//! | `tick_kimg` | one `train_log.parquet` row per tick | 50 |
//! | `snapshot_kimg`, `keep_snapshots` | snapshot cadence, snapshots kept | 500, 3 |
//! | `preview_images`, `preview_steps` | images and sampler steps of each snapshot's grid (0: none) | 16, 18 |
//! | `up_scale`, `block_scale`, `prob_length`, `blur_sigma_max` | relay: BlurLoss settings | to/from, 0.15, 0.93, 3.0 |
//! | `sampler` | sampler defaults stored in `config.json` (EDM or blur sampler fields) | CLI defaults |
//! | `bf16` | bfloat16 network (CUDA builds only) | false |
//! | `fp16` | float16 network as EDM's `--fp16` (CUDA devices only, checked when the stage runs; static `loss_scaling`, no dynamic scaler, as the reference) | false |
//! | `init_from` | continue another run's training (weights, EMA, Adam, step, data position) when this one has no snapshot: an upstream `train` stage in `needs:`, a train output folder or a snapshot folder; only the duration, log/snapshot/preview cadence and sampler defaults may differ (e.g. train a finished run longer) | null |
//! | `augment` | EDM's non-leaky augmentation pipe at probability p with RDM's multipliers; its 9-dim vector conditions the network (`augment_dim` 9); 0 or null: off | null |
//!
//! Output: `model.safetensors` (EMA), `config.json`, `train_log.parquet`, `loss.png`,
//! `samples.png` and `snapshots/`. The run record gets the cost: images seen, wall seconds,
//! device and count, device-hours and estimated training FLOPs.

mod params;
mod resolve;
mod run;

pub use run::check_world;

use super::{
    parse_params, Outcome, ParamError, Params, PlanContext, Resources, StageContext, StageKind,
};
use crate::model::config::PRESETS;
use crate::model::UnetConfig;
use params::TrainParams;
use resolve::{err, load_model};

pub struct Train;

impl StageKind for Train {
    fn name(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "train an EDM base stage or a relay (blurring) stage on paired shards; resumable"
    }
    fn check(&self, with: &Params) -> Result<(), ParamError> {
        let p: TrainParams = parse_params(with)?;
        if PRESETS.contains(&p.model.as_str()) {
            let model = UnetConfig::preset(&p.model).map_err(|e| err("model", e.to_string()))?;
            // The class count is known only once the data is read; any positive one checks the rest.
            let label_dim = if p.cond {
                p.classes.unwrap_or(model.label_dim.max(1))
            } else {
                0
            };
            p.resolve(model, label_dim)?;
        } else {
            p.objective()?;
            if p.model.trim().is_empty() {
                return Err(err("model", "`model` is empty").with_hint(format!(
                    "a preset ({}) or a config.json path",
                    PRESETS.join(", ")
                )));
            }
        }
        Ok(())
    }
    fn resumable(&self) -> bool {
        true
    }
    fn resources(&self, _with: &Params) -> Resources {
        Resources {
            gpu: true,
            fan_out: false,
        }
    }
    fn fingerprint_extra(
        &self,
        cx: &PlanContext<'_>,
        with: &Params,
    ) -> anyhow::Result<serde_json::Value> {
        let p: TrainParams = parse_params(with)?;
        let mut extra = serde_json::Map::new();
        if !PRESETS.contains(&p.model.as_str()) {
            // A model given as a file: its content is part of what the stage does.
            let cfg = load_model(&p.model, cx.pipeline_dir)?;
            extra.insert("model".into(), serde_json::to_value(cfg)?);
        }
        // `init_from` a folder (not an upstream stage, whose fingerprint is an input): the
        // snapshot it continues, by content.
        if let Some(i) = &p.init_from {
            let dir = cx.pipeline_dir.join(i);
            if dir.exists() {
                let snap = run::newest_snapshot(&dir)?;
                extra.insert(
                    "init_from".into(),
                    crate::base::digest::digest_path(&snap)?.into(),
                );
            }
        }
        Ok(match extra.len() {
            0 => serde_json::Value::Null,
            // As before `init_from` existed: the model config alone.
            1 if extra.contains_key("model") => extra.remove("model").unwrap_or_default(),
            _ => serde_json::Value::Object(extra),
        })
    }
    fn run(&self, cx: &StageContext) -> anyhow::Result<Outcome> {
        run::run(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{SamplerDefaults, TrainConfig};
    use std::path::Path;

    fn check(yaml: &str) -> Result<(), ParamError> {
        Train.check(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn parameter_checks() {
        check("{diffusion: edm, resolution: 64, model: adm-64, batch: 512, duration_kimg: 1000}")
            .unwrap();
        check("{diffusion: relay, from: 64, to: 256, model: adm-256, batch: 8, steps: 3}").unwrap();
        let e = check("{diffusion: relay, from: 64, to: 200, model: tiny, batch: 8, steps: 3}")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("to"));
        let e = check("{diffusion: edm, model: tiny, batch: 8, steps: 3}").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("resolution"));
        let e =
            check("{diffusion: edm, resolution: 16, model: tiny, batch: 8, steps: 3, up_scale: 4}")
                .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("up_scale"));
        let e = check("{diffusion: edm, resolution: 16, model: tiny, batch: 8}").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("steps"));
        let e = check(
            "{diffusion: edm, resolution: 16, model: tiny, batch: 8, micro_batch: 3, steps: 1}",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("micro_batch"));
        let e =
            check("{diffusion: edm, resolution: 18, model: tiny, batch: 8, steps: 1}").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("resolution"));
        let e = check("{diffusion: edm, resolution: 16, model: tiny, batch: 8, steps: 1, sampler: {num_step: 3}}")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sampler.num_step"));
        let e = check(
            "{diffusion: edm, resolution: 16, model: tiny, batch: 8, steps: 1, lr_rampup_kmg: 3}",
        )
        .unwrap_err();
        assert_eq!(e.hint.as_deref(), Some("did you mean `lr_rampup_kimg`?"));
    }

    /// Every template under `stages/` with `kind: train` passes the checks.
    #[test]
    fn templates_check() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("stages");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let t: serde_yaml::Value =
                serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            if t["kind"] == "train" {
                Train
                    .check(&t["with"])
                    .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 5, "{n} train templates");
    }

    /// The relay sampler's blur schedule follows the stage's training schedule unless set.
    #[test]
    fn relay_sampler_defaults_follow_the_loss() {
        let p: TrainParams = parse_params(
            &serde_yaml::from_str(
                "{diffusion: relay, from: 8, to: 32, model: tiny, batch: 8, steps: 1, prob_length: 0.89, \
                 blur_sigma_max: 2.0, sampler: {num_steps: 150, truncation_t: 1.05}}",
            )
            .unwrap(),
        )
        .unwrap();
        let cfg = p.resolve(UnetConfig::tiny(), 0).unwrap();
        let SamplerDefaults::Blur(s) = &cfg.sampler else {
            panic!()
        };
        assert_eq!(
            (s.num_steps, s.up_scale, s.blur_sigma_max, s.truncation_t),
            (150, 4, 2.0, 1.05)
        );
        // JSON round trip (S_max = ∞ is stored as f64::MAX).
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&text).unwrap(), cfg);
        let p: TrainParams = parse_params(
            &serde_yaml::from_str(
                "{diffusion: edm, resolution: 16, model: tiny, batch: 8, steps: 1}",
            )
            .unwrap(),
        )
        .unwrap();
        let cfg = p.resolve(UnetConfig::tiny(), 0).unwrap();
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&text).unwrap(), cfg);
        assert_eq!(cfg.loss_divisor, 256.0);
        assert_eq!(cfg.model.img_resolution, 16);
    }
}
