//! Dataset preparation (issue 3): source stages → `shard` → `downsample`, run through
//! the stage kinds directly (`StageContext::for_test`) on images encoded here.

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{DynamicImage, GrayImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use relay::data::image::{decode_rgb, sha256_hex};
use relay::manifest::{read_rows, Cell};
use relay::stage::{find_kind, Cancel, Input, Outcome, Params, Progress, Reporter, StageContext};

fn yaml(s: &str) -> Params {
    serde_yaml::from_str(s).unwrap()
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn photo(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            ((x * 3 + seed * 40) % 256) as u8,
            ((y * 5 + seed * 17) % 256) as u8,
            (((x ^ y) + seed) % 256) as u8,
        ])
    })
}

/// cat/ and dog/ folders: JPEGs and PNGs of several sizes, a grayscale and an alpha
/// image, a corrupt JPEG, a truncated PNG and a text file.
fn image_folder(root: &Path) {
    let w = |rel: &str, bytes: Vec<u8>| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    for (i, (wd, ht)) in [(120, 90), (64, 64), (90, 160), (200, 150)]
        .into_iter()
        .enumerate()
    {
        let img = DynamicImage::ImageRgb8(photo(wd, ht, i as u32));
        w(
            &format!("cat/{i}.jpg"),
            encode(img.clone(), ImageFormat::Jpeg),
        );
        w(&format!("dog/{i}.png"), encode(img, ImageFormat::Png));
    }
    let gray = GrayImage::from_fn(48, 40, |x, y| image::Luma([(x * 5 + y) as u8]));
    w(
        "dog/gray.png",
        encode(DynamicImage::ImageLuma8(gray), ImageFormat::Png),
    );
    let rgba = RgbaImage::from_fn(50, 70, |x, y| Rgba([x as u8 * 4, y as u8 * 3, 9, 128]));
    w(
        "cat/alpha.png",
        encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
    );
    w(
        "cat/corrupt.jpg",
        b"\xff\xd8\xff\xe0 definitely not a jpeg".to_vec(),
    );
    let png = encode(DynamicImage::ImageRgb8(photo(40, 40, 9)), ImageFormat::Png);
    w("dog/truncated.png", png[..png.len() / 2].to_vec());
    w("dog/README.txt", b"not an image".to_vec());
}

const GOOD: usize = 10; // 8 photos + gray + alpha
const BAD: usize = 2; // corrupt + truncated

fn input(name: &str, kind: &str, dir: &Path) -> Input {
    Input {
        name: name.into(),
        kind: kind.into(),
        dir: dir.to_path_buf(),
        params: Params::Null,
        fingerprint: "0".repeat(64),
    }
}

fn run(
    kind: &str,
    params: &str,
    out: &Path,
    inputs: Vec<Input>,
    threads: usize,
) -> anyhow::Result<Outcome> {
    let k = find_kind(kind).unwrap_or_else(|| panic!("kind {kind} is registered"));
    let params = yaml(params);
    k.check(&params)
        .map_err(|e| anyhow::anyhow!("check: {e}"))?;
    let mut cx = StageContext::for_test(kind, params, out.to_path_buf(), inputs);
    cx.threads = threads;
    std::fs::create_dir_all(out).unwrap();
    k.run(&cx)
}

/// folder → shard → downsample under `work`, with `threads` threads.
fn pipeline(images: &Path, work: &Path, threads: usize) -> (PathBuf, PathBuf) {
    let (src, shards, pairs) = (work.join("images"), work.join("shards"), work.join("pairs"));
    let p = format!(
        "{{path: '{}', transform: center-crop, resolution: 32}}",
        images.display()
    );
    run("source/folder", &p, &src, vec![], threads).unwrap();
    let src_in = input("images", "source/folder", &src);
    run(
        "shard",
        "{samples_per_shard: 3, shuffle_seed: 7}",
        &shards,
        vec![src_in],
        threads,
    )
    .unwrap();
    let sh_in = input("shards", "shard", &shards);
    run(
        "downsample",
        "{resolutions: [32, 8]}",
        &pairs,
        vec![sh_in],
        threads,
    )
    .unwrap();
    (shards, pairs)
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).unwrap(),
        );
    }
    out
}

