//! PNG plots of the predicted aligned error (a heatmap on `0..max_pae`) and of the per-residue
//! pLDDT (a line over the AlphaFold-DB confidence bands), drawn with `plotters` into an RGB
//! buffer and encoded with `png`. Text uses DejaVu Sans embedded by the `dejavu` crate, so no
//! system font is needed.

use crate::atomic::write_atomically;
use crate::error::{IoError, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::io::Write as _;
use std::path::Path;
use std::sync::OnceLock;

/// Size of the PAE heatmap image, in pixels.
pub const PAE_PNG_SIZE: (u32, u32) = (640, 540);
/// Size of the pLDDT plot image, in pixels.
pub const PLDDT_PNG_SIZE: (u32, u32) = (900, 420);

/// AlphaFold-DB pLDDT bands: lower bound, colour.
pub const PLDDT_BANDS: [(f64, RGBColor); 4] = [
    (90.0, RGBColor(0x00, 0x53, 0xD6)), // very high
    (70.0, RGBColor(0x65, 0xCB, 0xF3)), // confident
    (50.0, RGBColor(0xFF, 0xDB, 0x13)), // low
    (0.0, RGBColor(0xFF, 0x7D, 0x45)),  // very low
];

const FONT: &str = "sans-serif";

/// Registers the embedded font once; `false` if it could not be (text is then left out).
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    })
}

fn plot_error(what: &str, e: impl std::fmt::Display) -> IoError {
    IoError::invalid(what, format!("drawing failed: {e}"))
}

/// Encodes an RGB8 buffer as PNG.
fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .map_err(|e| IoError::invalid("png", e.to_string()))?;
        writer
            .write_image_data(rgb)
            .map_err(|e| IoError::invalid("png", e.to_string()))?;
        writer
            .finish()
            .map_err(|e| IoError::invalid("png", e.to_string()))?;
    }
    Ok(out)
}

/// The heatmap colour of `t` in `[0, 1]`: dark green (no error) to near white (`max_pae`), as
/// AlphaFold DB shades PAE.
pub fn pae_colour(t: f64) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 3] = [
        (0.0, [0.0, 68.0, 27.0]),
        (0.5, [65.0, 171.0, 93.0]),
        (1.0, [247.0, 252.0, 245.0]),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let k = if t <= 0.5 { 0 } else { 1 };
    let (t0, c0) = STOPS[k];
    let (t1, c1) = STOPS[k + 1];
    let f = (t - t0) / (t1 - t0);
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(mix(c0[0], c1[0]), mix(c0[1], c1[1]), mix(c0[2], c1[2]))
}

