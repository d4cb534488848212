//! What a published relay repo says about itself: the repo-level `config.json`
//! ([`RepoConfig`]) and the model card `README.md` ([`model_card`]), both written from the
//! same description. Pure text; no files, no network.
//!
//! Nothing here depends on when or where it runs (no dates, no local paths), so the same
//! release always gives the same bytes. Its [`release_id`], a digest of every file but
//! `config.json` (the card included, so the card does not show it), is written in
//! `config.json` and is what makes re-publishing a no-op.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const CONFIG_FILE: &str = "config.json";
pub const CARD_FILE: &str = "README.md";
pub const PREVIEW_FILE: &str = "preview.png";
/// The `format` of a relay repo's `config.json`.
pub const REPO_FORMAT: &str = "relay-repo/1";

/// What still differs from the published RelayDiffusion / EDM code (the README's table, in
/// short), in every card.
const DIFFERENCES: &str = "## Differences from the published code\n\n\
| | RelayDiffusion / EDM | relay |\n|---|---|---|\n\
| random numbers | torch generators | per-(seed, step, image) Philox streams, the reference's draw order: same distributions, not the same numbers |\n\
| 64² training images | LANCZOS from the originals | box mean of the 256² image (default `filter: box`) |\n\
| fp16 | `use_fp16`, static loss scaling | the same scheme, not yet measured on a GPU |\n\
| gradient scale on W GPUs | DDP average | sum over ranks (W× larger; matters only through Adam's ε) |\n\
| data order | `InfiniteSampler` | seeded shard shuffle + buffer |\n\
| CFG with `label_dropout` 0 | samples with an untrained unconditional branch | the same, with a warning |\n\n";

/// Size and sha256 of one file of the repo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub sha256: String,
}

/// What training one stage cost, as far as it was recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_seen: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_hours: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// 3 × forward FLOPs × images seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_flops: Option<f64>,
}

/// One published stage (one folder with `model.safetensors` + `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageEntry {
    /// The pipeline's stage instance name.
    pub name: String,
    /// Its folder in the repo.
    pub folder: String,
    /// The kind that produced it (`train`, ...).
    pub kind: String,
    /// The stage's fingerprint in the pipeline that produced it.
    pub fingerprint: String,
    #[serde(default)]
    pub resolution: Option<usize>,
    /// `edm` or `relay`.
    #[serde(default)]
    pub diffusion: Option<String>,
    /// Sampler defaults (what the stage folder's `config.json` says, filled with defaults).
    #[serde(default)]
    pub sampler: Value,
    /// Denoiser evaluations per image with those defaults.
    #[serde(default)]
    pub nfe: Option<u64>,
    #[serde(default)]
    pub cost: Cost,
}

/// A sample stage whose results are shown in the card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingEntry {
    pub stage: String,
    pub fingerprint: String,
    #[serde(default)]
    pub images: Option<u64>,
    /// Denoiser evaluations per image over the whole chain, as measured.
    #[serde(default)]
    pub nfe: Option<u64>,
    #[serde(default)]
    pub resolution: Option<u64>,
    /// The preview grid's path in the repo.
    #[serde(default)]
    pub preview: Option<String>,
    /// The PIL enhancement applied to the samples before saving (`none`, or the steps), as
    /// the sample manifest records it: any metric of these samples includes it.
    #[serde(default)]
    pub postprocess: Option<String>,
}

/// The numbers of a `metrics` stage, shown in the card and as `model-index` results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsEntry {
    /// The metrics stage and the sample stage it evaluated.
    pub stage: String,
    pub samples: String,
    /// Samples evaluated.
    pub count: u64,
    /// What they were compared with (a reference batch file, a data stage).
    pub reference: String,
    /// `fid`, `sfid`, `inception_score`, `precision`, `recall`.
    pub values: BTreeMap<String, f64>,
}

