//! `publish`: the trained stages in `needs:` → one Hub commit (`repo:`) or the same repo
//! layout in a folder (`local:`). The stage's own output folder always holds exactly the
//! layout that was published:
//!
//! ```text
//! README.md          model card (front matter: library_name, tags, datasets, license, lineage, cost)
//! config.json        the release: pipeline, chain order, stages, sampler defaults, every file's sha256
//! preview.png        the preview grid of a `sample` stage in `needs:`, if any
//! <stage>/model.safetensors + <stage>/config.json   one folder per published stage
//! ```
//!
//! 1. pick the stages: those named in `stages:`, else every upstream output holding a
//!    `model.safetensors`; a `sample` output adds its preview grid and measured NFE;
//! 2. read what each says about itself (`config.json`) and what it cost (its config, or
//!    its run record), and stage the layout into the output folder;
//! 3. write the card and `config.json` ([`crate::hub::card`]);
//! 4. publish: [`Hub::push`] (one commit on the branch head it read; none when the head
//!    already holds this release), or an atomic replace of the `local:` folder.
//!
//! The commit sha goes into the run record (`info.commit`) and, through `info.lock`, into
//! `relay.lock`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

use super::{
    parse_params, Input, Outcome, ParamError, Params, PlanContext, StageContext, StageKind,
};
use crate::diffusion::blur_sampler::BlurSamplerConfig;
use crate::diffusion::edm_sampler::EdmSamplerConfig;
use crate::hub::card::{
    self, Cost, FileEntry, Location, RepoConfig, SamplingEntry, StageEntry, CARD_FILE, CONFIG_FILE,
    PREVIEW_FILE, REPO_FORMAT,
};
use crate::hub::{Commit, Hub, RepoId, StagedFile};

const WEIGHTS: &str = "model.safetensors";

pub struct Publish;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishParams {
    /// `owner/name` on the Hub.
    #[serde(default)]
    repo: Option<String>,
    /// Or: a folder (relative to the pipeline) that receives the same layout.
    #[serde(default)]
    local: Option<String>,
    /// Create the Hub repo private (an existing repo keeps its visibility).
    #[serde(default)]
    private: bool,
    /// Branch to commit to (default `main`; created from `main` if missing).
    #[serde(default, alias = "branch")]
    revision: Option<String>,
    /// Commit message (default: names the pipeline, the fingerprint and the release).
    #[serde(default)]
    message: Option<String>,
    /// Which upstream stages to publish (default: every one with a `model.safetensors`,
    /// plus the preview of a `sample` stage). A name covers its matrix instances.
    #[serde(default)]
    stages: Vec<String>,
    /// Hub endpoint (default: `HF_ENDPOINT`, else https://huggingface.co).
    #[serde(default)]
    endpoint: Option<String>,
    /// `license:` of the model card (a Hub license id).
    #[serde(default = "default_license")]
    license: String,
    /// `datasets:` of the model card (Hub dataset ids).
    #[serde(default)]
    datasets: Vec<String>,
}

fn default_license() -> String {
    "other".into()
}

impl PublishParams {
    fn validate(&self) -> Result<(), ParamError> {
        match (&self.repo, &self.local) {
            (None, None) => {
                return Err(ParamError::new(
                    "repo",
                    "give `repo: owner/name` (the Hub) or `local: FOLDER`",
                )
                .with_hint("`local:` writes the same layout to a folder, no account needed"))
            }
            (Some(_), Some(_)) => {
                return Err(
                    ParamError::new("local", "give either `repo:` or `local:`, not both")
                        .with_hint("use two publish stages to do both"),
                )
            }
            (Some(r), None) => {
                RepoId::parse(r).map_err(|e| ParamError::new("repo", e.to_string()))?;
            }
            (None, Some(l)) => {
                if l.trim().is_empty() {
                    return Err(ParamError::new("local", "`local:` is empty"));
                }
                for (key, set) in [
                    ("private", self.private),
                    ("revision", self.revision.is_some()),
                    ("endpoint", self.endpoint.is_some()),
                ] {
                    if set {
                        return Err(ParamError::new(
                            key,
                            format!("`{key}` applies to `repo:` only"),
                        ));
                    }
                }
            }
        }
        if let Some(r) = &self.revision {
            if r.trim().is_empty() || r.starts_with('/') || r.ends_with('/') || r.contains("..") {
                return Err(ParamError::new(
                    "revision",
                    format!("`{r}` is not a branch name"),
                ));
            }
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ParamError::new(
                    "endpoint",
                    format!("`{e}` is not an http(s) URL"),
                ));
            }
        }
        if self.license.trim().is_empty() {
            return Err(ParamError::new(
                "license",
                "`license` is empty (use a Hub license id, or `other`)",
            ));
        }
        Ok(())
    }

    fn revision(&self) -> &str {
        self.revision
            .as_deref()
            .unwrap_or(crate::hub::uri::DEFAULT_REVISION)
    }
}

