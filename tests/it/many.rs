//! Many processes, one workdir (issue 15): separate `relay exec` processes of a multi-stage
//! pipeline, concurrent processes of independent and of the same stage or shard, crash
//! points at every commit step, kept partials, the launcher's rank variables, and user
//! values that must not reach a shell or leave the workdir. Real child processes; the only
//! waiting is for files that another process writes (bounded polls).

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{shas, Project};

/// Wait (at most 60 s) until `path` exists.
fn wait_for(path: &Path, what: &str) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what}: {} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Start `relay args` in the project with extra environment, output captured.
fn spawn(p: &Project, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = p.relay(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting relay")
}

fn finish(c: Child) -> crate::common::Run {
    crate::common::Run::from(c.wait_with_output().expect("waiting for relay"))
}

/// The whole cascade on tiny settings: data, two stages trained in parallel branches, a
/// sample stage, and two stages after it (a local Hub layout and an npz export).
pub const CASCADE: &str = r#"
name: cascade
workdir: runs
resources: { cpus: 1 }
stages:
  images:
    uses: source/shapes
    with: { count: 32, resolution: 16, classes: 2, seed: 5 }
  shards:
    uses: shard
    needs: [images]
    with: { samples_per_shard: 16 }
  pairs:
    uses: downsample
    needs: [shards]
    with: { resolutions: [16, 8] }
  base:
    uses: train
    needs: [pairs]
    with: { diffusion: edm, resolution: 8, model: tiny, batch: 8, steps: 4, lr: 1e-3, lr_rampup_kimg: 0,
            tick_kimg: 0.016, snapshot_kimg: 0.016, preview_images: 0 }
  relay:
    uses: train
    needs: [pairs]
    with: { diffusion: relay, from: 8, to: 16, model: tiny, batch: 8, steps: 4, lr: 1e-3, lr_rampup_kimg: 0,
            tick_kimg: 0.016, snapshot_kimg: 0.016, preview_images: 0 }
  samples:
    uses: sample
    needs: [base, relay]
    with: { seeds: 0-15, samples_per_shard: 8, batch: 8, preview: 4,
            stages: { base: { num_steps: 3 }, relay: { num_steps: 6 } } }
  hub:
    uses: publish
    needs: [base, relay, samples]
    with: { local: release }
  npz:
    uses: command
    needs: [samples]
    with: { run: "relay export {samples} --npz {out}/samples.npz", outs: [samples.npz] }
"#;

/// The bytes that must not depend on how the cascade was run: the trained weights and
/// every sample's PNG.
pub fn cascade_result(p: &Project) -> (String, String, std::collections::BTreeMap<u64, String>) {
    let sha = |f: &str| relay::util::sha256_file(&p.path().join("runs").join(f)).unwrap();
    (
        sha("base/model.safetensors"),
        sha("relay/model.safetensors"),
        shas(&p.path().join("runs/samples/manifest.parquet")),
    )
}

/// Issue 15, point 1: every stage of a multi-stage pipeline by `relay exec` from its own
/// process, in order, gives what `relay run` gives.
#[test]
fn exec_of_every_stage_in_order_equals_a_run() {
    let p = Project::new();
    p.write("p.yaml", CASCADE);
    for stage in [
        "images", "shards", "pairs", "base", "relay", "samples", "hub", "npz",
    ] {
        let r = p.run(&["exec", "p.yaml", stage, "--device", "cpu"]);
        r.code(0);
        assert_eq!(r.status_of(stage), "ok", "{}", r.stdout);
    }
    let q = Project::new();
    q.write("p.yaml", CASCADE);
    q.run(&["run", "p.yaml", "--device", "cpu"]).code(0);
    assert_eq!(cascade_result(&p), cascade_result(&q));
    // The exec'ed workdir is complete: a run finds everything cached.
    let r = p.run(&["run", "p.yaml", "--device", "cpu"]);
    r.code(0);
    for stage in ["images", "pairs", "base", "samples", "npz"] {
        assert_eq!(r.status_of(stage), "cached", "{}", r.stdout);
    }
}

/// Command stages that meet at a barrier: each writes `<name>.started` into `dir`, then
/// waits (30 s at most) for the other's. Serialised runs would time out.
fn barrier_pipeline(dir: &Path) -> String {
    let b = dir.display();
    let stage = |me: &str, other: &str| {
        format!(
            "  {me}:\n    uses: command\n    needs: [a]\n    with:\n      run: \"touch {b}/{me}.started; i=0; while [ ! -e {b}/{other}.started ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done; test -e {b}/{other}.started && echo {me} > {{out}}/{me}.txt\"\n      outs: [{me}.txt]\n"
        )
    };
    format!(
        "name: par\nworkdir: runs\nstages:\n  a:\n    uses: command\n    with: {{ run: \"echo a > {{out}}/a.txt\", outs: [a.txt] }}\n{}{}  hold:\n    uses: command\n    with:\n      run: \"touch {b}/hold.started; while [ ! -e {b}/release ]; do sleep 0.01; done; echo x > {{out}}/x.txt\"\n      outs: [x.txt]\n",
        stage("b", "c"),
        stage("c", "b")
    )
}

/// Two `relay exec` of independent stages of one workdir run at once; two of the same
/// stage: the second refuses (exit 2) while the first runs.
#[test]
fn independent_stages_run_at_once_and_one_stage_runs_once() {
    let p = Project::new();
    let barrier = p.path().join("barrier");
    std::fs::create_dir_all(&barrier).unwrap();
    p.write("p.yaml", &barrier_pipeline(&barrier));
    p.run(&["exec", "p.yaml", "a"]).code(0);
    let b = spawn(&p, &["exec", "p.yaml", "b"], &[]);
    let c = spawn(&p, &["exec", "p.yaml", "c"], &[]);
    let (b, c) = (finish(b), finish(c));
    b.code(0);
    c.code(0);
    assert!(p.path().join("runs/b/b.txt").is_file() && p.path().join("runs/c/c.txt").is_file());

    let first = spawn(&p, &["exec", "p.yaml", "hold"], &[]);
    wait_for(&barrier.join("hold.started"), "the first run of `hold`");
    let second = p.run(&["exec", "p.yaml", "hold"]);
    second.code(2);
    assert!(
        second
            .stderr
            .contains("stage `hold` is being run by another relay process (pid "),
        "{}",
        second.stderr
    );
    std::fs::write(barrier.join("release"), "").unwrap();
    finish(first).code(0);
    assert_eq!(p.ok_runs("hold"), 1);
    // And `relay run` of the whole pipeline finds it all done.
    let r = p.run(&["run", "p.yaml"]);
    r.code(0);
    assert_eq!(r.status_of("hold"), "cached");
}

fn sample_project() -> Project {
    crate::sample::chain_project("0-23", 4, (3, 6))
}

/// Two workers given the same shards (a requeued task beside its ghost) write each shard
/// once, and the merged result is a single run's, byte for byte.
#[test]
fn two_workers_of_the_same_shards_corrupt_nothing() {
    let want = {
        let q = sample_project();
        q.run(&["run", "p.yaml"]).code(0);
        shas(&q.path().join("runs/samples/manifest.parquet"))
    };
    let p = sample_project();
    let a = spawn(&p, &["exec", "p.yaml", "samples", "--shard", "0/1"], &[]);
    let b = spawn(&p, &["exec", "p.yaml", "samples", "--shard", "0/1"], &[]);
    let (a, b) = (finish(a), finish(b));
    a.code(0);
    b.code(0);
    // No temporary file of either writer is left behind.
    let partial = std::fs::read_dir(p.path().join("runs/.relay/partial"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for e in std::fs::read_dir(&partial).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!relay::util::is_temp_name(&name), "left behind: {name}");
    }
    p.run(&["exec", "p.yaml", "samples"]).code(0);
    assert_eq!(shas(&p.path().join("runs/samples/manifest.parquet")), want);
    // --shard is refused for a kind without shards.
    p.write(
        "q.yaml",
        "name: q\nworkdir: runs\nstages:\n  a:\n    uses: command\n    with: { run: \"true\" }\n",
    );
    let r = p.run(&["exec", "q.yaml", "a", "--shard", "0/2"]);
    r.code(2);
    assert!(
        r.stderr.contains("is not split into shards"),
        "{}",
        r.stderr
    );
}

/// One crash-point experiment: what happened, for the table in the closing note.
struct Crash {
    point: &'static str,
    rerun: String,
    equal: bool,
}

/// A command stage with a side effect outside the workdir (a line per run in `count`), so
/// that adoption (no second line) and recomputation (two) can be told apart.
fn counted_pipeline(count: &Path) -> String {
    format!(
        "name: c\nworkdir: runs\nstages:\n  make:\n    uses: command\n    with: {{ run: \"echo run >> {}; seq 1 1000 > {{out}}/data.txt; mkdir {{out}}/sub; echo x > {{out}}/sub/y.txt\", outs: [data.txt, sub] }}\n  after:\n    uses: command\n    needs: [make]\n    with: {{ run: \"wc -l < {{make}}/data.txt > {{out}}/n.txt\", outs: [n.txt] }}\n",
        count.display()
    )
}

/// Deterministic crash points at every commit step of publishing, shard writing and
/// snapshotting: after each, a rerun loses no completed work, duplicates no row and ends
/// byte-identical to an uninterrupted run.
#[test]
fn crash_points_lose_nothing_and_duplicate_nothing() {
    let mut table: Vec<Crash> = Vec::new();

    // 1. Publishing a stage's output.
    let clean = Project::new();
    clean.write("p.yaml", &counted_pipeline(&clean.path().join("count")));
    clean.run(&["run", "p.yaml"]).code(0);
    let digest = |p: &Project, stage: &str| {
        relay::base::digest::digest_path(&p.path().join("runs").join(stage)).unwrap()
    };
    for point in [
        "publish:pending-written",
        "publish:after-rename",
        "publish:state-written",
        "publish:recorded",
    ] {
        let p = Project::new();
        let count = p.path().join("count");
        p.write("p.yaml", &counted_pipeline(&count));
        let crashed = p
            .relay(&["run", "p.yaml"])
            .env("RELAY_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(
            !crashed.status.success(),
            "{point}: the crash point was not reached"
        );
        let r = p.run(&["run", "p.yaml"]);
        r.code(0);
        let runs = std::fs::read_to_string(&count).unwrap().lines().count();
        let ok = p.ok_runs("make");
        assert_eq!(ok, 1, "{point}: one committed run of `make` in the records");
        let adopted = runs == 1;
        // From the moment the output is hashed and its pending state written, the work is
        // never redone.
        assert!(adopted, "{point}: `make` ran {runs} times");
        let equal = digest(&p, "make") == digest(&clean, "make")
            && digest(&p, "after") == digest(&clean, "after");
        assert!(equal, "{point}: outputs differ from an uninterrupted run");
        table.push(Crash {
            point,
            rerun: match point {
                "publish:pending-written" => "moved the hashed private folder into place and committed it; `make` not rerun",
                "publish:after-rename" => "adopted the renamed output (listing verified), wrote state and record; not rerun",
                "publish:state-written" => "appended the missing run record; not rerun",
                _ => "dropped the finished commit's pending note; nothing redone",
            }
            .into(),
            equal,
        });
    }
    // A crash while the old output is moved aside (a forced rerun of a committed stage).
    {
        let p = Project::new();
        let count = p.path().join("count");
        p.write("p.yaml", &counted_pipeline(&count));
        p.run(&["run", "p.yaml"]).code(0);
        let crashed = p
            .relay(&["run", "p.yaml", "--force=make"])
            .env("RELAY_CRASH_AT", "publish:old-moved")
            .output()
            .unwrap();
        assert!(!crashed.status.success());
        p.run(&["run", "p.yaml"]).code(0);
        let runs = std::fs::read_to_string(&count).unwrap().lines().count();
        assert_eq!(runs, 2, "the forced run is adopted, not run a third time");
        let equal = digest(&p, "make") == digest(&clean, "make");
        assert!(equal);
        table.push(Crash {
            point: "publish:old-moved",
            rerun: "finished the interrupted move of the new output; no third run".into(),
            equal,
        });
    }

    // 2. Writing sample shards (tar, then its manifest part) and data shards.
    let want = {
        let q = sample_project();
        q.run(&["run", "p.yaml"]).code(0);
        shas(&q.path().join("runs/samples/manifest.parquet"))
    };
    for point in [
        "shard:before-rename:3",
        "shard:after-rename:3",
        "shard:tar-committed:3",
    ] {
        let p = sample_project();
        let crashed = p
            .relay(&["run", "p.yaml"])
            .env("RELAY_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(!crashed.status.success(), "{point}: not reached");
        let r = p.run(&["run", "p.yaml"]);
        r.code(0);
        let got = shas(&p.path().join("runs/samples/manifest.parquet"));
        assert_eq!(got.len(), 24, "{point}: one row per seed");
        let equal = got == want;
        assert!(equal, "{point}: images differ");
        table.push(Crash {
            point: match point {
                "shard:before-rename:3" => "shard:before-rename (3rd shard)",
                "shard:after-rename:3" => "shard:after-rename (3rd shard)",
                _ => "shard:tar-committed (3rd shard)",
            },
            rerun: "resumed at the first shard without a manifest part; 24 rows, no duplicate"
                .into(),
            equal,
        });
    }
    {
        let data = |p: &Project| {
            p.write("d.yaml", "name: d\nworkdir: runs\nstages:\n  images:\n    uses: source/shapes\n    with: { count: 40, resolution: 16, seed: 2 }\n  shards:\n    uses: shard\n    needs: [images]\n    with: { samples_per_shard: 10 }\n");
        };
        let q = Project::new();
        data(&q);
        q.run(&["run", "d.yaml"]).code(0);
        let p = Project::new();
        data(&p);
        let crashed = p
            .relay(&["run", "d.yaml"])
            .env("RELAY_CRASH_AT", "shard:part-written:2")
            .output()
            .unwrap();
        assert!(!crashed.status.success());
        p.run(&["run", "d.yaml"]).code(0);
        let equal = digest(&p, "shards") == digest(&q, "shards");
        assert!(equal, "data shards differ after the crash");
        table.push(Crash {
            point: "shard:part-written (2nd data shard)",
            rerun: "rewrote the shard whose record was missing; shards byte-identical".into(),
            equal,
        });
    }

    // 3. Training snapshots.
    let train = |p: &Project| {
        p.write(
            "t.yaml",
            &CASCADE
                .replace("name: cascade", "name: t")
                .replace("steps: 4", "steps: 6"),
        );
    };
    let q = Project::new();
    train(&q);
    q.run(&["run", "t.yaml", "--device", "cpu", "--until", "base"])
        .code(0);
    let weights = |p: &Project| {
        relay::util::sha256_file(&p.path().join("runs/base/model.safetensors")).unwrap()
    };
    for point in ["snapshot:before-rename:2", "snapshot:after-rename:2"] {
        let p = Project::new();
        train(&p);
        let crashed = p
            .relay(&["run", "t.yaml", "--device", "cpu", "--until", "base"])
            .env("RELAY_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(!crashed.status.success(), "{point}: not reached");
        let r = p.run(&["run", "t.yaml", "--device", "cpu", "--until", "base"]);
        r.code(0);
        let log = std::fs::read_to_string(p.path().join("runs/.relay/logs/base.log")).unwrap();
        assert!(
            log.contains("resuming from"),
            "{point}: did not resume:\n{log}"
        );
        let equal = weights(&p) == weights(&q);
        assert!(equal, "{point}: weights differ from an uninterrupted run");
        table.push(Crash {
            point: if point.starts_with("snapshot:before") {
                "snapshot:before-rename (2nd snapshot)"
            } else {
                "snapshot:after-rename (2nd snapshot)"
            },
            rerun: "resumed from the last complete snapshot".into(),
            equal,
        });
    }

    eprintln!("| crash point | what the rerun did | bytes equal |");
    eprintln!("|---|---|---|");
    for c in &table {
        eprintln!(
            "| `{}` | {} | {} |",
            c.point,
            c.rerun,
            if c.equal { "yes" } else { "no" }
        );
    }
}

/// Editing a parameter of an interrupted train stage starts a new run but keeps the old
/// one's snapshots; reverting the edit resumes from them. `relay gc` removes what no rerun
/// resumes from.
#[test]
fn an_edited_parameter_keeps_the_interrupted_training() {
    let p = Project::new();
    p.write("t.yaml", &CASCADE.replace("steps: 4", "steps: 6"));
    let crash = |extra: &[&str]| {
        let mut args = vec!["run", "t.yaml", "--device", "cpu", "--until", "base"];
        args.extend_from_slice(extra);
        let o = p
            .relay(&args)
            .env("RELAY_CRASH_AT", "snapshot:after-rename:1")
            .output()
            .unwrap();
        assert!(!o.status.success(), "the crash point was not reached");
    };
    crash(&[]);
    let partials = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p.path().join("runs/.relay/partial"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("base."))
            .collect();
        v.sort();
        v
    };
    let first = partials();
    assert_eq!(first.len(), 1);
    crash(&["-s", "base.preview_images=2"]);
    let both = partials();
    assert_eq!(both.len(), 2, "the first partial was kept: {both:?}");
    let st = p.run(&["status", "t.yaml"]);
    st.code(0);
    assert!(
        st.stdout
            .contains("interrupted run of the current fingerprint"),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout.contains("interrupted run of another fingerprint"),
        "{}",
        st.stdout
    );
    // Reverting the edit resumes the first run from its snapshot.
    p.run(&["run", "t.yaml", "--device", "cpu", "--until", "base"])
        .code(0);
    let log = std::fs::read_to_string(p.path().join("runs/.relay/logs/base.log")).unwrap();
    let resumed = log.lines().filter(|l| l.contains("resuming from")).count();
    assert!(resumed >= 1, "{log}");
    let gc = p.run(&["gc", "t.yaml"]);
    gc.code(0);
    assert!(
        gc.stdout
            .contains("removed base: interrupted run of another fingerprint"),
        "{}",
        gc.stdout
    );
    assert!(partials().is_empty(), "{:?}", partials());
}

/// Only `relay exec` reads a launcher's rank variables: `relay run` inside an allocation
/// trains alone; a follower of a cached stage hears so from rank 0 and exits at once.
#[test]
fn the_launcher_owns_ranks() {
    let p = Project::new();
    p.write("t.yaml", CASCADE);
    let t0 = Instant::now();
    let r = p
        .relay(&["run", "t.yaml", "--device", "cpu", "--until", "base"])
        .env("SLURM_NTASKS", "8")
        .env("SLURM_PROCID", "0")
        .env("WORLD_SIZE", "8")
        .output()
        .unwrap();
    crate::common::Run::from(r).code(0);
    assert!(t0.elapsed() < Duration::from_secs(300));

    // torchrun-style: two ranks of `relay exec` of the (now cached) stage.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port() - 2
    }
    .to_string();
    let env = |rank: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", "2".into()),
            ("LOCAL_RANK", rank.to_string()),
            ("MASTER_ADDR", "127.0.0.1".into()),
            ("MASTER_PORT", port.clone()),
        ]
    };
    let t0 = Instant::now();
    let start = |rank: &'static str| {
        let mut c = p.relay(&["exec", "t.yaml", "base", "--device", "cpu"]);
        for (k, v) in env(rank) {
            c.env(k, v);
        }
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let follower = start("1");
    let leader = start("0");
    let (f, l) = (finish(follower), finish(leader));
    l.code(0);
    f.code(0);
    assert!(
        f.stderr.contains("up to date (rank 0 found it cached)"),
        "{}",
        f.stderr
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
}

