//! Charts of a device's metric, drawn on the server as SVG: they need no JavaScript and
//! keep to the portal's strict CSP. The range (last hour, shift, day, week, month, year,
//! or from–to) is cut into [`BUCKETS`] buckets summed by the store
//! ([`appliance::series`]): the line joins each bucket's mean, a band spans its minimum and
//! maximum, and a bucket with nothing in it breaks the line, so a gap in the data shows as
//! a gap. The thresholds of the rules that cover the device are drawn across, and the
//! alerts raised and cleared in the range are marked where they happened, each with a
//! tooltip. The shown range downloads as CSV.

use std::fmt::Write as _;

use actix_web::{HttpRequest, web};
use appliance::Actor;
use appliance::access::short_time;
use appliance::alerts::{Alert, AlertKind, AlertRule};
use appliance::readings::{ExportFilter, is_metric_name};
use appliance::series::{self, Bucket, Span};
use appliance::time::{format_us, parse_instant};
use askama::Template;
use serde::Deserialize;

use super::devices::visible_device;
use crate::client::source;
use crate::error::WebError;
use crate::render::{Nav, Page, html};
use crate::session::SignedIn;
use crate::state::AppState;

/// Buckets across a chart: about one per two pixel columns of [`WIDTH`].
pub const BUCKETS: i64 = 480;
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

/// The ranges a chart offers, with their length.
pub const RANGES: [(&str, &str, i64); 7] = [
    ("hour", "Last hour", 3600),
    ("shift", "Shift (8 h)", 8 * 3600),
    ("day", "Day", 24 * 3600),
    ("week", "Week", 7 * 24 * 3600),
    ("month", "Month (30 days)", 30 * 24 * 3600),
    ("year", "Year", 365 * 24 * 3600),
    ("custom", "From–to", 0),
];

