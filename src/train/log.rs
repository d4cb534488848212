//! The training log: one row per tick (mean loss, the loss per noise-level bucket, images/s,
//! learning rate), kept in the training state so a resumed run continues the same curve, and
//! written as `train_log.parquet` and `loss.png` (drawn with `plotters` into an RGB buffer).

use std::path::Path;

use arrow::datatypes::DataType;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::manifest::{col, Cell, TableWriter};

/// Upper edges of the σ buckets; the last bucket is [5, ∞). Chosen around EDM's training
/// distribution (ln σ ~ N(−1.2, 1.2²): median 0.30) and the learning check's σ ∈ {0.2, 0.5, 1, 2}.
pub const SIGMA_EDGES: [f64; 5] = [0.1, 0.5, 1.0, 2.0, 5.0];
/// Number of σ buckets.
pub const BUCKETS: usize = SIGMA_EDGES.len() + 1;

/// Column names of the buckets (`loss_sigma_0.1_0.5`, ...).
pub fn bucket_names() -> Vec<String> {
    let mut lo = "0".to_string();
    let mut out = Vec::new();
    for e in SIGMA_EDGES {
        out.push(format!("loss_sigma_{lo}_{e}"));
        lo = e.to_string();
    }
    out.push(format!("loss_sigma_{lo}_inf"));
    out
}

fn bucket(sigma: f64) -> usize {
    SIGMA_EDGES
        .iter()
        .position(|&e| sigma < e)
        .unwrap_or(SIGMA_EDGES.len())
}

/// Sums over the current tick.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TickAcc {
    pub start_step: u64,
    pub start_nimg: u64,
    /// Seconds spent in this tick by earlier (interrupted) runs.
    pub seconds_before: f64,
    pub loss_sum: f64,
    pub count: u64,
    pub bucket_sum: [f64; BUCKETS],
    pub bucket_count: [u64; BUCKETS],
}

impl TickAcc {
    pub fn new(step: u64, nimg: u64) -> Self {
        Self {
            start_step: step,
            start_nimg: nimg,
            ..Default::default()
        }
    }

    /// Add another accumulator's sums and counts (one step's, summed over the ranks).
    pub fn merge(&mut self, o: &TickAcc) {
        self.loss_sum += o.loss_sum;
        self.count += o.count;
        for b in 0..BUCKETS {
            self.bucket_sum[b] += o.bucket_sum[b];
            self.bucket_count[b] += o.bucket_count[b];
        }
    }

    /// The sums and counts as one vector (for an all-reduce); [`Self::from_sums`] inverts.
    pub fn sums(&self) -> Vec<f64> {
        let mut v = vec![self.loss_sum, self.count as f64];
        v.extend(self.bucket_sum);
        v.extend(self.bucket_count.iter().map(|&c| c as f64));
        v
    }

    pub fn from_sums(v: &[f64]) -> Self {
        let mut t = Self {
            loss_sum: v[0],
            count: v[1] as u64,
            ..Default::default()
        };
        for b in 0..BUCKETS {
            t.bucket_sum[b] = v[2 + b];
            t.bucket_count[b] = v[2 + BUCKETS + b] as u64;
        }
        t
    }

    /// Add one sample's mean per-pixel loss at noise level σ.
    pub fn add(&mut self, sigma: f64, loss: f64) {
        self.loss_sum += loss;
        self.count += 1;
        let b = bucket(sigma);
        self.bucket_sum[b] += loss;
        self.bucket_count[b] += 1;
    }
}

/// One tick of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    /// Steps done at the end of the tick.
    pub step: u64,
    pub kimg: f64,
    /// Mean per-pixel weighted loss λ(σ)·(D − y)² over the tick's images.
    pub loss: f64,
    /// The same per σ bucket (`None`: no image fell in it).
    pub loss_buckets: [Option<f64>; BUCKETS],
    pub images_per_sec: f64,
    /// Learning rate of the tick's last step.
    pub lr: f64,
    /// Training seconds since the start of the run (all resumes together).
    pub wall_seconds: f64,
}

impl LogRow {
    pub fn from_tick(
        acc: &TickAcc,
        step: u64,
        nimg: u64,
        lr: f64,
        tick_seconds: f64,
        wall: f64,
    ) -> Self {
        let mut loss_buckets = [None; BUCKETS];
        for (b, slot) in loss_buckets.iter_mut().enumerate() {
            if acc.bucket_count[b] > 0 {
                *slot = Some(acc.bucket_sum[b] / acc.bucket_count[b] as f64);
            }
        }
        Self {
            step,
            kimg: nimg as f64 / 1000.0,
            loss: acc.loss_sum / acc.count.max(1) as f64,
            loss_buckets,
            images_per_sec: (nimg - acc.start_nimg) as f64 / tick_seconds.max(1e-9),
            lr,
            wall_seconds: wall,
        }
    }
}

