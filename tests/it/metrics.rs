//! The `metrics` stage and `relay metrics` / `relay stats` / `relay show` (issue 18), on CPU
//! with the formula-weight FID network (`src/model/inception/synthetic.rs` and the
//! batch-norm statistics calibrated by scripts/make_inception_vectors.py): shapes → shards
//! → 16/8 px pairs; random tiny models → 12 samples at 16 px → metrics against the pairs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::Project;

/// The formula-weight network with calibrated batch norms, written once per test process.
pub fn inception_weights() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let vectors = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/metrics/inception.safetensors"
        );
        let v = candle_core::safetensors::load(vectors, &candle_core::Device::Cpu).unwrap();
        let stats: HashMap<_, _> = v
            .into_iter()
            .filter(|(k, _)| k.contains(".bn.running_"))
            .collect();
        let w = relay::model::inception::synthetic::weights(&stats).unwrap();
        let path = std::env::temp_dir().join(format!(
            "relay-it-inception-{}.safetensors",
            std::process::id()
        ));
        candle_core::safetensors::save(&w, &path).unwrap();
        path
    })
}

const PIPELINE: &str = r#"name: m
workdir: runs
stages:
  images:
    uses: source/shapes
    with: { count: 16, resolution: 16, classes: 4, seed: 5 }
  shards:
    uses: shard
    needs: [images]
    with: { samples_per_shard: 8 }
  pairs:
    uses: downsample
    needs: [shards]
    with: { resolutions: [16, 8] }
  samples:
    uses: sample
    MATRIX
    with:
      seeds: 0-11
      samples_per_shard: 4
      batch: 4
      models: [models/base, models/relay]
      stages: { models/base: { num_steps: 3 }, models/relay: { num_steps: 6 } }
  fid:
    uses: metrics
    needs: [samples, pairs]
    with: { reference: pairs, inception: INCEPTION, batch: 4 }
"#;

fn project(matrix: &str) -> Project {
    let p = Project::new();
    crate::sample::model_dir(&p.path().join("models/base"), 8, None, 1);
    crate::sample::model_dir(&p.path().join("models/relay"), 16, Some(2), 2);
    let text = PIPELINE
        .replace("MATRIX", matrix)
        .replace("INCEPTION", &inception_weights().display().to_string());
    p.write("p.yaml", &text);
    p
}

fn metrics_json(p: &Project) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p.path().join("runs/fid/metrics.json")).unwrap())
        .unwrap()
}

const KEYS: [&str; 7] = [
    "fid",
    "sfid",
    "inception_score",
    "precision",
    "recall",
    "precision_count",
    "recall_count",
];

#[test]
fn stage_writes_numbers_caches_and_resumes_after_kill_9() {
    // Uninterrupted.
    let whole = project("");
    let r = whole.run(&["run", "p.yaml"]);
    r.code(0);
    let m = metrics_json(&whole);
    for k in KEYS {
        assert!(m[k].is_number(), "`{k}` missing in {m}");
    }
    assert_eq!(m["count"], 12);
    assert_eq!(m["reference"]["stage"], "pairs");
    assert_eq!(m["reference"]["count"], 16);
    assert_eq!(
        m["reference"]["resolution"], 16,
        "the samples' resolution picks KEY.16.png"
    );
    assert!(
        m["fid"].as_f64().unwrap() > 1.0,
        "random samples vs shapes: a large FID, {m}"
    );
    assert_eq!(m["network"]["sha256"].as_str().unwrap().len(), 64);
    assert!(whole.path().join("runs/fid/stats.npz").is_file());
    let mut z = relay::data::npy::Npz::open(&whole.path().join("runs/fid/stats.npz")).unwrap();
    assert_eq!(z.names(), ["mu", "mu_s", "sigma", "sigma_s"]);
    assert_eq!(z.read_f64("sigma_s").unwrap().0, vec![2023, 2023]);
    // In the run record.
    let rec = whole
        .records()
        .into_iter()
        .find(|r| r["stage"] == "fid" && r["status"] == "ok")
        .unwrap();
    assert_eq!(rec["info"]["fid"], m["fid"]);
    assert_eq!(rec["images"], 12);

    // A rerun is cached.
    let r = whole.run(&["run", "p.yaml"]);
    r.code(0);
    assert_eq!(r.status_of("fid"), "cached");

    // Killed after the first unit of sample features, then resumed: the same numbers.
    let p = project("");
    p.run(&["run", "p.yaml", "--until", "samples"]).code(0);
    let cache = p.path().join("runs/.relay/cache/metrics");
    p.kill_9_when(
        &["run", "p.yaml"],
        Duration::from_secs(120),
        "no feature unit was written",
        || {
            std::fs::read_dir(&cache)
                .ok()?
                .filter_map(|e| e.ok())
                .find(|e| e.path().join("unit-000000.feat").is_file())
        },
    );
    assert!(
        !p.path().join("runs/fid").exists(),
        "nothing published after kill -9"
    );
    let r = p.run(&["run", "p.yaml"]);
    r.code(0);
    assert!(r.stderr.contains("units cached"), "{}", r.stderr);
    let resumed = metrics_json(&p);
    for k in KEYS {
        assert_eq!(resumed[k], m[k], "`{k}` after resuming");
    }
}

