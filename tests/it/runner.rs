//! The executor: caching, explanations, concurrency, matrix fan-out, failures, kill -9.

use std::time::Duration;

use crate::common::Project;

/// a -> b -> c, plus an independent d.
const CHAIN: &str = r#"name: chain
workdir: runs
vars: { greeting: hello }
stages:
  a:
    uses: command
    with: { run: "echo ${greeting} > {out}/a.txt", outs: [a.txt] }
  b:
    uses: command
    needs: [a]
    with: { run: "cat {a}/a.txt {a}/a.txt > {out}/b.txt", outs: [b.txt] }
  c:
    uses: command
    needs: [b]
    with: { run: "wc -l < {b}/b.txt > {out}/c.txt", outs: [c.txt] }
  d:
    uses: command
    with: { run: "echo independent > {out}/d.txt", outs: [d.txt] }
"#;

#[test]
fn second_run_is_cached_and_a_change_reruns_exactly_downstream() {
    let p = Project::new();
    p.write("p.yaml", CHAIN);
    let r = p.run(&["run", "p.yaml"]);
    r.code(0);
    for s in ["a", "b", "c", "d"] {
        assert_eq!(r.status_of(s), "ok");
    }
    assert_eq!(
        std::fs::read_to_string(p.path().join("runs/c/c.txt"))
            .unwrap()
            .trim(),
        "2"
    );

    // Unchanged: nothing runs.
    let r = p.run(&["run", "p.yaml"]);
    r.code(0);
    for s in ["a", "b", "c", "d"] {
        assert_eq!(r.status_of(s), "cached", "{}", r.stdout);
    }
    assert_eq!(p.records().len(), 4, "a cached run appends no record");

    // `relay plan` names the changed parameter and the downstream effect.
    let plan = p.run(&["plan", "p.yaml", "-s", "b.run=cat {a}/a.txt > {out}/b.txt"]);
    plan.code(0);
    let line = |s: &str| {
        plan.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{s} ")))
            .unwrap()
            .to_string()
    };
    assert!(line("a").contains("cached"), "{}", plan.stdout);
    assert!(line("b").contains("parameter `run` changed: \"cat {a}/a.txt {a}/a.txt > {out}/b.txt\" -> \"cat {a}/a.txt > {out}/b.txt\""), "{}", plan.stdout);
    assert!(
        line("c").contains("input `b` will run first"),
        "{}",
        plan.stdout
    );
    assert!(line("d").contains("cached"), "{}", plan.stdout);

    // Running the change reruns b and c only.
    let r = p.run(&["run", "p.yaml", "-s", "b.run=cat {a}/a.txt > {out}/b.txt"]);
    r.code(0);
    assert_eq!(
        ["a", "b", "c", "d"].map(|s| r.status_of(s)),
        ["cached", "ok", "ok", "cached"]
    );
    assert_eq!(
        std::fs::read_to_string(p.path().join("runs/c/c.txt"))
            .unwrap()
            .trim(),
        "1"
    );

    // A changed variable reaches the stage that uses it; the plan says which input changed.
    let changed = CHAIN.replace("greeting: hello", "greeting: bye");
    p.write("p.yaml", &changed);
    let plan = p.run(&["plan", "p.yaml", "-s", "b.run=cat {a}/a.txt > {out}/b.txt"]);
    assert!(
        plan.stdout.contains(
            "parameter `run` changed: \"echo hello > {out}/a.txt\" -> \"echo bye > {out}/a.txt\""
        ),
        "{}",
        plan.stdout
    );

    // A modified output makes its stage stale.
    p.write("p.yaml", CHAIN);
    p.run(&["run", "p.yaml"]).code(0);
    std::fs::write(p.path().join("runs/d/d.txt"), "tampered").unwrap();
    let plan = p.run(&["plan", "p.yaml"]);
    assert!(
        plan.stdout
            .contains("its outputs were modified (e.g. `d.txt`)"),
        "{}",
        plan.stdout
    );

    // relay.lock pins every stage; relay status shows the last runs.
    let lock = std::fs::read_to_string(p.path().join("relay.lock")).unwrap();
    assert!(
        lock.contains("chain:") && lock.contains("fingerprint:"),
        "{lock}"
    );
    let st = p.run(&["status", "p.yaml"]);
    st.code(0);
    assert!(
        st.stdout
            .lines()
            .any(|l| l.starts_with("c ") && l.contains(" ok ")),
        "{}",
        st.stdout
    );
}

