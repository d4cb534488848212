//! Decode JPEG, PNG and WebP to 8-bit RGB; encode PNG deterministically; hash bytes.
//!
//! Colour handling follows EDM's dataset_tool (`PIL.Image.open(f).convert('RGB')`):
//! grayscale is replicated to three channels, palette images are expanded, CMYK/YCCK
//! JPEGs are converted to RGB by the decoder, and an alpha channel is *dropped* (not
//! composited onto a background), 16-bit images are reduced to 8 bits. EXIF orientation
//! is ignored, as PIL does by default. This is not a general image library: no colour
//! management, no metadata.

use std::io::Cursor;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::{DataError, Result};

/// File extensions treated as images (lower case).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// Whether a file name has one of [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn has_image_extension(name: &str) -> bool {
    match name.rsplit_once('.') {
        Some((_, ext)) => IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)),
        None => false,
    }
}

/// Decode `bytes` (format detected from the content, not the name) into RGB8.
/// `what` names the input in errors (a path, a zip member, `shard.tar#key`).
pub fn decode_rgb(bytes: &[u8], what: &str) -> Result<RgbImage> {
    let bad = |reason: String| DataError::Image {
        path: what.to_string(),
        reason,
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP) => {}
        Some(other) => return Err(bad(format!("{other:?} images are not supported"))),
        None => {
            return Err(bad(
                "not a JPEG, PNG or WebP file (unknown content)".to_string()
            ))
        }
    }
    // Refuse decompression bombs; 16k x 16k covers every real photo dataset.
    let mut limits = Limits::default();
    limits.max_image_width = Some(16384);
    limits.max_image_height = Some(16384);
    limits.max_alloc = Some(2 << 30);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(bad("the image is empty (0 pixels)".to_string()));
    }
    Ok(img.into_rgb8())
}

/// Deterministic PNG (fast deflate, adaptive filters, no metadata chunks): the same
/// pixels always give the same bytes with this crate version.
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::with_capacity(img.as_raw().len() / 2 + 1024);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("encoding an in-memory RGB8 PNG cannot fail");
    out
}

pub use crate::util::sha256_hex;

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, GrayImage, Rgba, RgbaImage};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn png_round_trip_is_lossless_and_stable() {
        let img = RgbImage::from_fn(37, 21, |x, y| image::Rgb([x as u8 * 7, y as u8 * 11, 99]));
        let a = encode_png(&img);
        assert_eq!(a, encode_png(&img));
        assert_eq!(decode_rgb(&a, "t").unwrap(), img);
    }

    #[test]
    fn gray_and_alpha_become_rgb() {
        let gray = GrayImage::from_fn(8, 5, |x, _| image::Luma([x as u8 * 30]));
        let bytes = encode(&DynamicImage::ImageLuma8(gray), ImageFormat::Png);
        let rgb = decode_rgb(&bytes, "g.png").unwrap();
        assert_eq!(rgb.get_pixel(3, 2).0, [90, 90, 90]);

        let rgba = RgbaImage::from_pixel(4, 4, Rgba([10, 20, 30, 0]));
        let bytes = encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
        // Alpha is dropped, like PIL's convert('RGB').
        assert_eq!(
            decode_rgb(&bytes, "a.png").unwrap().get_pixel(0, 0).0,
            [10, 20, 30]
        );
    }

    #[test]
    fn jpeg_decodes() {
        let img = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 128])
        });
        let bytes = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
        let out = decode_rgb(&bytes, "p.jpg").unwrap();
        assert_eq!(out.dimensions(), (64, 48));
    }

    #[test]
    fn garbage_and_truncation_name_the_input() {
        let e = decode_rgb(b"hello, not an image", "notes/readme.jpg").unwrap_err();
        assert!(e.to_string().contains("notes/readme.jpg"), "{e}");
        let img = RgbImage::from_pixel(40, 40, image::Rgb([1, 2, 3]));
        let png = encode_png(&img);
        let e = decode_rgb(&png[..png.len() / 2], "cut.png").unwrap_err();
        assert!(e.to_string().contains("cut.png"), "{e}");
    }

    #[test]
    fn extensions() {
        assert!(has_image_extension("a/b.JPG"));
        assert!(has_image_extension("x.webp"));
        assert!(!has_image_extension("x.txt"));
        assert!(!has_image_extension("jpg"));
    }

    #[test]
    fn sha256_of_empty() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
