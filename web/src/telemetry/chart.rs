//! The chart pages: one device's metric, a site's devices side by side, and a mold's
//! dashboard. The range (last hour, shift, day, week, month, year, or from–to) is cut into
//! [`BUCKETS`] buckets summed by the store ([`appliance::series`]) and drawn by
//! [`super::svg`], with the thresholds of the rules that cover what is shown and the alerts
//! raised and cleared in the range. The shown range downloads as CSV, through the one
//! audited readings export.

use actix_web::{HttpRequest, web};
use appliance::Actor;
use appliance::access::short_time;
use appliance::alerts::{Alert, AlertKind, AlertRule};
use appliance::devices::Device;
use appliance::models::{Site, User};
use appliance::readings::{ExportFilter, is_metric_name};
use appliance::rollups::{DAY_US, HOUR_US};
use appliance::series::{self, Source, Span};
use appliance::time::{format_us, parse_instant};
use askama::Template;
use serde::Deserialize;

use super::devices::visible_device;
use super::svg::{BUCKETS, Chart, Marker, Series, Threshold};
use super::visible_site;
use crate::client::source;
use crate::error::WebError;
use crate::render::{Nav, Page, html};
use crate::session::SignedIn;
use crate::state::AppState;

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

/// Alerts of `device` raised or cleared in `[from, to)` by one of `rules`, as markers;
/// `who` prefixes each label (a site chart names the device).
fn markers_of(
    conn: &mut appliance::DbConnection,
    device: &Device,
    rules: &[AlertRule],
    (from, to): (i64, i64),
    who: &str,
) -> appliance::error::Result<Vec<Marker>> {
    let mut markers = Vec::new();
    let within = |at: i64| at >= from && at < to;
    for alert in Alert::list_for_device(conn, device.id)? {
        let Some(rule) = rules.iter().find(|r| r.id == alert.rule_id) else {
            continue;
        };
        if within(alert.raised_at_us) {
            markers.push(Marker {
                raised: true,
                at_us: alert.raised_at_us,
                value: alert.raised_value,
                label: format!(
                    "{who}{} raised {}",
                    rule.name,
                    short_time(alert.raised_at_us)
                ),
            });
        }
        if let Some(at) = alert.cleared_at_us.filter(|at| within(*at)) {
            markers.push(Marker {
                raised: false,
                at_us: at,
                value: alert.cleared_value,
                label: format!("{who}{} cleared {}", rule.name, short_time(at)),
            });
        }
    }
    Ok(markers)
}

/// The threshold of each live rule on the value of `metric` among `rules` that `applies`.
fn thresholds_of(rules: &[AlertRule], applies: impl Fn(&AlertRule) -> bool) -> Vec<Threshold> {
    rules
        .iter()
        .filter(|r| r.is_live() && r.measure == "value" && applies(r))
        .filter(|r| matches!(r.kind(), Ok(AlertKind::Above | AlertKind::Below)))
        .map(|r| Threshold {
            value: r.threshold,
            label: format!("{}: {} {}", r.name, r.kind, r.threshold),
        })
        .collect()
}

fn rules_on(
    conn: &mut appliance::DbConnection,
    metric: &str,
) -> appliance::error::Result<Vec<AlertRule>> {
    Ok(AlertRule::list_all(conn)?
        .into_iter()
        .filter(|r| r.metric == metric)
        .collect())
}

/// The chart of `metric` of `device` over `[from, to)`: its buckets, the thresholds of the
/// live rules on that metric that cover it, and the alerts rules on that metric raised or
/// cleared in the range.
pub fn chart_of(
    conn: &mut appliance::DbConnection,
    device: &Device,
    metric: &str,
    (from, to): (i64, i64),
    now: i64,
) -> appliance::error::Result<Chart> {
    let span = Span::new(from, to, BUCKETS)?;
    let rules = rules_on(conn, metric)?;
    Ok(Chart {
        span,
        source: Source::for_span(span, now),
        series: vec![Series {
            label: device.serial.clone(),
            buckets: series::buckets(conn, device.id, metric, span, now)?,
        }],
        thresholds: thresholds_of(&rules, |r| r.covers(device)),
        markers: markers_of(conn, device, &rules, (from, to), "")?,
    })
}

/// The chart of `metric` for the devices at `site` that sent it in `[from, to)`, one line
/// each; the thresholds of the site's own rules on it, and every alert on it in the range.
pub fn site_chart_of(
    conn: &mut appliance::DbConnection,
    site: &Site,
    metric: &str,
    (from, to): (i64, i64),
    now: i64,
) -> appliance::error::Result<Chart> {
    let span = Span::new(from, to, BUCKETS)?;
    let rules = rules_on(conn, metric)?;
    let mut chart = Chart {
        span,
        source: Source::for_span(span, now),
        series: Vec::new(),
        thresholds: thresholds_of(&rules, |r| r.site_id == Some(site.id)),
        markers: Vec::new(),
    };
    for device in Device::list_for_site(conn, site.id)? {
        let buckets = series::buckets(conn, device.id, metric, span, now)?;
        if buckets.is_empty() {
            continue;
        }
        let who = format!("{}: ", device.serial);
        chart
            .markers
            .extend(markers_of(conn, &device, &rules, (from, to), &who)?);
        chart.series.push(Series {
            label: device.serial.clone(),
            buckets,
        });
    }
    Ok(chart)
}