#[test]
fn force_and_selection_flags() {
    let p = Project::new();
    p.write("p.yaml", CHAIN);
    // --until runs a stage and what it needs.
    let r = p.run(&["run", "p.yaml", "--until", "b"]);
    r.code(0);
    assert_eq!(r.status_of("b"), "ok");
    assert_eq!(r.status_of("c"), "blocked");
    // --only runs one stage on its present inputs.
    let r = p.run(&["run", "p.yaml", "--only", "c"]);
    r.code(0);
    assert_eq!(r.status_of("c"), "ok");
    assert_eq!(p.ok_runs("a"), 1);
    // --force=b reruns b even though it is fresh; its downstream stays cached
    // because b's outputs are byte-identical.
    let r = p.run(&["run", "p.yaml", "--force=b"]);
    r.code(0);
    assert_eq!(
        ["a", "b", "c"].map(|s| r.status_of(s)),
        ["cached", "ok", "cached"]
    );
    // --dry-run runs nothing.
    let r = p.run(&["run", "p.yaml", "--force", "--dry-run"]);
    r.code(0);
    assert_eq!(p.ok_runs("a"), 1);
    // exec of a stage whose input is missing is a user error.
    let q = Project::new();
    q.write("p.yaml", CHAIN);
    let r = q.run(&["exec", "p.yaml", "b"]);
    r.code(2);
    assert!(
        r.stderr
            .contains("stage `a` is needed by `b` but has no complete output"),
        "{}",
        r.stderr
    );
}

#[test]
fn independent_stages_run_at_the_same_time() {
    // Each stage waits (up to 20 s) for the other's marker: they can only both succeed
    // if they run concurrently.
    let p = Project::new();
    let m = p.path().join("markers");
    std::fs::create_dir_all(&m).unwrap();
    let wait = |me: &str, other: &str| {
        format!(
            "touch {m}/{me}; i=0; while [ ! -e {m}/{other} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; test -e {m}/{other}",
            m = m.display()
        )
    };
    p.write(
        "p.yaml",
        &format!(
            "name: par\nworkdir: runs\nstages:\n  x:\n    uses: command\n    with: {{ run: \"{}\" }}\n  y:\n    uses: command\n    with: {{ run: \"{}\" }}\n",
            wait("x", "y"),
            wait("y", "x")
        ),
    );
    p.run(&["run", "p.yaml", "--jobs", "2"]).code(0);
    let recs = p.records();
    let span = |s: &str| {
        let r = recs.iter().find(|r| r["stage"] == s).unwrap();
        (
            r["started"].as_str().unwrap().to_string(),
            r["ended"].as_str().unwrap().to_string(),
        )
    };
    let (xs, xe) = span("x");
    let (ys, ye) = span("y");
    assert!(
        xs <= ye && ys <= xe,
        "x {xs}..{xe} and y {ys}..{ye} do not overlap"
    );
}

#[test]
fn matrix_instances_run_and_cache_separately() {
    let p = Project::new();
    let yaml = |values: &str| {
        format!(
            "name: m\nworkdir: runs\nstages:\n  sweep:\n    uses: command\n    matrix: {{ env.SCALE: [{values}], env.STEPS: [18] }}\n    with: {{ run: \"echo $SCALE $STEPS > {{out}}/v.txt\" }}\n  report:\n    uses: command\n    needs: [sweep]\n    with: {{ run: \"ls .. > {{out}}/list.txt\" }}\n"
        )
    };
    p.write("p.yaml", &yaml("0.0, 0.15"));
    let r = p.run(&["run", "p.yaml"]);
    r.code(0);
    assert_eq!(r.status_of("sweep@env.SCALE=0.0,env.STEPS=18"), "ok");
    assert_eq!(r.status_of("sweep@env.SCALE=0.15,env.STEPS=18"), "ok");
    assert_eq!(r.status_of("report"), "ok");
    assert!(p
        .path()
        .join("runs/sweep@env.SCALE=0.15,env.STEPS=18")
        .is_dir());
    // Change one value: only that instance (and what needs the matrix) reruns.
    p.write("p.yaml", &yaml("0.0, 0.3"));
    let r = p.run(&["run", "p.yaml"]);
    r.code(0);
    assert_eq!(r.status_of("sweep@env.SCALE=0.0,env.STEPS=18"), "cached");
    assert_eq!(r.status_of("sweep@env.SCALE=0.3,env.STEPS=18"), "ok");
    assert_eq!(r.status_of("report"), "ok");
}

