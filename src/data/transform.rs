//! Crop/resize transforms applied by `shard` to every source image.
//!
//! * `center-crop` — EDM dataset_tool: the largest centred square, starting at
//!   ((H−c)//2, (W−c)//2) with c = min(H, W), then one Lanczos resize (RDM_NOTES §10).
//! * `center-crop-adm` — ADM/guided-diffusion `center_crop_arr`: halve with a box filter
//!   (to `size // 2`) while the short side is ≥ 2× the target, bicubic-resize so the short
//!   side equals the target (Python `round`, half to even), then take the centred square.
//! * `center-crop-wide` — EDM/StyleGAN: crop a band of height round(W·h/w) from the
//!   middle, Lanczos-resize to w×h and paste it centred in a black w×w canvas; images
//!   narrower than w or shorter than the band are rejected.
//! * `none` — with a resolution, a direct Lanczos resize to w×h (aspect not kept, as
//!   dataset_tool does); without one, the image is stored as decoded.
//!
//! Every resize is [`resample::resize`](super::resample::resize), i.e. Pillow's.

use std::fmt;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::resample::{resize, Filter};

/// Which transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transform {
    #[default]
    None,
    CenterCrop,
    CenterCropAdm,
    CenterCropWide,
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transform::None => "none",
            Transform::CenterCrop => "center-crop",
            Transform::CenterCropAdm => "center-crop-adm",
            Transform::CenterCropWide => "center-crop-wide",
        })
    }
}

/// Output size: `256` (square) or `"512x384"` (width × height).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ResolutionWire", into = "ResolutionWire")]
pub struct Resolution {
    pub width: u32,
    pub height: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ResolutionWire {
    Square(u32),
    Text(String),
}

impl TryFrom<ResolutionWire> for Resolution {
    type Error = String;
    fn try_from(w: ResolutionWire) -> Result<Self, String> {
        let (width, height) = match w {
            ResolutionWire::Square(s) => (s, s),
            ResolutionWire::Text(t) => {
                let parse = |s: &str| s.trim().parse::<u32>().ok();
                match t.split_once(['x', 'X']) {
                    Some((a, b)) => match (parse(a), parse(b)) {
                        (Some(a), Some(b)) => (a, b),
                        _ => return Err(format!("resolution `{t}`: write 256 or 512x384")),
                    },
                    None => match parse(&t) {
                        Some(s) => (s, s),
                        None => return Err(format!("resolution `{t}`: write 256 or 512x384")),
                    },
                }
            }
        };
        if width == 0 || height == 0 || width > 16384 || height > 16384 {
            return Err(format!(
                "resolution {width}x{height} is out of range (1..=16384)"
            ));
        }
        Ok(Resolution { width, height })
    }
}

impl From<Resolution> for ResolutionWire {
    fn from(r: Resolution) -> Self {
        if r.width == r.height {
            ResolutionWire::Square(r.width)
        } else {
            ResolutionWire::Text(format!("{}x{}", r.width, r.height))
        }
    }
}

impl Resolution {
    pub fn square(side: u32) -> Self {
        Self {
            width: side,
            height: side,
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// Check a transform/resolution pair before any image is read.
pub fn check(transform: Transform, resolution: Option<Resolution>) -> Result<(), String> {
    match (transform, resolution) {
        (Transform::None, _) => Ok(()),
        (t, None) => Err(format!("transform `{t}` needs a `resolution`")),
        (Transform::CenterCrop | Transform::CenterCropAdm, Some(r)) if r.width != r.height => {
            Err(format!(
                "transform `{transform}` makes square images; give one number as `resolution`, not {r}"
            ))
        }
        (Transform::CenterCropWide, Some(r)) if r.height > r.width => Err(format!(
            "transform `center-crop-wide` needs width ≥ height, got {r}"
        )),
        _ => Ok(()),
    }
}

/// Apply `transform`; `Err(reason)` when the image cannot be used (too small for
/// `center-crop-wide`). Call [`check`] first: a missing resolution panics here.
pub fn apply(
    img: RgbImage,
    transform: Transform,
    resolution: Option<Resolution>,
) -> Result<RgbImage, String> {
    let Some(res) = resolution else {
        assert_eq!(transform, Transform::None, "checked by `check`");
        return Ok(img);
    };
    match transform {
        Transform::None => Ok(resize(&img, res.width, res.height, Filter::Lanczos)),
        Transform::CenterCrop => Ok(center_crop(&img, res.width)),
        Transform::CenterCropAdm => Ok(center_crop_adm(img, res.width)),
        Transform::CenterCropWide => center_crop_wide(&img, res.width, res.height),
    }
}

fn crop(img: &RgbImage, x0: u32, y0: u32, w: u32, h: u32) -> RgbImage {
    image::imageops::crop_imm(img, x0, y0, w, h).to_image()
}

/// EDM `center_crop`.
pub fn center_crop(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let c = w.min(h);
    let square = crop(img, (w - c) / 2, (h - c) / 2, c, c);
    resize(&square, side, side, Filter::Lanczos)
}

/// Python's `round()`: half to even.
fn round_half_even(x: f64) -> u32 {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    };
    r.max(1.0) as u32
}

/// ADM `center_crop_arr`.
pub fn center_crop_adm(mut img: RgbImage, side: u32) -> RgbImage {
    while img.width().min(img.height()) >= 2 * side {
        img = resize(&img, img.width() / 2, img.height() / 2, Filter::Box);
    }
    let scale = side as f64 / img.width().min(img.height()) as f64;
    let (w, h) = (
        round_half_even(img.width() as f64 * scale),
        round_half_even(img.height() as f64 * scale),
    );
    let img = resize(&img, w, h, Filter::Bicubic);
    crop(&img, (w - side) / 2, (h - side) / 2, side, side)
}

/// EDM `center_crop_wide`.
pub fn center_crop_wide(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage, String> {
    let (w, h) = img.dimensions();
    let ch = (width as f64 * h as f64 / w as f64).round() as u32;
    if w < width || ch < height {
        return Err(format!(
            "image {w}x{h} is too small for center-crop-wide to {width}x{height}"
        ));
    }
    // numpy: img[(H - ch) // 2 : (H + ch) // 2]
    let (y0, y1) = ((h - ch.min(h)) / 2, (h + ch.min(h)) / 2);
    let band = crop(img, 0, y0, w, y1 - y0);
    let band = resize(&band, width, height, Filter::Lanczos);
    let mut canvas = RgbImage::new(width, width);
    image::imageops::replace(&mut canvas, &band, 0, ((width - height) / 2) as i64);
    Ok(canvas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 7]))
    }

