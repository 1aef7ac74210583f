//! A mold's dashboard, as mold monitors' own software shows one: the cycles it has run
//! over its life, how its cycle time moved over the last week, its temperature over the
//! last day, and the figures a plant engineer asks for first (cycles in all and today, the
//! last and the week's mean cycle time, the temperature now, the alerts active now).

use actix_web::web;
use appliance::access::short_time;
use appliance::alerts::Alert;
use appliance::readings::{latest_points, points_between};
use appliance::rollups;
use askama::Template;

use super::chart::chart_of;
use super::devices::visible_device;
use crate::render::{Nav, Page, html};
use crate::session::SignedIn;
use crate::state::AppState;

const DAY: i64 = 86_400_000_000;

/// The metrics a mold monitor sends (the ingest's standard names).
pub const CYCLES: &str = "cycle_count";
pub const CYCLE_TIME: &str = "cycle_time_ms";
pub const TEMPERATURE: &str = "temperature_c";

/// A figure: its caption and value.
#[derive(Debug)]
pub struct Figure {
    pub id: &'static str,
    pub caption: &'static str,
    pub value: String,
}

/// A chart with its title and where to open it on its own.
#[derive(Debug)]
pub struct Panel {
    pub title: String,
    pub metric: &'static str,
    pub range: &'static str,
    pub svg: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    signed_in: Option<Nav>,
    device_id: i64,
    serial: String,
    figures: Vec<Figure>,
    panels: Vec<Panel>,
}

fn shown(value: Option<f64>, unit: &str) -> String {
    value.map_or_else(
        || "no data".to_owned(),
        |v| format!("{}{unit}", (v * 10.0).round() / 10.0),
    )
}

pub async fn dashboard_page(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
) -> Page {
    let (app, account, id, now) = (
        state.app.clone(),
        user.user.clone(),
        path.into_inner(),
        state.now(),
    );
    let (serial, figures, panels) = web::block(move || -> appliance::error::Result<_> {
        let mut conn = app.store.conn()?;
        let (device, _) = visible_device(&mut conn, &account, id)?;
        let latest = |conn: &mut appliance::DbConnection, metric: &str, before: Option<i64>| {
            latest_points(conn, device.id, metric, before, 1).map(|p| p.first().copied())
        };
        let cycles_now = latest(&mut conn, CYCLES, None)?;
        let cycles_day_ago = latest(&mut conn, CYCLES, Some(now - DAY))?;
        let cycle_time = latest(&mut conn, CYCLE_TIME, None)?;
        let temperature = latest(&mut conn, TEMPERATURE, None)?;
        // Its life: from its first cycle count to now; the rollups remember the hour of
        // one whose raw reading was pruned.
        let first_kept = points_between(&mut conn, device.id, Some(CYCLES), (0, now + 1), 1)?
            .first()
            .map(|(_, at)| *at);
        let first_hour = rollups::first_hour(&mut conn, device.id, CYCLES)?;
        let born = first_kept
            .into_iter()
            .chain(first_hour)
            .min()
            .unwrap_or(now - DAY);
        let life = chart_of(
            &mut conn,
            &device,
            CYCLES,
            (born.min(now - 60_000_000), now + 1),
            now,
        )?;
        let week = chart_of(
            &mut conn,
            &device,
            CYCLE_TIME,
            (now - 7 * DAY, now + 1),
            now,
        )?;
        let day = chart_of(&mut conn, &device, TEMPERATURE, (now - DAY, now + 1), now)?;
        let week_buckets = week.series.iter().flat_map(|s| &s.buckets);
        let (count, sum) = week_buckets.fold((0, 0.0), |(n, s), b| {
            (n + b.count, s + b.mean * b.count as f64)
        });
        let active = Alert::list_for_device(&mut conn, device.id)?
            .iter()
            .filter(|a| a.cleared_at_us.is_none())
            .count();
        let figures = vec![
            Figure {
                id: "cycles",
                caption: "Cycles in all",
                value: shown(cycles_now.map(|p| p.0), ""),
            },
            Figure {
                id: "cycles-today",
                caption: "Cycles in the last 24 h",
                value: match (cycles_now, cycles_day_ago) {
                    (Some((now, _)), Some((then, _))) => shown(Some(now - then), ""),
                    (Some((now, _)), None) => shown(Some(now), ""),
                    _ => shown(None, ""),
                },
            },
            Figure {
                id: "cycle-time",
                caption: "Last cycle time",
                value: shown(cycle_time.map(|p| p.0), " ms"),
            },
            Figure {
                id: "cycle-time-week",
                caption: "Mean cycle time, last 7 days",
                value: shown((count > 0).then(|| sum / count as f64), " ms"),
            },
            Figure {
                id: "temperature",
                caption: "Temperature now",
                value: shown(temperature.map(|p| p.0), " °C"),
            },
            Figure {
                id: "active-alerts",
                caption: "Active alerts",
                value: active.to_string(),
            },
        ];
        let panel = |title: String, metric, range, chart: super::svg::Chart| Panel {
            svg: chart.svg(&title),
            title,
            metric,
            range,
        };
        let panels = vec![
            panel(
                format!("Cycle count over its life, since {}", short_time(born)),
                CYCLES,
                "year",
                life,
            ),
            panel("Cycle time, last 7 days".into(), CYCLE_TIME, "week", week),
            panel("Temperature, last 24 hours".into(), TEMPERATURE, "day", day),
        ];
        Ok((device.serial, figures, panels))
    })
    .await??;
    html(&DashboardPage {
        signed_in: Some(user.nav()),
        device_id: id,
        serial,
        figures,
        panels,
    })
}