/// Values from the YAML that reach a shell, a batch script or a path: refused with a clear
/// error (exit 2), or quoted; nothing outside the workdir is touched.
#[test]
fn user_values_cannot_inject_or_escape() {
    let p = Project::new();
    // A newline in a Slurm value.
    p.write("s.yaml", "name: s\nworkdir: runs\nresources: { time: \"1:00\\nrm -rf /\" }\nstages:\n  a:\n    uses: command\n    with: { run: \"true\" }\n");
    let r = p.run(&["validate", "s.yaml"]);
    r.code(2);
    assert!(r.stderr.contains("resources `time`"), "{}", r.stderr);
    // `${var}` in resources, interpolated; paths quoted in the script.
    p.write("v.yaml", "name: v\nworkdir: runs\nvars: { t: \"01:00:00\" }\nstages:\n  a:\n    uses: command\n    resources: { time: \"${t}\" }\n    with: { run: \"true\" }\n");
    let r = p.run(&["run", "v.yaml", "--executor", "slurm", "--dry-run"]);
    r.code(0);
    assert!(r.stdout.contains("#SBATCH --time=01:00:00"), "{}", r.stdout);
    assert!(r.stdout.contains("#SBATCH --chdir=\""), "{}", r.stdout);
    // A workdir with a quote cannot go into a batch script.
    let r = p.run(&[
        "run",
        "v.yaml",
        "--executor",
        "slurm",
        "--dry-run",
        "--workdir",
        "we\"ird",
    ]);
    r.code(2);
    assert!(
        r.stderr.contains("cannot go into a Slurm batch script"),
        "{}",
        r.stderr
    );
    // A workdir with a space, `$` and a quote: `{out}` reaches the shell quoted.
    p.write("c.yaml", "name: c\nstages:\n  a:\n    uses: command\n    with: { run: \"echo hi > {out}/f.txt\", outs: [f.txt] }\n");
    let odd = p.path().join("w d$HOME'x");
    let r = p.run(&["run", "c.yaml", "--workdir", odd.to_str().unwrap()]);
    r.code(0);
    assert_eq!(
        std::fs::read_to_string(odd.join("a/f.txt")).unwrap(),
        "hi\n"
    );
    // A matrix value that would name a folder outside the workdir.
    std::fs::create_dir_all(p.path().join("x")).unwrap();
    p.write("m.yaml", "name: m\nworkdir: runs\nstages:\n  a:\n    uses: command\n    matrix: { v: [\"../x\"] }\n    name: \"{v}\"\n    with: { run: \"true\" }\n");
    let r = p.run(&["run", "m.yaml"]);
    r.code(2);
    assert!(r.stderr.contains("instance name `../x`"), "{}", r.stderr);
    assert!(
        p.path().join("x").is_dir(),
        "nothing outside the workdir is touched"
    );
    assert_eq!(std::fs::read_dir(p.path().join("x")).unwrap().count(), 0);
    // A pipeline name that would reach a batch script's job name.
    p.write(
        "n.yaml",
        "name: \"n\\nx\"\nstages:\n  a:\n    uses: command\n    with: { run: \"true\" }\n",
    );
    let r = p.run(&["validate", "n.yaml"]);
    r.code(2);
    assert!(r.stderr.contains("invalid pipeline name"), "{}", r.stderr);
}

