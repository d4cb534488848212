//! The shipped pipelines, run for real on tiny substitutes through `--var` and `-s`
//! overrides (a small generated image folder, the tiny model, a few steps, a handful of
//! samples), so they cannot rot. The quickstart additionally checks its outputs and that a
//! second run is fully cached.

use std::path::{Path, PathBuf};

use crate::common::{Project, Run};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run a shipped pipeline with `args`, in a temporary workdir.
fn run_pipeline(p: &Project, name: &str, args: &[&str]) -> Run {
    let pipeline = repo().join("pipelines").join(name);
    let workdir = p.path().join("runs");
    let lock = p.path().join("relay.lock");
    let mut all: Vec<String> = vec![
        "run".into(),
        pipeline.display().to_string(),
        "--workdir".into(),
        workdir.display().to_string(),
        "--lockfile".into(),
        lock.display().to_string(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    p.run(&refs)
}

/// A folder of `n` shape images per class subfolder.
fn image_folder(dir: &Path, classes: &[&str], n: u64, side: u32) {
    for (c, name) in classes.iter().enumerate() {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            let (img, _) = relay::data::shapes::render(
                7,
                i * classes.len() as u64 + c as u64,
                classes.len(),
                side,
            );
            img.save(d.join(format!("img{i:03}.png"))).unwrap();
        }
    }
}

/// Overrides that shrink a train stage to a couple of CPU steps.
fn tiny_train(stage: &str) -> Vec<String> {
    [
        "model=tiny",
        "batch=4",
        "micro_batch=4",
        "duration_kimg=null",
        "steps=2",
        "preview_images=0",
        "tick_kimg=0.004",
        "snapshot_kimg=0.004",
        "dropout=0",
        "fp16=false", // the paper templates train in fp16, which needs CUDA
    ]
    .iter()
    .map(|kv| format!("{stage}.{kv}"))
    .collect()
}

fn args_of(v: &[String]) -> Vec<String> {
    v.iter()
        .flat_map(|s| ["-s".to_string(), s.clone()])
        .collect()
}

/// Run a paper pipeline on `data` with `vars` and the tiny-train overrides of `trained`
/// stages plus `sets`; sampling shrunk to 4 seeds in shards of 2. Asserts every stage ran.
fn run_paper(
    p: &Project,
    name: &str,
    data: &Path,
    vars: &[&str],
    trained: &[&str],
    sets: &[String],
    stages: &[&str],
) {
    let mut all: Vec<String> = trained.iter().flat_map(|s| tiny_train(s)).collect();
    all.extend([
        "samples.samples_per_shard=2".to_string(),
        "samples.batch=4".into(),
        "samples.stages.base.num_steps=3".into(),
        "samples.stages.relay.num_steps=12".into(),
        format!("hub.local={}", p.path().join("hub").display()),
    ]);
    all.extend(sets.iter().cloned());
    let mut args = vec![
        "--var".to_string(),
        format!("data={}", data.display()),
        "--var".into(),
        "seeds=0-3".into(),
    ];
    for v in vars {
        args.extend(["--var".to_string(), v.to_string()]);
    }
    args.extend(args_of(&all));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_pipeline(p, name, &refs);
    r.code(0);
    assert!(
        statuses(&r, stages).iter().all(|s| s == "ok"),
        "{}",
        r.stdout
    );
}

fn statuses(r: &Run, stages: &[&str]) -> Vec<String> {
    stages.iter().map(|s| r.status_of(s)).collect()
}

#[test]
fn quickstart_runs_end_to_end_then_is_fully_cached() {
    let p = Project::new();
    let hub = p.path().join("hub");
    let mut args: Vec<String> = vec!["--var".into(), "images=48".into()];
    let mut sets = vec![
        "base.steps=3".to_string(),
        "relay.steps=3".into(),
        "base.preview_images=0".into(),
        "relay.preview_images=0".into(),
        "samples.seeds=0-7".into(),
        "samples.samples_per_shard=4".into(),
        "samples.batch=8".into(),
        "samples.stages.base.num_steps=4".into(),
        "samples.stages.relay.num_steps=8".into(),
        format!("hub.local={}", hub.display()),
    ];
    sets.extend(["shards.samples_per_shard=16".to_string()]);
    args.extend(args_of(&sets));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let stages = [
        "images", "shards", "pairs", "base", "relay", "samples", "hub", "npz",
    ];

    let r = run_pipeline(&p, "quickstart.yaml", &refs);
    r.code(0);
    assert!(
        statuses(&r, &stages).iter().all(|s| s == "ok"),
        "{}",
        r.stdout
    );
    let r2 = run_pipeline(&p, "quickstart.yaml", &refs);
    r2.code(0);
    assert!(
        statuses(&r2, &stages).iter().all(|s| s == "cached"),
        "{}",
        r2.stdout
    );

    let runs = p.path().join("runs");
    let (_, rows) = relay::manifest::read_rows(&runs.join("samples/manifest.parquet")).unwrap();
    assert_eq!(rows.len(), 8, "one row per seed");
    // The npz holds arr_0 uint8 [8, 32, 32, 3].
    let mut z =
        zip::ZipArchive::new(std::fs::File::open(runs.join("npz/samples.npz")).unwrap()).unwrap();
    let mut head = [0u8; 128];
    std::io::Read::read_exact(&mut z.by_name("arr_0.npy").unwrap(), &mut head).unwrap();
    assert!(String::from_utf8_lossy(&head).contains("'shape': (8, 16, 16, 3)"));
    // The local hub folder: model card, configs, weights.
    for f in [
        "README.md",
        "config.json",
        "base/model.safetensors",
        "base/config.json",
        "relay/model.safetensors",
        "relay/config.json",
    ] {
        assert!(hub.join(f).is_file(), "missing {f} in the local hub folder");
    }
    let card = std::fs::read_to_string(hub.join("README.md")).unwrap();
    assert!(
        card.starts_with("---\n") && card.contains("library_name: relay"),
        "{card}"
    );
}

#[test]
fn imagenet_256_runs_on_a_tiny_substitute() {
    let p = Project::new();
    let data = p.path().join("imagenet");
    image_folder(&data, &["n01440764", "n01443537"], 6, 40);
    let stages = [
        "images", "shards", "pairs", "base", "relay", "samples", "hub", "npz", "metrics",
    ];
    // The metrics against the training images (no ADM reference batch here), with the
    // formula-weight FID network.
    let inception = format!(
        "inception={}",
        crate::metrics::inception_weights().display()
    );
    run_paper(
        &p,
        "imagenet-256.yaml",
        &data,
        &["hi=32", "lo=8", "reference=pairs", &inception],
        &["base", "relay"],
        &["samples.stages.relay.rho=7".into()],
        &stages,
    );
    // Class-balanced labels: seed mod classes.
    let (cols, rows) =
        relay::manifest::read_rows(&p.path().join("runs/samples/manifest.parquet")).unwrap();
    let c = |n: &str| cols.iter().position(|x| x == n).unwrap();
    let labels: Vec<i64> = rows
        .iter()
        .map(|r| r[c("label")].as_i64().unwrap())
        .collect();
    assert_eq!(labels, [0, 1, 0, 1]);
    assert_eq!(rows[0][c("label_mode")].as_str(), Some("balanced"));
    // generate_imagenet.py's enhancement, recorded on every row (issue 19).
    assert!(rows
        .iter()
        .all(|r| r[c("postprocess")].as_str() == Some("brightness 1.06 (PIL ImageEnhance)")));
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.path().join("runs/metrics/metrics.json")).unwrap(),
    )
    .unwrap();
    assert!(m["fid"].is_number() && m["precision"].is_number(), "{m}");
    assert_eq!(m["count"], 4);
    // The card carries them as model-index results.
    let card = std::fs::read_to_string(p.path().join("hub/README.md")).unwrap();
    assert!(
        card.contains("model-index:") && card.contains("type: fid"),
        "{card}"
    );
}

