//! `downsample`: paired multi-resolution shards from `shard`'s output.
//!
//! `with: { resolutions: [256, 64], filter: box, on_error: skip }`. Writes one shard per
//! input shard (same names) with `KEY.256.png`, `KEY.64.png`, ..., `KEY.cls`, `KEY.json`,
//! and `manifest.parquet` (key, shard, label, source, one `sha256_R` column per
//! resolution) plus `rejects.parquet`. `box` (the default) is the exact rounded patch
//! mean that relay diffusion's blurring ends in; `lanczos` and `bicubic` are Pillow's.
//! Resumable per shard. The work itself is [`crate::data::pairs`].

use serde::Deserialize;

use super::source::{stage_error, threads, written, StageMonitor};
use super::{parse_params, Outcome, ParamError, Params, StageContext, StageKind};
use crate::data::pairs::{check_resolutions, write_pairs, PairsOptions};
use crate::data::resample::Filter;
use crate::data::OnError;

pub struct Downsample;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DownsampleParams {
    resolutions: Vec<u32>,
    #[serde(default = "default_filter")]
    filter: Filter,
    #[serde(default)]
    on_error: OnError,
}

fn default_filter() -> Filter {
    Filter::Box
}

impl StageKind for Downsample {
    fn name(&self) -> &'static str {
        "downsample"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "paired shards at several resolutions (KEY.256.png, KEY.64.png; box = patch mean)"
    }
    fn check(&self, with: &Params) -> Result<(), ParamError> {
        let p: DownsampleParams = parse_params(with)?;
        check_resolutions(&p.resolutions, p.filter).map_err(|m| {
            ParamError::new("resolutions", m).with_hint("e.g. `resolutions: [256, 64]`")
        })
    }
    fn resumable(&self) -> bool {
        true
    }
    fn run(&self, cx: &StageContext) -> anyhow::Result<Outcome> {
        let p: DownsampleParams = parse_params(&cx.params)?;
        self.check(&cx.params)?;
        let input = cx.single_input()?;
        let opts = PairsOptions {
            resolutions: p.resolutions,
            filter: p.filter,
            on_error: p.on_error,
            threads: threads(cx),
        };
        let s = write_pairs(&input.dir, &cx.out, &opts, &StageMonitor(cx))
            .map_err(|e| stage_error(cx, e))?;
        written(cx, &s)
    }
}