#[derive(Template)]
#[template(path = "chart.html")]
struct ChartPage {
    signed_in: Option<Nav>,
    /// What the chart is of, and where that is.
    subject: String,
    subject_link: String,
    /// Where the range form goes.
    action: String,
    metric: String,
    metrics: Vec<String>,
    range: &'static str,
    ranges: &'static [(&'static str, &'static str, i64)],
    from: String,
    to: String,
    svg: String,
    /// Each series' number and label, for the legend (shown for more than one).
    legend: Vec<(usize, String)>,
    readings: i64,
    /// Which rollups the chart was summed from, if any.
    rollups: Option<&'static str>,
    csv: String,
}

impl ChartPage {
    fn new(
        user: &SignedIn,
        (subject, subject_link, action): (String, String, String),
        (metric, metrics, range): (String, Vec<String>, &'static str),
        (from, to): (i64, i64),
        chart: &Chart,
    ) -> ChartPage {
        let title = format!(
            "{subject} {metric}, {} to {}",
            short_time(from),
            short_time(to)
        );
        let csv = format!(
            "{action}.csv?metric={metric}&range=custom&from={}&to={}",
            urlencode(&format_us(from)),
            urlencode(&format_us(to))
        );
        ChartPage {
            signed_in: Some(user.nav()),
            svg: chart.svg(&title),
            legend: chart
                .series
                .iter()
                .map(|s| s.label.clone())
                .enumerate()
                .collect(),
            readings: chart
                .series
                .iter()
                .flat_map(|s| &s.buckets)
                .map(|b| b.count)
                .sum(),
            rollups: match chart.source {
                Source::Readings => None,
                Source::Rollups(DAY_US) => Some("daily"),
                Source::Rollups(HOUR_US) => Some("hourly"),
                Source::Rollups(_) => Some("per-minute"),
            },
            subject,
            subject_link,
            action,
            metric,
            metrics,
            range,
            ranges: &RANGES,
            from: format_us(from),
            to: format_us(to),
            csv,
        }
    }
}

/// What a chart page draws: its subject's name, the chart, and the metrics to choose from.
type Drawn = (String, Chart, Vec<String>);

/// A chart page of the subject at `base` (`/devices/ID` or `/sites/ID`): the range asked
/// for, resolved as of now, drawn by `draw` for the signed-in user.
async fn show_chart(
    state: &AppState,
    user: &SignedIn,
    query: &ChartQuery,
    base: String,
    draw: impl FnOnce(
        &mut appliance::DbConnection,
        &User,
        &str,
        (i64, i64),
        i64,
    ) -> appliance::error::Result<Drawn>
    + Send
    + 'static,
) -> Page {
    let (app, account) = (state.app.clone(), user.user.clone());
    let now = state.now();
    let (metric, range, from, to) = query.resolve(now)?;
    let asked = metric.clone();
    let (subject, chart, metrics) = web::block(move || {
        let mut conn = app.store.conn()?;
        draw(&mut conn, &account, &asked, (from, to), now)
    })
    .await??;
    html(&ChartPage::new(
        user,
        (subject, base.clone(), format!("{base}/chart")),
        (metric, metrics, range),
        (from, to),
        &chart,
    ))
}

pub async fn chart_page(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    query: web::Query<ChartQuery>,
) -> Page {
    let id = path.into_inner();
    show_chart(
        &state,
        &user,
        &query,
        format!("/devices/{id}"),
        move |conn, account, metric, range, now| {
            let (device, _) = visible_device(conn, account, id)?;
            let chart = chart_of(conn, &device, metric, range, now)?;
            let metrics = series::metrics_of(conn, device.id)?;
            Ok((device.serial, chart, metrics))
        },
    )
    .await
}

pub async fn site_chart_page(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    query: web::Query<ChartQuery>,
) -> Page {
    let id = path.into_inner();
    show_chart(
        &state,
        &user,
        &query,
        format!("/sites/{id}"),
        move |conn, account, metric, range, now| {
            let site = visible_site(conn, account, id)?;
            let chart = site_chart_of(conn, &site, metric, range, now)?;
            let mut metrics = Vec::new();
            for device in Device::list_for_site(conn, site.id)? {
                metrics.extend(series::metrics_of(conn, device.id)?);
            }
            metrics.sort();
            metrics.dedup();
            Ok((site.name, chart, metrics))
        },
    )
    .await
}

/// The characters of an RFC 3339 time that a query string must escape.
fn urlencode(raw: &str) -> String {
    raw.replace(':', "%3A").replace('+', "%2B")
}

/// The readings of a chart's range as CSV, streamed and audited like every export: of one
/// device, or of a site.
async fn chart_csv_of(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    query: web::Query<ChartQuery>,
    scope: impl FnOnce(&mut appliance::DbConnection, &User) -> appliance::error::Result<ExportFilter>
    + Send
    + 'static,
) -> Page {
    let (metric, _, from, to) = query.resolve(state.now())?;
    let (app, account) = (state.app.clone(), user.user.clone());
    let filter = web::block(move || scope(&mut *app.store.conn()?, &account)).await??;
    let filter = ExportFilter {
        metric: Some(metric),
        since_us: Some(from),
        until_us: Some(to),
        ..filter
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

pub async fn chart_csv(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    query: web::Query<ChartQuery>,
) -> Page {
    let id = path.into_inner();
    chart_csv_of(state, user, req, query, move |conn, user| {
        let (device, _) = visible_device(conn, user, id)?;
        Ok(ExportFilter {
            device: Some(device.id),
            ..ExportFilter::default()
        })
    })
    .await
}

pub async fn site_chart_csv(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    query: web::Query<ChartQuery>,
) -> Page {
    let id = path.into_inner();
    chart_csv_of(state, user, req, query, move |conn, user| {
        let site = visible_site(conn, user, id)?;
        Ok(ExportFilter {
            site: Some(site.id),
            ..ExportFilter::default()
        })
    })
    .await
}
