//! `source/shapes`: a synthetic, seeded dataset of coloured shapes on smooth backgrounds.
//!
//! Class `k` is a shape type (circle, square, triangle, ...). Image `i` has class
//! `i mod classes` (balanced) and draws everything else — size, position, rotation,
//! colours, background gradient and waves — from a generator seeded by `(seed, i)`, in
//! resolution-independent coordinates: the same `(seed, i)` is the same picture at 32²
//! and at 1024². Edges are anti-aliased from signed distance functions (coverage over
//! one pixel), so there is structure at every scale: sharp-but-smooth edges, flat areas,
//! gradients and colour. A tiny model learns the classes in minutes on a CPU.

use image::{Rgb, RgbImage};

use super::SplitMix64;

/// The shape types, in class order.
pub const SHAPES: &[&str] = &[
    "circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon", "crescent",
    "ellipse",
];

/// Everything random about one image, drawn before rendering.
#[derive(Debug, Clone)]
struct Scene {
    class: usize,
    cx: f32,
    cy: f32,
    radius: f32,
    angle: f32,
    fg: [f32; 3],
    fg_shade: f32,
    bg0: [f32; 3],
    bg1: [f32; 3],
    bg_dir: [f32; 2],
    wave: [f32; 4], // amplitude, frequency, direction angle, phase
}

fn hsv(h: f64, s: f64, v: f64) -> [f32; 3] {
    let h = (h.rem_euclid(1.0)) * 6.0;
    let c = v * s;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [(r + m) as f32, (g + m) as f32, (b + m) as f32]
}

fn scene(seed: u64, index: u64, classes: usize) -> Scene {
    let mut rng = SplitMix64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index);
    rng.next_u64();
    let class = (index % classes as u64) as usize;
    let radius = rng.range(0.18, 0.34) as f32;
    let margin = radius * 1.05;
    let cx = rng.range(margin as f64, 1.0 - margin as f64) as f32;
    let cy = rng.range(margin as f64, 1.0 - margin as f64) as f32;
    let angle = rng.range(0.0, std::f64::consts::TAU) as f32;
    let fg_hue = rng.next_f64();
    let fg = hsv(fg_hue, rng.range(0.55, 1.0), rng.range(0.65, 1.0));
    // Background: low saturation, hue away from the shape's, darker or lighter.
    let bg_hue = fg_hue + rng.range(0.25, 0.75);
    let dark = rng.next_f64() < 0.5;
    let v = |r: &mut SplitMix64| {
        if dark {
            r.range(0.1, 0.4)
        } else {
            r.range(0.45, 0.75)
        }
    };
    let bg0 = hsv(bg_hue, rng.range(0.1, 0.5), v(&mut rng));
    let bg1 = hsv(
        bg_hue + rng.range(-0.1, 0.1),
        rng.range(0.1, 0.5),
        v(&mut rng),
    );
    let theta = rng.range(0.0, std::f64::consts::TAU);
    Scene {
        class,
        cx,
        cy,
        radius,
        angle,
        fg,
        fg_shade: rng.range(0.1, 0.35) as f32,
        bg0,
        bg1,
        bg_dir: [theta.cos() as f32, theta.sin() as f32],
        wave: [
            rng.range(0.02, 0.08) as f32,
            rng.range(1.0, 3.0) as f32,
            rng.range(0.0, std::f64::consts::TAU) as f32,
            rng.range(0.0, std::f64::consts::TAU) as f32,
        ],
    }
}

fn length(x: f32, y: f32) -> f32 {
    (x * x + y * y).sqrt()
}

fn sd_box(x: f32, y: f32, bx: f32, by: f32) -> f32 {
    let (dx, dy) = (x.abs() - bx, y.abs() - by);
    length(dx.max(0.0), dy.max(0.0)) + dx.max(dy).min(0.0)
}

/// Signed distance (negative inside) of shape `class` with radius `r`, in shape space.
/// Formulas after Inigo Quilez's 2D distance functions.
fn sdf(class: usize, x: f32, y: f32, r: f32) -> f32 {
    match class {
        0 => length(x, y) - r,
        1 => sd_box(x, y, r * 0.8, r * 0.8),
        2 => {
            // equilateral triangle
            let k = 3f32.sqrt();
            let mut px = x.abs() - r;
            let mut py = y + r / k;
            if px + k * py > 0.0 {
                let (nx, ny) = ((px - k * py) / 2.0, (-k * px - py) / 2.0);
                px = nx;
                py = ny;
            }
            px -= px.clamp(-2.0 * r, 0.0);
            -length(px, py) * py.signum()
        }
        3 => {
            // rhombus with half-diagonals r and 0.55 r (distance approximated by the
            // normalised plane distance; exact on the edges, which is what AA needs)
            let (a, b) = (r, r * 0.55);
            (x.abs() * b + y.abs() * a - a * b) / length(a, b)
        }
        4 => {
            let (w, l) = (r * 0.3, r * 0.95);
            sd_box(x, y, l, w).min(sd_box(x, y, w, l))
        }
        5 => (length(x, y) - r * 0.75).abs() - r * 0.22,
        6 => {
            // five-pointed star: fold into one sector, then a wedge distance
            let n = 5.0f32;
            let an = std::f32::consts::PI / n;
            let a = y.atan2(x).rem_euclid(2.0 * an) - an;
            let d = length(x, y);
            let (px, py) = (d * a.cos(), d * a.sin().abs());
            // edge from the tip (r, 0) to the inner vertex (0.45 r at angle an)
            let (ix, iy) = (0.45 * r * an.cos(), 0.45 * r * an.sin());
            let (ex, ey) = (ix - r, iy);
            let (wx, wy) = (px - r, py);
            let t = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0);
            let dist = length(wx - ex * t, wy - ey * t);
            let inside = ex * wy - ey * wx > 0.0;
            if inside {
                -dist
            } else {
                dist
            }
        }
        7 => {
            let (kx, ky, kz) = (-0.866_025_4f32, 0.5f32, 0.577_350_26f32);
            let (mut px, mut py) = (x.abs(), y.abs());
            let d = 2.0 * (kx * px + ky * py).min(0.0);
            px -= d * kx;
            py -= d * ky;
            let rr = r * 0.9;
            px -= px.clamp(-kz * rr, kz * rr);
            py -= rr;
            length(px, py) * py.signum()
        }
        8 => {
            let outer = length(x, y) - r;
            let inner = length(x - r * 0.45, y) - r * 0.8;
            outer.max(-inner)
        }
        _ => {
            let (a, b) = (r, r * 0.55);
            (length(x / a, y / b) - 1.0) * b
        }
    }
}

