//! Validation errors: each names the file, line and column, the stage, and a hint; exit code 2.

use crate::common::Project;

/// Validate `yaml` and return stderr (asserting exit code 2).
fn invalid(yaml: &str) -> String {
    let p = Project::new();
    p.write("p.yaml", yaml);
    let r = p.run(&["validate", "p.yaml"]);
    r.code(2);
    r.stderr
}

#[test]
fn unknown_stage_key_has_position_and_hint() {
    let err = invalid(
        "name: t\nstages:\n  a:\n    uses: command\n    with: { run: \"true\" }\n  b:\n    uses: command\n    neds: [a]\n    with: { run: \"true\" }\n",
    );
    assert!(err.contains("p.yaml:8:5"), "{err}");
    assert!(err.contains("stage `b`"), "{err}");
    assert!(err.contains("unknown key `neds`"), "{err}");
    assert!(err.contains("did you mean `needs`?"), "{err}");
}

#[test]
fn unknown_kind_suggests_the_closest() {
    let err = invalid("name: t\nstages:\n  a:\n    uses: comand\n    with: { run: \"true\" }\n");
    assert!(err.contains("p.yaml:4:5"), "{err}");
    assert!(err.contains("unknown stage kind `comand`"), "{err}");
    assert!(err.contains("did you mean `command`?"), "{err}");
}

#[test]
fn unknown_need_suggests_a_stage() {
    let err = invalid(
        "name: t\nstages:\n  shards:\n    uses: command\n    with: { run: \"true\" }\n  b:\n    uses: command\n    needs: [shard]\n    with: { run: \"true\" }\n",
    );
    assert!(err.contains("p.yaml:8:13"), "{err}");
    assert!(err.contains("needs unknown stage `shard`"), "{err}");
    assert!(err.contains("did you mean `shards`?"), "{err}");
}

#[test]
fn unknown_parameter_of_a_kind() {
    let err = invalid("name: t\nstages:\n  a:\n    uses: command\n    with:\n      rn: \"true\"\n");
    assert!(err.contains("p.yaml:6:7"), "{err}");
    assert!(err.contains("unknown parameter `rn`"), "{err}");
    assert!(err.contains("did you mean `run`?"), "{err}");
}

#[test]
fn wrong_parameter_type() {
    let err = invalid(
        "name: t\nstages:\n  a:\n    uses: command\n    with: { run: \"true\", outs: 3 }\n",
    );
    assert!(err.contains("p.yaml:5:26"), "{err}");
    assert!(err.contains("parameter `outs`"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn duplicate_stage_names() {
    let err = invalid(
        "name: t\nstages:\n  a:\n    uses: command\n    with: { run: \"true\" }\n  a:\n    uses: command\n    with: { run: \"true\" }\n",
    );
    assert!(err.contains("duplicate name `a`"), "{err}");
    assert!(err.contains("p.yaml:6:"), "{err}");
}

#[test]
fn cycle_is_printed_as_a_path() {
    let err = invalid(
        "name: t\nstages:\n  a:\n    uses: command\n    needs: [b]\n    with: { run: \"true\" }\n  b:\n    uses: command\n    needs: [a]\n    with: { run: \"true\" }\n  c:\n    uses: command\n    with: { run: \"true\" }\n",
    );
    assert!(err.contains("cycle in `needs`: a -> b -> a"), "{err}");
    assert!(err.contains("p.yaml:5:5"), "{err}");
}

#[test]
fn unknown_variable() {
    let err = invalid(
        "name: t\nvars: { res: 64 }\nstages:\n  a:\n    uses: command\n    with: { run: \"echo ${rez}\" }\n",
    );
    assert!(err.contains("unknown variable `${rez}`"), "{err}");
    assert!(err.contains("did you mean `${res}`?"), "{err}");
    assert!(err.contains("p.yaml:6:"), "{err}");
}

#[test]
fn placeholder_must_be_a_needed_stage() {
    let err = invalid(
        "name: t\nstages:\n  data:\n    uses: command\n    with: { run: \"true\" }\n  b:\n    uses: command\n    needs: [data]\n    with: { run: \"cat {dta}/x\" }\n",
    );
    assert!(
        err.contains("`{dta}` is not a stage this one needs"),
        "{err}"
    );
    assert!(err.contains("did you mean `{data}`?"), "{err}");
}

#[test]
fn override_of_unknown_stage() {
    let p = Project::new();
    p.write(
        "p.yaml",
        "name: t\nstages:\n  train:\n    uses: command\n    with: { run: \"true\" }\n",
    );
    let r = p.run(&["validate", "p.yaml", "-s", "trian.run=false"]);
    r.code(2);
    assert!(
        r.stderr.contains("there is no stage `trian`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("did you mean `train`?"), "{}", r.stderr);
}

#[test]
fn template_defaults_are_merged_and_checked() {
    let p = Project::new();
    p.write(
        "stages/echo.yaml",
        "kind: command\nwith:\n  run: \"echo template > {out}/t.txt\"\n  outs: [t.txt]\n",
    );
    p.write(
        "pipelines/p.yaml",
        "name: t\nworkdir: ../runs\nstages:\n  a:\n    uses: stages/echo.yaml\n",
    );
    p.run(&["run", "pipelines/p.yaml"]).code(0);
    let t = std::fs::read_to_string(p.path().join("runs/a/t.txt")).unwrap();
    assert_eq!(t, "template\n");
    // A typo in the template is reported in the template file.
    p.write(
        "stages/bad.yaml",
        "kind: command\nwith:\n  run: \"true\"\n  outz: [t.txt]\n",
    );
    p.write(
        "pipelines/q.yaml",
        "name: q\nstages:\n  a:\n    uses: stages/bad.yaml\n",
    );
    let r = p.run(&["validate", "pipelines/q.yaml"]);
    r.code(2);
    assert!(r.stderr.contains("stages/bad.yaml:4:3"), "{}", r.stderr);
    assert!(r.stderr.contains("did you mean `outs`?"), "{}", r.stderr);
}

#[test]
fn bad_yaml_syntax_has_a_position() {
    let err = invalid("name: t\nstages:\n  a:\n    uses: command\n    with: { run: \"true\"\n");
    assert!(err.contains("p.yaml:"), "{err}");
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let p = Project::new();
    p.write(
        "p.yaml",
        "name: t\nstages:\n  a:\n    uses: command\n    with: { run: \"true\" }\n  b:\n    uses: command\n    needs: [a]\n    with: { run: \"true\" }\n",
    );
    let dot = p.run(&["graph", "p.yaml"]);
    dot.code(0);
    assert!(dot.stdout.contains("\"a\" -> \"b\";"), "{}", dot.stdout);
    let mm = p.run(&["graph", "p.yaml", "--format", "mermaid"]);
    mm.code(0);
    assert!(mm.stdout.starts_with("flowchart LR"), "{}", mm.stdout);
    assert!(mm.stdout.contains("n0 --> n1"), "{}", mm.stdout);
}
