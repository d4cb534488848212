//! The Slurm executor against a real one-node Slurm (`scripts/slurm-local.sh start`,
//! which `.ci/run` calls): a sample stage as a job array plus a merge job, identical to a
//! local run, and a killed task resubmitted alone.

use crate::common::{shas, Project};
use crate::sample::model_dir;

/// Whether a Slurm controller answers. Without one the tests say so loudly; with
/// `RELAY_REQUIRE_SLURM=1` (CI) they fail instead.
fn slurm_ready() -> bool {
    let ok = std::process::Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false);
    if !ok {
        let msg = "SLURM TESTS NOT RUN: no Slurm controller answers here (start one with `scripts/slurm-local.sh start` \
                   and export SLURM_CONF=/tmp/relay-slurm/slurm.conf)";
        if std::env::var("RELAY_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    }
    ok
}

const PIPELINE: &str = "name: sl\nworkdir: runs\nresources: { cpus: 1 }\nstages:\n  samples:\n    uses: sample\n    resources: { array_parallel: 1 }\n    with:\n      seeds: 0-47\n      samples_per_shard: 12\n      batch: 12\n      models: [models/base, models/relay]\n      stages: { models/base: { num_steps: 3 }, models/relay: { num_steps: 8 } }\n";

fn project() -> Project {
    let p = Project::new();
    model_dir(&p.path().join("models/base"), 8, None, 1);
    model_dir(&p.path().join("models/relay"), 16, Some(2), 2);
    p.write("p.yaml", PIPELINE);
    p
}

#[test]
fn sample_stage_as_job_array_matches_a_local_run_and_resubmits_only_missing_shards() {
    if !slurm_ready() {
        return;
    }
    let local = project();
    local.run(&["run", "p.yaml"]).code(0);
    let want = shas(&local.path().join("runs/samples/manifest.parquet"));
    assert_eq!(want.len(), 48);

    // 1. The whole job through Slurm: a 4-task array and a merge job.
    let p = project();
    let r = p.run(&["run", "p.yaml", "--executor", "slurm", "--wait"]);
    r.code(0);
    assert!(
        r.stdout.contains("array") && r.stdout.contains("merge"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("COMPLETED x4"), "{}", r.stdout);
    let script =
        std::fs::read_to_string(p.path().join("runs/.relay/slurm/samples/shards-0.sbatch"))
            .unwrap();
    assert!(script.contains("#SBATCH --array=0-3%1"), "{script}");
    assert!(script.contains("--shard $I/4"), "{script}");
    assert_eq!(shas(&p.path().join("runs/samples/manifest.parquet")), want);
    // Up to date now: nothing is submitted.
    let r = p.run(&["run", "p.yaml", "--executor", "slurm"]);
    r.code(0);
    assert!(r.stdout.contains("nothing to submit"), "{}", r.stdout);

    // 2. One task cancelled: the merge cannot run; a rerun submits that shard alone.
    let q = project();
    let r = q.run(&["run", "p.yaml", "--executor", "slurm"]);
    r.code(0);
    let array_id = r
        .stdout
        .lines()
        .find(|l| l.contains(" array "))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_string();
    let o = std::process::Command::new("scancel")
        .arg(format!("{array_id}_3"))
        .output()
        .unwrap();
    assert!(o.status.success());
    // Wait for the rest to end (the merge job can never run: its dependency failed).
    let t0 = std::time::Instant::now();
    let jobs = relay::exec::slurm::JobsFile::load(&q.path().join("runs"));
    let ids: Vec<String> = jobs
        .stages
        .values()
        .flatten()
        .map(|j| j.id.clone())
        .collect();
    assert_eq!(ids.len(), 2, "an array and a merge job");
    while ids.iter().any(|i| relay::exec::slurm::is_live(i)) {
        assert!(t0.elapsed().as_secs() < 120, "the array did not finish");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(!q.path().join("runs/samples/manifest.parquet").exists());
    let r = q.run(&["run", "p.yaml", "--executor", "slurm", "--wait"]);
    r.code(0);
    let script =
        std::fs::read_to_string(q.path().join("runs/.relay/slurm/samples/shards-0.sbatch"))
            .unwrap();
    assert!(
        script.contains("#SBATCH --array=3%1"),
        "only the missing shard: {script}"
    );
    assert_eq!(shas(&q.path().join("runs/samples/manifest.parquet")), want);
}

#[test]
fn dry_run_prints_the_scripts_without_slurm() {
    let p = project();
    let r = p.run(&["run", "p.yaml", "--executor", "slurm", "--dry-run"]);
    r.code(0);
    assert!(r.stdout.contains("#SBATCH --array=0-3%1"), "{}", r.stdout);
    assert!(
        r.stdout.contains("#SBATCH --cpus-per-task=1"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("samples (merge)"), "{}", r.stdout);
}

/// Issue 15: a pipeline with parallel branches through a real Slurm — data, two training
/// stages that need only `pairs` (submitted together), sampling, and two stages after it —
/// succeeds job by job, the two training jobs of one workdir run at the same time, and the
/// samples are a local run's, byte for byte.
#[test]
fn parallel_branches_run_at_once_and_match_a_local_run() {
    if !slurm_ready() {
        return;
    }
    // Long enough (several seconds each) that running at once shows at the second
    // resolution of Slurm's clock.
    let pipeline = crate::many::CASCADE.replace("steps: 4", "steps: 64");
    let local = Project::new();
    local.write("p.yaml", &pipeline);
    local.run(&["run", "p.yaml", "--device", "cpu"]).code(0);
    let want = crate::many::cascade_result(&local);

    let p = Project::new();
    p.write("p.yaml", &pipeline);
    let r = p.run(&[
        "run",
        "p.yaml",
        "--executor",
        "slurm",
        "--device",
        "cpu",
        "--wait",
    ]);
    r.code(0);
    let jobs: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains("COMPLETED"))
        .collect();
    // images, shards, pairs, base, relay, samples (array + merge), hub, npz
    assert!(jobs.len() >= 9, "{}", r.stdout);
    assert!(
        !r.stdout.contains("FAILED") && !r.stdout.contains("CANCELLED"),
        "{}",
        r.stdout
    );
    assert_eq!(crate::many::cascade_result(&p), want);
    // base and relay overlapped: each started (by Slurm's clock) before the other ended.
    let jobs = relay::exec::slurm::JobsFile::load(&p.path().join("runs"));
    let span = |stage: &str| {
        let id = &jobs.stages[stage][0].id;
        let out = std::process::Command::new("scontrol")
            .args(["show", "job", "-o", id])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |k: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {text}"))
                .to_string()
        };
        eprintln!(
            "{stage}: job {id} {} .. {}",
            field("StartTime"),
            field("EndTime")
        );
        (field("StartTime"), field("EndTime"))
    };
    let ((bs, be), (rs, re)) = (span("base"), span("relay"));
    assert!(
        bs < re && rs < be,
        "base {bs}..{be}, relay {rs}..{re}: not at the same time"
    );
    // And the records (written by the jobs themselves) say the same.
    let rec = |s: &str| {
        p.records()
            .into_iter()
            .find(|r| r["stage"] == s && r["status"] == "ok")
            .unwrap()
    };
    let (b, l) = (rec("base"), rec("relay"));
    assert!(
        b["started"].as_str() <= l["ended"].as_str()
            && l["started"].as_str() <= b["ended"].as_str()
    );
}