/// Whether `wanted` (a name in `stages:`) names the input instance `instance`.
fn names(wanted: &str, instance: &str) -> bool {
    instance == wanted || instance.split('@').next() == Some(wanted)
}

impl StageKind for Publish {
    fn name(&self) -> &'static str {
        "publish"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "publish trained stages to the Hugging Face Hub (one commit) or to a local folder, with a model card"
    }
    fn check(&self, with: &Params) -> Result<(), ParamError> {
        parse_params::<PublishParams>(with)?.validate()
    }
    fn check_inputs(&self, with: &Params, inputs: &[(&str, &str)]) -> Result<(), ParamError> {
        let p: PublishParams = parse_params(with)?;
        if inputs.is_empty() {
            return Err(ParamError::new("stages", "publish has nothing to publish")
                .with_hint("list the train stages to publish under `needs:`"));
        }
        for s in &p.stages {
            if !inputs
                .iter()
                .any(|(inst, decl)| names(s, inst) || s == decl)
            {
                let known: Vec<&str> = inputs.iter().map(|(i, _)| *i).collect();
                return Err(
                    ParamError::new("stages", format!("`{s}` is not in `needs:`"))
                        .with_hint(format!("stages in `needs:`: {}", known.join(", "))),
                );
            }
        }
        Ok(())
    }
    fn fingerprint_extra(&self, _cx: &PlanContext<'_>, with: &Params) -> anyhow::Result<Value> {
        // Where it goes is part of what was done: a new HF_ENDPOINT means publish again.
        let p: PublishParams = parse_params(with)?;
        if p.repo.is_none() {
            return Ok(Value::Null);
        }
        let endpoint = p
            .endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .unwrap_or_else(|| "https://huggingface.co".into());
        Ok(serde_json::json!({ "endpoint": endpoint.trim_end_matches('/') }))
    }
    fn run(&self, cx: &StageContext) -> anyhow::Result<Outcome> {
        let p: PublishParams = parse_params(&cx.params)?;
        p.validate()?;
        let records = crate::exec::record::read_all(&cx.workdir);
        let (models, sample) = pick_inputs(&p, &cx.inputs)?;

        // 1. What each stage is, and what it cost.
        let mut stages = Vec::new();
        let mut label_dim = 0;
        for input in &models {
            let (entry, labels) = describe_stage(input, &records)?;
            label_dim = label_dim.max(labels);
            stages.push(entry);
        }
        stages.sort_by_key(|s| s.resolution.unwrap_or(usize::MAX));
        let mut seen = BTreeMap::new();
        for s in &stages {
            if let Some(other) = seen.insert(s.folder.clone(), s.name.clone()) {
                bail!(
                    "stages `{other}` and `{}` would both go to the folder `{}/`",
                    s.name,
                    s.folder
                );
            }
        }
        let pipeline = records
            .iter()
            .rev()
            .find(|r| cx.inputs.iter().any(|i| i.name == r.stage))
            .map(|r| r.pipeline.clone())
            .unwrap_or_else(|| {
                cx.workdir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });

        // 2. Stage the layout into the output folder.
        cx.cancel.check()?;
        cx.progress.start(Some(models.len() as u64), "stages");
        let mut files: BTreeMap<String, FileEntry> = BTreeMap::new();
        for (s, input) in stages.iter().zip(sorted_like(&stages, &models)) {
            for f in [WEIGHTS, CONFIG_FILE] {
                let rel = format!("{}/{f}", s.folder);
                link_or_copy(&input.dir.join(f), &cx.out.join(&rel))?;
                files.insert(rel.clone(), entry_of(&cx.out.join(&rel))?);
            }
            cx.progress.inc(1);
        }
        let sampling = match sample {
            Some(input) => Some(describe_sample(input, &cx.out, &mut files)?),
            None => None,
        };
        let mut metrics = Vec::new();
        for input in cx
            .inputs
            .iter()
            .filter(|i| i.dir.join(METRICS_FILE).is_file())
        {
            metrics.extend(describe_metrics(input)?);
        }

        // 3. Card and config.
        let location = match (&p.repo, &p.local) {
            (Some(r), _) => Location::Hub {
                repo: r.clone(),
                revision: p.revision().to_string(),
            },
            (_, Some(l)) => Location::Local(l.clone()),
            _ => unreachable!("validated"),
        };
        let mut cfg = RepoConfig {
            format: REPO_FORMAT.into(),
            library_name: "relay".into(),
            relay_version: env!("CARGO_PKG_VERSION").into(),
            pipeline: pipeline.clone(),
            release: String::new(),
            resolution: stages.iter().filter_map(|s| s.resolution).max(),
            label_dim,
            chain: stages.iter().map(|s| s.folder.clone()).collect(),
            stages,
            sampling,
            metrics,
            license: p.license.clone(),
            datasets: p.datasets.clone(),
            files,
        };
        let readme = card::model_card(&cfg, &location);
        std::fs::write(cx.out.join(CARD_FILE), &readme).context("writing the model card")?;
        cfg.files
            .insert(CARD_FILE.into(), entry_of(&cx.out.join(CARD_FILE))?);
        cfg.release = card::release_id(&cfg.files);
        let mut json = serde_json::to_string_pretty(&cfg)?;
        json.push('\n');
        std::fs::write(cx.out.join(CONFIG_FILE), json).context("writing config.json")?;
        let staged = staged_files(&cx.out)?;
        let bytes: u64 = staged.iter().map(|f| f.size).sum();

        // 4. Publish.
        cx.cancel.check()?;
        let mut info = serde_json::Map::new();
        info.insert("release".into(), cfg.release.clone().into());
        info.insert("files".into(), staged.len().into());
        info.insert("bytes".into(), bytes.into());
        info.insert("stages".into(), cfg.chain.clone().into());
        if let Some(local) = &p.local {
            let dest = cx.resolve_path(local);
            replace_folder(&cx.out, &dest)?;
            cx.progress.log(format!(
                "wrote {} files to {}",
                staged.len(),
                crate::util::display_path(&dest)
            ));
            info.insert("local".into(), dest.display().to_string().into());
            return Ok(Outcome {
                images: None,
                info,
                partial: false,
            });
        }
        let repo = RepoId::parse(p.repo.as_deref().unwrap_or_default())?;
        let hub = Hub::new(p.endpoint.as_deref())?;
        let message = p.message.clone().unwrap_or_else(|| {
            format!(
                "relay: publish pipeline `{pipeline}` (fingerprint {}, release {})",
                &cx.fingerprint[..12.min(cx.fingerprint.len())],
                &cfg.release[..12]
            )
        });
        let description = format!(
            "Stages: {}. Written by relay {}.",
            cfg.stages
                .iter()
                .map(|s| format!(
                    "{} ({})",
                    s.name,
                    &s.fingerprint[..12.min(s.fingerprint.len())]
                ))
                .collect::<Vec<_>>()
                .join(", "),
            env!("CARGO_PKG_VERSION")
        );
        cx.progress
            .message(format!("committing {} files to {repo}", staged.len()));
        let pushed = hub
            .push(&Commit {
                repo: &repo,
                revision: p.revision(),
                private: p.private,
                message: &message,
                description: &description,
                files: &staged,
                release: &cfg.release,
            })
            .with_context(|| format!("publishing to `{repo}`"))?;
        if pushed.unchanged {
            cx.progress.log(format!(
                "{repo}@{} already holds this release (commit {}): no new commit",
                p.revision(),
                pushed.commit
            ));
        } else {
            cx.progress.log(format!(
                "committed {} files ({} deleted) to {repo}@{}: {}",
                pushed.added,
                pushed.deleted,
                p.revision(),
                pushed.commit
            ));
        }
        let url = format!("{}/{repo}/tree/{}", hub.endpoint(), pushed.commit);
        info.insert("repo".into(), repo.to_string().into());
        info.insert("revision".into(), p.revision().into());
        info.insert("commit".into(), pushed.commit.clone().into());
        info.insert("parent".into(), pushed.parent.clone().into());
        info.insert("unchanged".into(), pushed.unchanged.into());
        info.insert("url".into(), url.into());
        info.insert(
            "lock".into(),
            serde_json::json!({ "repo": repo.to_string(), "revision": p.revision(), "commit": pushed.commit }),
        );
        Ok(Outcome {
            images: None,
            info,
            partial: false,
        })
    }
}

