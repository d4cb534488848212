//! `relay metrics`, `relay stats` and `relay show`: the metrics library and the experiment
//! table at the command line.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};

use super::BadInput;
use crate::device::DeviceSpec;
use crate::metrics::evaluate::{summarize, write_stats};
use crate::metrics::features::extract;
use crate::metrics::run::Monitor;
use crate::metrics::{
    compute, load_network, FeatureStore, ImageSource, Job, Metric, MetricsError, Network, RefInput,
};

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// The samples: a sample stage's folder, an .npz with `arr_0` (uint8 NHWC) or a folder of PNG/JPEG files.
    pub samples: PathBuf,
    /// An ADM reference batch (.npz: `mu`, `sigma`, `mu_s`, `sigma_s`, `arr_0`) or a folder of images.
    #[arg(long, value_name = "REF")]
    pub reference: PathBuf,
    #[command(flatten)]
    pub net: NetArgs,
    /// Which metrics (default: all five; `is` needs the weights' classifier).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub metrics: Vec<String>,
    /// Which images of multi-resolution shards in REF (`KEY.256.png`).
    #[arg(long)]
    pub resolution: Option<u32>,
    /// Print the `metrics.json` object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// A sample stage's folder, an .npz with `arr_0` or a folder of images.
    pub images: PathBuf,
    #[command(flatten)]
    pub net: NetArgs,
    /// The reference batch to write (`mu`, `sigma`, `mu_s`, `sigma_s`, float64).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Which images of multi-resolution shards (`KEY.256.png`).
    #[arg(long)]
    pub resolution: Option<u32>,
}

/// The network, device and batching, shared by `metrics` and `stats`.
#[derive(Debug, Args)]
pub struct NetArgs {
    /// pytorch-fid's weights (pt_inception-2015-12-05-6726825d.pth) or a .safetensors with
    /// the same names; a path or hf://owner/name/file.
    #[arg(long, value_name = "WEIGHTS")]
    pub inception: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Images per network batch.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Keep the features here (a rerun resumes from them) instead of a temporary folder.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub pipeline: super::PipelineArgs,
    /// Show every matrix and parameter column, not only those that differ.
    #[arg(long)]
    pub all: bool,
    /// One JSON object per row.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV with a header line.
    #[arg(long)]
    pub csv: bool,
}

/// User errors become [`BadInput`] (exit 2).
fn user(e: MetricsError) -> anyhow::Error {
    if e.is_bad_input() {
        BadInput(e.to_string()).into()
    } else {
        e.into()
    }
}

/// Prints progress to stderr, one line per 10 %.
struct Stderr {
    total: std::cell::Cell<u64>,
    done: std::cell::Cell<u64>,
    what: std::cell::RefCell<String>,
}

impl Stderr {
    fn new() -> Self {
        Self {
            total: 0.into(),
            done: 0.into(),
            what: String::new().into(),
        }
    }
}

impl Monitor for Stderr {
    fn start(&self, len: u64, what: &str) {
        self.total.set(len);
        self.done.set(0);
        *self.what.borrow_mut() = what.to_string();
    }
    fn inc(&self, n: u64) {
        let (before, t) = (self.done.get(), self.total.get().max(1));
        self.done.set(before + n);
        if (before * 10 / t) != ((before + n) * 10 / t) {
            eprintln!("{}: {}/{} images", self.what.borrow(), before + n, t);
        }
    }
    fn log(&self, line: &str) {
        eprintln!("{line}");
    }
    fn stopped(&self) -> bool {
        false
    }
}

/// The cache folder (given, or a temporary one removed when dropped).
struct Cache {
    dir: PathBuf,
    temporary: bool,
}

