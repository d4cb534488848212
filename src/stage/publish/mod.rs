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

mod describe;
mod files;
mod params;
mod run;

use serde_json::Value;

use super::{parse_params, Outcome, ParamError, Params, PlanContext, StageContext, StageKind};
#[cfg(test)]
use describe::sampler_defaults;
#[cfg(test)]
use files::folder_name;
use params::{names, PublishParams};

const WEIGHTS: &str = "model.safetensors";

pub struct Publish;

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
        run::run(cx)
    }
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
