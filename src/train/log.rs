//! The training log: one row per tick (mean loss, the loss per noise-level bucket, images/s,
//! learning rate), kept in the training state so a resumed run continues the same curve, and
//! written as `train_log.parquet` and `loss.png` (drawn here into an RGB buffer: no plotting
//! dependency).

use std::path::Path;

use arrow::datatypes::DataType;
use image::{Rgb, RgbImage};
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
const LEFT: u32 = 56;
const RIGHT: u32 = 16;
const TOP: u32 = 16;
const BOTTOM: u32 = 36;

/// Bucket colours, low σ (blue) to high σ (red).
const COLOURS: [[u8; 3]; BUCKETS] = [
    [40, 90, 220],
    [40, 170, 220],
    [40, 170, 90],
    [200, 170, 30],
    [230, 110, 30],
    [200, 40, 40],
];

/// 3×5 glyphs for axis labels: digits, '.', '-', 'e', 'k'.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        'e' => [0b000, 0b111, 0b111, 0b100, 0b111],
        'k' => [0b100, 0b101, 0b110, 0b101, 0b101],
        _ => return None,
    })
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: i64) {
    for (i, c) in s.chars().enumerate() {
        let Some(g) = glyph(c) else { continue };
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits & (0b100 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(
                                img,
                                x + (i as i64 * 4 + col) * scale + dx,
                                y + row as i64 * scale + dy,
                                [60, 60, 60],
                            );
                        }
                    }
                }
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

/// Bresenham, two pixels thick.
fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        put(img, x, y, c);
        put(img, x, y + 1, c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

fn short(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (0.01..10000.0).contains(&a) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// Draw the loss curves of `rows`.
pub fn plot(rows: &[LogRow]) -> RgbImage {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (x0, x1) = (LEFT as i64, (W - RIGHT) as i64);
    let (y0, y1) = (TOP as i64, (H - BOTTOM) as i64);
    // Frame.
    for (a, b) in [
        ((x0, y0), (x1, y0)),
        ((x1, y0), (x1, y1)),
        ((x1, y1), (x0, y1)),
        ((x0, y1), (x0, y0)),
    ] {
        line(&mut img, a, b, [180, 180, 180]);
    }
    let values = rows
        .iter()
        .flat_map(|r| std::iter::once(r.loss).chain(r.loss_buckets.iter().flatten().copied()));
    let positive: Vec<f64> = values.filter(|v| v.is_finite() && *v > 0.0).collect();
    if rows.is_empty() || positive.is_empty() {
        return img;
    }
    let lo = positive
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .log10()
        .floor();
    let hi = positive
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let kmax = rows.last().map_or(1.0, |r| r.kimg).max(1e-9);
    let px = |k: f64| x0 + ((k / kmax) * (x1 - x0) as f64).round() as i64;
    let py = |v: f64| y1 - (((v.log10() - lo) / (hi - lo)) * (y1 - y0) as f64).round() as i64;
    // Decade grid lines and labels on y, five labels on x.
    let mut d = lo;
    while d <= hi {
        let y = py(10f64.powf(d));
        for x in (x0..x1).step_by(4) {
            put(&mut img, x, y, [225, 225, 225]);
        }
        text(&mut img, 4, y - 5, &short(10f64.powf(d)), 2);
        d += 1.0;
    }
    for i in 0..=4 {
        let k = kmax * i as f64 / 4.0;
        let label = format!("{}k", short(k));
        text(&mut img, px(k) - 8, y1 + 8, &label, 2);
    }
    let series = |f: &dyn Fn(&LogRow) -> Option<f64>, c: [u8; 3], img: &mut RgbImage| {
        let mut prev: Option<(i64, i64)> = None;
        for r in rows {
            match f(r).filter(|v| v.is_finite() && *v > 0.0) {
                Some(v) => {
                    let p = (px(r.kimg), py(v));
                    line(img, prev.unwrap_or(p), p, c);
                    prev = Some(p);
                }
                None => prev = None,
            }
        }
    };
    for (b, c) in COLOURS.iter().enumerate() {
        series(&|r: &LogRow| r.loss_buckets[b], *c, &mut img);
    }
    series(&|r: &LogRow| Some(r.loss), [0, 0, 0], &mut img);
    img
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
        let img = plot(&rows);
        let black = img.pixels().filter(|p| p.0 == [0, 0, 0]).count();
        assert!(black > 100, "{black}");
    }
}
