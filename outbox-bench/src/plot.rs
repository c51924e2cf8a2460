//! A self-contained SVG of latency distributions (cumulative share of
//! events against milliseconds, log-scaled), for docs/benchmarks.md.

use std::fmt::Write;

/// Colours of the curves, in the order given.
const COLOURS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

/// Renders the CDF of each named series (values ascending) as an SVG
/// document, with a legend; the axis spans the largest value of any.
pub fn latency_cdf_svg(series: &[(&str, &[f64])], title: &str) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 360.0, 60.0, 40.0, 30.0, 20.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max = series.iter().filter_map(|(_, v)| v.last().copied()).fold(1.0, f64::max);
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
    for (i, (name, sorted_ms)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let n = sorted_ms.len().max(1) as f64;
        let step = (sorted_ms.len() / 600).max(1);
        let points: Vec<String> = sorted_ms
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0 || *i + 1 == sorted_ms.len())
            .map(|(i, ms)| format!("{:.1},{:.1}", x(*ms), y((i + 1) as f64 / n)))
            .collect();
        // Legend, bottom right (the curves rise from the left).
        let ly = top + ph - 12.0 - 16.0 * (series.len() - 1 - i) as f64;
        let (lx, ty) = (left + pw - 250.0, ly + 4.0);
        let (lx2, tx) = (lx + 20.0, lx + 26.0);
        let points = points.join(" ");
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{points}\"/>\
             <line x1=\"{lx}\" y1=\"{ly}\" x2=\"{lx2}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/>\
             <text x=\"{tx}\" y=\"{ty}\">{name}</text>"
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{0}\" y=\"{1}\" text-anchor=\"middle\">ms after the commit (log scale)</text></svg>",
        left + pw / 2.0,
        h - 4.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_gets_a_curve_and_a_legend_entry() {
        let fast = [0.5, 1.0, 2.0];
        let slow = [1.0, 4.0, 250.0];
        let svg = latency_cdf_svg(&[("sent", &fast), ("confirmed", &slow)], "title");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">sent</text>") && svg.contains(">confirmed</text>"));
        // The axis reaches the slowest event of any series: 250 ms → 1000 ms.
        assert!(svg.contains(">1000 ms</text>"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
