//! Running `publish`: describe the stages, stage the repo layout in the output folder,
//! write the card and `config.json`, then commit to the Hub or replace the local folder.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

use super::describe::{describe_sample, describe_stage, pick_inputs, sorted_like};
use super::files::{entry_of, link_or_copy, replace_folder, staged_files};
use super::params::PublishParams;
use super::WEIGHTS;
use crate::hub::card::{
    self, FileEntry, Location, RepoConfig, CARD_FILE, CONFIG_FILE, REPO_FORMAT,
};
use crate::hub::{Commit, Hub, RepoId};
use crate::stage::{parse_params, Outcome, StageContext};

/// Publish the stages of `cx` (steps 1-4 of the module doc of [`super`]).
pub(super) fn run(cx: &StageContext) -> anyhow::Result<Outcome> {
    let p: PublishParams = parse_params(&cx.params)?;
    p.validate()?;
    let records = crate::base::record::read_all(&cx.workdir);
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
