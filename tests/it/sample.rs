//! The `sample` stage: shards, manifest, preview, workers, resume and export.

use std::path::Path;
use std::time::Duration;

use relay::model::UnetConfig;

use crate::common::{shas, Project};

/// A randomly initialised tiny model folder: `relay` = None for a base stage, or the
/// relay stage's up-scale factor.
pub fn model_dir(dir: &Path, res: usize, relay: Option<usize>, seed: u64) {
    model_dir_of(dir, &UnetConfig::tiny().with_resolution(res), relay, seed)
}

/// [`model_dir`] for any network config.
fn model_dir_of(dir: &Path, cfg: &UnetConfig, relay: Option<usize>, seed: u64) {
    let res = cfg.img_resolution;
    let model = crate::common::random_model(dir, cfg, seed);
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

/// A project with a two-stage chain of tiny random models (8 px base, 16 px relay) and a
/// pipeline `p.yaml` of one `samples` stage: `seeds`, shards of 4, `batch`, and the two
/// samplers' step counts.
pub fn chain_project(seeds: &str, batch: usize, steps: (u32, u32)) -> Project {
    let p = Project::new();
    model_dir(&p.path().join("models/base"), 8, None, 1);
    model_dir(&p.path().join("models/relay"), 16, Some(2), 2);
    p.write(
        "p.yaml",
        &format!(
            "name: s\nworkdir: runs\nstages:\n  samples:\n    uses: sample\n    with:\n      seeds: {seeds}\n      samples_per_shard: 4\n      batch: {batch}\n      models: [models/base, models/relay]\n      stages: {{ models/base: {{ num_steps: {} }}, models/relay: {{ num_steps: {} }} }}\n",
            steps.0, steps.1
        ),
    );
    p
}

fn project() -> Project {
    chain_project("0-11", 3, (4, 10))
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

/// A sample pipeline over the test project's models with `with` added to the stage.
fn pipeline(p: &Project, file: &str, models: &str, with: &str) {
    p.write(
        file,
        &format!(
            "name: s\nworkdir: runs-{file}\nstages:\n  samples:\n    uses: sample\n    with:\n      \
             seeds: 0-5\n      samples_per_shard: 3\n      batch: 3\n      models: [{models}]\n{with}"
        ),
    );
}

/// Issue 19: sampler settings are checked with the parameters (exit 2, before anything
/// runs); guidance that cannot work fails with `strict: true`; the stages of a chain must
/// agree on the label count; a non-finite image fails the shard naming its seeds.
#[test]
fn sampler_guidance_label_and_finiteness_checks() {
    let p = project();
    let cases = [
        ("rho: -1", "rho = -1 must be > 0"),
        ("num_steps: 0", "num_steps must be at least 1"),
        ("s_noise: -0.5", "must be"),
    ];
    for (i, (setting, msg)) in cases.iter().enumerate() {
        let file = format!("bad{i}.yaml");
        pipeline(
            &p,
            &file,
            "models/base, models/relay",
            &format!("      stages: {{ models/base: {{ {setting} }} }}\n"),
        );
        let r = p.run(&["validate", &file]);
        r.code(2);
        assert!(r.stderr.contains(msg), "{setting}: {}", r.stderr);
    }
    // CFG on an unconditional stage: a warning, an error with strict.
    let cfg = "      stages: { models/base: { num_steps: 3 }, models/relay: { num_steps: 8, cfg_scale: 2 } }\n";
    pipeline(
        &p,
        "cfg.yaml",
        "models/base, models/relay",
        &format!("{cfg}      strict: true\n"),
    );
    let r = p.run(&["run", "cfg.yaml"]);
    r.code(1);
    assert!(r.stderr.contains("guidance does nothing"), "{}", r.stderr);
    assert!(!p
        .path()
        .join("runs-cfg.yaml/samples/samples-000000.tar")
        .exists());

    // Label counts: a conditional base stage (3 classes) before an unconditional relay stage.
    let cond = UnetConfig::tiny().with_resolution(8).with_label_dim(3);
    model_dir_of(&p.path().join("models/base3"), &cond, None, 4);
    pipeline(&p, "labels.yaml", "models/base3, models/relay", "");
    let r = p.run(&["run", "labels.yaml"]);
    r.code(1);
    assert!(
        r.stderr
            .contains("label counts differ (`models/base3` 3, `models/relay` 0)"),
        "{}",
        r.stderr
    );

    // NaN weights: the first batch (seeds 0-2) fails, no shard is committed.
    model_dir(&p.path().join("models/nan"), 16, Some(2), 2);
    let w = p.path().join("models/nan/model.safetensors");
    let mut t = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).unwrap();
    let k = "model.out_conv.bias";
    let nan = (t[k].ones_like().unwrap() * f64::NAN).unwrap();
    t.insert(k.into(), nan);
    candle_core::safetensors::save(&t, &w).unwrap();
    pipeline(
        &p,
        "nan.yaml",
        "models/base, models/nan",
        "      stages: { models/base: { num_steps: 3 }, models/nan: { num_steps: 8 } }\n",
    );
    let r = p.run(&["run", "nan.yaml"]);
    r.code(1);
    assert!(
        r.stderr.contains("non-finite") && r.stderr.contains("seed(s) [0, 1, 2]"),
        "{}",
        r.stderr
    );
}

/// Issue 19: super-resolution, the relay stage alone from a folder of 8 px images plus
/// noise. Every row names its start image; the noise is seeded per image (the same
/// images twice), and it matters (noise 0 gives other images).
#[test]
fn relay_stage_alone_from_given_images() {
    let p = project();
    let low = p.path().join("low");
    std::fs::create_dir_all(&low).unwrap();
    for i in 0..6 {
        let (img, _) = relay::data::shapes::render(5, i, 4, 8);
        img.save(low.join(format!("img{i}.png"))).unwrap();
    }
    let stages = "      stages: { models/relay: { num_steps: 8 } }\n";
    for (file, noise) in [("a.yaml", 0.1), ("b.yaml", 0.1), ("c.yaml", 0.0)] {
        let init = format!("      init: {{ images: low, noise: {noise} }}\n");
        pipeline(&p, file, "models/relay", &format!("{stages}{init}"));
        p.run(&["run", file]).code(0);
    }
    let man = |f: &str| p.path().join(format!("runs-{f}/samples/manifest.parquet"));
    let (cols, rows) = relay::manifest::read_rows(&man("a.yaml")).unwrap();
    let c = |n: &str| cols.iter().position(|x| x == n).unwrap();
    let sources: Vec<&str> = rows
        .iter()
        .map(|r| r[c("source")].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        ["img0.png", "img1.png", "img2.png", "img3.png", "img4.png", "img5.png"]
    );
    assert!(rows.iter().all(|r| r[c("resolution")].as_u64() == Some(16)));
    assert_eq!(shas(&man("a.yaml")), shas(&man("b.yaml")));
    assert_ne!(shas(&man("a.yaml")), shas(&man("c.yaml")));
    // A base stage cannot start from images.
    pipeline(&p, "d.yaml", "models/base", "      init: { images: low }\n");
    let r = p.run(&["run", "d.yaml"]);
    r.code(1);
    assert!(r.stderr.contains("runs relay stages only"), "{}", r.stderr);
}