/// The small ones of issue 15, point 9.
#[test]
fn plan_with_only_an_upstream_and_a_downstream_stage_does_not_panic() {
    let p = Project::new();
    p.write("p.yaml", "name: o\nworkdir: runs\nstages:\n  a: { uses: command, with: { run: \"true\" } }\n  b: { uses: command, needs: [a], with: { run: \"true\" } }\n  c: { uses: command, needs: [b], with: { run: \"true\" } }\n");
    let r = p.run(&["plan", "p.yaml", "--only", "a", "--only", "c"]);
    r.code(0);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("b ") && l.contains("blocked")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("c ") && l.contains("skipped")),
        "{}",
        r.stdout
    );
}

/// An explicit `null` in the pipeline switches a template's value off.
#[test]
fn null_in_the_pipeline_overrides_a_template_value() {
    let p = Project::new();
    p.write(
        "stages/t.yaml",
        "kind: command\nwith: { run: \"echo $A$B > {out}/v.txt\", outs: [v.txt], env: { A: on, B: 2 } }\n",
    );
    p.write("p.yaml", "name: t\nworkdir: runs\nstages:\n  a:\n    uses: stages/t.yaml\n    with: { env: { A: null } }\n");
    p.run(&["run", "p.yaml"]).code(0);
    // A is switched off (null is written as the text `null`), B keeps the template's value.
    assert_eq!(
        std::fs::read_to_string(p.path().join("runs/a/v.txt")).unwrap(),
        "null2\n"
    );
}