impl Cache {
    fn new(given: &Option<PathBuf>) -> Self {
        match given {
            Some(d) => Self {
                dir: d.clone(),
                temporary: false,
            },
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let dir = std::env::temp_dir()
                    .join(format!("relay-metrics-{}-{nanos}", std::process::id()));
                Self {
                    dir,
                    temporary: true,
                }
            }
        }
    }
    /// A store for an image set, keyed by its path and the network.
    fn store(&self, what: &Path, net: &Network) -> FeatureStore {
        let abs = std::path::absolute(what).unwrap_or_else(|_| what.to_path_buf());
        let key = crate::util::sha256_hex(format!("{}\n{}", abs.display(), net.sha256).as_bytes());
        FeatureStore::new(&self.dir.join(&key[..32]))
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn network(a: &NetArgs) -> anyhow::Result<(Network, candle_core::Device)> {
    let device = a.device.device()?;
    let cwd = std::env::current_dir()?;
    let path = crate::hub::resolve_local_or_hf(&a.inception, &cwd, None)
        .map_err(|e| BadInput(e.to_string()))?;
    let net = load_network(path.path(), &a.inception, &device).map_err(user)?;
    Ok((net, device))
}

/// `relay metrics`.
pub fn metrics(a: &MetricsArgs) -> anyhow::Result<i32> {
    let mut wanted = Vec::new();
    for m in &a.metrics {
        let metric = Metric::parse(m).ok_or_else(|| {
            BadInput(format!(
                "unknown metric `{m}` (known: fid, sfid, is, precision, recall)"
            ))
        })?;
        wanted.push(metric);
    }
    let samples = ImageSource::open(&a.samples, None).map_err(user)?;
    let (net, device) = network(&a.net)?;
    if wanted.is_empty() {
        wanted = Metric::ALL
            .into_iter()
            .filter(|m| *m != Metric::Is || net.net.has_classifier())
            .collect();
    }
    let reference = if a.reference.is_dir() {
        let src = ImageSource::open(&a.reference, a.resolution).map_err(user)?;
        let describe = json!({ "images": a.reference.display().to_string() });
        RefInput::Images(src, describe.as_object().cloned().unwrap_or_default())
    } else {
        RefInput::Npz(a.reference.clone())
    };
    let cache = Cache::new(&a.net.cache);
    let job = Job {
        samples: &samples,
        sample_store: cache.store(&a.samples, &net),
        reference,
        reference_store: cache.store(&a.reference, &net),
        metrics: wanted,
        batch: a.net.batch,
    };
    let done = compute(&job, &net, &device, &Stderr::new()).map_err(user)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(done.metrics))?
        );
    } else {
        for m in Metric::ALL {
            if let Some(v) = done.metrics.get(m.key()).and_then(Value::as_f64) {
                println!("{:<16} {v:.4}", m.key());
            }
        }
        println!("{:<16} {}", "count", done.samples.count);
    }
    Ok(0)
}

/// `relay stats`.
pub fn stats(a: &StatsArgs) -> anyhow::Result<i32> {
    let src = ImageSource::open(&a.images, a.resolution).map_err(user)?;
    let (net, device) = network(&a.net)?;
    let cache = Cache::new(&a.net.cache);
    let store = cache.store(&a.images, &net);
    let mon = Stderr::new();
    mon.start(src.len() as u64, "images");
    extract(
        &src,
        &net.net,
        &device,
        &store,
        a.net.batch,
        &mut |n| mon.inc(n as u64),
        &|| false,
    )
    .map_err(user)?;
    let s = summarize(&store, src.units(), false, false).map_err(user)?;
    write_stats(&a.out, &s).map_err(user)?;
    println!(
        "wrote {} ({} images: mu, sigma, mu_s, sigma_s)",
        crate::util::display_path(&a.out),
        s.count
    );
    Ok(0)
}

/// `relay show`.
pub fn show(a: &ShowArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&a.pipeline)?;
    let records = crate::base::record::read_all(&plan.spec.workdir);
    let t = crate::exec::show::table(&plan, &records, a.all);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&t.json())?);
    } else if a.csv {
        print!("{}", t.csv());
    } else {
        print!("{}", t.text());
    }
    Ok(0)
}
