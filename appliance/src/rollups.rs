//! Rollups: each device's metric summarised per minute, hour and day (count, minimum,
//! maximum, sum and the last value measured). Charts of long ranges read them instead of
//! the raw readings ([`crate::series`]), and they outlive the raw readings: pruning by age or
//! size deletes raw readings only, and only those already rolled up.
//!
//! The ingest rolls up readings in id order, [`CHUNK`] at a time, shortly after it stores
//! them ([`advance`]). Each step adds a range of reading ids to the rollups and moves
//! `rollup_progress` past that range in the same transaction, so every stored reading is
//! counted exactly once: a retried batch stores nothing and so adds nothing, a reading
//! measured long ago lands in its old bucket, and a crash loses or repeats no step.
//!
//! That needs reading ids to grow in commit order, which holds because the ingest's writer
//! is the one writer of readings, and needs SQLite never to hand out an id again, which
//! holds because pruning always leaves the newest reading
//! ([`crate::readings::prune_received_before`]).
//!
//! Minute rollups are many (one per series per minute) and serve ranges of weeks to months,
//! so they are kept [`MINUTE_ROLLUPS_KEPT_DAYS`] days; hour and day rollups are kept.

use diesel::prelude::*;
use diesel::sql_types::BigInt;

use crate::audit::{Actor, Audit, AuditEvent};
use crate::error::Result;
use crate::ids::DeviceId;
use crate::schema::{reading_rollups, readings, rollup_progress};
use crate::store::DbConnection;
use crate::time::format_us;

pub const MINUTE_US: i64 = 60_000_000;
pub const HOUR_US: i64 = 3_600_000_000;
pub const DAY_US: i64 = 86_400_000_000;
/// The widths rolled up, finest first.
pub const WIDTHS: [i64; 3] = [MINUTE_US, HOUR_US, DAY_US];

/// Reading ids rolled up per transaction.
pub const CHUNK: i64 = 50_000;

/// How long minute rollups are kept, counted from their minute.
pub const MINUTE_ROLLUPS_KEPT_DAYS: i64 = 35;

/// Minute rollups deleted per transaction.
pub const PRUNE_CHUNK: i64 = 20_000;

/// The largest reading id counted in the rollups.
pub fn rolled_through(conn: &mut DbConnection) -> Result<i64> {
    Ok(rollup_progress::table
        .select(rollup_progress::through_reading_id)
        .first(conn)?)
}

/// Rolls up the next [`CHUNK`] reading ids past the progress mark, in one transaction;
/// returns whether readings stored before this call remain to be rolled up.
pub fn advance(conn: &mut DbConnection) -> Result<bool> {
    conn.transaction(|conn| {
        let from = rolled_through(conn)?;
        let newest: Option<i64> = readings::table
            .select(diesel::dsl::max(readings::id))
            .first(conn)?;
        let Some(newest) = newest.filter(|newest| *newest > from) else {
            return Ok(false);
        };
        let through = newest.min(from.saturating_add(CHUNK));
        for width in WIDTHS {
            diesel::sql_query(fold_statement(conn, from, through, width)).execute(conn)?;
        }
        diesel::update(rollup_progress::table)
            .set(rollup_progress::through_reading_id.eq(through))
            .execute(conn)?;
        Ok(through < newest)
    })
}

/// Rolls up until every reading stored before the call is counted.
pub fn catch_up(conn: &mut DbConnection) -> Result<()> {
    while advance(conn)? {}
    Ok(())
}