/// Issue 15, point 2: a finished run can be trained longer. A stage with `init_from: base`
/// and twice the steps continues `base`'s last snapshot (weights, EMA, Adam, step, data
/// position) and ends with the bytes of a run that had the longer duration from the start;
/// a change that is not a duration or cadence is refused, naming it.
#[test]
fn init_from_trains_a_finished_run_longer_exactly() {
    let base = "  base:\n    uses: train\n    needs: [pairs]\n    with: { diffusion: edm, resolution: 8, model: tiny, batch: 8, steps: 4, lr: 1e-3, lr_rampup_kimg: 0,\n            tick_kimg: 0.016, snapshot_kimg: 0.016, preview_images: 0 }\n";
    assert!(CASCADE.contains(base));
    let head = &CASCADE[..CASCADE.find("  base:").unwrap()];
    let longer = |extra: &str| {
        format!(
            "{head}{base}  longer:\n    uses: train\n    needs: [pairs, base]\n    with: {{ diffusion: edm, resolution: 8, model: tiny, batch: 8, steps: 8, lr: 1e-3, lr_rampup_kimg: 0,\n            tick_kimg: 0.016, snapshot_kimg: 0.032, preview_images: 0, init_from: base{extra} }}\n"
        )
    };
    let p = Project::new();
    p.write("t.yaml", &longer(""));
    let r = p.run(&["run", "t.yaml", "--device", "cpu"]);
    r.code(0);
    let log = std::fs::read_to_string(p.path().join("runs/.relay/logs/longer.log")).unwrap();
    assert!(log.contains("continuing the training of"), "{log}");
    let q = Project::new();
    q.write(
        "t.yaml",
        &format!("{head}{}", base.replace("steps: 4", "steps: 8")),
    );
    q.run(&["run", "t.yaml", "--device", "cpu"]).code(0);
    let sha = |p: &Project, s: &str| {
        relay::util::sha256_file(&p.path().join(format!("runs/{s}/model.safetensors"))).unwrap()
    };
    assert_eq!(
        sha(&p, "longer"),
        sha(&q, "base"),
        "4 + 4 steps differ from 8 steps"
    );
    // Another learning rate is not a continuation.
    p.write(
        "u.yaml",
        &longer("").replace("steps: 8, lr: 1e-3", "steps: 8, lr: 2e-3"),
    );
    let r = p.run(&["run", "u.yaml", "--device", "cpu"]);
    r.code(1);
    assert!(
        r.stderr.contains("init_from") && r.stderr.contains("lr"),
        "{}",
        r.stderr
    );
}
