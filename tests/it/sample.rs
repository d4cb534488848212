//! The `sample` stage: shards, manifest, preview, workers, resume and export.

use std::path::Path;
use std::time::Duration;

use crate::common::{shas, Project};

/// A randomly initialised tiny model folder: `relay` = None for a base stage, or the
/// relay stage's up-scale factor.
pub fn model_dir(dir: &Path, res: usize, relay: Option<usize>, seed: u64) {
    let model = crate::common::random_tiny_model(dir, res, seed);
    let card = match relay {
        None => {
            serde_json::json!({ "model": model, "diffusion": { "kind": "edm" }, "resolution": res })
        }
        Some(up) => serde_json::json!({
            "model": model,
            "diffusion": { "kind": "relay", "up_scale": up, "blur_sigma_max": 2.0, "prob_length": 0.93 },
            "resolution": res
        }),
    };
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&card).unwrap(),
    )
    .unwrap();
}

fn project() -> Project {
    let p = Project::new();
    model_dir(&p.path().join("models/base"), 8, None, 1);
    model_dir(&p.path().join("models/relay"), 16, Some(2), 2);
    p.write(
        "p.yaml",
        "name: s\nworkdir: runs\nstages:\n  samples:\n    uses: sample\n    with:\n      seeds: 0-11\n      samples_per_shard: 4\n      batch: 3\n      models: [models/base, models/relay]\n      stages: { models/base: { num_steps: 4 }, models/relay: { num_steps: 10 } }\n",
    );
    p
}

#[test]
fn two_stage_job_writes_shards_manifest_preview_and_npz() {
    let p = project();
    let r = p.run(&["run", "p.yaml"]);
    r.code(0);
    let out = p.path().join("runs/samples");
    for k in 0..3 {
        assert!(out.join(format!("samples-{k:06}.tar")).is_file());
    }
    assert!(out.join("preview.png").is_file());
    assert!(!out.join(".parts").exists(), "parts are merged away");
    let (cols, rows) = relay::manifest::read_rows(&out.join("manifest.parquet")).unwrap();
    assert_eq!(rows.len(), 12);
    let c = |n: &str| cols.iter().position(|x| x == n).unwrap();
    let seeds: Vec<u64> = rows
        .iter()
        .map(|r| r[c("seed")].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, (0..12).collect::<Vec<_>>());
    assert_eq!(rows[0][c("resolution")].as_u64(), Some(16));
    assert_eq!(rows[0][c("label_mode")].as_str(), Some("none"));
    // NFE: EDM Heun over 4 steps = 7, plus the blur sampler's 2n - 1 over its kept steps.
    let nfe = rows[0][c("nfe")].as_u64().unwrap();
    assert!(nfe > 7, "nfe {nfe}");
    assert!(rows[0][c("checkpoints")]
        .as_str()
        .unwrap()
        .contains("sha256"));

    // The ADM evaluator's npz: arr_0 uint8 [12, 16, 16, 3].
    let r = p.run(&["export", "runs/samples", "--npz", "s.npz"]);
    r.code(0);
    let mut z = zip::ZipArchive::new(std::fs::File::open(p.path().join("s.npz")).unwrap()).unwrap();
    let mut arr = z.by_name("arr_0.npy").unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut arr, &mut bytes).unwrap();
    let header = String::from_utf8_lossy(&bytes[10..128]);
    assert!(
        header.contains("'descr': '|u1'") && header.contains("'shape': (12, 16, 16, 3)"),
        "{header}"
    );
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize + 10;
    assert_eq!(bytes.len() - hlen, 12 * 16 * 16 * 3);
    drop(arr);
    assert!(
        z.by_name("arr_1.npy").is_err(),
        "no labels for an unconditional model"
    );

    let r = p.run(&["export", "runs/samples", "--png-dir", "pngs"]);
    r.code(0);
    assert!(p.path().join("pngs/00000/img00000011.png").is_file());
}

#[test]
fn one_worker_and_three_workers_give_the_same_images() {
    let single = project();
    single.run(&["run", "p.yaml"]).code(0);
    let want = shas(&single.path().join("runs/samples/manifest.parquet"));

    let multi = project();
    for i in 0..3 {
        let r = multi.run(&["exec", "p.yaml", "samples", "--shard", &format!("{i}/3")]);
        r.code(0);
    }
    assert!(
        !multi.path().join("runs/samples").exists(),
        "workers do not publish"
    );
    let r = multi.run(&["run", "p.yaml"]);
    r.code(0);
    assert!(
        r.stderr.contains("3 of 3 shards already done"),
        "{}",
        r.stderr
    );
    assert_eq!(
        shas(&multi.path().join("runs/samples/manifest.parquet")),
        want
    );
}

#[test]
fn batch_size_does_not_change_an_image_and_a_partial_job_resumes() {
    let a = project();
    a.run(&["run", "p.yaml"]).code(0);
    let want = shas(&a.path().join("runs/samples/manifest.parquet"));

    let b = project();
    // One worker of two finishes its shards (0 and 2), then a full run does the rest.
    b.run(&[
        "exec",
        "p.yaml",
        "samples",
        "--shard",
        "0/2",
        "-s",
        "samples.batch=1",
    ])
    .code(0);
    let r = b.run(&["run", "p.yaml", "-s", "samples.batch=1"]);
    r.code(0);
    assert!(
        r.stderr.contains("resuming: 2 of 3 shards already done"),
        "{}",
        r.stderr
    );
    assert_eq!(shas(&b.path().join("runs/samples/manifest.parquet")), want);
}

#[test]
fn kill_9_mid_job_then_resume_gives_the_same_bytes() {
    let whole = project();
    whole.run(&["run", "p.yaml"]).code(0);
    let want = shas(&whole.path().join("runs/samples/manifest.parquet"));

    let p = project();
    // Wait until the first shard is committed, then kill -9.
    let partial = p.path().join("runs/.relay/partial");
    let first_part = p.kill_9_when(
        &["run", "p.yaml", "-s", "samples.batch=1"],
        Duration::from_secs(60),
        "no shard was committed",
        || {
            std::fs::read_dir(&partial)
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .map(|e| e.path().join(".parts/000000.parquet"))
                .filter(|p| p.is_file())
        },
    );
    assert!(first_part.is_file());
    assert!(
        !p.path().join("runs/samples").exists(),
        "nothing published after kill -9"
    );

    let r = p.run(&["run", "p.yaml", "-s", "samples.batch=1"]);
    r.code(0);
    assert!(r.stderr.contains("resuming:"), "{}", r.stderr);
    assert_eq!(shas(&p.path().join("runs/samples/manifest.parquet")), want);
    // The tar shards are byte-identical too.
    for k in 0..3 {
        let name = format!("runs/samples/samples-{k:06}.tar");
        assert_eq!(
            std::fs::read(whole.path().join(&name)).unwrap(),
            std::fs::read(p.path().join(&name)).unwrap(),
            "{name}"
        );
    }
}