#[test]
fn celebahq_256_runs_on_a_tiny_substitute() {
    let p = Project::new();
    let data = p.path().join("faces");
    image_folder(&data, &["all"], 8, 48);
    let stages = [
        "images", "shards", "pairs", "base", "relay", "samples", "hub", "npz",
    ];
    run_paper(
        &p,
        "celebahq-256.yaml",
        &data,
        &["hi=32", "lo=8"],
        &["base", "relay"],
        &[],
        &stages,
    );
    // generate_celebahq.py's enhancement and its relay sampler's churn draw (issue 19).
    let (cols, rows) =
        relay::manifest::read_rows(&p.path().join("runs/samples/manifest.parquet")).unwrap();
    let c = |n: &str| cols.iter().position(|x| x == n).unwrap();
    assert_eq!(
        rows[0][c("postprocess")].as_str(),
        Some("contrast 0.9, brightness 1.05, color 0.99 (PIL ImageEnhance)")
    );
    let sampler: serde_json::Value =
        serde_json::from_str(rows[0][c("sampler")].as_str().unwrap()).unwrap();
    assert!(
        sampler[1]["settings"]["churn"].is_object(),
        "the relay sampler lacks the churn draw: {sampler}"
    );
}

#[test]
fn celebahq_1024_runs_three_stages_on_a_tiny_substitute() {
    let p = Project::new();
    let data = p.path().join("faces");
    image_folder(&data, &["all"], 8, 40);
    let sets: Vec<String> = [
        "relay.up_scale=2",
        "relay1024.up_scale=2",
        "samples.stages.relay.up_scale=2",
        "samples.stages.relay1024.num_steps=12",
        "samples.stages.relay1024.up_scale=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let stages = [
        "images",
        "shards",
        "pairs",
        "base",
        "relay",
        "relay1024",
        "samples",
        "hub",
        "npz",
    ];
    run_paper(
        &p,
        "celebahq-1024.yaml",
        &data,
        &["top=32", "hi=16", "lo=8"],
        &["base", "relay", "relay1024"],
        &sets,
        &stages,
    );
    let (cols, rows) =
        relay::manifest::read_rows(&p.path().join("runs/samples/manifest.parquet")).unwrap();
    let c = cols.iter().position(|x| x == "resolution").unwrap();
    assert_eq!(rows[0][c].as_u64(), Some(32));
}

