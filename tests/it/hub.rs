//! The `publish` stage and `hf://` checkpoints, with the real hf-hub client against the
//! stand-in Hub of `hub_server.rs` (issue 7).

use std::path::{Path, PathBuf};

use relay::hub::{HfUri, Hub};

use crate::common::{Project, Run};
use crate::hub_server::HubServer;

/// A tiny randomly initialised model folder (`config.json` + `model.safetensors`), with
/// sampler defaults and, for the base stage, cost figures as `train` writes them.
fn model_dir(dir: &Path, res: usize, relay: Option<usize>, seed: u64) {
    let model = crate::common::random_tiny_model(dir, res, seed);
    let card = match relay {
        None => serde_json::json!({
            "model": model, "diffusion": { "kind": "edm" }, "resolution": res,
            "sampler": { "num_steps": 3 },
            "cost": { "images_seen": 2048, "device_hours": 0.0125, "device": "cpu", "training_flops": 1.5e12 }
        }),
        Some(up) => serde_json::json!({
            "model": model,
            "diffusion": { "kind": "relay", "up_scale": up, "blur_sigma_max": 2.0, "prob_length": 0.93 },
            "resolution": res,
            "sampler": { "num_steps": 6 }
        }),
    };
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&card).unwrap(),
    )
    .unwrap();
}

const STAGES: &str = "  base:\n    uses: command\n    with: { run: \"cp models/base/* {out}/\", deps: [models/base], outs: [model.safetensors, config.json] }\n  relay:\n    uses: command\n    with: { run: \"cp models/relay/* {out}/\", deps: [models/relay], outs: [model.safetensors, config.json] }\n";
const SAMPLE: &str = "seeds: 0-3, samples_per_shard: 4, batch: 4, preview: 4";

/// Two model folders and a pipeline that publishes them to `me/rdm` (plus `extra` stages).
fn project(extra: &str) -> Project {
    let p = Project::new();
    model_dir(&p.path().join("models/base"), 8, None, 1);
    model_dir(&p.path().join("models/relay"), 16, Some(2), 2);
    p.write(
        "p.yaml",
        &format!("name: rdm\nworkdir: runs\nstages:\n{STAGES}{extra}"),
    );
    p
}

const PUBLISH: &str = "  hub:\n    uses: publish\n    needs: [base, relay]\n    with: { repo: me/rdm, license: apache-2.0, datasets: [shapes] }\n";

/// Run `relay` against the stand-in, with `token` as HF_TOKEN and the Hub cache in the project.
fn run(p: &Project, hub: &HubServer, token: Option<&str>, offline: bool, args: &[&str]) -> Run {
    let mut c = p.relay(args);
    for k in [
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "XDG_CACHE_HOME",
        "HF_HUB_OFFLINE",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    ] {
        c.env_remove(k);
    }
    c.env("HF_ENDPOINT", &hub.url)
        .env("HF_HOME", p.path().join("hf"));
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    if offline {
        c.env("HF_HUB_OFFLINE", "1");
    }
    Run::from(c.output().expect("running relay"))
}