/// Samples of shards matching `pattern`, read with the webdataset crate.
fn read_wds(pattern: &str) -> Vec<webdataset::Sample> {
    let ds = webdataset::WebDataset::builder(pattern).build().unwrap();
    ds.iter().collect::<Result<Vec<_>, _>>().unwrap()
}

fn bytes<'a>(s: &'a webdataset::Sample, field: &str) -> &'a [u8] {
    s.get(field)
        .and_then(|v| v.as_bytes())
        .map(|b| &b[..])
        .unwrap_or_else(|| panic!("field {field}"))
}

#[test]
fn folder_to_shards_to_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("photos");
    image_folder(&images);
    let (shards, pairs) = pipeline(&images, &tmp.path().join("run"), 2);

    // classes.json: sorted class folders
    let classes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shards.join("classes.json")).unwrap()).unwrap();
    assert_eq!(classes["classes"], serde_json::json!(["cat", "dog"]));

    // Shards, read back with the webdataset crate: 10 good samples, 3 per shard.
    let names: Vec<String> = snapshot(&shards)
        .into_keys()
        .filter(|n| n.ends_with(".tar"))
        .collect();
    assert_eq!(
        names,
        [
            "data-000000.tar",
            "data-000001.tar",
            "data-000002.tar",
            "data-000003.tar"
        ]
    );
    let samples = read_wds(&format!("{}/data-{{000000..000003}}.tar", shards.display()));
    assert_eq!(samples.len(), GOOD);
    let mut by_key = BTreeMap::new();
    for s in &samples {
        let key = s.key().unwrap().to_string();
        assert!(!key.contains('.'), "{key}");
        let png = bytes(s, "png");
        let img = decode_rgb(png, &key).unwrap();
        assert_eq!(img.dimensions(), (32, 32));
        let meta: serde_json::Value = serde_json::from_slice(bytes(s, "json")).unwrap();
        assert_eq!(meta["transform"], "center-crop");
        let label: i64 = std::str::from_utf8(bytes(s, "cls"))
            .unwrap()
            .parse()
            .unwrap();
        let source = meta["source"].as_str().unwrap().to_string();
        assert_eq!(
            label,
            if source.starts_with("cat/") { 0 } else { 1 },
            "{source}"
        );
        by_key.insert(
            key,
            (
                sha256_hex(png),
                label,
                source,
                meta["original_size"].clone(),
            ),
        );
    }
    assert_eq!(by_key["00000004"].3, serde_json::json!([50, 70])); // cat/alpha.png, 5th in sorted order

    // manifest.parquet, row by row, against the shards.
    let (cols, rows) = read_rows(&shards.join("manifest.parquet")).unwrap();
    assert_eq!(
        cols,
        ["key", "shard", "label", "source", "sha256", "width", "height"]
    );
    assert_eq!(rows.len(), GOOD);
    for (i, r) in rows.iter().enumerate() {
        let key = r[0].as_str().unwrap();
        let (sha, label, source, _) = &by_key[key];
        assert_eq!(r[1].as_str().unwrap(), names[i / 3], "row {i}");
        assert_eq!(r[2], Cell::I64(*label));
        assert_eq!(r[3].as_str().unwrap(), source);
        assert_eq!(r[4].as_str().unwrap(), sha);
        assert_eq!((r[5].clone(), r[6].clone()), (Cell::U32(32), Cell::U32(32)));
    }
    // the shuffled order is the shard order
    let keys: Vec<_> = samples
        .iter()
        .map(|s| s.key().unwrap().to_string())
        .collect();
    let manifest_keys: Vec<_> = rows
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, manifest_keys);
    assert_ne!(
        keys,
        {
            let mut k = keys.clone();
            k.sort();
            k
        },
        "shuffled"
    );

    // rejects.parquet names both bad files with a reason.
    let (cols, rejects) = read_rows(&shards.join("rejects.parquet")).unwrap();
    assert_eq!(cols, ["path", "reason"]);
    assert_eq!(rejects.len(), BAD);
    let mut bad: Vec<_> = rejects
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    bad.sort();
    assert_eq!(bad, ["cat/corrupt.jpg", "dog/truncated.png"]);
    assert!(rejects.iter().all(|r| !r[1].as_str().unwrap().is_empty()));
    assert!(!shards.join(".parts").exists());

    // Pairs: same shards, KEY.32.png = the stored image, KEY.8.png = its 4x4 patch means.
    let pair_samples = read_wds(&format!("{}/data-{{000000..000003}}.tar", pairs.display()));
    assert_eq!(pair_samples.len(), GOOD);
    let (cols, prow) = read_rows(&pairs.join("manifest.parquet")).unwrap();
    assert_eq!(
        cols,
        ["key", "shard", "label", "source", "sha256_32", "sha256_8"]
    );
    for (s, row) in pair_samples.iter().zip(&prow) {
        let key = s.key().unwrap();
        assert_eq!(row[0].as_str().unwrap(), key);
        let hi_png = bytes(s, "32.png");
        let lo_png = bytes(s, "8.png");
        assert_eq!(
            sha256_hex(hi_png),
            by_key[key].0,
            "32 is the stored image, unchanged"
        );
        assert_eq!(row[4].as_str().unwrap(), sha256_hex(hi_png));
        assert_eq!(row[5].as_str().unwrap(), sha256_hex(lo_png));
        assert_eq!(row[2], Cell::I64(by_key[key].1));
        assert_eq!(bytes(s, "cls"), by_key[key].1.to_string().as_bytes());
        // The box property: nearest-upsampling the 8x8 image gives, in every 4x4
        // patch, the patch mean of the 32x32 image, within the documented rounding (½).
        let hi = decode_rgb(hi_png, key).unwrap();
        let lo = decode_rgb(lo_png, key).unwrap();
        assert_eq!(lo.dimensions(), (8, 8));
        for y in 0..32 {
            for x in 0..32 {
                let up = lo.get_pixel(x / 4, y / 4).0;
                for (c, &u) in up.iter().enumerate() {
                    let (px, py) = (x / 4 * 4, y / 4 * 4);
                    let mut sum = 0u32;
                    for dy in 0..4 {
                        for dx in 0..4 {
                            sum += hi.get_pixel(px + dx, py + dy).0[c] as u32;
                        }
                    }
                    let mean = sum as f64 / 16.0;
                    assert!((u as f64 - mean).abs() <= 0.5, "{key} ({x},{y}) c{c}");
                }
            }
        }
    }
}

