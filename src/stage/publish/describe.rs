//! What `publish` says about each stage it publishes: which inputs are models and which is
//! the sample stage, each model's card entry (what its folder says, its sampler defaults and
//! NFE, what training cost), and the sample stage's preview and measured NFE.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

use super::files::{entry_of, folder_name, link_or_copy};
use super::params::{names, PublishParams};
use super::WEIGHTS;
use crate::base::record::Record;
use crate::diffusion::blur_sampler::BlurSamplerConfig;
use crate::diffusion::edm_sampler::EdmSamplerConfig;
use crate::hub::card::{Cost, FileEntry, SamplingEntry, StageEntry, CONFIG_FILE, PREVIEW_FILE};
use crate::sample::model_folder::{self, ModelFolder};
use crate::stage::Input;

/// The model stages to publish, and the sample stage whose preview the card shows.
pub(super) fn pick_inputs<'a>(
    p: &PublishParams,
    inputs: &'a [Input],
) -> anyhow::Result<(Vec<&'a Input>, Option<&'a Input>)> {
    let is_model = |i: &Input| i.dir.join(WEIGHTS).is_file();
    let is_sample = |i: &Input| i.dir.join(PREVIEW_FILE).is_file();
    let chosen: Vec<&Input> = if p.stages.is_empty() {
        inputs.iter().collect()
    } else {
        inputs
            .iter()
            .filter(|i| p.stages.iter().any(|s| names(s, &i.name)))
            .collect()
    };
    let mut models = Vec::new();
    let mut sample = None;
    for i in chosen {
        if is_model(i) {
            if !i.dir.join(CONFIG_FILE).is_file() {
                bail!(
                    "stage `{}` has {WEIGHTS} but no {CONFIG_FILE} ({}): it is not a model folder",
                    i.name,
                    i.dir.display()
                );
            }
            models.push(i);
        } else if is_sample(i) && sample.is_none() {
            sample = Some(i);
        } else if !p.stages.is_empty() {
            bail!(
                "stage `{}` ({}) has neither a {WEIGHTS} nor a {PREVIEW_FILE}: only trained stages and sample stages can be published",
                i.name,
                i.kind
            );
        }
    }
    if models.is_empty() {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        bail!("none of the stages in `needs:` ({}) holds a {WEIGHTS}: list the train stages to publish", names.join(", "));
    }
    Ok((models, sample))
}

/// `models` in the order of `stages` (which was sorted by resolution).
pub(super) fn sorted_like<'a>(stages: &[StageEntry], models: &[&'a Input]) -> Vec<&'a Input> {
    stages
        .iter()
        .filter_map(|s| models.iter().find(|m| m.name == s.name).copied())
        .collect()
}

/// A stage's card entry from its `config.json` and run record; also its class count.
pub(super) fn describe_stage(
    input: &Input,
    records: &[Record],
) -> anyhow::Result<(StageEntry, usize)> {
    let folder = ModelFolder::load(&input.dir)?;
    let (sampler, nfe) = sampler_defaults(&folder.raw, folder.diffusion.as_deref());
    let record = records
        .iter()
        .rev()
        .find(|r| r.stage == input.name && r.fingerprint == input.fingerprint && r.status == "ok");
    Ok((
        StageEntry {
            name: input.name.clone(),
            folder: folder_name(&input.name),
            kind: input.kind.clone(),
            fingerprint: input.fingerprint.clone(),
            resolution: Some(folder.resolution),
            diffusion: folder.diffusion.clone(),
            sampler,
            nfe,
            cost: cost_of(&folder.raw, &input.kind, record),
        },
        folder.unet.label_dim,
    ))
}

/// Sampler defaults as the sample stage would use them (defaults, then what training
/// wrote), and the denoiser evaluations per image they make.
pub(super) fn sampler_defaults(cfg: &Value, diffusion: Option<&str>) -> (Value, Option<u64>) {
    let (kind, trained) = model_folder::diffusion_of(cfg);
    let (sampler, tag) = model_folder::sampler_of(cfg);
    let relay =
        model_folder::is_relay(diffusion.or(kind.as_deref()), tag.as_deref()).unwrap_or(false);
    let settings = model_folder::sampler_settings(&trained, &sampler, relay, &Value::Null);
    let nfe = |steps: usize, order: u8| {
        Some(if order == 2 {
            2 * steps as u64 - 1
        } else {
            steps as u64
        })
    };
    if relay {
        match serde_json::from_value::<BlurSamplerConfig>(settings.clone()) {
            Ok(c) => {
                let steps = c.time_steps().len().saturating_sub(1);
                let n = if steps == 0 {
                    None
                } else {
                    nfe(steps, c.order)
                };
                (serde_json::to_value(&c).unwrap_or(settings), n)
            }
            Err(_) => (settings, None),
        }
    } else {
        match serde_json::from_value::<EdmSamplerConfig>(settings.clone()) {
            Ok(c) if c.num_steps > 0 => {
                let n = nfe(c.num_steps, c.order);
                (serde_json::to_value(&c).unwrap_or(settings), n)
            }
            _ => (settings, None),
        }
    }
}

/// Training cost: `config.json`'s `cost` (written by `train`), else the train stage's run
/// record. Other kinds did not train, so their time is not a training cost.
fn cost_of(cfg: &Value, kind: &str, record: Option<&Record>) -> Cost {
    let from = |v: &Value| Cost {
        images_seen: v.get("images_seen").and_then(Value::as_u64),
        device_hours: v.get("device_hours").and_then(Value::as_f64),
        device: v.get("device").and_then(Value::as_str).map(str::to_string),
        training_flops: v
            .get("training_flops")
            .or_else(|| v.get("flops"))
            .and_then(Value::as_f64),
    };
    if let Some(c) = cfg.get("cost") {
        return from(c);
    }
    match record {
        Some(r) if kind == "train" => {
            let info = Value::Object(r.info.clone());
            let mut c = from(info.get("cost").unwrap_or(&info));
            c.images_seen = c.images_seen.or(r.images);
            c.device_hours = c.device_hours.or(Some(r.device_hours));
            c.device = c.device.or(Some(r.device.clone()));
            c
        }
        _ => Cost::default(),
    }
}

/// The preview grid and measured NFE of a sample stage; stages `preview.png`.
pub(super) fn describe_sample(
    input: &Input,
    out: &Path,
    files: &mut BTreeMap<String, FileEntry>,
) -> anyhow::Result<SamplingEntry> {
    link_or_copy(&input.dir.join(PREVIEW_FILE), &out.join(PREVIEW_FILE))?;
    files.insert(PREVIEW_FILE.into(), entry_of(&out.join(PREVIEW_FILE))?);
    let (mut images, mut nfe, mut resolution) = (None, None, None);
    let manifest = input.dir.join("manifest.parquet");
    if manifest.is_file() {
        let (cols, rows) = crate::manifest::read_rows(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        let col = |n: &str| cols.iter().position(|c| c == n);
        images = Some(rows.len() as u64);
        if let Some(first) = rows.first() {
            nfe = col("nfe").and_then(|c| first[c].as_u64());
            resolution = col("resolution").and_then(|c| first[c].as_u64());
        }
    }
    Ok(SamplingEntry {
        stage: input.name.clone(),
        fingerprint: input.fingerprint.clone(),
        images,
        nfe,
        resolution,
        preview: Some(PREVIEW_FILE.into()),
    })
}