/// The PAE heatmap as PNG bytes: `pae` is `n × n` row-major in Å (row = aligned residue, drawn
/// top to bottom), coloured on `0..max_pae`, with a colour bar.
pub fn pae_png(pae: &[f64], n: usize, max_pae: f64) -> Result<Vec<u8>> {
    if n == 0 || pae.len() != n * n {
        return Err(IoError::invalid(
            "pae",
            format!("expected {n}×{n} values, found {}", pae.len()),
        ));
    }
    if !(max_pae.is_finite() && max_pae > 0.0) {
        return Err(IoError::invalid(
            "max_pae",
            format!("{max_pae} is not a positive number"),
        ));
    }
    let size = PAE_PNG_SIZE;
    let mut buf = vec![255u8; (size.0 * size.1 * 3) as usize];
    let text = font_ready();
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error("pae", e))?;
        let (main, bar) = root.split_horizontally(size.0 - 110);
        let nf = n as f64;
        let mut builder = ChartBuilder::on(&main);
        builder.margin(12);
        if text {
            builder
                .caption("Predicted aligned error", (FONT, 20))
                .x_label_area_size(40)
                .y_label_area_size(50);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..nf, nf..0f64)
            .map_err(|e| plot_error("pae", e))?;
        if text {
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc("Scored residue")
                .y_desc("Aligned residue")
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 14))
                .x_label_formatter(&|v| format!("{}", v.round() as i64))
                .y_label_formatter(&|v| format!("{}", v.round() as i64))
                .draw()
                .map_err(|e| plot_error("pae", e))?;
        }
        chart
            .draw_series((0..n * n).map(|k| {
                let (i, j) = ((k / n) as f64, (k % n) as f64);
                Rectangle::new(
                    [(j, i), (j + 1.0, i + 1.0)],
                    pae_colour(pae[k] / max_pae).filled(),
                )
            }))
            .map_err(|e| plot_error("pae", e))?;

        // Colour bar: 0 at the bottom, max_pae at the top.
        let mut bar_builder = ChartBuilder::on(&bar);
        bar_builder
            .margin_top(44)
            .margin_bottom(52)
            .margin_right(50);
        let mut bar_chart = bar_builder
            .build_cartesian_2d(0f64..1f64, 0f64..max_pae)
            .map_err(|e| plot_error("pae", e))?;
        let steps = 100;
        bar_chart
            .draw_series((0..steps).map(|s| {
                let lo = max_pae * s as f64 / steps as f64;
                let hi = max_pae * (s + 1) as f64 / steps as f64;
                Rectangle::new(
                    [(0.0, lo), (1.0, hi)],
                    pae_colour((lo + hi) / 2.0 / max_pae).filled(),
                )
            }))
            .map_err(|e| plot_error("pae", e))?;
        if text {
            let style = TextStyle::from((FONT, 13).into_font()).color(&BLACK);
            for v in [0.0, max_pae / 2.0, max_pae] {
                let (x, y) = bar_chart.backend_coord(&(1.0, v));
                root.draw_text(&format!("{v:.1}"), &style, (x + 4, y - 6))
                    .map_err(|e| plot_error("pae", e))?;
            }
            let (x, y) = bar_chart.backend_coord(&(0.0, max_pae));
            root.draw_text("PAE (Å)", &style, (x - 4, y - 24))
                .map_err(|e| plot_error("pae", e))?;
        }
        root.present().map_err(|e| plot_error("pae", e))?;
    }
    encode_png(&buf, size)
}

/// The pLDDT plot as PNG bytes: pLDDT (0–100) per residue over the AlphaFold-DB bands, with a
/// vertical line at each index in `chain_starts` (0-based residue where a new chain begins).
pub fn plddt_png(plddt: &[f64], chain_starts: &[usize]) -> Result<Vec<u8>> {
    if plddt.is_empty() {
        return Err(IoError::invalid("plddt", "no residues"));
    }
    let size = PLDDT_PNG_SIZE;
    let mut buf = vec![255u8; (size.0 * size.1 * 3) as usize];
    let text = font_ready();
    let n = plddt.len();
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error("plddt", e))?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(14);
        if text {
            builder
                .caption("Predicted lDDT per position", (FONT, 20))
                .x_label_area_size(40)
                .y_label_area_size(50);
        }
        let x_max = n as f64 + 0.5;
        let mut chart = builder
            .build_cartesian_2d(0.5f64..x_max, 0f64..100f64)
            .map_err(|e| plot_error("plddt", e))?;
        // Bands first, under everything else.
        let mut upper = 100.0;
        for (lower, colour) in PLDDT_BANDS {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.5, lower), (x_max, upper)],
                    colour.mix(0.35).filled(),
                )))
                .map_err(|e| plot_error("plddt", e))?;
            upper = lower;
        }
        if text {
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc("Residue")
                .y_desc("pLDDT")
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 14))
                .x_label_formatter(&|v| format!("{}", v.round() as i64))
                .y_label_formatter(&|v| format!("{}", v.round() as i64))
                .draw()
                .map_err(|e| plot_error("plddt", e))?;
        }
        for &start in chain_starts.iter().filter(|&&s| s > 0 && s < n) {
            let x = start as f64 + 0.5;
            chart
                .draw_series(LineSeries::new(
                    [(x, 0.0), (x, 100.0)],
                    ShapeStyle::from(&RGBColor(90, 90, 90)).stroke_width(1),
                ))
                .map_err(|e| plot_error("plddt", e))?;
        }
        chart
            .draw_series(LineSeries::new(
                plddt
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| ((i + 1) as f64, p.clamp(0.0, 100.0))),
                ShapeStyle::from(&BLACK).stroke_width(2),
            ))
            .map_err(|e| plot_error("plddt", e))?;
        if n == 1 {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (1.0, plddt[0].clamp(0.0, 100.0)),
                    3,
                    BLACK.filled(),
                )))
                .map_err(|e| plot_error("plddt", e))?;
        }
        root.present().map_err(|e| plot_error("plddt", e))?;
    }
    encode_png(&buf, size)
}