#[test]
fn show_prints_one_row_per_matrix_instance() {
    let p = project("matrix: { seeds: [0-5, 6-11] }");
    p.run(&["run", "p.yaml"]).code(0);
    let r = p.run(&["show", "p.yaml"]);
    r.code(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two rows:\n{}", r.stdout);
    assert!(
        lines[0].starts_with("stage") && lines[0].contains("seeds") && lines[0].contains("fid"),
        "{}",
        r.stdout
    );
    assert!(
        lines[1].starts_with("samples@seeds=0-5") && lines[1].ends_with("ok"),
        "{}",
        r.stdout
    );
    assert!(lines[2].starts_with("samples@seeds=6-11"), "{}", r.stdout);
    // --json: the same rows with numbers.
    let r = p.run(&["show", "p.yaml", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(
        rows[0]["fid"].is_number() && rows[1]["fid"].is_number(),
        "{rows}"
    );
    assert_ne!(rows[0]["fid"], rows[1]["fid"]);
    assert_eq!(rows[0]["count"], 6);
    let csv = p.run(&["show", "p.yaml", "--csv"]).stdout;
    assert_eq!(csv.lines().count(), 3, "{csv}");
}

/// An `.npz` with the given arrays (name, dtype, shape, bytes).
fn npz(path: &Path, arrays: &[(&str, &str, &[usize], Vec<u8>)]) {
    let mut w = relay::data::npy::NpzWriter::create(path).unwrap();
    for (name, descr, shape, bytes) in arrays {
        std::io::Write::write_all(w.start(name, descr, shape).unwrap(), bytes).unwrap();
    }
    w.finish().unwrap();
}

fn images(n: usize) -> Vec<u8> {
    (0..n * 16 * 16 * 3).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn bad_inputs_name_the_file_and_exit_2() {
    let p = Project::new();
    let w = inception_weights().display().to_string();
    npz(
        &p.path().join("s.npz"),
        &[("arr_0", "|u1", &[6, 16, 16, 3], images(6))],
    );
    npz(
        &p.path().join("few.npz"),
        &[("arr_0", "|u1", &[3, 16, 16, 3], images(3))],
    );
    npz(
        &p.path().join("nothing.npz"),
        &[("labels", "<i8", &[2], vec![0; 16])],
    );
    npz(
        &p.path().join("float.npz"),
        &[("arr_0", "<f8", &[2, 3], vec![0; 48])],
    );
    npz(
        &p.path().join("rgba.npz"),
        &[("arr_0", "|u1", &[2, 16, 16, 4], vec![0; 2048])],
    );
    let unet = p.path().join("unet");
    crate::common::random_tiny_model(&unet, 8, 1);
    let unet = unet.join("model.safetensors").display().to_string();

    let cases: [(&[&str], &str); 5] = [
        (
            &["s.npz", "--reference", "s.npz", "--inception", &unet],
            "is not the FID Inception-v3",
        ),
        (
            &["s.npz", "--reference", "nothing.npz", "--inception", &w],
            "neither `mu`/`sigma`",
        ),
        (
            &["float.npz", "--reference", "s.npz", "--inception", &w],
            "expected uint8 images [N, H, W, 3]",
        ),
        (
            &["rgba.npz", "--reference", "s.npz", "--inception", &w],
            "expected uint8 images [N, H, W, 3]",
        ),
        (
            &["few.npz", "--reference", "s.npz", "--inception", &w],
            "at least 4",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["metrics"];
        all.extend_from_slice(args);
        let r = p.run(&all);
        r.code(2);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        let file = if want.contains("Inception") {
            "model.safetensors"
        } else {
            args[0]
        };
        let file = if want.contains("mu`/`sigma") {
            "nothing.npz"
        } else {
            file
        };
        assert!(
            r.stderr.contains(file),
            "{args:?} should name {file}: {}",
            r.stderr
        );
    }
}

#[test]
fn cli_metrics_and_stats_agree() {
    let p = Project::new();
    let w = inception_weights().display().to_string();
    npz(
        &p.path().join("a.npz"),
        &[("arr_0", "|u1", &[6, 16, 16, 3], images(6))],
    );
    let b: Vec<u8> = images(6).iter().map(|x| x.wrapping_mul(3)).collect();
    npz(
        &p.path().join("b.npz"),
        &[("arr_0", "|u1", &[6, 16, 16, 3], b)],
    );
    // Statistics of b as a reference batch without images.
    p.run(&["stats", "b.npz", "--inception", &w, "--out", "ref.npz"])
        .code(0);
    let metrics = |reference: &str, more: &[&str]| {
        let mut args = vec![
            "metrics",
            "a.npz",
            "--reference",
            reference,
            "--inception",
            &w,
        ];
        args.extend_from_slice(more);
        p.run(&args)
    };
    let json = |r: crate::common::Run| -> serde_json::Value {
        r.code(0);
        serde_json::from_str(&r.stdout).unwrap()
    };
    let from_stats = json(metrics("ref.npz", &["--metrics", "fid,sfid", "--json"]));
    let from_images = json(metrics("b.npz", &["--json"]));
    let (x, y) = (
        from_stats["fid"].as_f64().unwrap(),
        from_images["fid"].as_f64().unwrap(),
    );
    assert!((x - y).abs() <= 1e-9 * y.abs(), "{x} vs {y}");
    assert!(from_images["precision"].is_number() && from_images["inception_score"].is_number());
    // Without precision/recall, a reference batch without `arr_0` is enough; with them, not.
    let r = metrics("ref.npz", &["--metrics", "precision"]);
    r.code(2);
    assert!(
        r.stderr.contains("ref.npz") && r.stderr.contains("arr_0"),
        "{}",
        r.stderr
    );
}