/// Hub metric types and display names of relay's metric keys.
const METRIC_NAMES: [(&str, &str, &str); 5] = [
    ("fid", "fid", "FID"),
    ("sfid", "sfid", "sFID"),
    ("inception_score", "inception_score", "Inception Score"),
    ("precision", "precision", "Precision"),
    ("recall", "recall", "Recall"),
];

/// The repo-level `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// [`REPO_FORMAT`].
    pub format: String,
    pub library_name: String,
    pub relay_version: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// Digest of every other file ([`release_id`]).
    pub release: String,
    /// Side of the final images.
    #[serde(default)]
    pub resolution: Option<usize>,
    /// Classes of a class-conditional chain (0: unconditional).
    #[serde(default)]
    pub label_dim: usize,
    /// Stage folders in sampling order (lowest resolution first).
    pub chain: Vec<String>,
    pub stages: Vec<StageEntry>,
    #[serde(default)]
    pub sampling: Option<SamplingEntry>,
    /// Results of the `metrics` stages published with the release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricsEntry>,
    pub license: String,
    #[serde(default)]
    pub datasets: Vec<String>,
    /// Every file of the repo except this one.
    pub files: BTreeMap<String, FileEntry>,
}

/// The digest of a release: sha256 over `path size sha256` lines of every file but
/// `config.json`, in path order.
pub fn release_id(files: &BTreeMap<String, FileEntry>) -> String {
    let mut h = Sha256::new();
    for (path, f) in files.iter().filter(|(p, _)| p.as_str() != CONFIG_FILE) {
        h.update(format!("{path}\t{}\t{}\n", f.size, f.sha256).as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the card says the models can be loaded from.
#[derive(Debug, Clone)]
pub enum Location {
    /// `hf://owner/name[@revision]`.
    Hub { repo: String, revision: String },
    /// A local folder, as the user wrote it.
    Local(String),
}

impl Location {
    fn model_ref(&self, folder: &str) -> String {
        match self {
            Self::Hub { repo, revision } if revision == super::uri::DEFAULT_REVISION => {
                format!("hf://{repo}/{folder}")
            }
            Self::Hub { repo, revision } => {
                format!("hf://{repo}@{}/{folder}", revision.replace('/', "%2F"))
            }
            Self::Local(dir) => format!("{}/{folder}", dir.trim_end_matches('/')),
        }
    }
    fn title(&self, pipeline: &str) -> String {
        match self {
            Self::Hub { repo, .. } => repo.clone(),
            Self::Local(_) => pipeline.to_string(),
        }
    }
}

/// The model card: YAML front matter for the Hub, then a readable body. `cfg.files`
/// lists the files to show (the card itself is added after it is written).
pub fn model_card(cfg: &RepoConfig, at: &Location) -> String {
    let conditional = cfg.label_dim > 0;
    let mut out = String::from("---\n");
    out.push_str(&front_matter(cfg, conditional));
    out.push_str("---\n\n");
    let b = &mut out;

    // Title and summary.
    let _ = writeln!(b, "# {}\n", at.title(&cfg.pipeline));
    let sizes: Vec<String> = cfg
        .stages
        .iter()
        .map(|s| s.resolution.map_or("?".into(), |r| format!("{r}px")))
        .collect();
    let _ = writeln!(
        b,
        "Relay Diffusion checkpoints from the relay pipeline `{}`: a cascade of {} \
         separately trained diffusion model{} ({}), generating {} images{}.\n",
        cfg.pipeline,
        cfg.stages.len(),
        if cfg.stages.len() == 1 { "" } else { "s" },
        sizes.join(" → "),
        cfg.resolution.map_or("?".into(), |r| format!("{r}×{r}")),
        if conditional {
            format!(", class-conditional over {} classes", cfg.label_dim)
        } else {
            ", unconditional".into()
        }
    );
    let _ = writeln!(b, "- written by relay {}", cfg.relay_version);
    let _ = writeln!(b, "- license: {}", cfg.license);
    if !cfg.datasets.is_empty() {
        let _ = writeln!(b, "- datasets: {}", cfg.datasets.join(", "));
    }
    b.push('\n');
    if let Some(s) = &cfg.sampling {
        if let Some(p) = &s.preview {
            let _ = writeln!(b, "![Preview grid]({p})\n");
            let _ = writeln!(
                b,
                "*Samples from the `{}` stage{}{}.*\n",
                s.stage,
                s.nfe
                    .map(|n| format!(", {n} denoiser evaluations per image"))
                    .unwrap_or_default(),
                s.images
                    .map(|n| format!("; {n} images in that run"))
                    .unwrap_or_default(),
            );
        }
    }

    // Lineage.
    b.push_str("## Pipeline lineage\n\n");
    b.push_str(
        "Each stage is a model trained on its own; its fingerprint is a digest of its kind, its \
         parameters and the fingerprints of everything it was built from.\n\n",
    );
    b.push_str("| # | stage | folder | kind | resolution | diffusion | fingerprint |\n|---|---|---|---|---|---|---|\n");
    for (i, s) in cfg.stages.iter().enumerate() {
        let _ = writeln!(
            b,
            "| {} | `{}` | `{}/` | {} | {} | {} | `{}` |",
            i + 1,
            s.name,
            s.folder,
            s.kind,
            s.resolution.map_or("?".into(), |r| r.to_string()),
            s.diffusion.as_deref().unwrap_or("?"),
            s.fingerprint
        );
    }
    if let Some(s) = &cfg.sampling {
        let _ = writeln!(
            b,
            "\nSamples: stage `{}`, fingerprint `{}`.",
            s.stage, s.fingerprint
        );
    }
    b.push('\n');

    // Cost.
    b.push_str("## Training cost\n\n");
    b.push_str("| stage | images seen | device-hours | device | est. training FLOPs |\n|---|---|---|---|---|\n");
    let mut total = Cost::default();
    let mut complete = true;
    for s in &cfg.stages {
        let c = &s.cost;
        let _ = writeln!(
            b,
            "| `{}` | {} | {} | {} | {} |",
            s.name,
            c.images_seen.map_or("not recorded".into(), group_digits),
            c.device_hours
                .map_or("not recorded".into(), |h| format!("{h:.4}")),
            c.device.as_deref().unwrap_or("-"),
            c.training_flops
                .map_or("not recorded".into(), |f| format!("{f:.3e}")),
        );
        complete &= c.images_seen.is_some() && c.device_hours.is_some();
        total.images_seen = sum(total.images_seen, c.images_seen);
        total.device_hours = sum(total.device_hours, c.device_hours);
        total.training_flops = sum(total.training_flops, c.training_flops);
    }
    if cfg.stages.len() > 1 {
        let _ = writeln!(
            b,
            "| **total{}** | {} | {} | | {} |",
            if complete { "" } else { " (recorded)" },
            total.images_seen.map_or("-".into(), group_digits),
            total.device_hours.map_or("-".into(), |h| format!("{h:.4}")),
            total
                .training_flops
                .map_or("-".into(), |f| format!("{f:.3e}")),
        );
    }
    b.push_str("\nFLOPs are estimated as 3 × the forward FLOPs of one image × images seen.");
    if !complete {
        b.push_str(" \"not recorded\": the stage's output did not carry cost figures (it was not produced by relay's `train` stage).");
    }
    b.push_str("\n\n");

    // Sampling.
    b.push_str("## Sampling\n\n");
    b.push_str("| stage | sampler | steps | NFE per image |\n|---|---|---|---|\n");
    for s in &cfg.stages {
        let (name, steps) = sampler_summary(&s.sampler);
        let _ = writeln!(
            b,
            "| `{}` | {} | {} | {} |",
            s.name,
            name,
            steps.map_or("?".into(), |n| n.to_string()),
            s.nfe.map_or("?".into(), |n| n.to_string())
        );
    }
    let chain_nfe: Option<u64> = cfg.stages.iter().map(|s| s.nfe).sum();
    if let Some(n) = chain_nfe {
        let _ = writeln!(
            b,
            "\nWith these defaults one image costs {n} denoiser evaluations over the chain."
        );
    }
    if let Some(n) = cfg.sampling.as_ref().and_then(|s| s.nfe) {
        let _ = writeln!(
            b,
            "The `{}` stage measured {n} per image with its settings.",
            cfg.sampling
                .as_ref()
                .map(|s| s.stage.as_str())
                .unwrap_or_default()
        );
    }
    if let Some(s) = &cfg.sampling {
        let pp = s.postprocess.as_deref().unwrap_or("not recorded");
        let _ = writeln!(
            b,
            "\nPost-processing of the `{}` images before saving: {pp}. Metrics of these samples \
             include it; the paper's FIDs were measured after PIL ImageEnhance (RDM \
             generate_celebahq.py: contrast 0.9, brightness 1.05, colour 0.99; \
             generate_imagenet.py: brightness 1.06).",
            s.stage
        );
    }
    b.push_str(
        "\nSampler defaults of each stage (also in its folder's `config.json`):\n\n```json\n",
    );
    let defaults: BTreeMap<&str, &Value> = cfg
        .stages
        .iter()
        .map(|s| (s.folder.as_str(), &s.sampler))
        .collect();
    b.push_str(&serde_json::to_string_pretty(&defaults).unwrap_or_default());
    b.push_str("\n```\n\n");

    // Metrics.
    if !cfg.metrics.is_empty() {
        b.push_str("## Metrics\n\n");
        b.push_str("ADM's evaluator's metrics on the FID Inception-v3 (pytorch-fid's port), computed by relay's `metrics` stage.\n\n");
        b.push_str("| samples | images | reference | FID | sFID | IS | precision | recall |\n|---|---|---|---|---|---|---|---|\n");
        for m in &cfg.metrics {
            let v = |k: &str| m.values.get(k).map_or("-".into(), |x| format!("{x:.4}"));
            let _ = writeln!(
                b,
                "| `{}` | {} | {} | {} | {} | {} | {} | {} |",
                m.samples,
                group_digits(m.count),
                m.reference,
                v("fid"),
                v("sfid"),
                v("inception_score"),
                v("precision"),
                v("recall")
            );
        }
        b.push('\n');
    }

    // Use.
    let models: Vec<String> = cfg.chain.iter().map(|f| at.model_ref(f)).collect();
    b.push_str(DIFFERENCES);
    b.push_str("## Use\n\nSample with relay (`relay run sample.yaml`):\n\n```yaml\n");
    let _ = writeln!(
        b,
        "name: sample\nworkdir: runs/sample\nstages:\n  samples:\n    uses: sample\n    with:\n      seeds: 0-63\n      models: [{}]",
        models.join(", ")
    );
    b.push_str("```\n\n");
    if matches!(at, Location::Hub { .. }) {
        b.push_str(
            "Write `hf://owner/name@<commit>/folder` to pin a commit; relay records the resolved commit \
             in its fingerprints and sample manifests either way.\n",
        );
    }
    b.push_str(
        "Each stage folder holds `model.safetensors` (EMA weights) and `config.json` (network, \
         diffusion and sampler settings, training cost), loadable without the pipeline.\n\n",
    );

    // Files.
    b.push_str("## Files\n\n| file | size | sha256 |\n|---|---|---|\n");
    for (path, f) in cfg.files.iter().filter(|(p, _)| p.as_str() != CARD_FILE) {
        let _ = writeln!(
            b,
            "| `{path}` | {} | `{}` |",
            group_digits(f.size),
            f.sha256
        );
    }
    out
}

/// The YAML front matter (without the `---` lines).
fn front_matter(cfg: &RepoConfig, conditional: bool) -> String {
    use serde_yaml::{Mapping, Value as Y};
    let mut m = Mapping::new();
    m.insert("library_name".into(), cfg.library_name.clone().into());
    m.insert("license".into(), cfg.license.clone().into());
    let mut tags: Vec<Y> = vec!["diffusion".into(), "relay-diffusion".into()];
    tags.push(
        if conditional {
            "class-conditional"
        } else {
            "unconditional-image-generation"
        }
        .into(),
    );
    m.insert("tags".into(), Y::Sequence(tags));
    if !conditional {
        m.insert(
            "pipeline_tag".into(),
            "unconditional-image-generation".into(),
        );
    }
    if !cfg.datasets.is_empty() {
        m.insert(
            "datasets".into(),
            Y::Sequence(cfg.datasets.iter().map(|d| d.clone().into()).collect()),
        );
    }
    if !cfg.metrics.is_empty() {
        m.insert("model-index".into(), model_index(cfg, conditional));
    }
    let stages: Vec<Value> = cfg
        .stages
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "folder": s.folder,
                "kind": s.kind,
                "fingerprint": s.fingerprint,
                "resolution": s.resolution,
                "diffusion": s.diffusion,
                "images_seen": s.cost.images_seen,
                "device_hours": s.cost.device_hours,
                "training_flops": s.cost.training_flops,
                "sampler": s.sampler,
                "nfe": s.nfe,
            })
        })
        .collect();
    let relay = serde_json::json!({
        "pipeline": cfg.pipeline,
        "resolution": cfg.resolution,
        "stages": stages,
        "sampling": cfg.sampling,
    });
    m.insert(
        "relay".into(),
        serde_yaml::to_value(drop_nulls(relay)).unwrap_or(Y::Null),
    );
    serde_yaml::to_string(&m).unwrap_or_default()
}

