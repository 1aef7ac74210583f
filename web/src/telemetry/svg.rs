//! Drawing a chart as SVG, on the server: no JavaScript, within the portal's strict CSP.
//! Each series is a line through its buckets' means over a band from their minimum to
//! their maximum; a bucket with nothing in it breaks the line, so a gap in the data shows
//! as a gap. Thresholds are drawn across, alerts raised and cleared are marked where they
//! happened, each with a tooltip (`<title>`). The root element carries the range and the
//! value axis it was drawn with (`data-*`), so a test can check every point it shows.

use std::fmt::Write as _;

use appliance::access::short_time;
use appliance::series::{Bucket, Source, Span};

/// Buckets across a chart: about one per two pixel columns of [`WIDTH`].
pub const BUCKETS: i64 = 480;
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

/// A threshold drawn across the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub value: f64,
    pub label: String,
}

/// An alert raised or cleared in the range.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub raised: bool,
    pub at_us: i64,
    pub value: Option<f64>,
    pub label: String,
}

/// One line of a chart: a device's buckets.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub buckets: Vec<Bucket>,
}

/// Everything a chart shows: one series for a device, one per device for a site.
#[derive(Debug, Clone)]
pub struct Chart {
    pub span: Span,
    /// What the buckets were summed from.
    pub source: Source,
    pub series: Vec<Series>,
    pub thresholds: Vec<Threshold>,
    pub markers: Vec<Marker>,
}

/// Numbers as the SVG writes them: short, and never `NaN`.
fn n(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.1}")
    } else {
        "0".into()
    }
}

/// About five round values from `low` to `high`, for the vertical axis.
fn ticks(low: f64, high: f64) -> Vec<f64> {
    let raw = (high - low) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(raw);
    let mut value = (low / step).ceil() * step;
    let mut out = Vec::new();
    while value <= high + step * 1e-9 && out.len() < 12 {
        out.push(value);
        value += step;
    }
    out
}

