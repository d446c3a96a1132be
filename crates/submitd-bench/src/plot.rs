//! The benchmark's chart as a small SVG: throughput (direct and whole
//! path) and p99 submission latency against concurrency, side by side.
//! Written by hand: plotters needs a font backend (and a font file) to
//! lay out text, which a chart of two panels does not justify.

use std::fmt::Write;

use crate::bench::Point;

const W: f64 = 420.0;
const H: f64 = 300.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

struct Series<'a> {
    name: &'a str,
    colour: &'a str,
    values: Vec<f64>,
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&v| v >= max)
        .unwrap_or(10.0 * power)
}

fn panel(out: &mut String, x0: f64, title: &str, unit: &str, xs: &[usize], series: &[Series<'_>]) {
    let max = nice_max(
        series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .fold(0.0, f64::max),
    );
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    // x: points evenly spaced (concurrency grows by factors).
    let px = |i: usize| x0 + LEFT + pw * (i as f64 + 0.5) / xs.len().max(1) as f64;
    let py = |v: f64| TOP + ph * (1.0 - v / max);
    let _ = write!(
        out,
        r#"<text x="{}" y="22" font-size="14" text-anchor="middle" font-weight="bold">{title}</text>"#,
        x0 + LEFT + pw / 2.0
    );
    let _ = write!(
        out,
        r##"<rect x="{}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##,
        x0 + LEFT
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let y = py(v);
        let _ = write!(
            out,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
            x0 + LEFT,
            x0 + LEFT + pw,
            x0 + LEFT - 6.0,
            y + 4.0,
            if max >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        );
    }
    for (i, c) in xs.iter().enumerate() {
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{c}</text>"#,
            px(i),
            TOP + ph + 16.0
        );
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">concurrent clients</text>"#,
        x0 + LEFT + pw / 2.0,
        TOP + ph + 34.0
    );
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 {} {})">{unit}</text>"#,
        x0 + 16.0,
        TOP + ph / 2.0,
        x0 + 16.0,
        TOP + ph / 2.0
    );
    for (k, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", px(i), py(v)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            s.colour,
            points.join(" ")
        );
        for p in &points {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                out,
                r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#,
                s.colour
            );
        }
        let ly = TOP + 14.0 + 16.0 * k as f64;
        let _ = write!(
            out,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{}"/><text x="{}" y="{}" font-size="11">{}</text>"#,
            x0 + LEFT + 8.0,
            ly - 4.0,
            s.colour,
            x0 + LEFT + 24.0,
            ly,
            s.name
        );
    }
}

/// The chart for `points`.
pub(crate) fn svg(points: &[Point]) -> String {
    let xs: Vec<usize> = points.iter().map(|p| p.concurrency).collect();
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{H}" viewBox="0 0 {} {H}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"#,
        2.0 * W,
        2.0 * W
    );
    panel(
        &mut out,
        0.0,
        "Throughput",
        "messages/s",
        &xs,
        &[
            Series {
                name: "direct, memory sink",
                colour: "#ccc",
                values: points.iter().map(|p| p.direct_memory.rate()).collect(),
            },
            Series {
                name: "direct, durable sink",
                colour: "#777",
                values: points.iter().map(|p| p.direct.rate()).collect(),
            },
            Series {
                name: "whole path through submitd",
                colour: "#1f77b4",
                values: points.iter().map(|p| p.whole.rate()).collect(),
            },
        ],
    );
    let p99 = |r: &crate::load::Report| r.percentile(0.99).as_secs_f64() * 1000.0;
    panel(
        &mut out,
        W,
        "p99 submission latency",
        "milliseconds",
        &xs,
        &[
            Series {
                name: "direct, durable sink",
                colour: "#777",
                values: points.iter().map(|p| p99(&p.direct)).collect(),
            },
            Series {
                name: "through submitd (to 250)",
                colour: "#d62728",
                values: points.iter().map(|p| p99(&p.whole)).collect(),
            },
        ],
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Report;
    use std::time::Duration;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(450.0), 500.0);
        assert_eq!(nice_max(1000.0), 1000.0);
    }

    #[test]
    fn a_chart_with_a_line_per_series() {
        let report = |n: usize, ms: u64| Report {
            sent: n,
            elapsed: Duration::from_secs(1),
            latencies: vec![Duration::from_millis(ms); n],
            ..Report::default()
        };
        let points: Vec<Point> = [1, 2, 4]
            .iter()
            .map(|&c| Point {
                concurrency: c,
                direct_memory: report(200 * c, 1),
                direct: report(100 * c, 2),
                whole: report(50 * c, 5),
                delivered_share: 1.0,
                cpu: Default::default(),
                direct_cpu: Default::default(),
            })
            .collect();
        let svg = svg(&points);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 5);
        assert_eq!(svg.matches("<circle").count(), 15);
    }
}