/// Write the log as Parquet (atomically, through a temporary file).
pub fn write_parquet(rows: &[LogRow], path: &Path) -> anyhow::Result<()> {
    let mut fields = vec![
        col("step", DataType::UInt64, false),
        col("kimg", DataType::Float64, false),
        col("loss", DataType::Float64, false),
    ];
    for name in bucket_names() {
        fields.push(col(&name, DataType::Float64, true));
    }
    fields.push(col("images_per_sec", DataType::Float64, false));
    fields.push(col("lr", DataType::Float64, false));
    fields.push(col("wall_seconds", DataType::Float64, false));
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    let mut w = TableWriter::create(path, schema)?;
    for r in rows {
        let mut row = vec![Cell::U64(r.step), Cell::F64(r.kimg), Cell::F64(r.loss)];
        row.extend(
            r.loss_buckets
                .iter()
                .map(|b| b.map_or(Cell::Null, Cell::F64)),
        );
        row.extend([
            Cell::F64(r.images_per_sec),
            Cell::F64(r.lr),
            Cell::F64(r.wall_seconds),
        ]);
        w.push(row)?;
    }
    w.finish()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// loss.png: mean loss (black) and the per-bucket losses (colours) against kimg, log-scale y.

const W: u32 = 720;
const H: u32 = 420;
const COLOURS: [[u8; 3]; BUCKETS] = [
    [40, 90, 220],
    [40, 170, 220],
    [40, 170, 90],
    [200, 170, 30],
    [230, 110, 30],
    [200, 40, 40],
];

/// The font of the axis labels: DejaVu Sans Mono, bundled (`assets/fonts/`, Bitstream Vera
/// licence), so that the plot looks the same on every machine.
const FONT: &str = "relay-mono";

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let bytes = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");
        // A font that does not parse would leave the labels out, not fail the run.
        let _ = plotters::style::register_font(FONT, plotters::style::FontStyle::Normal, bytes);
    });
}

/// The legend label of σ bucket `b` (`σ 0.1–0.5`).
fn bucket_label(b: usize) -> String {
    let lo = if b == 0 { 0.0 } else { SIGMA_EDGES[b - 1] };
    match SIGMA_EDGES.get(b) {
        Some(hi) => format!("σ {lo}–{hi}"),
        None => format!("σ ≥ {lo}"),
    }
}

/// Draw the loss curves of `rows` (log-scale loss over thousands of images): the mean loss
/// in black, the loss per σ bucket in colour, with axes, labels and a legend.
pub fn plot(rows: &[LogRow]) -> anyhow::Result<RgbImage> {
    use plotters::prelude::*;
    register_font();
    let mut buf = vec![255u8; (W * H * 3) as usize];
    let positive: Vec<f64> = rows
        .iter()
        .flat_map(|r| std::iter::once(r.loss).chain(r.loss_buckets.iter().flatten().copied()))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing loss.png: {e}");
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        if !rows.is_empty() && !positive.is_empty() {
            let lo = positive.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = positive.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = (
                10f64.powf(lo.log10().floor()),
                10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
            );
            let kmax = rows.last().map_or(1.0, |r| r.kimg).max(1e-9);
            let mut chart = ChartBuilder::on(&root)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(0f64..kmax, (lo..hi).log_scale())
                .map_err(|e| fail(&e))?;
            chart
                .configure_mesh()
                .x_desc("thousands of training images (kimg)")
                .y_desc("loss")
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 13))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(|e| fail(&e))?;
            for (b, c) in COLOURS.iter().enumerate() {
                let colour = RGBColor(c[0], c[1], c[2]);
                chart
                    .draw_series(segments(rows, |r| r.loss_buckets[b], colour))
                    .map_err(|e| fail(&e))?
                    .label(bucket_label(b))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
            }
            chart
                .draw_series(segments(rows, |r| Some(r.loss), BLACK))
                .map_err(|e| fail(&e))?
                .label("mean")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
            chart
                .configure_series_labels()
                .label_font((FONT, 12))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| fail(&e))?;
        }
        root.present().map_err(|e| fail(&e))?;
    }
    RgbImage::from_raw(W, H, buf).ok_or_else(|| anyhow::anyhow!("loss.png buffer size"))
}

/// One curve as line segments, two pixels wide, broken where a value is missing.
fn segments(
    rows: &[LogRow],
    value: impl Fn(&LogRow) -> Option<f64>,
    colour: plotters::style::RGBColor,
) -> Vec<plotters::element::PathElement<(f64, f64)>> {
    use plotters::style::Color;
    let mut out = Vec::new();
    let mut run: Vec<(f64, f64)> = Vec::new();
    for r in rows {
        match value(r).filter(|v| v.is_finite() && *v > 0.0) {
            Some(v) => run.push((r.kimg, v)),
            None => out.push(std::mem::take(&mut run)),
        }
    }
    out.push(run);
    out.into_iter()
        .filter(|r| !r.is_empty())
        .map(|r| plotters::element::PathElement::new(r, colour.stroke_width(2)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_rows() {
        assert_eq!(bucket_names()[1], "loss_sigma_0.1_0.5");
        assert_eq!(bucket_names()[5], "loss_sigma_5_inf");
        let mut acc = TickAcc::new(0, 0);
        acc.add(0.05, 2.0);
        acc.add(0.7, 1.0);
        acc.add(0.9, 3.0);
        let row = LogRow::from_tick(&acc, 3, 30, 1e-4, 2.0, 2.0);
        assert_eq!(row.loss, 2.0);
        assert_eq!(row.loss_buckets[0], Some(2.0));
        assert_eq!(row.loss_buckets[2], Some(2.0));
        assert_eq!(row.loss_buckets[1], None);
        assert_eq!(row.images_per_sec, 15.0);
    }

    #[test]
    fn plot_draws_something() {
        let rows: Vec<LogRow> = (1..20)
            .map(|i| LogRow {
                step: i,
                kimg: i as f64 * 0.1,
                loss: 1.0 / i as f64,
                loss_buckets: [Some(0.5), None, Some(2.0 / i as f64), None, None, Some(0.3)],
                images_per_sec: 1.0,
                lr: 1e-4,
                wall_seconds: i as f64,
            })
            .collect();
        let img = plot(&rows).unwrap();
        let black = img.pixels().filter(|p| p.0 == [0, 0, 0]).count();
        assert!(black > 100, "{black}");
    }
}