    #[test]
    fn resolution_forms() {
        let r: Resolution = serde_yaml::from_str("256").unwrap();
        assert_eq!(r, Resolution::square(256));
        let r: Resolution = serde_yaml::from_str("512x384").unwrap();
        assert_eq!((r.width, r.height), (512, 384));
        assert!(serde_yaml::from_str::<Resolution>("big").is_err());
        assert!(serde_yaml::from_str::<Resolution>("0").is_err());
    }

    #[test]
    fn check_needs_a_resolution() {
        assert!(check(Transform::CenterCrop, None).is_err());
        assert!(check(Transform::CenterCrop, Some(Resolution::square(64))).is_ok());
        let wide = Resolution {
            width: 64,
            height: 48,
        };
        assert!(check(Transform::CenterCrop, Some(wide)).is_err());
        assert!(check(Transform::CenterCropWide, Some(wide)).is_ok());
        assert!(check(Transform::None, None).is_ok());
    }

    #[test]
    fn center_crop_takes_the_middle_square() {
        // 10x6: c = 6, x0 = (10-6)//2 = 2; no resize at side 6, so it is a pure crop.
        let img = gradient(10, 6);
        let out = center_crop(&img, 6);
        assert_eq!(out.dimensions(), (6, 6));
        assert_eq!(out.get_pixel(0, 0).0, [2, 0, 7]);
        assert_eq!(out.get_pixel(5, 5).0, [7, 5, 7]);
        // 5x8: c = 5, y0 = (8-5)//2 = 1.
        let out = center_crop(&gradient(5, 8), 5);
        assert_eq!(out.get_pixel(0, 0).0, [0, 1, 7]);
        assert_eq!(center_crop(&gradient(500, 375), 64).dimensions(), (64, 64));
    }

    #[test]
    fn adm_halves_then_bicubic() {
        let out = center_crop_adm(gradient(1024, 768), 64);
        assert_eq!(out.dimensions(), (64, 64));
        let out = center_crop_adm(gradient(65, 301), 64);
        assert_eq!(out.dimensions(), (64, 64));
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(85.33), 85);
    }

    #[test]
    fn wide_pads_into_a_square() {
        let out = center_crop_wide(&gradient(640, 480), 64, 48).unwrap();
        assert_eq!(out.dimensions(), (64, 64));
        assert_eq!(out.get_pixel(10, 0).0, [0, 0, 0]); // black bar above
        assert_ne!(out.get_pixel(10, 32).0, [0, 0, 0]);
        assert!(center_crop_wide(&gradient(32, 480), 64, 48).is_err());
    }
}