#[test]
fn a_failure_skips_dependents_and_keep_going_finishes_the_rest() {
    let p = Project::new();
    p.write(
        "p.yaml",
        "name: f\nworkdir: runs\nstages:\n  bad:\n    uses: command\n    with: { run: \"echo about to fail; exit 3\" }\n  after:\n    uses: command\n    needs: [bad]\n    with: { run: \"true\" }\n  other:\n    uses: command\n    with: { run: \"echo fine > {out}/x\" }\n  other2:\n    uses: command\n    needs: [other]\n    with: { run: \"true\" }\n",
    );
    let r = p.run(&["run", "p.yaml", "--jobs", "1"]);
    r.code(1);
    assert_eq!(r.status_of("bad"), "FAILED");
    assert_eq!(r.status_of("after"), "skipped");
    assert!(r.stderr.contains("exit status 3"), "{}", r.stderr);
    assert!(
        r.stderr.contains("about to fail"),
        "the log tail is shown: {}",
        r.stderr
    );
    assert!(
        !p.path().join("runs/bad").exists(),
        "a failed stage publishes nothing"
    );

    let r = p.run(&["run", "p.yaml", "--keep-going", "--jobs", "1"]);
    r.code(1);
    assert_eq!(r.status_of("after"), "skipped");
    assert!(["ok", "cached"].contains(&r.status_of("other").as_str()));
    assert_eq!(r.status_of("other2"), "ok");
}

#[test]
fn retries_rerun_a_flaky_command() {
    let p = Project::new();
    let flag = p.path().join("tried");
    p.write(
        "p.yaml",
        &format!(
            "name: r\nworkdir: runs\nstages:\n  flaky:\n    uses: command\n    retries: 2\n    with: {{ run: \"if [ -e {f} ]; then echo ok > {{out}}/x; else touch {f}; exit 1; fi\" }}\n",
            f = flag.display()
        ),
    );
    let r = p.run(&["run", "p.yaml"]);
    r.code(0);
    let statuses: Vec<String> = p
        .records()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["failed", "ok"]);
}

#[test]
fn kill_9_mid_stage_never_leaves_a_complete_looking_output() {
    let p = Project::new();
    let gate = p.path().join("gate");
    let started = p.path().join("started");
    std::fs::write(&gate, "").unwrap();
    // While the gate file exists the stage writes half its output and then waits.
    p.write(
        "p.yaml",
        &format!(
            "name: k\nworkdir: runs\nstages:\n  slow:\n    uses: command\n    with:\n      run: \"echo half > {{out}}/out.txt; touch {s}; while [ -e {g} ]; do sleep 0.05; done; echo done >> {{out}}/out.txt\"\n      outs: [out.txt]\n",
            s = started.display(),
            g = gate.display()
        ),
    );
    p.kill_9_when(
        &["run", "p.yaml"],
        Duration::from_secs(30),
        "the stage never started",
        || started.exists().then_some(()),
    );
    assert!(
        !p.path().join("runs/slow").exists(),
        "no published output after kill -9"
    );
    assert!(
        p.run(&["plan", "p.yaml"]).stdout.contains("run"),
        "the stage is not taken as complete"
    );

    std::fs::remove_file(&gate).unwrap();
    let r = p.run(&["run", "p.yaml"]);
    r.code(0);
    assert_eq!(r.status_of("slow"), "ok");
    assert_eq!(
        std::fs::read_to_string(p.path().join("runs/slow/out.txt")).unwrap(),
        "half\ndone\n"
    );
    assert_eq!(p.run(&["run", "p.yaml"]).status_of("slow"), "cached");
}
