//! The PIL enhancement the paper's sampling scripts apply to every image before saving it
//! (RDM_NOTES §7, §11.6): `generate_celebahq.py` runs `ImageEnhance.Contrast(0.9)`, then
//! `Brightness(1.05)`, then `Color(0.99)`; `generate_imagenet.py` runs `Brightness(1.06)`.
//! FIDs of relay samples are comparable with the paper's only with the same enhancement,
//! and with each other only when it is recorded (every manifest row and the model card say
//! which was applied).
//!
//! Reproduced exactly as Pillow computes it on 8-bit RGB: every step is `Image.blend(
//! degenerate, image, factor)`, i.e. `u8(d + factor·(v − d))` in float32, truncated, clipped
//! to [0, 255] when the factor leaves [0, 1]; the degenerate image is black (brightness),
//! the grey of the rounded mean luma (contrast) or the pixel's own luma (colour), luma
//! being Pillow's `L = (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16`. Each step re-quantises to
//! 8 bits, as PIL images are. Checked against Pillow's own output
//! (`scripts/pil_enhance_vectors.py`, `tests/data/pil_enhance.json`).

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// One enhancement step and its factor (1 leaves the image unchanged); written
/// `{brightness: 1.06}` (one key per step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "StepWire")]
pub enum Enhance {
    /// `ImageEnhance.Brightness`: blend with black.
    Brightness(f64),
    /// `ImageEnhance.Contrast`: blend with the image's mean grey.
    Contrast(f64),
    /// `ImageEnhance.Color`: blend with the image's own greyscale.
    Color(f64),
}

/// A step as written in YAML: a map with exactly one of the keys (serde_yaml's `Value`
/// cannot hold an externally tagged enum written as a map).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepWire {
    brightness: Option<f64>,
    contrast: Option<f64>,
    color: Option<f64>,
}

impl TryFrom<StepWire> for Enhance {
    type Error = String;
    fn try_from(w: StepWire) -> Result<Self, String> {
        match (w.brightness, w.contrast, w.color) {
            (Some(f), None, None) => Ok(Self::Brightness(f)),
            (None, Some(f), None) => Ok(Self::Contrast(f)),
            (None, None, Some(f)) => Ok(Self::Color(f)),
            _ => Err(
                "each post-processing step is one of {brightness: F}, {contrast: F}, {color: F}"
                    .into(),
            ),
        }
    }
}

/// A sequence of enhancement steps, applied in order; empty = off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Postprocess(pub Vec<Enhance>);

impl Postprocess {
    /// `generate_celebahq.py`'s `img_enhance`: contrast 0.9, brightness 1.05, colour 0.99.
    pub fn celebahq() -> Self {
        Self(vec![
            Enhance::Contrast(0.9),
            Enhance::Brightness(1.05),
            Enhance::Color(0.99),
        ])
    }

    /// `generate_imagenet.py`'s `img_enhance`: brightness 1.06.
    pub fn imagenet() -> Self {
        Self(vec![Enhance::Brightness(1.06)])
    }

    pub fn is_off(&self) -> bool {
        self.0.is_empty()
    }

    /// What manifests and model cards record: `none`, or e.g.
    /// `contrast 0.9, brightness 1.05, color 0.99 (PIL ImageEnhance)`.
    pub fn describe(&self) -> String {
        if self.is_off() {
            return "none".into();
        }
        let steps: Vec<String> = self
            .0
            .iter()
            .map(|e| match e {
                Enhance::Brightness(f) => format!("brightness {f}"),
                Enhance::Contrast(f) => format!("contrast {f}"),
                Enhance::Color(f) => format!("color {f}"),
            })
            .collect();
        format!("{} (PIL ImageEnhance)", steps.join(", "))
    }

    /// Factors must be finite and ≥ 0 (Pillow accepts any float; a negative one inverts).
    pub fn validate(&self) -> Result<(), String> {
        for e in &self.0 {
            let (Enhance::Brightness(f) | Enhance::Contrast(f) | Enhance::Color(f)) = e;
            if !(f.is_finite() && *f >= 0.0) {
                return Err(format!("enhancement factor {f} must be finite and ≥ 0"));
            }
        }
        Ok(())
    }

    /// Applies every step in place.
    pub fn apply(&self, img: &mut RgbImage) {
        for e in &self.0 {
            match *e {
                Enhance::Brightness(f) => blend_each(img, f, |_| [0, 0, 0]),
                Enhance::Contrast(f) => {
                    let m = mean_luma(img);
                    blend_each(img, f, |_| [m, m, m])
                }
                Enhance::Color(f) => blend_each(img, f, |px| {
                    let l = luma(px);
                    [l, l, l]
                }),
            }
        }
    }
}