/// The model stages to publish, and the sample stage whose preview the card shows.
fn pick_inputs<'a>(
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
        } else if !p.stages.is_empty() && !i.dir.join(METRICS_FILE).is_file() {
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
fn sorted_like<'a>(stages: &[StageEntry], models: &[&'a Input]) -> Vec<&'a Input> {
    stages
        .iter()
        .filter_map(|s| models.iter().find(|m| m.name == s.name).copied())
        .collect()
}

/// A stage's card entry from its `config.json` and run record; also its class count.
fn describe_stage(
    input: &Input,
    records: &[crate::exec::record::Record],
) -> anyhow::Result<(StageEntry, usize)> {
    let path = input.dir.join(CONFIG_FILE);
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let model = cfg.get("model").unwrap_or(&cfg);
    let diffusion = match cfg.get("diffusion") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(d) => d
            .get("kind")
            .or_else(|| d.get("type"))
            .and_then(Value::as_str)
            .map(str::to_string),
        None => None,
    };
    let resolution = cfg
        .get("resolution")
        .or_else(|| model.get("img_resolution"))
        .or_else(|| {
            cfg.get("diffusion")
                .and_then(|d| d.get("to").or_else(|| d.get("resolution")))
        })
        .and_then(Value::as_u64)
        .map(|r| r as usize);
    let label_dim = model.get("label_dim").and_then(Value::as_u64).unwrap_or(0) as usize;
    let (sampler, nfe) = sampler_defaults(&cfg, diffusion.as_deref());
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
            resolution,
            diffusion,
            sampler,
            nfe,
            cost: cost_of(&cfg, &input.kind, record),
        },
        label_dim,
    ))
}

