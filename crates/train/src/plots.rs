//! PNG figures of a run: loss and Dice curves (plotters, with a bundled
//! DejaVu Sans Mono so no system font is needed) and overlays of
//! prediction vs truth on validation slices.

use std::path::Path;
use std::sync::Once;

use ndarray::ArrayView2;
use plotters::prelude::*;

use crate::error::{Result, TrainError};
use crate::observe::{Observer, StepRecord, Summary, ValidationRecord, read_metrics};
use crate::run_dir::RunDir;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the bundled font is valid"));
    });
}

/// Draws `<run>/plots/{loss,dice}.png` at each validation and at the end,
/// and `<run>/plots/overlay.png` (truth | prediction per validation slice)
/// at each validation.
pub struct Plots {
    run: RunDir,
    /// (step, loss, ce, lovasz)
    losses: Vec<(usize, f64, f64, f64)>,
    /// (step, kidney, tumour, composite)
    dice: Vec<(usize, f64, f64, f64)>,
}

impl Plots {
    /// Starts from the records of `<run>/metrics.jsonl` up to `first_step`
    /// (a resumed run's plots continue its curves).
    pub fn new(run: &RunDir, first_step: usize) -> Result<Plots> {
        let dir = run.plots();
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        let mut p = Plots {
            run: run.clone(),
            losses: Vec::new(),
            dice: Vec::new(),
        };
        for v in read_metrics(&run.metrics(), first_step)? {
            let step = v["step"].as_u64().unwrap_or(0) as usize;
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            match v["kind"].as_str() {
                Some("step") => p.losses.push((step, f("loss"), f("ce"), f("lovasz"))),
                Some("validation") => {
                    p.dice
                        .push((step, f("kidney_dice"), f("tumour_dice"), f("composite")))
                }
                _ => {}
            }
        }
        Ok(p)
    }

    fn draw_curves(&self) -> Result<()> {
        if !self.losses.is_empty() {
            // Step losses are noisy (a batch of a few slices): plot their
            // exponential moving average.
            let ema = |f: fn(&(usize, f64, f64, f64)) -> f64| -> Vec<(usize, f64)> {
                let mut m = f64::NAN;
                self.losses
                    .iter()
                    .map(|r| {
                        let v = f(r);
                        m = if m.is_finite() {
                            0.95 * m + 0.05 * v
                        } else {
                            v
                        };
                        (r.0, m)
                    })
                    .collect()
            };
            let series = [
                ("loss", ema(|r| r.1)),
                ("cross-entropy", ema(|r| r.2)),
                ("lovasz", ema(|r| r.3)),
            ];
            line_chart(
                &self.run.plot("loss"),
                "training loss (moving average, 0.95)",
                &series,
                None,
            )?;
        }
        if !self.dice.is_empty() {
            let series = [
                (
                    "kidney",
                    self.dice.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
                ),
                ("tumour", self.dice.iter().map(|r| (r.0, r.2)).collect()),
                ("composite", self.dice.iter().map(|r| (r.0, r.3)).collect()),
            ];
            line_chart(
                &self.run.plot("dice"),
                "validation Dice",
                &series,
                Some((0.0, 1.0)),
            )?;
        }
        Ok(())
    }
}

impl Observer for Plots {
    fn on_step(&mut self, r: &StepRecord) -> Result<()> {
        self.losses.push((r.step, r.loss, r.ce, r.lovasz));
        Ok(())
    }

    fn on_validation(&mut self, r: &ValidationRecord) -> Result<()> {
        self.dice.push((
            r.step,
            r.evaluation.dice.kidney_mean,
            r.evaluation.dice.tumour_mean,
            r.evaluation.dice.composite,
        ));
        self.draw_curves()?;
        if !r.overlays.is_empty() {
            let tiles: Vec<_> = r
                .overlays
                .iter()
                .flat_map(|o| {
                    [
                        overlay_rgb(o.image.view(), o.truth.view(), (-1.5, 2.6)),
                        overlay_rgb(o.image.view(), o.pred.view(), (-1.5, 2.6)),
                    ]
                })
                .collect();
            write_png(&self.run.plot("overlay"), &grid(&tiles, 2))?;
        }
        Ok(())
    }

    fn on_end(&mut self, _s: &Summary) -> Result<()> {
        self.draw_curves()
    }
}

/// A line chart of named series over steps, written as PNG.
fn line_chart(
    path: &Path,
    title: &str,
    series: &[(&str, Vec<(usize, f64)>)],
    y_range: Option<(f64, f64)>,
) -> Result<()> {
    register_font();
    let (w, h) = (800u32, 480u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let finite = || {
        series
            .iter()
            .flat_map(|s| s.1.iter())
            .filter(|p| p.1.is_finite())
    };
    let x_max = finite().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
    let (y0, y1) = y_range.unwrap_or_else(|| {
        let hi = finite().map(|p| p.1).fold(0.0f64, f64::max);
        (0.0, if hi > 0.0 { hi * 1.05 } else { 1.0 })
    });
    let err = |e: String| TrainError::Other(format!("{}: cannot draw: {e}", path.display()));
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, y0..y1)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = pts
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(s, v)| (s as f64, v.clamp(y0, y1)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer size");
    write_png(path, &img)
}

/// A grey image (`window` maps to black..white) with labels drawn over it:
/// kidney green, tumour red, cyst blue.
pub fn overlay_rgb(
    image: ArrayView2<f32>,
    labels: ArrayView2<u8>,
    window: (f32, f32),
) -> image::RgbImage {
    let (h, w) = image.dim();
    let (lo, hi) = window;
    image::RgbImage::from_fn(w as u32, h as u32, |c, r| {
        let (r, c) = (r as usize, c as usize);
        let g = ((image[[r, c]] - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0;
        let px = match labels[[r, c]] {
            1 => [0.6 * g, 0.6 * g + 100.0, 0.6 * g],
            2 => [0.6 * g + 100.0, 0.6 * g, 0.6 * g],
            3 => [0.6 * g, 0.6 * g + 40.0, 0.6 * g + 100.0],
            _ => [g, g, g],
        };
        image::Rgb(px.map(|v| v.min(255.0) as u8))
    })
}

/// Tiles images in rows of `cols`, 4 px apart on dark grey.
pub fn grid(tiles: &[image::RgbImage], cols: usize) -> image::RgbImage {
    let gap = 4;
    let cols = cols.max(1);
    let rows = tiles.len().div_ceil(cols).max(1);
    let tw = tiles.iter().map(|t| t.width()).max().unwrap_or(1);
    let th = tiles.iter().map(|t| t.height()).max().unwrap_or(1);
    let mut out = image::RgbImage::from_pixel(
        cols as u32 * (tw + gap) - gap,
        rows as u32 * (th + gap) - gap,
        image::Rgb([40, 40, 40]),
    );
    for (i, t) in tiles.iter().enumerate() {
        let (x, y) = (
            (i % cols) as u32 * (tw + gap),
            (i / cols) as u32 * (th + gap),
        );
        image::imageops::replace(&mut out, t, x.into(), y.into());
    }
    out
}

/// Encodes `img` as PNG and writes it atomically.
pub fn write_png(path: &Path, img: &image::RgbImage) -> Result<()> {
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| TrainError::Other(format!("{}: cannot encode PNG: {e}", path.display())))?;
    Ok(kseg_volume::fs::write_bytes_atomic(path, png.get_ref())?)
}