/// The statement that adds the readings with ids in `(from, through]` to the rollups of
/// `width`. Every value in it is an integer this module computed, so it is written into
/// the text rather than bound, which keeps one statement for both backends.
fn fold_statement(conn: &DbConnection, from: i64, through: i64, width: i64) -> String {
    let (least, greatest) = match conn {
        DbConnection::Sqlite(_) => ("min", "max"),
        DbConnection::Postgres(_) => ("LEAST", "GREATEST"),
    };
    // The bucket is the measured time floored to the width (the remainder made positive,
    // so a time before 1970 floors down as well). The last value is the one measured
    // latest in the bucket, the later-stored one on a tie, found through the
    // (device, metric, measured time) index.
    format!(
        "INSERT INTO reading_rollups (device_id, metric, width_us, bucket_start_us, count, \
             min, max, sum, last_value, last_measured_at_us) \
         SELECT g.device_id, g.metric, {width}, g.bucket, g.n, g.lo, g.hi, g.total, \
             (SELECT r.value FROM readings r WHERE r.device_id = g.device_id \
                 AND r.metric = g.metric AND r.measured_at_us = g.last_at \
                 AND r.id > {from} AND r.id <= {through} ORDER BY r.id DESC LIMIT 1), \
             g.last_at \
         FROM (SELECT device_id, metric, \
                   measured_at_us - ((measured_at_us % {width}) + {width}) % {width} AS bucket, \
                   count(*) AS n, min(value) AS lo, max(value) AS hi, sum(value) AS total, \
                   max(measured_at_us) AS last_at \
               FROM readings WHERE id > {from} AND id <= {through} \
               GROUP BY device_id, metric, \
                   measured_at_us - ((measured_at_us % {width}) + {width}) % {width}) g \
         WHERE true \
         ON CONFLICT (device_id, metric, width_us, bucket_start_us) DO UPDATE SET \
             count = reading_rollups.count + excluded.count, \
             min = {least}(reading_rollups.min, excluded.min), \
             max = {greatest}(reading_rollups.max, excluded.max), \
             sum = reading_rollups.sum + excluded.sum, \
             last_value = CASE WHEN excluded.last_measured_at_us >= reading_rollups.last_measured_at_us \
                 THEN excluded.last_value ELSE reading_rollups.last_value END, \
             last_measured_at_us = {greatest}(reading_rollups.last_measured_at_us, \
                 excluded.last_measured_at_us)"
    )
}

#[derive(QueryableByName)]
struct Start {
    #[diesel(sql_type = BigInt)]
    bucket_start_us: i64,
}

/// Deletes up to [`PRUNE_CHUNK`] minute rollups older than [`MINUTE_ROLLUPS_KEPT_DAYS`],
/// oldest first, audited `rollups.pruned`; returns how many.
pub fn prune_minutes(audit: &Audit, actor: &Actor, now: i64) -> Result<usize> {
    let cutoff = now.saturating_sub(MINUTE_ROLLUPS_KEPT_DAYS * DAY_US);
    audit.record_with(|conn| {
        // The bucket start PRUNE_CHUNK rows in, if there are that many old rows: delete
        // before it, a whole number of minutes at a time.
        let boundary = diesel::sql_query(format!(
            "SELECT bucket_start_us FROM reading_rollups \
             WHERE width_us = {MINUTE_US} AND bucket_start_us < {cutoff} \
             ORDER BY bucket_start_us LIMIT 1 OFFSET {PRUNE_CHUNK}"
        ))
        .get_result::<Start>(conn)
        .optional()?
        .map_or(cutoff, |start| start.bucket_start_us);
        let deleted = diesel::sql_query(format!(
            "DELETE FROM reading_rollups \
             WHERE width_us = {MINUTE_US} AND bucket_start_us < {boundary}"
        ))
        .execute(conn)?;
        let events = if deleted == 0 {
            Vec::new()
        } else {
            vec![
                AuditEvent::new(actor.clone(), "rollups.pruned")
                    .target("reading_rollups")
                    .details(serde_json::json!({
                        "width": "minute", "deleted": deleted,
                        "kept_days": MINUTE_ROLLUPS_KEPT_DAYS,
                        "before": format_us(boundary),
                    })),
            ]
        };
        Ok((deleted, events))
    })
}

/// One bucket of one device's metric.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = reading_rollups)]
pub struct Rollup {
    pub device_id: DeviceId,
    pub metric: String,
    pub width_us: i64,
    pub bucket_start_us: i64,
    pub count: i64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub last_value: f64,
    pub last_measured_at_us: i64,
}

/// The rollups of `width` of `device`, of every metric or of one, in (metric, time) order.
pub fn list(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: Option<&str>,
    width: i64,
) -> Result<Vec<Rollup>> {
    let mut query = reading_rollups::table
        .filter(reading_rollups::device_id.eq(device))
        .filter(reading_rollups::width_us.eq(width))
        .select(Rollup::as_select())
        .into_boxed();
    if let Some(metric) = metric {
        query = query.filter(reading_rollups::metric.eq(metric.to_owned()));
    }
    Ok(query
        .order((reading_rollups::metric, reading_rollups::bucket_start_us))
        .load(conn)?)
}