#[test]
fn one_and_two_threads_give_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("photos");
    image_folder(&images);
    let (s1, p1) = pipeline(&images, &tmp.path().join("t1"), 1);
    let (s2, p2) = pipeline(&images, &tmp.path().join("t2"), 2);
    assert_eq!(snapshot(&s1), snapshot(&s2));
    assert_eq!(snapshot(&p1), snapshot(&p2));
}

/// Cancels the stage after `after` progress increments (a stand-in for Ctrl-C / kill).
struct CancelAfter {
    cancel: Cancel,
    after: u64,
    seen: std::sync::atomic::AtomicU64,
}

impl Reporter for CancelAfter {
    fn start(&self, _len: Option<u64>, _unit: &str) {}
    fn inc(&self, n: u64) {
        let seen = self.seen.fetch_add(n, std::sync::atomic::Ordering::SeqCst) + n;
        if seen >= self.after {
            self.cancel.cancel();
        }
    }
    fn set_position(&self, _pos: u64) {}
    fn message(&self, _msg: String) {}
    fn log(&self, _line: &str) {}
}

#[test]
fn shard_resumes_after_an_interruption() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    run(
        "source/shapes",
        "{count: 40, resolution: 16, classes: 4, seed: 3}",
        &src,
        vec![],
        1,
    )
    .unwrap();
    let params = "{samples_per_shard: 5, shuffle_seed: 1}";

    // Uninterrupted reference run.
    let reference = tmp.path().join("ref");
    run(
        "shard",
        params,
        &reference,
        vec![input("src", "source/shapes", &src)],
        1,
    )
    .unwrap();

    // Interrupted run: one thread -> batches of 8 -> cancelled after the first batch,
    // with one full shard committed and a second one half written.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let kind = find_kind("shard").unwrap();
    let mut cx = StageContext::for_test(
        "shard",
        yaml(params),
        out.clone(),
        vec![input("src", "source/shapes", &src)],
    );
    cx.progress = Progress::new(Arc::new(CancelAfter {
        cancel: cx.cancel.clone(),
        after: 1,
        seen: 0.into(),
    }));
    let err = kind.run(&cx).unwrap_err();
    assert!(
        err.downcast_ref::<relay::stage::Cancelled>().is_some(),
        "{err:#}"
    );
    assert!(out.join("data-000000.tar").exists());
    assert!(!out.join("data-000001.tar").exists());
    assert!(out.join(".parts/part-000000.json").exists());
    // What a kill -9 in the middle of a shard leaves behind.
    std::fs::write(out.join("data-000001.tar.tmp"), b"half a shard").unwrap();
    let committed = std::fs::read(out.join("data-000000.tar")).unwrap();

    let outcome = run(
        "shard",
        params,
        &out,
        vec![input("src", "source/shapes", &src)],
        2,
    )
    .unwrap();
    assert_eq!(outcome.info["resumed_shards"], 1);
    assert_eq!(outcome.images, Some(40));
    assert_eq!(
        std::fs::read(out.join("data-000000.tar")).unwrap(),
        committed
    );
    assert_eq!(snapshot(&out), snapshot(&reference));
}