/// Text made safe inside SVG markup.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Chart {
    /// The lowest and highest value the vertical axis shows: the readings' and the
    /// thresholds', with a little room.
    fn value_range(&self) -> (f64, f64) {
        let values = self
            .series
            .iter()
            .flat_map(|s| &s.buckets)
            .flat_map(|b| [b.min, b.max])
            .chain(self.thresholds.iter().map(|t| t.value))
            .chain(self.markers.iter().filter_map(|m| m.value));
        let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if !low.is_finite() {
            return (0.0, 1.0);
        }
        let room = ((high - low) * 0.05).max(0.5);
        (low - room, high + room)
    }

    /// The runs of buckets the line joins: a new run starts after a gap, a distance between
    /// neighbours more than three times the usual one (and more than one bucket), so
    /// readings sparser than the buckets still make one line.
    pub fn runs(buckets: &[Bucket]) -> Vec<&[Bucket]> {
        let mut steps: Vec<i64> = buckets
            .windows(2)
            .map(|w| w[1].index - w[0].index)
            .collect();
        steps.sort_unstable();
        let usual = steps.get(steps.len() / 2).copied().unwrap_or(1).max(1);
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..buckets.len() {
            let step = buckets[i].index - buckets[i - 1].index;
            if step > 1 && step > 3 * usual {
                runs.push(&buckets[start..i]);
                start = i;
            }
        }
        if start < buckets.len() {
            runs.push(&buckets[start..]);
        }
        runs
    }

    /// The chart as an SVG element. Its root carries the range and the value axis it was
    /// drawn with (`data-*`), so what it shows can be checked against the readings.
    pub fn svg(&self, title: &str) -> String {
        let (low, high) = self.value_range();
        let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let span = self.span;
        let x = |at: i64| {
            LEFT + (at - span.from_us) as f64 / (span.to_us - span.from_us) as f64 * plot_w
        };
        let y = |v: f64| TOP + (high - v) / (high - low) * plot_h;
        let mut svg = String::new();
        let _ = write!(
            svg,
            "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
             role=\"img\" aria-label=\"{}\" data-from-us=\"{}\" data-to-us=\"{}\" data-low=\"{low}\" data-high=\"{high}\" \
             data-left=\"{LEFT}\" data-top=\"{TOP}\" data-plot-width=\"{plot_w}\" data-plot-height=\"{plot_h}\">",
            escape(title),
            span.from_us,
            span.to_us
        );
        // The axes and their labels.
        let _ = write!(
            svg,
            "<rect class=\"plot\" x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\"/>"
        );
        for value in ticks(low, high) {
            let _ = write!(
                svg,
                "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\"/>\
                 <text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                n(LEFT + plot_w),
                n(LEFT - 6.0),
                n(y(value) + 4.0),
                format_tick(value),
                y = n(y(value)),
            );
        }
        for i in 0..=4 {
            let at = span.from_us + (span.to_us - span.from_us) / 4 * i;
            let anchor = match i {
                0 => "start",
                4 => "end",
                _ => "middle",
            };
            let _ = write!(
                svg,
                "<text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
                n(x(at)),
                n(HEIGHT - 14.0),
                escape(&short_time(at).replace(" UTC", ""))
            );
        }
        // The min-max band and the line of means, a pair per run, for each series.
        for (number, series) in self.series.iter().enumerate() {
            for run in Chart::runs(&series.buckets) {
                let top: Vec<String> = run
                    .iter()
                    .map(|b| format!("{},{}", n(x(span.middle_us(b.index))), n(y(b.max))))
                    .collect();
                let bottom: Vec<String> = run
                    .iter()
                    .rev()
                    .map(|b| format!("{},{}", n(x(span.middle_us(b.index))), n(y(b.min))))
                    .collect();
                let _ = write!(
                    svg,
                    "<polygon class=\"band\" data-series=\"{number}\" points=\"{} {}\"/>",
                    top.join(" "),
                    bottom.join(" ")
                );
                let points: Vec<String> = run
                    .iter()
                    .map(|b| format!("{},{}", n(x(span.middle_us(b.index))), n(y(b.mean))))
                    .collect();
                let _ = write!(
                    svg,
                    "<polyline class=\"series\" data-series=\"{number}\" points=\"{}\"><title>{}</title></polyline>",
                    points.join(" "),
                    escape(&series.label)
                );
            }
        }
        for t in &self.thresholds {
            let _ = write!(
                svg,
                "<g class=\"threshold\" data-value=\"{}\"><line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\"/>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text></g>",
                t.value,
                n(LEFT + plot_w),
                n(LEFT + plot_w - 4.0),
                n(y(t.value) - 4.0),
                escape(&t.label),
                y = n(y(t.value)),
            );
        }
        for m in &self.markers {
            let class = if m.raised {
                "alert-raised"
            } else {
                "alert-cleared"
            };
            let at_y = m.value.map_or(TOP + 8.0, y);
            let value = m.value.map(|v| v.to_string()).unwrap_or_default();
            let _ = write!(
                svg,
                "<g class=\"{class}\" data-at-us=\"{}\" data-value=\"{value}\"><title>{}</title>\
                 <line x1=\"{cx}\" x2=\"{cx}\" y1=\"{TOP}\" y2=\"{}\"/><circle cx=\"{cx}\" cy=\"{}\" r=\"5\"/></g>",
                m.at_us,
                escape(&m.label),
                n(TOP + plot_h),
                n(at_y),
                cx = n(x(m.at_us)),
            );
        }
        if self.series.iter().all(|s| s.buckets.is_empty()) {
            let _ = write!(
                svg,
                "<text class=\"empty\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">No readings in this range.</text>",
                n(LEFT + plot_w / 2.0),
                n(TOP + plot_h / 2.0)
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

fn format_tick(value: f64) -> String {
    // A tick computed as -0.0 is shown as 0.
    let value = if value == 0.0 { 0.0 } else { value };
    if value.fract() == 0.0 || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}
