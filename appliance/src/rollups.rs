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
use crate::store::{DbConnection, lock_for_writing};
use crate::time::format_us;

pub const MINUTE_US: i64 = 60_000_000;
pub const HOUR_US: i64 = 3_600_000_000;
pub const DAY_US: i64 = 86_400_000_000;
/// The widths rolled up, finest first.
pub const WIDTHS: [i64; 3] = [MINUTE_US, HOUR_US, DAY_US];

/// Reading ids rolled up per transaction: a step holds the store's write lock for a few
/// tens of milliseconds at most.
pub const CHUNK: i64 = 10_000;

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
        lock_for_writing(conn)?;
        let from = rolled_through(conn)?;
        let newest: Option<i64> = readings::table
            .select(diesel::dsl::max(readings::id))
            .first(conn)?;
        let Some(newest) = newest.filter(|newest| *newest > from) else {
            return Ok(false);
        };
        let through = newest.min(from.saturating_add(CHUNK));
        // The step's readings are summed per minute once, into a scratch table of this
        // connection; each width is then folded from those sums, a few rows per series.
        // (Summing them in Rust from the readings read out was measured no faster on
        // SQLite, and on PostgreSQL would send every reading to the ingest.)
        for statement in STAGING {
            diesel::sql_query(statement).execute(conn)?;
        }
        diesel::sql_query(stage_statement(from, through)).execute(conn)?;
        for width in WIDTHS {
            diesel::sql_query(fold_statement(conn, width)).execute(conn)?;
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

/// The scratch table of one step's per-minute sums, made once per connection and emptied
/// at each step. Its index finds the row a bucket's last value comes from.
const STAGING: [&str; 3] = [
    "CREATE TEMPORARY TABLE IF NOT EXISTS rollup_step (device_id BIGINT NOT NULL, \
         metric TEXT NOT NULL, minute_us BIGINT NOT NULL, n BIGINT NOT NULL, \
         lo DOUBLE PRECISION NOT NULL, hi DOUBLE PRECISION NOT NULL, \
         total DOUBLE PRECISION NOT NULL, last_at BIGINT NOT NULL, \
         last_value DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rollup_step_last ON rollup_step (device_id, metric, last_at)",
    "DELETE FROM rollup_step",
];

/// `at` floored to a multiple of `width`; the remainder is made positive, so that a time
/// before 1970 floors down as well.
fn floor(at: &str, width: i64) -> String {
    format!("({at} - ((({at}) % {width}) + {width}) % {width})")
}

/// The statement that sums the readings with ids in `(from, through]` per device, metric
/// and minute into the scratch table. Every value in it is an integer this module computed,
/// so it is written into the text rather than bound, which keeps one statement for both
/// backends. A minute's last value is the one measured latest, the later-stored one on a
/// tie, found through the (device, metric, measured time) index.
fn stage_statement(from: i64, through: i64) -> String {
    let minute = floor("measured_at_us", MINUTE_US);
    format!(
        "INSERT INTO rollup_step (device_id, metric, minute_us, n, lo, hi, total, last_at, \
             last_value) \
         SELECT g.device_id, g.metric, g.minute, g.n, g.lo, g.hi, g.total, g.last_at, \
             (SELECT r.value FROM readings r WHERE r.device_id = g.device_id \
                 AND r.metric = g.metric AND r.measured_at_us = g.last_at \
                 AND r.id > {from} AND r.id <= {through} ORDER BY r.id DESC LIMIT 1) \
         FROM (SELECT device_id, metric, {minute} AS minute, count(*) AS n, \
                   min(value) AS lo, max(value) AS hi, sum(value) AS total, \
                   max(measured_at_us) AS last_at \
               FROM readings WHERE id > {from} AND id <= {through} \
               GROUP BY device_id, metric, {minute}) g"
    )
}

/// The statement that adds the scratch table's sums to the rollups of `width`. A bucket's
/// last value comes from its minute measured latest; two minutes never share a time.
fn fold_statement(conn: &DbConnection, width: i64) -> String {
    let (least, greatest) = match conn {
        DbConnection::Sqlite(_) => ("min", "max"),
        DbConnection::Postgres(_) => ("LEAST", "GREATEST"),
    };
    let bucket = floor("minute_us", width);
    format!(
        "INSERT INTO reading_rollups (device_id, metric, width_us, bucket_start_us, count, \
             min, max, sum, last_value, last_measured_at_us) \
         SELECT g.device_id, g.metric, {width}, g.bucket, g.n, g.lo, g.hi, g.total, \
             (SELECT s.last_value FROM rollup_step s WHERE s.device_id = g.device_id \
                 AND s.metric = g.metric AND s.last_at = g.last_at LIMIT 1), \
             g.last_at \
         FROM (SELECT device_id, metric, {bucket} AS bucket, CAST(sum(n) AS BIGINT) AS n, \
                   min(lo) AS lo, max(hi) AS hi, sum(total) AS total, max(last_at) AS last_at \
               FROM rollup_step GROUP BY device_id, metric, {bucket}) g \
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

/// The start of the first hour `device` measured `metric` in, as the rollups (which outlive
/// the raw readings) remember it.
pub fn first_hour(conn: &mut DbConnection, device: DeviceId, metric: &str) -> Result<Option<i64>> {
    Ok(reading_rollups::table
        .filter(reading_rollups::device_id.eq(device))
        .filter(reading_rollups::metric.eq(metric))
        .filter(reading_rollups::width_us.eq(HOUR_US))
        .select(diesel::dsl::min(reading_rollups::bucket_start_us))
        .first(conn)?)
}