#[test]
fn shapes_are_labelled_and_balanced() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let o = run(
        "source/shapes",
        "{count: 12, resolution: 32, classes: 3}",
        &src,
        vec![],
        1,
    )
    .unwrap();
    assert_eq!(o.images, Some(12));
    assert!(src.join("preview.png").exists());
    let shards = tmp.path().join("shards");
    run(
        "shard",
        "{}",
        &shards,
        vec![input("src", "source/shapes", &src)],
        2,
    )
    .unwrap();
    let (_, rows) = read_rows(&shards.join("manifest.parquet")).unwrap();
    let mut counts = [0; 3];
    for r in &rows {
        counts[r[2].as_i64().unwrap() as usize] += 1;
        assert_eq!(r[5], Cell::U32(32));
    }
    assert_eq!(counts, [4, 4, 4]);
    let classes = std::fs::read_to_string(shards.join("classes.json")).unwrap();
    assert!(classes.contains("triangle"), "{classes}");
}

#[test]
fn on_error_fail_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("photos");
    image_folder(&images);
    let src = tmp.path().join("src");
    let p = format!(
        "{{path: '{}', transform: center-crop, resolution: 16}}",
        images.display()
    );
    run("source/folder", &p, &src, vec![], 1).unwrap();
    let err = run(
        "shard",
        "{on_error: fail, shuffle_seed: null}",
        &tmp.path().join("s"),
        vec![input("src", "source/folder", &src)],
        1,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("stage `shard`"), "{msg}");
    assert!(msg.contains("cat/corrupt.jpg"), "{msg}");
}

#[test]
fn empty_and_missing_sources_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), b"x").unwrap();
    let err = run(
        "source/folder",
        &format!("{{path: '{}'}}", empty.display()),
        &tmp.path().join("a"),
        vec![],
        1,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("source-folder") && msg.contains("no images") && msg.contains("empty"),
        "{msg}"
    );

    let missing = tmp.path().join("nowhere");
    let err = run(
        "source/folder",
        &format!("{{path: '{}'}}", missing.display()),
        &tmp.path().join("b"),
        vec![],
        1,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("does not exist") && msg.contains("nowhere"),
        "{msg}"
    );

    // A transform without a resolution is refused by `check`, before anything runs.
    let k = find_kind("source/folder").unwrap();
    let e = k
        .check(&yaml("{path: x, transform: center-crop}"))
        .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("resolution"));
    let e = find_kind("downsample")
        .unwrap()
        .check(&yaml("{resolutions: [256, 96]}"))
        .unwrap_err();
    assert!(e.message.contains("multiple"), "{}", e.message);
}