/// The Hub's `model-index`: one result per metrics stage, naming the reference and the
/// sample count.
fn model_index(cfg: &RepoConfig, conditional: bool) -> serde_yaml::Value {
    let task = if conditional {
        "image-generation"
    } else {
        "unconditional-image-generation"
    };
    let results: Vec<Value> = cfg
        .metrics
        .iter()
        .map(|m| {
            let metrics: Vec<Value> = METRIC_NAMES
                .iter()
                .filter_map(|(key, ty, name)| {
                    m.values.get(*key).map(|v| {
                        serde_json::json!({
                            "type": ty,
                            "value": v,
                            "name": format!("{name} ({} samples vs {})", group_digits(m.count), m.reference),
                        })
                    })
                })
                .collect();
            serde_json::json!({
                "task": { "type": task },
                "dataset": { "name": m.reference, "type": m.reference },
                "metrics": metrics,
                "source": { "name": format!("relay metrics stage `{}` on `{}`", m.stage, m.samples) },
            })
        })
        .collect();
    let index = serde_json::json!([{ "name": cfg.pipeline, "results": results }]);
    serde_yaml::to_value(index).unwrap_or(serde_yaml::Value::Null)
}

/// Remove `null` members (keeps the front matter short).
fn drop_nulls(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, drop_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(drop_nulls).collect()),
        other => other,
    }
}