/// Writes [`pae_png`] atomically.
pub fn write_pae_png(path: &Path, pae: &[f64], n: usize, max_pae: f64) -> Result<()> {
    let bytes = pae_png(pae, n, max_pae).map_err(|e| e.in_file(path))?;
    write_atomically(path, |mut f| f.write_all(&bytes))
}

/// Writes [`plddt_png`] atomically.
pub fn write_plddt_png(path: &Path, plddt: &[f64], chain_starts: &[usize]) -> Result<()> {
    let bytes = plddt_png(plddt, chain_starts).map_err(|e| e.in_file(path))?;
    write_atomically(path, |mut f| f.write_all(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

    /// Decodes a PNG: its (width, height) and RGB pixels.
    fn decode(bytes: &[u8]) -> ((u32, u32), Vec<u8>) {
        assert_eq!(&bytes[..8], &PNG_SIGNATURE);
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        ((info.width, info.height), pixels)
    }

    fn colours(pixels: &[u8]) -> std::collections::HashSet<[u8; 3]> {
        pixels.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect()
    }

    #[test]
    fn pae_png_is_valid_and_uses_the_colour_scale() {
        let n = 20;
        let pae: Vec<f64> = (0..n * n)
            .map(|k| ((k / n) as f64 - (k % n) as f64).abs() * 1.5)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job_pae.png");
        write_pae_png(&path, &pae, n, 31.75).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (size, pixels) = decode(&bytes);
        assert_eq!(size, PAE_PNG_SIZE);
        let seen = colours(&pixels);
        // The diagonal (0 Å) is the darkest green.
        assert!(seen.contains(&[0, 68, 27]));
        assert!(seen.len() > 20, "the heatmap has many shades");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn plddt_png_is_valid_and_shows_the_bands() {
        let plddt: Vec<f64> = (0..60).map(|i| 30.0 + i as f64).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job_plddt.png");
        write_plddt_png(&path, &plddt, &[40]).unwrap();
        let (size, pixels) = decode(&std::fs::read(&path).unwrap());
        assert_eq!(size, PLDDT_PNG_SIZE);
        let seen = colours(&pixels);
        assert!(seen.contains(&[0, 0, 0]), "the line is drawn");
        // Each band colour, blended at 35 % on white, appears.
        for (_, c) in PLDDT_BANDS {
            let blend = |v: u8| (f64::from(v) * 0.35 + 255.0 * 0.65) as i32;
            let want = [blend(c.0), blend(c.1), blend(c.2)];
            assert!(
                seen.iter()
                    .any(|p| (0..3).all(|k| (i32::from(p[k]) - want[k]).abs() <= 2)),
                "band {c:?}"
            );
        }
    }

    #[test]
    fn font_is_embedded() {
        assert!(font_ready());
    }

    #[test]
    fn single_residue_and_bad_input() {
        assert!(plddt_png(&[75.0], &[]).is_ok());
        assert!(pae_png(&[1.0], 1, 31.75).is_ok());
        assert!(pae_png(&[1.0, 2.0], 2, 31.75).is_err());
        assert!(pae_png(&[1.0], 1, 0.0).is_err());
        assert!(plddt_png(&[], &[]).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(write_pae_png(&dir.path().join("x.png"), &[1.0; 3], 2, 31.0).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    #[ignore = "writes example plots to $AF2_PLOT_DIR for a person to look at"]
    fn write_examples() {
        let dir = std::env::var("AF2_PLOT_DIR").unwrap_or_else(|_| "/tmp".into());
        let n = 80;
        let pae: Vec<f64> = (0..n * n)
            .map(|k| {
                let (i, j) = (k / n, k % n);
                let same = (i < 50) == (j < 50);
                if same {
                    2.0 + (i as f64 - j as f64).abs() * 0.1
                } else {
                    22.0
                }
            })
            .collect();
        write_pae_png(&Path::new(&dir).join("example_pae.png"), &pae, n, 31.75).unwrap();
        let plddt: Vec<f64> = (0..n)
            .map(|i| 60.0 + 35.0 * (i as f64 / 9.0).sin())
            .collect();
        write_plddt_png(&Path::new(&dir).join("example_plddt.png"), &plddt, &[50]).unwrap();
    }
}
