//! Every device of the machine (issue 16), with CPU workers standing in for GPUs
//! (`--devices cpu*N`): a sampling stage fanned out over worker processes with work
//! stealing by shard and a crashed worker's shard redone; two training stages on two
//! devices at once; one training stage as two data-parallel ranks, against one rank and
//! through a kill -9; device selection errors before anything runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{shas, Project};
use crate::many::CASCADE;

/// 48 seeds in 12 shards of 4, a two-stage chain of tiny random models.
fn sample_project() -> Project {
    crate::sample::chain_project("0-47", 4, (3, 6))
}

/// Shards made by each worker, from the manifest's `worker` column.
fn shards_per_worker(manifest: &Path) -> BTreeMap<String, usize> {
    let (cols, rows) = relay::manifest::read_rows(manifest).unwrap();
    let w = cols.iter().position(|c| c == "worker").unwrap();
    let mut n = BTreeMap::new();
    for r in &rows {
        *n.entry(r[w].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    // Rows -> shards of 4.
    n.into_iter().map(|(k, v)| (k, v / 4)).collect()
}

fn record(p: &Project, stage: &str) -> serde_json::Value {
    p.records()
        .into_iter()
        .rev()
        .find(|r| r["stage"] == stage && r["status"] == "ok")
        .unwrap_or_else(|| panic!("no ok record of {stage}"))
}

/// `--devices cpu*3`: three workers share the 12 shards dynamically (the slowed one makes
/// fewer), the record names the three devices, and every image is a one-worker run's.
/// A worker killed mid-shard (abort at a crash point, as kill -9 leaves it) loses only
/// that shard, which the run makes again: the same bytes.
#[test]
fn sampling_fans_out_over_devices_and_redoes_a_dead_workers_shard() {
    let want = {
        let q = sample_project();
        q.run(&["run", "p.yaml", "--device", "cpu"]).code(0);
        shas(&q.path().join("runs/samples/manifest.parquet"))
    };
    assert_eq!(want.len(), 48);

    let p = sample_project();
    let plan = p.run(&["plan", "p.yaml", "--devices", "cpu*3"]);
    plan.code(0);
    assert!(
        plan.stdout.contains("[holds every free device]"),
        "{}",
        plan.stdout
    );
    let r = p
        .relay(&["run", "p.yaml", "--devices", "cpu*3"])
        .env("RELAY_TEST_SLOW_WORKER", "2:700")
        .output()
        .unwrap();
    let r = crate::common::Run::from(r);
    r.code(0);
    eprintln!("relay run p.yaml --devices cpu*3\n{}", r.stdout);
    assert!(
        r.stdout.contains("cpu#0,cpu#1,cpu#2"),
        "the summary names the devices:\n{}",
        r.stdout
    );
    let manifest = p.path().join("runs/samples/manifest.parquet");
    assert_eq!(shas(&manifest), want, "images differ from a one-worker run");
    let per = shards_per_worker(&manifest);
    eprintln!("shards per worker: {per:?}");
    assert_eq!(per.values().sum::<usize>(), 12);
    assert_eq!(per.len(), 3, "three workers made shards: {per:?}");
    let slow = per.get("cpu#2").copied().unwrap_or(0);
    let fastest = per.values().copied().max().unwrap();
    assert!(
        slow < fastest,
        "the slowed worker took as many shards as the fastest: {per:?}"
    );
    let rec = record(&p, "samples");
    assert_eq!(
        rec["devices"],
        serde_json::json!(["cpu#0", "cpu#1", "cpu#2"])
    );
    let hours = rec["device_hours"].as_f64().unwrap();
    let secs = rec["seconds"].as_f64().unwrap();
    assert!(
        (hours - 3.0 * secs / 3600.0).abs() < 1e-9,
        "{hours} vs {secs}"
    );
    assert_eq!(rec["info"]["workers"].as_array().unwrap().len(), 3);
    let st = p.run(&["status", "p.yaml"]);
    st.code(0);
    assert!(st.stdout.contains("worker cpu#2:"), "{}", st.stdout);

    // Worker 1 aborts while committing its first shard (the others are slowed so that it
    // surely gets one, however loaded the machine).
    let p = sample_project();
    let r = p
        .relay(&["run", "p.yaml", "--devices", "cpu*3"])
        .env("RELAY_TEST_SLOW_WORKER", "0:400,2:400")
        .env("RELAY_CRASH_AT", "shard:before-rename:1")
        .env("RELAY_CRASH_WORKER", "1")
        .output()
        .unwrap();
    let r = crate::common::Run::from(r);
    r.code(0);
    let log = std::fs::read_to_string(p.path().join("runs/.relay/logs/samples.log")).unwrap();
    assert!(
        log.contains("worker cpu#1") && log.contains("ended with signal"),
        "{log}"
    );
    // The dead worker's shard is free again: a worker that had not passed it yet takes
    // it, else the stage makes it after the workers end.
    let redone = record(&p, "samples")["info"]["redone_shards"]
        .as_u64()
        .unwrap();
    assert!(redone <= 1, "{redone} shards redone");
    assert_eq!(redone == 1, log.contains("making it again here"), "{log}");
    eprintln!(
        "the dead worker's shard was made again by {}",
        if redone == 1 {
            "the stage"
        } else {
            "another worker"
        }
    );
    assert_eq!(shas(&manifest_of(&p)), want, "a redone shard changed bytes");
    let worker_log =
        std::fs::read_to_string(p.path().join("runs/.relay/logs/samples.cpu1.log")).unwrap();
    assert!(worker_log.contains("crash point"), "{worker_log}");
    for e in std::fs::read_dir(p.path().join("runs/samples"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !relay::util::is_temp_name(&name),
            "the dead worker's {name} was published"
        );
    }
}

fn manifest_of(p: &Project) -> std::path::PathBuf {
    p.path().join("runs/samples/manifest.parquet")
}

/// Two training stages that each want one device run at once on two: each holds its own.
/// Proof of overlap without timing: both stages' logs exist (a stage's log is made when it
/// starts, after it got its device) while neither has committed.
#[test]
fn two_training_stages_share_two_devices_at_once() {
    let p = Project::new();
    p.write(
        "t.yaml",
        &CASCADE
            .replace("steps: 4", "steps: 40")
            .replace("snapshot_kimg: 0.016", "snapshot_kimg: 10"),
    );
    p.run(&["run", "t.yaml", "--until", "pairs"]).code(0);
    let runs = p.path().join("runs");
    let mut child = p
        .relay(&[
            "run",
            "t.yaml",
            "--only",
            "base",
            "--only",
            "relay",
            "--devices",
            "cpu*2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = |s: &str| runs.join(format!(".relay/logs/{s}.log")).exists();
    let committed = |s: &str| runs.join(format!(".relay/state/{s}.json")).exists();
    let t0 = Instant::now();
    let mut overlapped = false;
    while child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(300) {
        if started("base") && started("relay") && !committed("base") && !committed("relay") {
            overlapped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = crate::common::Run::from(child.wait_with_output().unwrap());
    out.code(0);
    eprintln!("{}", out.stdout);
    assert!(
        overlapped,
        "the two stages never ran at once:\n{}",
        out.stdout
    );
    let (b, r) = (record(&p, "base"), record(&p, "relay"));
    let mut held = vec![b["device"].clone(), r["device"].clone()];
    held.sort_by_key(|v| v.to_string());
    assert_eq!(
        held,
        [serde_json::json!("cpu#0"), serde_json::json!("cpu#1")]
    );
}

/// Max |a - b| over every tensor of two safetensors files.
fn max_diff(a: &Path, b: &Path) -> f32 {
    let dev = candle_core::Device::Cpu;
    let (a, b) = (
        candle_core::safetensors::load(a, &dev).unwrap(),
        candle_core::safetensors::load(b, &dev).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    let mut m = 0f32;
    for (k, t) in &a {
        let d = (t.to_dtype(candle_core::DType::F32).unwrap()
            - b[k].to_dtype(candle_core::DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        m = m.max(d);
    }
    m
}

/// One stage with `resources: { gpus: 2 }` on `--devices cpu*2` trains as two ranks: the
/// same weights as one rank with the same global batch and the same images (gradients
/// are summed, so at most the order of float sums differs: tolerance 1e-6), and a kill -9 after a snapshot resumes
/// to the uninterrupted two-rank run's bytes.
#[test]
fn a_stage_on_two_devices_trains_as_two_ranks_and_resumes_exactly() {
    // micro_batch 4 on both sides: one rank accumulates two passes of 4, two ranks one
    // pass of 4 each, summed in rank order.
    let pipeline = CASCADE
        .replace("steps: 4", "steps: 6")
        .replacen("batch: 8, steps", "batch: 8, micro_batch: 4, steps", 1)
        .replace(
            "  base:\n    uses: train",
            "  base:\n    uses: train\n    resources: { gpus: 2 }",
        );
    let weights = |p: &Project| p.path().join("runs/base/model.safetensors");
    let one = Project::new();
    one.write("t.yaml", &pipeline);
    one.run(&["run", "t.yaml", "--device", "cpu", "--until", "base"])
        .code(0);
    let two = Project::new();
    two.write("t.yaml", &pipeline);
    let r = two.run(&["run", "t.yaml", "--devices", "cpu*2", "--until", "base"]);
    r.code(0);
    eprintln!(
        "relay run t.yaml --devices cpu*2 --until base\n{}",
        r.stdout
    );
    let rec = record(&two, "base");
    assert_eq!(rec["devices"], serde_json::json!(["cpu#0", "cpu#1"]));
    assert_eq!(rec["info"]["device_count"], 2, "{}", rec["info"]);
    let d = max_diff(&weights(&one), &weights(&two));
    eprintln!("two ranks vs one: max |w1 - w2| = {d:e}");
    assert!(d < 1e-6, "two ranks drifted from one: {d}");

    // Killed right after its first snapshot, then rerun on the same two devices.
    let k = Project::new();
    k.write("t.yaml", &pipeline);
    let o = k
        .relay(&["run", "t.yaml", "--devices", "cpu*2", "--until", "base"])
        .env("RELAY_CRASH_AT", "snapshot:after-rename:1")
        .output()
        .unwrap();
    assert!(!o.status.success(), "the crash point was not reached");
    k.run(&["run", "t.yaml", "--devices", "cpu*2", "--until", "base"])
        .code(0);
    let log = std::fs::read_to_string(k.path().join("runs/.relay/logs/base.log")).unwrap();
    assert!(log.contains("resuming from"), "{log}");
    assert_eq!(
        relay::util::sha256_file(&weights(&k)).unwrap(),
        relay::util::sha256_file(&weights(&two)).unwrap(),
        "the resumed two-rank run differs from the uninterrupted one"
    );
}

/// A device the machine lacks, CUDA on a CPU build, more devices than the run has: exit 2
/// with what to do, before anything runs.
#[test]
fn device_selection_errors_are_bad_input_before_anything_runs() {
    let p = Project::new();
    p.write(
        "t.yaml",
        &CASCADE.replace(
            "  base:\n    uses: train",
            "  base:\n    uses: train\n    resources: { gpus: 3 }",
        ),
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["--devices", "7"],
            if cfg!(feature = "cuda") {
                "no CUDA device 7"
            } else {
                "built without CUDA"
            },
        ),
        (
            &["--device", "cuda"],
            if cfg!(feature = "cuda") {
                "cuda:0"
            } else {
                "built without CUDA"
            },
        ),
        (&["--devices", "cpu*2"], "wants 3 devices"),
        (&["--devices", "cpu*0"], "how many CPU workers"),
    ];
    for (flags, says) in cases {
        let mut args = vec!["run", "t.yaml"];
        args.extend_from_slice(flags);
        let r = p.run(&args);
        r.code(2);
        assert!(r.stderr.contains(says), "{flags:?}: {}", r.stderr);
        assert!(
            !p.path().join("runs/images").exists(),
            "{flags:?}: something ran"
        );
    }
    // The pipeline's `devices:` is checked the same way.
    p.write(
        "u.yaml",
        &format!(
            "devices: cpu*2\n{}",
            CASCADE.replace(
                "  base:\n    uses: train",
                "  base:\n    uses: train\n    resources: { gpus: 3 }",
            )
        ),
    );
    let r = p.run(&["run", "u.yaml"]);
    r.code(2);
    assert!(r.stderr.contains("wants 3 devices"), "{}", r.stderr);
}