/// `("edm (Heun)", Some(18))` from sampler settings.
fn sampler_summary(s: &Value) -> (String, Option<u64>) {
    let steps = s.get("num_steps").and_then(Value::as_u64);
    let order = s.get("order").and_then(Value::as_u64);
    let kind = if s.get("up_scale").is_some() || s.get("truncation_sigma").is_some() {
        "blur"
    } else if steps.is_some() {
        "edm"
    } else {
        "?"
    };
    let method = match order {
        Some(2) => " (Heun)",
        Some(1) => " (Euler)",
        _ => "",
    };
    (format!("{kind}{method}"), steps)
}

fn sum<T: std::ops::Add<Output = T>>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (None, b) => b,
        (a, None) => a,
    }
}

/// `1234567` → `1,234,567`.
fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RepoConfig {
        let mut files = BTreeMap::new();
        files.insert(
            "base/model.safetensors".to_string(),
            FileEntry {
                size: 1234,
                sha256: "ab".repeat(32),
            },
        );
        RepoConfig {
            format: REPO_FORMAT.into(),
            library_name: "relay".into(),
            relay_version: "0.1.0".into(),
            pipeline: "quick".into(),
            release: release_id(&files),
            resolution: Some(64),
            label_dim: 0,
            chain: vec!["base".into()],
            stages: vec![StageEntry {
                name: "base".into(),
                folder: "base".into(),
                kind: "train".into(),
                fingerprint: "f".repeat(64),
                resolution: Some(64),
                diffusion: Some("edm".into()),
                sampler: serde_json::json!({"num_steps": 18, "order": 2}),
                nfe: Some(35),
                cost: Cost {
                    images_seen: Some(2_000_000),
                    device_hours: Some(1.5),
                    device: Some("cuda:0".into()),
                    training_flops: Some(3.2e17),
                },
            }],
            sampling: None,
            metrics: vec![],
            license: "apache-2.0".into(),
            datasets: vec!["celebahq".into()],
            files,
        }
    }

    fn front_matter_of(card: &str) -> serde_yaml::Value {
        let fm = card
            .strip_prefix("---\n")
            .unwrap()
            .split("\n---\n")
            .next()
            .unwrap();
        serde_yaml::from_str(fm).unwrap()
    }

    #[test]
    fn card_has_front_matter_lineage_cost_and_sampling() {
        let c = cfg();
        let text = model_card(
            &c,
            &Location::Hub {
                repo: "me/rdm".into(),
                revision: "main".into(),
            },
        );
        let y = front_matter_of(&text);
        assert_eq!(y["library_name"], "relay");
        assert_eq!(y["license"], "apache-2.0");
        assert_eq!(y["datasets"][0], "celebahq");
        let tags: Vec<&str> = y["tags"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(
            tags,
            [
                "diffusion",
                "relay-diffusion",
                "unconditional-image-generation"
            ]
        );
        assert_eq!(y["relay"]["stages"][0]["images_seen"], 2_000_000);
        assert_eq!(y["relay"]["stages"][0]["nfe"], 35);
        assert!(
            text.contains("| `base` | 2,000,000 | 1.5000 | cuda:0 | 3.200e17 |"),
            "{text}"
        );
        assert!(text.contains("models: [hf://me/rdm/base]"), "{text}");
        assert!(text.contains(&"f".repeat(64)));
    }

    #[test]
    fn metrics_become_model_index_results() {
        let mut c = cfg();
        c.metrics.push(MetricsEntry {
            stage: "fid".into(),
            samples: "samples".into(),
            count: 50_000,
            reference: "VIRTUAL_imagenet256_labeled.npz".into(),
            values: [("fid".to_string(), 3.25), ("recall".to_string(), 0.5)].into(),
        });
        let text = model_card(&c, &Location::Local("out".into()));
        let y = front_matter_of(&text);
        let r = &y["model-index"][0]["results"][0];
        assert_eq!(r["metrics"][0]["type"], "fid");
        assert_eq!(r["metrics"][0]["value"], 3.25);
        assert_eq!(r["dataset"]["name"], "VIRTUAL_imagenet256_labeled.npz");
        assert!(
            r["metrics"][1]["name"]
                .as_str()
                .unwrap()
                .contains("50,000 samples"),
            "{text}"
        );
        assert!(text.contains("| `samples` | 50,000 | VIRTUAL_imagenet256_labeled.npz | 3.2500 | - | - | - | 0.5000 |"), "{text}");
    }

    #[test]
    fn release_id_ignores_config_and_follows_content() {
        let mut files = cfg().files;
        let a = release_id(&files);
        files.insert(
            CONFIG_FILE.into(),
            FileEntry {
                size: 1,
                sha256: "00".into(),
            },
        );
        assert_eq!(release_id(&files), a);
        files.get_mut("base/model.safetensors").unwrap().sha256 = "cd".repeat(32);
        assert_ne!(release_id(&files), a);
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(1234567), "1,234,567");
    }
}