/// Render image `index` of the dataset `(seed, classes)` at `side × side`.
/// Returns the image and its class.
pub fn render(seed: u64, index: u64, classes: usize, side: u32) -> (RgbImage, usize) {
    assert!(
        (1..=SHAPES.len()).contains(&classes),
        "1..={} classes",
        SHAPES.len()
    );
    let s = scene(seed, index, classes);
    let (sin, cos) = s.angle.sin_cos();
    let px = 1.0 / side as f32;
    let tau = std::f32::consts::TAU;
    let (wdx, wdy) = (s.wave[2].cos(), s.wave[2].sin());
    let img = RgbImage::from_fn(side, side, |x, y| {
        let u = (x as f32 + 0.5) * px;
        let v = (y as f32 + 0.5) * px;
        // background: a linear blend plus one low-frequency wave
        let t = ((u - 0.5) * s.bg_dir[0] + (v - 0.5) * s.bg_dir[1] + 0.5).clamp(0.0, 1.0);
        let wave = s.wave[0] * (tau * s.wave[1] * (u * wdx + v * wdy) + s.wave[3]).sin();
        // shape space: centred, rotated
        let (dx, dy) = (u - s.cx, v - s.cy);
        let (qx, qy) = (cos * dx + sin * dy, -sin * dx + cos * dy);
        let d = sdf(s.class, qx, qy, s.radius);
        let cover = (0.5 - d / px).clamp(0.0, 1.0);
        // the shape is lit from one side: a gentle gradient across it
        let shade = 1.0 - s.fg_shade * (0.5 + 0.5 * qy / s.radius).clamp(0.0, 1.0);
        let mut out = [0u8; 3];
        for (c, o) in out.iter_mut().enumerate() {
            let bg = s.bg0[c] + (s.bg1[c] - s.bg0[c]) * t + wave;
            let fg = s.fg[c] * shade;
            let val = bg + (fg - bg) * cover;
            *o = (val.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
        }
        Rgb(out)
    });
    (img, s.class)
}

/// A `cols × rows` grid of the first images (a preview for people, not for training).
pub fn preview(seed: u64, classes: usize, side: u32, cols: u32, rows: u32, count: u64) -> RgbImage {
    let mut grid = RgbImage::new(cols * side, rows * side);
    for i in 0..(cols * rows) as u64 {
        if i >= count {
            break;
        }
        let (img, _) = render(seed, i, classes, side);
        let (x, y) = ((i as u32 % cols) * side, (i as u32 / cols) * side);
        image::imageops::replace(&mut grid, &img, x as i64, y as i64);
    }
    grid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_balanced() {
        let (a, ca) = render(7, 12, 10, 32);
        let (b, cb) = render(7, 12, 10, 32);
        assert_eq!(a, b);
        assert_eq!((ca, cb), (2, 2));
        assert_ne!(render(8, 12, 10, 32).0, a);
        assert_eq!(render(0, 13, 4, 16).1, 1);
    }

    #[test]
    fn every_class_draws_a_shape_of_plausible_area() {
        for (class, name) in SHAPES.iter().enumerate() {
            let (img, _) = render(3, class as u64, SHAPES.len(), 128);
            let s = scene(3, class as u64, SHAPES.len());
            // count pixels close to the shape colour at full shade range
            let inside = (0..128 * 128)
                .filter(|i| {
                    let (x, y) = ((i % 128) as f32 + 0.5, (i / 128) as f32 + 0.5);
                    let (dx, dy) = (x / 128.0 - s.cx, y / 128.0 - s.cy);
                    let (sin, cos) = s.angle.sin_cos();
                    let (qx, qy) = (cos * dx + sin * dy, -sin * dx + cos * dy);
                    sdf(class, qx, qy, s.radius) < 0.0
                })
                .count() as f32;
            let disc = std::f32::consts::PI * (s.radius * 128.0).powi(2);
            let frac = inside / disc;
            assert!(
                (0.1..1.3).contains(&frac),
                "{name} covers {frac} of its disc"
            );
            assert_eq!(img.dimensions(), (128, 128));
        }
    }

    #[test]
    fn same_scene_at_every_resolution() {
        // The 32² rendering is close to the box-reduced 256² rendering: same picture.
        let (hi, _) = render(1, 5, 10, 256);
        let (lo, _) = render(1, 5, 10, 32);
        let red = super::super::resample::box_reduce(&hi, 8);
        let diff: f64 = red
            .as_raw()
            .iter()
            .zip(lo.as_raw())
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .sum::<f64>()
            / lo.as_raw().len() as f64;
        assert!(diff < 6.0, "mean abs difference {diff}");
    }
}