#[derive(Debug, Default, Deserialize)]
pub struct ChartQuery {
    #[serde(default)]
    metric: String,
    #[serde(default)]
    range: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

impl ChartQuery {
    /// The metric and the range `[from, to)` asked for, as of `now`.
    fn resolve(&self, now: i64) -> Result<(String, &'static str, i64, i64), WebError> {
        let metric = self.metric.trim();
        if !is_metric_name(metric) {
            return Err(WebError::BadRequest(format!(
                "{metric:?} is not a metric name"
            )));
        }
        let range = if self.range.is_empty() {
            "day"
        } else {
            self.range.as_str()
        };
        let (name, _, seconds) = RANGES
            .iter()
            .find(|(name, _, _)| *name == range)
            .ok_or_else(|| WebError::BadRequest(format!("{range:?} is not a range")))?;
        let (from, to) = if *name == "custom" {
            let instant = |raw: &str, what: &str| {
                parse_instant(raw.trim()).map_err(|e| WebError::BadRequest(format!("{what}: {e}")))
            };
            (instant(&self.from, "from")?, instant(&self.to, "to")?)
        } else {
            (now - seconds * 1_000_000, now)
        };
        if to <= from {
            return Err(WebError::BadRequest("to must be after from".into()));
        }
        Ok((metric.to_owned(), name, from, to))
    }
}

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

/// Everything a chart shows.
#[derive(Debug, Clone)]
pub struct Chart {
    pub span: Span,
    pub buckets: Vec<Bucket>,
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
            .buckets
            .iter()
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
    pub fn runs(&self) -> Vec<&[Bucket]> {
        let mut steps: Vec<i64> = self
            .buckets
            .windows(2)
            .map(|w| w[1].index - w[0].index)
            .collect();
        steps.sort_unstable();
        let usual = steps.get(steps.len() / 2).copied().unwrap_or(1).max(1);
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..self.buckets.len() {
            let step = self.buckets[i].index - self.buckets[i - 1].index;
            if step > 1 && step > 3 * usual {
                runs.push(&self.buckets[start..i]);
                start = i;
            }
        }
        if start < self.buckets.len() {
            runs.push(&self.buckets[start..]);
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
        // The min-max band and the line of means, a pair per run.
        for run in self.runs() {
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
                "<polygon class=\"band\" points=\"{} {}\"/>",
                top.join(" "),
                bottom.join(" ")
            );
            let points: Vec<String> = run
                .iter()
                .map(|b| format!("{},{}", n(x(span.middle_us(b.index))), n(y(b.mean))))
                .collect();
            let _ = write!(
                svg,
                "<polyline class=\"series\" points=\"{}\"/>",
                points.join(" ")
            );
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
        if self.buckets.is_empty() {
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
    if value.fract() == 0.0 || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// The chart of `metric` of `device` over `[from, to)`: its buckets, the thresholds of the
/// live above/below rules on that metric that cover the device, and the alerts those or
/// any other rules on that metric raised or cleared in the range.
pub fn chart_of(
    conn: &mut appliance::DbConnection,
    device: &appliance::devices::Device,
    metric: &str,
    (from, to): (i64, i64),
) -> appliance::error::Result<Chart> {
    let span = Span::new(from, to, BUCKETS)?;
    let buckets = series::buckets(conn, device.id, metric, span)?;
    let rules: Vec<AlertRule> = AlertRule::list_all(conn)?
        .into_iter()
        .filter(|r| r.metric == metric)
        .collect();
    let thresholds = rules
        .iter()
        .filter(|r| r.is_live() && r.covers(device) && r.measure == "value")
        .filter(|r| matches!(r.kind(), Ok(AlertKind::Above | AlertKind::Below)))
        .map(|r| Threshold {
            value: r.threshold,
            label: format!("{}: {} {}", r.name, r.kind, r.threshold),
        })
        .collect();
    let mut markers = Vec::new();
    for alert in Alert::list_for_device(conn, device.id)? {
        let Some(rule) = rules.iter().find(|r| r.id == alert.rule_id) else {
            continue;
        };
        let within = |at: i64| at >= from && at < to;
        if within(alert.raised_at_us) {
            markers.push(Marker {
                raised: true,
                at_us: alert.raised_at_us,
                value: alert.raised_value,
                label: format!("{} raised {}", rule.name, short_time(alert.raised_at_us)),
            });
        }
        if let Some(at) = alert.cleared_at_us.filter(|at| within(*at)) {
            markers.push(Marker {
                raised: false,
                at_us: at,
                value: alert.cleared_value,
                label: format!("{} cleared {}", rule.name, short_time(at)),
            });
        }
    }
    Ok(Chart {
        span,
        buckets,
        thresholds,
        markers,
    })
}

#[derive(Template)]
#[template(path = "chart.html")]
struct ChartPage {
    signed_in: Option<Nav>,
    device_id: i64,
    serial: String,
    metric: String,
    metrics: Vec<String>,
    range: &'static str,
    ranges: &'static [(&'static str, &'static str, i64)],
    from: String,
    to: String,
    svg: String,
    readings: i64,
    csv: String,
}

pub async fn chart_page(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    query: web::Query<ChartQuery>,
) -> Page {
    let (app, account, id) = (state.app.clone(), user.user.clone(), path.into_inner());
    let (metric, range, from, to) = query.resolve(state.now())?;
    let asked = metric.clone();
    let (device, chart, metrics) = web::block(move || {
        let mut conn = app.store.conn()?;
        let (device, _) = visible_device(&mut conn, &account, id)?;
        let chart = chart_of(&mut conn, &device, &asked, (from, to))?;
        let metrics = series::metrics_of(&mut conn, device.id)?;
        Ok::<_, appliance::Error>((device, chart, metrics))
    })
    .await??;
    let title = format!(
        "{} {metric}, {} to {}",
        device.serial,
        short_time(from),
        short_time(to)
    );
    let readings = chart.buckets.iter().map(|b| b.count).sum();
    let csv = format!(
        "/devices/{id}/chart.csv?metric={metric}&range=custom&from={}&to={}",
        urlencode(&format_us(from)),
        urlencode(&format_us(to))
    );
    html(&ChartPage {
        signed_in: Some(user.nav()),
        device_id: id,
        serial: device.serial,
        svg: chart.svg(&title),
        metric,
        metrics,
        range,
        ranges: &RANGES,
        from: format_us(from),
        to: format_us(to),
        readings,
        csv,
    })
}

/// The characters of an RFC 3339 time that a query string must escape.
fn urlencode(raw: &str) -> String {
    raw.replace(':', "%3A").replace('+', "%2B")
}

/// The readings of the chart's range as CSV, streamed and audited like every export.
pub async fn chart_csv(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    query: web::Query<ChartQuery>,
) -> Page {
    let (metric, _, from, to) = query.resolve(state.now())?;
    let (app, account, id) = (state.app.clone(), user.user.clone(), path.into_inner());
    let device = web::block(move || visible_device(&mut *app.store.conn()?, &account, id))
        .await??
        .0;
    let filter = ExportFilter {
        site: None,
        device: Some(device.id),
        metric: Some(metric),
        since_us: Some(from),
        until_us: Some(to),
    };
    Ok(crate::download::readings(
        state,
        Actor::User(user.user.id),
        source(&req),
        filter,
        (
            appliance::audit::export::ExportFormat::Csv,
            "text/csv; charset=utf-8",
            "csv",
        ),
        serde_json::json!({ "via": "chart" }),
    ))
}
