//! `--plot FILE.png`: latency over time (p50/p99/p99.9/max by send time) above the
//! end-to-end latency histogram. Text is drawn from the public-domain font8x8 glyphs, so
//! no system font is needed: [`Glyphs`] wraps plotters' bitmap backend and overrides
//! only its text methods.

use std::path::Path;

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use plotters::backend::BitMapBackend;
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind, FontTransform,
};

use crate::series::Point;

type BErr<'a> = DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

/// plotters' bitmap backend with an 8×8 bitmap font scaled to the requested size.
pub struct Glyphs<'a>(pub BitMapBackend<'a>);

fn scale(size: f64) -> i32 {
    ((size / 9.0).round() as i32).clamp(1, 4)
}

impl<'a> DrawingBackend for Glyphs<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), BErr<'a>> {
        self.0.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), BErr<'a>> {
        self.0.present()
    }
    fn draw_pixel(&mut self, p: BackendCoord, c: BackendColor) -> Result<(), BErr<'a>> {
        self.0.draw_pixel(p, c)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        s: &S,
    ) -> Result<(), BErr<'a>> {
        self.0.draw_line(a, b, s)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        s: &S,
        fill: bool,
    ) -> Result<(), BErr<'a>> {
        self.0.draw_rect(a, b, s, fill)
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> Result<(u32, u32), BErr<'a>> {
        let k = scale(style.size()) as u32;
        Ok((8 * k * text.chars().count() as u32, 8 * k))
    }

    fn draw_text<T: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        pos: BackendCoord,
    ) -> Result<(), BErr<'a>> {
        let k = scale(style.size());
        let color = style.color();
        let (w, h) = (8 * k * text.chars().count() as i32, 8 * k);
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -w / 2,
            HPos::Right => -w,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        for (ci, c) in text.chars().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY
                .get(c as usize)
                .unwrap_or(&font8x8::legacy::BASIC_LEGACY[b'?' as usize]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) == 0 {
                        continue;
                    }
                    // Pixel block in the unrotated text box, relative to the anchor.
                    let lx = dx + (ci as i32 * 8 + col) * k;
                    let ly = dy + row as i32 * k;
                    let (x, y) = match style.transform() {
                        FontTransform::Rotate90 => (-ly - k, lx),
                        FontTransform::Rotate180 => (-lx - k, -ly - k),
                        FontTransform::Rotate270 => (ly, -lx - k),
                        FontTransform::None => (lx, ly),
                    };
                    let at = (pos.0 + x, pos.1 + y);
                    self.0.draw_rect(at, (at.0 + k, at.1 + k), &color, true)?;
                }
            }
        }
        Ok(())
    }
}

/// Writes the two-panel latency PNG.
pub fn latency_png(path: &Path, title: &str, points: &[Point], e2e: &Histogram<u64>) -> Result<()> {
    let root = Glyphs(BitMapBackend::new(path, (1200, 900))).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let (top, bottom) = root.split_vertically(470);
    draw_series(&top, title, points).map_err(|e| anyhow!("plot: {e}"))?;
    draw_histogram(&bottom, e2e).map_err(|e| anyhow!("plot: {e}"))?;
    root.present()
        .map_err(|e| anyhow!("plot: writing {}: {e}", path.display()))?;
    Ok(())
}

type Area<'a> = DrawingArea<Glyphs<'a>, plotters::coord::Shift>;
type DErr<'a> = DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

fn draw_series<'a>(area: &Area<'a>, title: &str, points: &[Point]) -> Result<(), DErr<'a>> {
    let t_end = points.last().map_or(1.0, |p| p.t_s) + points.get(1).map_or(1.0, |p| p.t_s);
    let y_max = points
        .iter()
        .map(|p| ms(p.latency.p999_us))
        .fold(0.1f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{title}: end-to-end latency by send time"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_end, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the measured window")
        .y_desc("ms")
        .label_style(("sans-serif", 12))
        .draw()?;
    type Line = (&'static str, RGBColor, fn(&Point) -> u64);
    let lines: [Line; 4] = [
        ("p50", RGBColor(31, 119, 180), |p| p.latency.p50_us),
        ("p99", RGBColor(214, 39, 40), |p| p.latency.p99_us),
        ("p99.9", RGBColor(255, 127, 14), |p| p.latency.p999_us),
        ("max", RGBColor(150, 150, 150), |p| p.latency.max_us),
    ];
    for (name, color, f) in lines {
        let pts = points
            .iter()
            .filter(|p| p.latency.count > 0)
            .map(|p| (p.t_s, ms(f(p)).min(y_max)));
        chart
            .draw_series(LineSeries::new(pts, Color::stroke_width(&color, 2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 18, y)], Color::stroke_width(&color, 3))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}

/// Log-spaced bins (10 per decade) of the latency histogram, as % of deliveries.
pub fn log_bins(h: &Histogram<u64>) -> Vec<(f64, f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let lo = (10.0 * (h.min().max(1) as f64).log10()).floor() as i32;
    let hi = (10.0 * (h.max().max(1) as f64).log10()).floor() as i32 + 1;
    let total = h.len() as f64;
    (lo..hi)
        .map(|k| {
            let a = 10f64.powf(k as f64 / 10.0);
            let b = 10f64.powf((k + 1) as f64 / 10.0);
            let n = h.count_between(a.ceil() as u64, (b.ceil() as u64).saturating_sub(1));
            (a / 1e3, b / 1e3, n as f64 * 100.0 / total)
        })
        .collect()
}

fn draw_histogram<'a>(area: &Area<'a>, h: &Histogram<u64>) -> Result<(), DErr<'a>> {
    let bins = log_bins(h);
    let x0 = bins.first().map_or(0.01, |b| b.0);
    let x1 = bins.last().map_or(1.0, |b| b.1);
    let y_max = bins.iter().map(|b| b.2).fold(1.0f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "latency histogram ({} deliveries; p50 {:.2} ms, p99 {:.2} ms)",
                h.len(),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99))
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("end-to-end latency, ms (log scale)")
        .y_desc("% of deliveries")
        .label_style(("sans-serif", 12))
        .draw()?;
    chart.draw_series(bins.iter().map(|&(a, b, pct)| {
        Rectangle::new(
            [(a, 0.0), (b, pct)],
            RGBColor(31, 119, 180).mix(0.8).filled(),
        )
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{new_hist, summarize};

    #[test]
    fn bins_cover_every_sample() {
        let mut h = new_hist();
        for v in [90u64, 100, 150, 900, 1_000, 45_000] {
            h.record(v).unwrap();
        }
        let bins = log_bins(&h);
        let pct: f64 = bins.iter().map(|b| b.2).sum();
        assert!((pct - 100.0).abs() < 1e-9, "{bins:?}");
        assert!(bins[0].0 <= 0.09 && bins.last().unwrap().1 > 45.0);
    }

    #[test]
    fn renders_a_png_with_text_and_lines() {
        let mut h = new_hist();
        let points: Vec<Point> = (0..20)
            .map(|i| {
                let mut b = new_hist();
                for v in 0..100u64 {
                    b.record(500 + v * 10 * (i + 1)).unwrap();
                }
                h.add(&b).unwrap();
                Point {
                    t_s: i as f64 * 0.5,
                    latency: summarize(&b),
                }
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("lt-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.png");
        latency_png(&path, "test", &points, &h).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