fn last_info(p: &Project, stage: &str) -> serde_json::Value {
    p.records()
        .into_iter()
        .rev()
        .find(|r| r["stage"] == stage && r["status"] == "ok")
        .expect("an ok record")["info"]
        .clone()
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// seed -> (image sha256, checkpoints) from a sample manifest.
fn manifest(path: &Path) -> Vec<(u64, String, String)> {
    let (cols, rows) = relay::manifest::read_rows(path).unwrap();
    let c = |n: &str| cols.iter().position(|x| x == n).unwrap();
    rows.iter()
        .map(|r| {
            (
                r[c("seed")].as_u64().unwrap(),
                r[c("sha256")].as_str().unwrap().to_string(),
                r[c("checkpoints")].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The token appears in no file the runs wrote (workdirs, records, logs, manifests, cards,
/// relay.lock, the Hub cache) and in no output.
fn assert_no_token(dir: &Path, token: &str, outputs: &[&Run]) {
    for f in files(dir) {
        let bytes = std::fs::read(dir.join(&f)).unwrap();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token is in {}",
            f.display()
        );
    }
    for r in outputs {
        assert!(
            !r.stdout.contains(token) && !r.stderr.contains(token),
            "the token is in the output"
        );
    }
}

#[test]
fn publishes_to_the_hub_and_a_folder_then_samples_from_hf() {
    let hub = HubServer::start();
    let tok = hub.write_token.clone();
    let p = project(&format!(
        "  samples:\n    uses: sample\n    with: {{ {SAMPLE}, models: [models/base, models/relay] }}\n  hub:\n    uses: publish\n    needs: [base, relay, samples]\n    with: {{ repo: me/rdm, private: true, license: apache-2.0, datasets: [shapes] }}\n  folder:\n    uses: publish\n    needs: [base, relay, samples]\n    with: {{ local: release, license: apache-2.0, datasets: [shapes] }}\n"
    ));
    let first = run(&p, &hub, Some(&tok), false, &["run", "p.yaml"]);
    first.code(0);

    // One commit on top of the repo's initial one; its sha is in the record and relay.lock.
    let info = last_info(&p, "hub");
    let commit = info["commit"].as_str().unwrap().to_string();
    assert_eq!(Some(commit.clone()), hub.head("me/rdm", "main"));
    assert_eq!(
        (hub.commits("me/rdm"), info["unchanged"].as_bool()),
        (2, Some(false))
    );
    assert_eq!(hub.is_private("me/rdm"), Some(true));
    let lock = std::fs::read_to_string(p.path().join("relay.lock")).unwrap();
    assert!(lock.contains(&format!("commit: {commit}")), "{lock}");

    // The folder and the Hub get the same layout; the model files are the same bytes.
    let staged = p.path().join("runs/hub");
    let layout = files(&staged);
    let want: Vec<PathBuf> = [
        "README.md",
        "base/config.json",
        "base/model.safetensors",
        "config.json",
        "preview.png",
        "relay/config.json",
        "relay/model.safetensors",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(layout, want);
    assert_eq!(files(&p.path().join("release")), want);
    for f in [
        "base/model.safetensors",
        "relay/model.safetensors",
        "preview.png",
    ] {
        assert_eq!(
            std::fs::read(staged.join(f)).unwrap(),
            std::fs::read(p.path().join("release").join(f)).unwrap(),
            "{f}"
        );
    }

    // The Hub holds exactly the staged files (the hf-hub round trip of a public repo is
    // `a_public_repo_round_trips_byte_identical_through_the_hf_hub_cache`).
    for f in &layout {
        let f = f.to_string_lossy();
        assert_eq!(
            hub.file("me/rdm", "main", &f).unwrap(),
            std::fs::read(staged.join(&*f)).unwrap(),
            "{f}"
        );
    }
    // The repo is private: reading it without a token says so.
    let err = Hub::with_cache(Some(&hub.url), Some(&p.path().join("cache2")))
        .unwrap()
        .fetch(&HfUri::parse("hf://me/rdm").unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`me/rdm`") && err.contains("token"), "{err}");

    // The model card.
    let card = std::fs::read_to_string(staged.join("README.md")).unwrap();
    println!("----- README.md written by the publish stage -----\n{card}\n-----");
    let fm: serde_yaml::Value = serde_yaml::from_str(
        card.strip_prefix("---\n")
            .unwrap()
            .split("\n---\n")
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(fm["library_name"], "relay");
    assert_eq!(fm["license"], "apache-2.0");
    assert_eq!(fm["datasets"][0], "shapes");
    assert_eq!(fm["tags"][2], "unconditional-image-generation");
    assert_eq!(fm["relay"]["stages"][0]["name"], "base");
    assert_eq!(fm["relay"]["stages"][0]["images_seen"], 2048);
    assert_eq!(fm["relay"]["stages"][0]["nfe"], 5, "EDM Heun over 3 steps");
    for r in p
        .records()
        .iter()
        .filter(|r| r["stage"] == "base" || r["stage"] == "relay")
    {
        assert!(
            card.contains(r["fingerprint"].as_str().unwrap()),
            "lineage names {}",
            r["stage"]
        );
    }
    assert!(
        card.contains("![Preview grid](preview.png)")
            && card.contains("models: [hf://me/rdm/base, hf://me/rdm/relay]"),
        "{card}"
    );

    // Publishing the same release again makes no commit.
    let again = run(
        &p,
        &hub,
        Some(&tok),
        false,
        &["run", "p.yaml", "--force", "hub"],
    );
    again.code(0);
    let info = last_info(&p, "hub");
    assert_eq!(
        (info["unchanged"].as_bool(), info["commit"].as_str()),
        (Some(true), Some(commit.as_str()))
    );
    assert_eq!(hub.commits("me/rdm"), 2);

    // A second pipeline samples from the published checkpoints: the same images as from
    // the local folders, and the manifest records the commit, not the branch.
    p.write(
        "p2.yaml",
        &format!("name: from-hub\nworkdir: runs2\nstages:\n  samples:\n    uses: sample\n    with: {{ {SAMPLE}, models: [\"hf://me/rdm/base\", \"hf://me/rdm@main/relay\"] }}\n"),
    );
    let second = run(&p, &hub, Some(&tok), false, &["run", "p2.yaml"]);
    second.code(0);
    let local = manifest(&p.path().join("runs/samples/manifest.parquet"));
    let remote = manifest(&p.path().join("runs2/samples/manifest.parquet"));
    assert_eq!(
        local.iter().map(|r| (r.0, &r.1)).collect::<Vec<_>>(),
        remote.iter().map(|r| (r.0, &r.1)).collect::<Vec<_>>(),
        "same weights, same images"
    );
    assert!(
        remote[0].2.contains(&format!("hf://me/rdm@{commit}/base")),
        "{}",
        remote[0].2
    );
    assert!(
        remote[0].2.contains(&format!("hf://me/rdm@{commit}/relay")),
        "{}",
        remote[0].2
    );

    // Offline: the same run from the cache alone, without a request.
    let before = hub.requests().len();
    let offline = run(
        &p,
        &hub,
        Some(&tok),
        true,
        &["run", "p2.yaml", "--force", "samples"],
    );
    offline.code(0);
    assert_eq!(
        hub.requests().len(),
        before,
        "HF_HUB_OFFLINE makes no request"
    );

    // The branch moves: the sample stage is stale and records the new commit.
    let moved = hub.external_commit("me/rdm", "main", "NOTES.md", b"a later commit\n");
    let third = run(&p, &hub, Some(&tok), false, &["run", "p2.yaml"]);
    third.code(0);
    assert_eq!(
        third.status_of("samples"),
        "ok",
        "not cached: {}",
        third.stdout
    );
    let remote = manifest(&p.path().join("runs2/samples/manifest.parquet"));
    assert!(
        remote[0].2.contains(&format!("hf://me/rdm@{moved}/base")),
        "{}",
        remote[0].2
    );

    // Offline, a reference never downloaded says so.
    p.write("p3.yaml", &format!("name: other\nworkdir: runs3\nstages:\n  samples:\n    uses: sample\n    with: {{ {SAMPLE}, models: [\"hf://me/other/base\"] }}\n"));
    let missing = run(&p, &hub, Some(&tok), true, &["run", "p3.yaml"]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("HF_HUB_OFFLINE") && missing.stderr.contains("me/other"),
        "{}\n{}",
        missing.stdout,
        missing.stderr
    );

    assert_no_token(
        p.path(),
        &tok,
        &[&first, &again, &second, &offline, &third, &missing],
    );
}

#[test]
fn a_public_repo_round_trips_byte_identical_through_the_hf_hub_cache() {
    let hub = HubServer::start();
    let p = project(PUBLISH);
    run(&p, &hub, Some(&hub.write_token), false, &["run", "p.yaml"]).code(0);
    let commit = last_info(&p, "hub")["commit"].as_str().unwrap().to_string();
    // No token in this process's Hub client: a public repo needs none to read.
    let client = Hub::with_cache(Some(&hub.url), Some(&p.path().join("cache2"))).unwrap();
    let got = client.fetch(&HfUri::parse("hf://me/rdm").unwrap()).unwrap();
    assert_eq!(got.commit, commit);
    assert_eq!(got.pinned(), format!("hf://me/rdm@{commit}"));
    let staged = p.path().join("runs/hub");
    for f in files(&staged) {
        assert_eq!(
            std::fs::read(got.local.join(&f)).unwrap(),
            std::fs::read(staged.join(&f)).unwrap(),
            "{}",
            f.display()
        );
    }
    assert!(got.local.join(".gitattributes").is_file(), "the whole repo");
    // A folder at a pinned commit.
    let base = client
        .fetch(&HfUri::parse(&format!("hf://me/rdm@{commit}/base")).unwrap())
        .unwrap();
    assert_eq!(base.files, ["base/config.json", "base/model.safetensors"]);
}

#[test]
fn credentials_and_missing_things_get_clear_errors() {
    let hub = HubServer::start();
    let p = project(PUBLISH);

    let none = run(&p, &hub, None, false, &["run", "p.yaml"]);
    none.code(1);
    assert!(
        none.stderr.contains("needs a token") && none.stderr.contains("HF_TOKEN"),
        "{}",
        none.stderr
    );

    let bad = run(
        &p,
        &hub,
        Some("hf_notavalidtoken0000000000000000"),
        false,
        &["run", "p.yaml"],
    );
    bad.code(1);
    assert!(
        bad.stderr.contains("rejected the token") && bad.stderr.contains("401"),
        "{}",
        bad.stderr
    );

    // A read-only token: the repo is created by someone else, then this one may not write.
    run(&p, &hub, Some(&hub.write_token), false, &["run", "p.yaml"]).code(0);
    let ro = run(
        &p,
        &hub,
        Some(&hub.read_token),
        false,
        &["run", "p.yaml", "-s", "hub.license=mit"],
    );
    ro.code(1);
    assert!(
        ro.stderr.contains("lacks write access to `me/rdm`") && ro.stderr.contains("403"),
        "{}",
        ro.stderr
    );

    for (model, words) in [
        ("hf://me/nothere/base", ["`me/nothere`", "was not found"]),
        ("hf://me/rdm/nothere", ["`nothere`", "does not exist"]),
        ("hf://me/rdm@v9/base", ["`v9`", "does not exist"]),
    ] {
        p.write("p2.yaml", &format!("name: s\nworkdir: runs2\nstages:\n  samples:\n    uses: sample\n    with: {{ {SAMPLE}, models: [\"{model}\"] }}\n"));
        let r = run(&p, &hub, None, false, &["run", "p2.yaml"]);
        assert_ne!(r.code, 0);
        assert!(
            words.iter().all(|w| r.stderr.contains(w)),
            "{model}: {}\n{}",
            r.stdout,
            r.stderr
        );
    }
    assert_no_token(p.path(), &hub.write_token, &[&none, &bad, &ro]);
}

#[test]
fn a_concurrent_push_is_refused_and_nothing_is_committed() {
    let hub = HubServer::start();
    let p = project(PUBLISH);
    run(&p, &hub, Some(&hub.write_token), false, &["run", "p.yaml"]).code(0);
    assert_eq!(hub.commits("me/rdm"), 2);
    hub.race_next_commit();
    let r = run(
        &p,
        &hub,
        Some(&hub.write_token),
        false,
        &["run", "p.yaml", "-s", "hub.license=mit"],
    );
    r.code(1);
    assert!(
        r.stderr.contains("someone else pushed to `me/rdm`") && r.stderr.contains("rerun"),
        "{}",
        r.stderr
    );
    assert_eq!(
        hub.commits("me/rdm"),
        3,
        "only the other publisher's commit"
    );
    assert_eq!(
        hub.file("me/rdm", "main", "NOTES.md").as_deref(),
        Some(&b"pushed by someone else\n"[..])
    );
    // A rerun publishes on top of it.
    run(
        &p,
        &hub,
        Some(&hub.write_token),
        false,
        &["run", "p.yaml", "-s", "hub.license=mit"],
    )
    .code(0);
    assert_eq!(hub.commits("me/rdm"), 4);
    assert!(
        hub.file("me/rdm", "main", "NOTES.md").is_some(),
        "files of others are kept"
    );
}

#[test]
fn a_refused_inline_upload_explains_xet_and_transient_errors_are_retried() {
    let hub = HubServer::start();
    let p = project(PUBLISH);
    hub.refuse_inline_over(4096);
    let r = run(&p, &hub, Some(&hub.write_token), false, &["run", "p.yaml"]);
    r.code(1);
    assert!(
        r.stderr.contains("Xet")
            && r.stderr.contains("model.safetensors")
            && r.stderr.contains("local:"),
        "{}",
        r.stderr
    );
    assert_eq!(hub.commits("me/rdm"), 1, "nothing committed");

    let hub = HubServer::start();
    hub.fail_next(503, 2);
    run(&p, &hub, Some(&hub.write_token), false, &["run", "p.yaml"]).code(0);
    assert_eq!(hub.commits("me/rdm"), 2);
}