/// Super-resolution (issue 19): the relay stage alone, started from a held-out set's 8 px
/// images plus noise; every manifest row names its start image.
#[test]
fn superres_runs_the_relay_stage_from_given_images() {
    let p = Project::new();
    let sets = [
        "relay.steps=3",
        "relay.preview_images=0",
        "upsampled.seeds=0-5",
        "upsampled.samples_per_shard=4",
        "upsampled.batch=4",
        "upsampled.stages.relay.num_steps=8",
    ];
    let mut args: Vec<String> = vec![
        "--var".into(),
        "images=48".into(),
        "--var".into(),
        "test_images=6".into(),
    ];
    args.extend(args_of(
        &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    ));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_pipeline(&p, "superres.yaml", &refs);
    r.code(0);
    assert_eq!(r.status_of("upsampled"), "ok", "{}", r.stdout);
    let (cols, rows) =
        relay::manifest::read_rows(&p.path().join("runs/upsampled/manifest.parquet")).unwrap();
    let c = |n: &str| cols.iter().position(|x| x == n).unwrap();
    assert_eq!(rows.len(), 6);
    let sources: Vec<&str> = rows
        .iter()
        .map(|r| r[c("source")].as_str().unwrap())
        .collect();
    assert!(sources.iter().all(|s| s.contains(".tar#")), "{sources:?}");
    let mut unique = sources.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        6,
        "each sample has its own start image: {sources:?}"
    );
    assert!(rows.iter().all(|r| r[c("resolution")].as_u64() == Some(16)));
}
