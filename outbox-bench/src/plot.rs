//! A self-contained SVG of a latency distribution (cumulative share of
//! events against milliseconds, log-scaled), for docs/benchmarks.md.

use std::fmt::Write;

/// Renders the CDF of `sorted_ms` (ascending) as an SVG document.
pub fn latency_cdf_svg(sorted_ms: &[f64], title: &str) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 360.0, 60.0, 40.0, 30.0, 20.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max = sorted_ms.last().copied().unwrap_or(1.0).max(1.0);
    let (lo, hi) = (0.1_f64.log10(), max.log10().ceil().max(1.0));
    let x = |ms: f64| left + (ms.max(0.1).log10() - lo) / (hi - lo) * pw;
    let y = |share: f64| top + (1.0 - share) * ph;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">{title}</text>"
    );
    let mut decade = lo.ceil() as i32;
    while f64::from(decade) <= hi {
        let ms = 10f64.powi(decade);
        let _ = write!(
            svg,
            "<line x1=\"{0}\" y1=\"{top}\" x2=\"{0}\" y2=\"{1}\" stroke=\"#ddd\"/><text x=\"{0}\" y=\"{2}\" text-anchor=\"middle\">{ms} ms</text>",
            x(ms),
            top + ph,
            top + ph + 16.0
        );
        decade += 1;
    }
    for share in [0.0, 0.5, 0.9, 0.99] {
        let _ = write!(
            svg,
            "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#eee\"/><text x=\"{2}\" y=\"{3}\" text-anchor=\"end\">{4}%</text>",
            y(share),
            left + pw,
            left - 6.0,
            y(share) + 4.0,
            share * 100.0
        );
    }
    let n = sorted_ms.len().max(1) as f64;
    let step = (sorted_ms.len() / 600).max(1);
    let points: Vec<String> = sorted_ms
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == sorted_ms.len())
        .map(|(i, ms)| format!("{:.1},{:.1}", x(*ms), y((i + 1) as f64 / n)))
        .collect();
    let _ =
        write!(svg, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>", points.join(" "));
    let _ = write!(
        svg,
        "<text x=\"{0}\" y=\"{1}\" text-anchor=\"middle\">commit → consumer receipt (ms, log scale)</text></svg>",
        left + pw / 2.0,
        h - 4.0
    );
    svg
}