/// Pillow's RGB → L (`rgb2l`, ITU-R 601-2 in 16-bit fixed point).
fn luma(px: [u8; 3]) -> u8 {
    let [r, g, b] = px.map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// `int(ImageStat.Stat(image.convert("L")).mean[0] + 0.5)`.
fn mean_luma(img: &RgbImage) -> u8 {
    let n = u64::from(img.width()) * u64::from(img.height());
    if n == 0 {
        return 0;
    }
    let sum: u64 = img.pixels().map(|p| u64::from(luma(p.0))).sum();
    (sum as f64 / n as f64 + 0.5) as u8
}

/// `Image.blend(degenerate, img, alpha)` per channel: `in1 + alpha·(in2 − in1)` in float32
/// (Pillow's `ImagingBlend`), truncated; clipped when alpha is outside [0, 1].
fn blend_each(img: &mut RgbImage, alpha: f64, degenerate: impl Fn([u8; 3]) -> [u8; 3]) {
    let a = alpha as f32;
    let extrapolate = !(0.0..=1.0).contains(&a);
    for px in img.pixels_mut() {
        let d = degenerate(px.0);
        for (c, v) in px.0.iter_mut().enumerate() {
            let (lo, hi) = (i32::from(d[c]), i32::from(*v));
            let t = lo as f32 + a * (hi - lo) as f32;
            *v = if extrapolate {
                if t <= 0.0 {
                    0
                } else if t >= 255.0 {
                    255
                } else {
                    t as u8
                }
            } else {
                t as u8
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Factor 1 is the identity for every step; brightness 1.06 of 200 is 211 (1.06 in
    /// float32 is 1.05999994, so 200·1.06 = 211.99999 truncates), of 250 clips to 255;
    /// colour 0 is the luma grey (0.299·255 → 76).
    #[test]
    fn simple_cases() {
        let mut img = RgbImage::from_fn(3, 2, |x, y| {
            image::Rgb([(x * 80) as u8, (y * 100) as u8, 200])
        });
        let orig = img.clone();
        Postprocess(vec![
            Enhance::Brightness(1.0),
            Enhance::Contrast(1.0),
            Enhance::Color(1.0),
        ])
        .apply(&mut img);
        assert_eq!(img, orig);
        let mut one = RgbImage::from_pixel(1, 1, image::Rgb([200, 250, 0]));
        Postprocess::imagenet().apply(&mut one);
        assert_eq!(one.get_pixel(0, 0).0, [211, 255, 0]);
        let mut grey = RgbImage::from_pixel(1, 1, image::Rgb([255, 0, 0]));
        Postprocess(vec![Enhance::Color(0.0)]).apply(&mut grey);
        assert_eq!(grey.get_pixel(0, 0).0, [76, 76, 76]);
        assert_eq!(Postprocess::default().describe(), "none");
        // As written in a pipeline: one key per step, in order.
        let yaml: serde_yaml::Value =
            serde_yaml::from_str("[{contrast: 0.9}, {brightness: 1.05}, {color: 0.99}]").unwrap();
        let p: Postprocess = serde_yaml::from_value(yaml).unwrap();
        assert_eq!(p, Postprocess::celebahq());
        let bad: serde_yaml::Value = serde_yaml::from_str("[{contrast: 0.9, color: 1}]").unwrap();
        assert!(serde_yaml::from_value::<Postprocess>(bad).is_err());
        assert_eq!(
            Postprocess::celebahq().describe(),
            "contrast 0.9, brightness 1.05, color 0.99 (PIL ImageEnhance)"
        );
    }

    /// Pillow's own output (`scripts/pil_enhance_vectors.py`): the paper scripts' chains and
    /// single steps that clip or interpolate, byte for byte.
    #[test]
    fn matches_pillow() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pil_enhance.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let bytes = |v: &serde_json::Value| -> Vec<u8> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u8)
                .collect()
        };
        let inputs: Vec<Vec<u8>> = v["inputs"].as_array().unwrap().iter().map(bytes).collect();
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() >= 30);
        for case in cases {
            let chain: Vec<Enhance> = case["chain"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let f = s[1].as_f64().unwrap();
                    match s[0].as_str().unwrap() {
                        "brightness" => Enhance::Brightness(f),
                        "contrast" => Enhance::Contrast(f),
                        "color" => Enhance::Color(f),
                        k => panic!("unknown step {k}"),
                    }
                })
                .collect();
            let input = inputs[case["image"].as_u64().unwrap() as usize].clone();
            let mut img = RgbImage::from_raw(8, 8, input).unwrap();
            Postprocess(chain.clone()).apply(&mut img);
            assert_eq!(
                img.as_raw(),
                &bytes(&case["output"]),
                "{chain:?} on image {}",
                case["image"]
            );
        }
    }
}