#[test]
fn zip_source_with_edm_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let zip_path = tmp.path().join("dataset.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let mut labels = Vec::new();
        for i in 0..5u32 {
            let name = format!("00000/img{i:08}.png");
            z.start_file(&name, opts).unwrap();
            z.write_all(&encode(
                DynamicImage::ImageRgb8(photo(24, 24, i)),
                ImageFormat::Png,
            ))
            .unwrap();
            labels.push(serde_json::json!([name, i % 2 + 5]));
        }
        z.start_file("dataset.json", opts).unwrap();
        z.write_all(
            serde_json::json!({ "labels": labels })
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        z.finish().unwrap();
    }
    let src = tmp.path().join("src");
    run(
        "source/zip",
        &format!("{{path: '{}'}}", zip_path.display()),
        &src,
        vec![],
        1,
    )
    .unwrap();
    let shards = tmp.path().join("shards");
    run(
        "shard",
        "{shuffle_seed: null}",
        &shards,
        vec![input("src", "source/zip", &src)],
        2,
    )
    .unwrap();
    let (_, rows) = read_rows(&shards.join("manifest.parquet")).unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r[3].as_str().unwrap().to_string(), r[2].as_i64().unwrap()))
        .collect();
    assert_eq!(got[0], ("00000/img00000000.png".to_string(), 5));
    assert_eq!(got[3], ("00000/img00000003.png".to_string(), 6));
    assert_eq!(
        (rows[0][5].clone(), rows[0][6].clone()),
        (Cell::U32(24), Cell::U32(24))
    );
}

#[test]
fn webdataset_source_reads_existing_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    run(
        "source/shapes",
        "{count: 9, resolution: 16, classes: 3}",
        &src,
        vec![],
        1,
    )
    .unwrap();
    let shards = tmp.path().join("shards");
    run(
        "shard",
        "{samples_per_shard: 4}",
        &shards,
        vec![input("src", "source/shapes", &src)],
        1,
    )
    .unwrap();

    let again = tmp.path().join("again");
    let pattern = format!("{}/data-{{000000..000002}}.tar", shards.display());
    let o = run(
        "source/webdataset",
        &format!("{{path: '{pattern}'}}"),
        &again,
        vec![],
        1,
    )
    .unwrap();
    assert_eq!(o.images, Some(9));
    let reshard = tmp.path().join("reshard");
    run(
        "shard",
        "{shuffle_seed: null}",
        &reshard,
        vec![input("again", "source/webdataset", &again)],
        2,
    )
    .unwrap();
    let (_, a) = read_rows(&shards.join("manifest.parquet")).unwrap();
    let (_, b) = read_rows(&reshard.join("manifest.parquet")).unwrap();
    // Same pixels (sha256 of the PNG) and labels, in the original shard order.
    let pick = |rows: &Vec<Vec<Cell>>| {
        rows.iter()
            .map(|r| (r[4].clone(), r[2].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(pick(&a), pick(&b));
}

/// `scripts/bench-prep.sh` runs this when the binary has no `relay bench prep` yet:
/// `RELAY_BENCH_DIR=... RELAY_BENCH_COUNT=500 cargo test --test it data::bench_prep -- --ignored`.
#[test]
#[ignore = "benchmark; run through scripts/bench-prep.sh"]
fn bench_prep() {
    let dir = std::env::var("RELAY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("relay-bench-prep"));
    let count = std::env::var("RELAY_BENCH_COUNT")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(200);
    let r = relay::data::bench::prep(&dir, count, 0, &relay::data::Quiet).unwrap();
    println!(
        "relay_images={} threads={} shard_seconds={:.3} downsample_seconds={:.3} \
         relay_seconds={:.3} relay_images_per_sec={:.2}",
        r.images, r.threads, r.shard_seconds, r.downsample_seconds, r.seconds, r.images_per_sec
    );
}
