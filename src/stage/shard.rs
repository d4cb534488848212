//! `shard`: turn one source stage's images into WebDataset tar shards.
//!
//! `with: { samples_per_shard: 1000, max_shard_bytes: 1GB, shuffle_seed: 0, on_error: skip }`.
//! Reads the upstream source's `source.json`/`index.parquet` (any `source/*` kind),
//! applies its `transform`/`resolution`, and writes `data-000000.tar ...` (per sample
//! `KEY.png`, `KEY.cls` when labelled, `KEY.json`), `manifest.parquet`,
//! `rejects.parquet` and `classes.json`. Resumable: a rerun keeps committed shards.
//! The work itself is [`crate::data::prep`].

use serde::{Deserialize, Deserializer};

use super::source::{stage_error, threads, written, StageMonitor};
use super::{parse_params, Outcome, ParamError, Params, StageContext, StageKind};
use crate::data::prep::{write_shards, ShardOptions};
use crate::data::source::Source;
use crate::data::OnError;

pub struct Shard;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardParams {
    #[serde(default = "default_samples_per_shard")]
    samples_per_shard: u64,
    /// Bytes: a number, or text like `500MB`, `1GiB`.
    #[serde(default, deserialize_with = "bytes_opt")]
    max_shard_bytes: Option<u64>,
    /// `null` keeps the source order.
    #[serde(default = "default_seed")]
    shuffle_seed: Option<u64>,
    #[serde(default)]
    on_error: OnError,
}

fn default_samples_per_shard() -> u64 {
    1000
}
fn default_seed() -> Option<u64> {
    Some(0)
}

/// `123`, `"500MB"`, `"1.5GB"`, `"1GiB"` → bytes.
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. 1000000000, 500MB or 1GiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    Ok((num * mult).round() as u64)
}

fn bytes_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        N(u64),
        S(String),
    }
    match Option::<Wire>::deserialize(d)? {
        None => Ok(None),
        Some(Wire::N(n)) => Ok(Some(n)),
        Some(Wire::S(s)) => parse_bytes(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

impl StageKind for Shard {
    fn name(&self) -> &'static str {
        "shard"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "write a source's images as shuffled WebDataset tar shards + manifest.parquet"
    }
    fn check(&self, with: &Params) -> Result<(), ParamError> {
        let p: ShardParams = parse_params(with)?;
        if p.samples_per_shard == 0 {
            return Err(ParamError::new(
                "samples_per_shard",
                "`samples_per_shard` must be at least 1",
            ));
        }
        if p.max_shard_bytes == Some(0) {
            return Err(ParamError::new(
                "max_shard_bytes",
                "`max_shard_bytes` must be positive",
            ));
        }
        Ok(())
    }
    fn resumable(&self) -> bool {
        true
    }
    fn run(&self, cx: &StageContext) -> anyhow::Result<Outcome> {
        let p: ShardParams = parse_params(&cx.params)?;
        let input = cx.single_input()?;
        let source = Source::open(&input.dir).map_err(|e| stage_error(cx, e))?;
        let opts = ShardOptions {
            samples_per_shard: p.samples_per_shard,
            max_shard_bytes: p.max_shard_bytes,
            shuffle_seed: p.shuffle_seed,
            on_error: p.on_error,
            threads: threads(cx),
            prefix: "data".into(),
        };
        let s = write_shards(&source, &cx.out, &opts, &StageMonitor(cx))
            .map_err(|e| stage_error(cx, e))?;
        written(cx, &s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("42").unwrap(), 42);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }

    #[test]
    fn params() {
        let p: ShardParams = parse_params(
            &serde_yaml::from_str("{max_shard_bytes: 10MB, shuffle_seed: null}").unwrap(),
        )
        .unwrap();
        assert_eq!(p.max_shard_bytes, Some(10_000_000));
        assert_eq!(p.shuffle_seed, None);
        assert_eq!(p.samples_per_shard, 1000);
        let e = Shard
            .check(&serde_yaml::from_str("{samples_per_shrd: 3}").unwrap())
            .unwrap_err();
        assert_eq!(e.hint.as_deref(), Some("did you mean `samples_per_shard`?"));
    }
}