/// Sampler defaults as the sample stage would use them (defaults, then what training
/// wrote), and the denoiser evaluations per image they make.
fn sampler_defaults(cfg: &Value, diffusion: Option<&str>) -> (Value, Option<u64>) {
    let mut raw = cfg.get("sampler").cloned().unwrap_or(Value::Null);
    // `{"edm": {...}}` / `{"blur": {...}}` (train's tagged form) or the settings themselves.
    let mut relay = matches!(diffusion, Some("relay") | Some("blur"));
    if let Some(o) = raw.as_object() {
        if o.len() == 1 {
            if let Some((k, v)) = o.iter().next().filter(|(k, _)| *k == "edm" || *k == "blur") {
                relay = k == "blur";
                raw = v.clone();
            }
        }
    }
    let mut settings = serde_json::Map::new();
    if relay {
        if let Some(d) = cfg.get("diffusion") {
            for (from, to) in [
                ("up_scale", "up_scale"),
                ("blur_sigma_max", "blur_sigma_max"),
                ("prob_length", "truncation_t"),
                ("min_scale", "min_scale"),
            ] {
                if let Some(v) = d.get(from) {
                    settings.insert(to.into(), v.clone());
                }
            }
        }
    }
    if let Some(o) = raw.as_object() {
        settings.extend(o.clone());
    }
    let settings = Value::Object(settings);
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
fn cost_of(cfg: &Value, kind: &str, record: Option<&crate::exec::record::Record>) -> Cost {
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
fn describe_sample(
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

/// The file a `metrics` stage writes.
const METRICS_FILE: &str = "metrics.json";

/// The card entries of a `metrics` stage: one per sample set it evaluated.
fn describe_metrics(input: &Input) -> anyhow::Result<Vec<card::MetricsEntry>> {
    let path = input.dir.join(METRICS_FILE);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    // One sample set: the object itself; several: an object per sample instance.
    let sets: Vec<&Value> = if doc.get("count").is_some() {
        vec![&doc]
    } else {
        doc.as_object()
            .map(|o| o.values().collect())
            .unwrap_or_default()
    };
    Ok(sets
        .into_iter()
        .map(|m| {
            let r = &m["reference"];
            let reference = ["npz", "images", "stage"]
                .iter()
                .find_map(|k| r.get(*k).and_then(Value::as_str))
                .map(|s| s.rsplit('/').next().unwrap_or(s).to_string())
                .unwrap_or_else(|| "reference".into());
            card::MetricsEntry {
                stage: input.name.clone(),
                samples: m["samples"].as_str().unwrap_or_default().to_string(),
                count: m["count"].as_u64().unwrap_or(0),
                reference,
                values: ["fid", "sfid", "inception_score", "precision", "recall"]
                    .iter()
                    .filter_map(|k| {
                        m.get(*k)
                            .and_then(Value::as_f64)
                            .map(|v| (k.to_string(), v))
                    })
                    .collect(),
            }
        })
        .collect())
}

/// A folder name for a stage instance (`relay@block_scale=0.15` → `relay-block_scale-0.15`).
fn folder_name(stage: &str) -> String {
    let s: String = stage
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches(|c| c == '-' || c == '.').to_string()
}

fn entry_of(path: &Path) -> anyhow::Result<FileEntry> {
    Ok(FileEntry {
        size: std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len(),
        sha256: crate::util::sha256_file(path)
            .with_context(|| format!("reading {}", path.display()))?,
    })
}

/// Hard-link `from` to `to` (published outputs are never modified in place), or copy.
fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Every file under `root`, as repo paths, sorted.
fn staged_files(root: &Path) -> anyhow::Result<Vec<StagedFile>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<StagedFile>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                walk(root, &p, out)?;
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(StagedFile {
                    path_in_repo: rel.to_string_lossy().replace('\\', "/"),
                    size: e.metadata()?.len(),
                    local: p.clone(),
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out).with_context(|| format!("listing {}", root.display()))?;
    out.sort_by(|a, b| a.path_in_repo.cmp(&b.path_in_repo));
    Ok(out)
}

/// Make `dest` hold exactly the files of `src`, atomically: build a sibling folder, then
/// swap it in. An existing `dest` is replaced only if it is empty or a relay release.
fn replace_folder(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "release".into());
    if dest.exists() {
        let ours = std::fs::read(dest.join(CONFIG_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v.get("format").and_then(Value::as_str) == Some(REPO_FORMAT));
        let empty = std::fs::read_dir(dest)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !ours && !empty {
            bail!(
                "`{}` exists and is not a relay release (no relay config.json): choose another `local:` folder, or remove it",
                crate::util::display_path(dest)
            );
        }
    }
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp: PathBuf = parent.join(format!(".{name}.relay-tmp-{}", std::process::id()));
    let old: PathBuf = parent.join(format!(".{name}.relay-old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for f in staged_files(src)? {
        link_or_copy(&f.local, &tmp.join(&f.path_in_repo))?;
    }
    if dest.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dest, &old)
            .with_context(|| format!("moving the old {} aside", dest.display()))?;
    }
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<(), ParamError> {
        Publish.check(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn parameters_are_checked() {
        assert!(check("{repo: me/rdm}").is_ok());
        assert!(check("{local: out/release}").is_ok());
        assert!(
            check("{repo: me/rdm, branch: v1, private: true, endpoint: 'http://127.0.0.1:1'}")
                .is_ok()
        );
        assert_eq!(check("{}").unwrap_err().key.as_deref(), Some("repo"));
        assert_eq!(
            check("{repo: me/rdm, local: x}")
                .unwrap_err()
                .key
                .as_deref(),
            Some("local")
        );
        assert_eq!(
            check("{repo: rdm}").unwrap_err().key.as_deref(),
            Some("repo")
        );
        assert_eq!(
            check("{local: x, private: true}")
                .unwrap_err()
                .key
                .as_deref(),
            Some("private")
        );
        assert_eq!(
            check("{repo: me/rdm, endpoint: ftp://x}")
                .unwrap_err()
                .key
                .as_deref(),
            Some("endpoint")
        );
        assert_eq!(
            check("{repo: me/rdm, stage: [a]}")
                .unwrap_err()
                .hint
                .as_deref(),
            Some("did you mean `stages`?")
        );
    }

    #[test]
    fn stage_names_cover_matrix_instances_and_make_folder_names() {
        assert!(names("relay", "relay@block_scale=0.15"));
        assert!(names("relay@block_scale=0.15", "relay@block_scale=0.15"));
        assert!(!names("rel", "relay"));
        assert_eq!(
            folder_name("relay@block_scale=0.15"),
            "relay-block_scale-0.15"
        );
        assert_eq!(folder_name("base"), "base");
    }

    #[test]
    fn nfe_of_sampler_defaults() {
        // EDM Heun: 2·18 − 1 = 35 (the correction is skipped at the last step).
        let (s, n) = sampler_defaults(
            &serde_json::json!({"sampler": {"num_steps": 18}}),
            Some("edm"),
        );
        assert_eq!((s["num_steps"].as_u64(), n), (Some(18), Some(35)));
        let (_, n) = sampler_defaults(
            &serde_json::json!({"sampler": {"edm": {"num_steps": 4, "order": 1}}}),
            None,
        );
        assert_eq!(n, Some(4));
    }
}
