//! What a model folder's `config.json` says about itself: the network, the diffusion it was
//! trained with (for a relay stage, its blur schedule), and the sampler defaults training
//! wrote. Read by the sample chain and by `publish` (one parser for both).
//!
//! `config.json` is either a plain network config (a converted checkpoint) or
//! `{ "model": {...}, "diffusion": {...}, "sampler": {...}, "cost": {...} }` (a `train` output).
//! The pure functions below read the parts of such a JSON value; [`ModelFolder::load`] reads
//! the file and the network with them.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::diffusion::blur_sampler::defaults_from_training;
use crate::model::UnetConfig;

/// A model folder's `config.json`, read.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub unet: UnetConfig,
    /// `edm` or `relay`, when the folder says so.
    pub diffusion: Option<String>,
    /// Diffusion settings (`up_scale`, `blur_sigma_max`, `prob_length`, ...).
    pub diffusion_settings: Value,
    /// Sampler defaults written at training time.
    pub sampler: Value,
    /// `edm` or `blur` when training tagged its sampler defaults with the sampler.
    pub sampler_kind: Option<String>,
    /// Resolution the model generates.
    pub resolution: usize,
    /// The whole `config.json` (e.g. the `cost` that `train` wrote).
    pub raw: Value,
}

impl ModelFolder {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {}: is this a model folder (config.json + model.safetensors)?",
                path.display()
            )
        })?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let model = v.get("model").unwrap_or(&v);
        let unet = UnetConfig::from_json(&model.to_string())
            .with_context(|| format!("the network config in {}", path.display()))?;
        let (diffusion, diffusion_settings) = diffusion_of(&v);
        let raw_diffusion = v.get("model").and(v.get("diffusion"));
        let resolution = ["resolution", "to"]
            .iter()
            .find_map(|k| raw_diffusion?.get(k).and_then(Value::as_u64))
            .or_else(|| v.get("resolution").and_then(Value::as_u64))
            .map(|r| r as usize)
            .unwrap_or(unet.img_resolution);
        let (sampler, sampler_kind) = sampler_of(&v);
        Ok(Self {
            unet,
            diffusion,
            diffusion_settings,
            sampler,
            sampler_kind,
            resolution,
            raw: v,
        })
    }

    /// Whether the folder says it is a relay (blurring) stage.
    pub fn is_relay(&self) -> Option<bool> {
        is_relay(self.diffusion.as_deref(), self.sampler_kind.as_deref())
    }

    /// The sampler settings of this model (see [`sampler_settings`]).
    pub fn sampler_settings(&self, relay: bool, overrides: &Value) -> Value {
        sampler_settings(&self.diffusion_settings, &self.sampler, relay, overrides)
    }
}

/// The diffusion kind of a `config.json` (`edm`, `relay`) and its settings. A trained stage
/// (`relay-stage/1`) keeps its blur settings under `diffusion.loss`: they are merged in.
/// A plain network config (no `model` key) says nothing.
pub fn diffusion_of(v: &Value) -> (Option<String>, Value) {
    let diffusion = match v.get("model") {
        Some(_) => v.get("diffusion").unwrap_or(&Value::Null),
        None => &Value::Null,
    };
    match diffusion {
        Value::String(s) => (Some(s.clone()), Value::Null),
        Value::Object(o) => {
            let mut settings = diffusion.clone();
            if let Some(loss) = o.get("loss") {
                merge_json(&mut settings, loss);
            }
            let kind = o
                .get("kind")
                .or_else(|| o.get("type"))
                .and_then(Value::as_str)
                .map(str::to_string);
            (kind, settings)
        }
        _ => (None, Value::Null),
    }
}

/// The sampler defaults of a `config.json`, bare or tagged by sampler (`{"edm": {...}}`,
/// `{"blur": {...}}`), and the tag.
pub fn sampler_of(v: &Value) -> (Value, Option<String>) {
    match v.get("sampler") {
        Some(Value::Object(o))
            if o.len() == 1 && (o.contains_key("edm") || o.contains_key("blur")) =>
        {
            let (k, s) = o.iter().next().expect("one entry");
            (s.clone(), Some(k.clone()))
        }
        Some(other) => (other.clone(), None),
        None => (Value::Null, None),
    }
}

/// Whether a model is a relay (blurring) stage: its diffusion kind, else the tag of its
/// sampler defaults; `None` when it says neither.
pub fn is_relay(diffusion: Option<&str>, sampler_kind: Option<&str>) -> Option<bool> {
    let kind = diffusion.or(match sampler_kind {
        Some("blur") => Some("relay"),
        Some(_) => Some("edm"),
        None => None,
    })?;
    Some(matches!(kind, "relay" | "blur"))
}

/// A model's sampler settings: serde's defaults (filled in by the caller's
/// deserialisation), then, for a relay stage, the blur schedule it was trained with
/// ([`defaults_from_training`]), then the defaults training wrote, then `overrides`.
pub fn sampler_settings(
    diffusion_settings: &Value,
    sampler: &Value,
    relay: bool,
    overrides: &Value,
) -> Value {
    let mut settings = Value::Object(if relay {
        defaults_from_training(diffusion_settings)
    } else {
        Default::default()
    });
    merge_json(&mut settings, sampler);
    merge_json(&mut settings, overrides);
    settings
}

/// Merge `over` into `base` (objects key by key, recursively).
fn merge_json(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge_json(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) if !o.is_null() => *b = o.clone(),
        _ => {}
    }
}
