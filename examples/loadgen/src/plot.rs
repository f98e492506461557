//! An SVG of the run: deliveries per second and latency (p50/p99/max) over time, and the
//! latency distribution (latency at each percentile).

use std::path::Path;

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::stats::Second;

/// Writes the plot to `path` (SVG).
pub fn write(path: &Path, title: &str, seconds: &[Second], all: &Histogram<u64>) -> Result<()> {
    let root = SVGBackend::new(path, (900, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((3, 1));
    let n = seconds.len().max(1) as f64;
    let ms = |v: u64| v as f64 / 1000.0;

    let max_rate = seconds
        .iter()
        .map(|s| s.deliveries)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&panels[0])
        .caption("deliveries per second", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n, 0f64..max_rate * 1.1)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(
            seconds
                .iter()
                .enumerate()
                .map(|(i, s)| (i as f64 + 0.5, s.deliveries as f64)),
            &BLUE,
        ))
        .map_err(|e| anyhow!("{e}"))?;

    let max_lat = seconds
        .iter()
        .map(|s| ms(s.latency.max()))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&panels[1])
        .caption(
            "latency over time (ms): p50 blue, p99 red, max grey",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n, 0f64..max_lat * 1.1)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (q, color) in [(0.5, BLUE), (0.99, RED), (1.0, RGBColor(150, 150, 150))] {
        chart
            .draw_series(LineSeries::new(
                seconds
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.deliveries > 0)
                    .map(|(i, s)| (i as f64 + 0.5, ms(s.latency.value_at_quantile(q)))),
                &color,
            ))
            .map_err(|e| anyhow!("{e}"))?;
    }

    // Percentiles on a "nines" axis: x = -log10(1 - q), so 90% = 1, 99% = 2, 99.9% = 3.
    let points: Vec<(f64, f64)> = (0..=50)
        .map(|i| {
            let x = i as f64 * 0.1;
            let q = 1.0 - 10f64.powf(-x);
            (x, ms(all.value_at_quantile(q)))
        })
        .collect();
    let top = points.iter().map(|p| p.1).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&panels[2])
        .caption(
            "latency distribution (ms) by percentile: 1 = p90, 2 = p99, 3 = p99.9",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..5f64, 0f64..top * 1.1)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("nines")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(points, &BLUE))
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
