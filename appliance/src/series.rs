//! A device's metric summarised over a time range for a chart: the range cut into buckets
//! of equal width, each with the count, minimum, maximum and mean of the readings measured
//! in it. The store does the summing (one indexed range scan, grouped), so a chart of a
//! long range moves a few hundred rows, not every reading; spans of a month or more are
//! summed from the rollups ([`crate::rollups`]), so they read thousands of rows, not
//! millions, and still draw once the raw readings are pruned. A bucket with no reading is
//! absent: the chart shows a gap there rather than a line drawn across it.

use std::collections::{BTreeMap, BTreeSet};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Text};

use crate::blocks;
use crate::error::{Error, Result};
use crate::ids::DeviceId;
use crate::readings;
use crate::rollups::{DAY_US, HOUR_US, MINUTE_ROLLUPS_KEPT_DAYS, MINUTE_US};
use crate::store::DbConnection;

/// The most buckets one chart asks for (about one per pixel column).
pub const MAX_BUCKETS: i64 = 2000;

/// One bucket's readings.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct Bucket {
    /// Its place in the range: bucket `index` covers
    /// `[from + index * width, from + (index + 1) * width)`.
    #[diesel(sql_type = BigInt)]
    pub index: i64,
    #[diesel(sql_type = BigInt)]
    pub count: i64,
    #[diesel(sql_type = Double)]
    pub min: f64,
    #[diesel(sql_type = Double)]
    pub max: f64,
    #[diesel(sql_type = Double)]
    pub mean: f64,
}

/// A range cut into `buckets` of equal width (at least 1 µs each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub from_us: i64,
    pub to_us: i64,
    pub buckets: i64,
}

impl Span {
    pub fn new(from_us: i64, to_us: i64, buckets: i64) -> Result<Span> {
        if to_us <= from_us {
            return Err(Error::invalid("to", "must be after from"));
        }
        if !(1..=MAX_BUCKETS).contains(&buckets) {
            return Err(Error::invalid(
                "buckets",
                format!("between 1 and {MAX_BUCKETS}"),
            ));
        }
        Ok(Span {
            from_us,
            to_us,
            buckets,
        })
    }

    /// The width of one bucket, rounded up so that the buckets cover the whole range.
    pub fn width_us(&self) -> i64 {
        let length = self.to_us - self.from_us;
        (length + self.buckets - 1) / self.buckets
    }

    /// The middle of bucket `index`.
    pub fn middle_us(&self, index: i64) -> i64 {
        self.from_us + index * self.width_us() + self.width_us() / 2
    }
}

/// What a chart's buckets are summed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Readings,
    /// The rollups of this width ([`crate::rollups`]).
    Rollups(i64),
}

/// Rollups serve a span when each of its buckets spans at least this many of them, so that
/// a rollup straddling two buckets (counted whole in the first) moves little.
const ROLLUPS_PER_BUCKET: i64 = 10;
/// Minute rollups serve buckets of half an hour or more: a month's span.
const MINUTES_PER_BUCKET: i64 = 30;

impl Source {
    /// The coarsest source that draws `span` faithfully as of `now`: day or hour rollups
    /// for spans of months to years, minute rollups for a month while they are kept, the
    /// readings themselves for up to a week.
    pub fn for_span(span: Span, now: i64) -> Source {
        let width = span.width_us();
        let minutes_kept = now - (MINUTE_ROLLUPS_KEPT_DAYS - 1) * DAY_US;
        if width >= ROLLUPS_PER_BUCKET * DAY_US {
            Source::Rollups(DAY_US)
        } else if width >= ROLLUPS_PER_BUCKET * HOUR_US {
            Source::Rollups(HOUR_US)
        } else if width >= MINUTES_PER_BUCKET * MINUTE_US {
            if span.from_us >= minutes_kept {
                Source::Rollups(MINUTE_US)
            } else {
                Source::Rollups(HOUR_US)
            }
        } else {
            Source::Readings
        }
    }
}

/// The buckets of `metric` of `device` over `span` that hold a reading, in time order, from
/// the source [`Source::for_span`] picks as of `now`.
pub fn buckets(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: &str,
    span: Span,
    now: i64,
) -> Result<Vec<Bucket>> {
    buckets_from(conn, device, metric, span, Source::for_span(span, now))
}

/// The buckets of `metric` of `device` over `span` summed from `source`. From rollups, each
/// rollup counts in the bucket its start falls in, or the first bucket when it starts
/// before the span (it holds readings of both).
pub fn buckets_from(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: &str,
    span: Span,
    source: Source,
) -> Result<Vec<Bucket>> {
    let (from, to, width) = (span.from_us, span.to_us, span.width_us());
    // One statement for both backends but for its placeholders (`device`, `metric`): the
    // integers are the span's own. The mean is the sum over the count: PostgreSQL's `avg`
    // of doubles also sums their squares, which overflows (an error, not a chart) for
    // values above about 1e154. Integer division truncates toward zero on both, so a
    // rollup starting up to a bucket before `from` gets index 0.
    let statement = match source {
        Source::Readings => format!(
            "SELECT ((measured_at_us - {from}) / {width}) AS \"index\", count(*) AS count, \
             min(value) AS min, max(value) AS max, sum(value) / count(*) AS mean \
             FROM readings WHERE device_id = ?device AND metric = ?metric \
             AND measured_at_us >= {from} AND measured_at_us < {to} \
             GROUP BY 1 ORDER BY 1"
        ),
        Source::Rollups(rollup) => format!(
            "SELECT ((bucket_start_us - {from}) / {width}) AS \"index\", \
             CAST(sum(count) AS BIGINT) AS count, min(min) AS min, max(max) AS max, \
             sum(sum) / CAST(sum(count) AS DOUBLE PRECISION) AS mean \
             FROM reading_rollups WHERE device_id = ?device AND metric = ?metric \
             AND width_us = {rollup} AND bucket_start_us > {} AND bucket_start_us < {to} \
             GROUP BY 1 ORDER BY 1",
            from - rollup
        ),
    };
    let rows = match conn {
        DbConnection::Sqlite(c) => {
            diesel::sql_query(statement.replace("?device", "?1").replace("?metric", "?2"))
                .bind::<BigInt, _>(device.0)
                .bind::<Text, _>(metric)
                .load::<Bucket>(c)?
        }
        DbConnection::Postgres(c) => {
            diesel::sql_query(statement.replace("?device", "$1").replace("?metric", "$2"))
                .bind::<BigInt, _>(device.0)
                .bind::<Text, _>(metric)
                .load::<Bucket>(c)?
        }
    };
    if source != Source::Readings {
        return Ok(rows);
    }
    let sealed = readings::sealed_points(conn, device, metric, (from, to))?;
    Ok(add_points(rows, &sealed, span))
}

/// `buckets` (in index order) with `points` (measured in the span) counted in as well.
fn add_points(buckets: Vec<Bucket>, points: &[(f64, i64)], span: Span) -> Vec<Bucket> {
    if points.is_empty() {
        return buckets;
    }
    let mut by_index: BTreeMap<i64, (Bucket, f64)> = buckets
        .into_iter()
        .map(|b| (b.index, (b.clone(), b.mean * b.count as f64)))
        .collect();
    let width = span.width_us();
    for &(value, at) in points {
        let index = (at - span.from_us) / width;
        let (bucket, sum) = by_index.entry(index).or_insert((
            Bucket {
                index,
                count: 0,
                min: value,
                max: value,
                mean: 0.0,
            },
            0.0,
        ));
        bucket.count += 1;
        bucket.min = bucket.min.min(value);
        bucket.max = bucket.max.max(value);
        *sum += value;
    }
    by_index
        .into_values()
        .map(|(bucket, sum)| Bucket {
            mean: sum / bucket.count as f64,
            ..bucket
        })
        .collect()
}

#[derive(QueryableByName)]
struct Metric {
    #[diesel(sql_type = Text)]
    metric: String,
}

/// The metrics a device has sent, by name. Found by stepping through the readings index
/// from one name to the next (a loose index scan), so it costs one lookup per metric, not
/// one per reading.
pub fn metrics_of(conn: &mut DbConnection, device: DeviceId) -> Result<Vec<String>> {
    let statement = |p: &str| {
        format!(
            "WITH RECURSIVE m(metric) AS ( \
               SELECT (SELECT min(metric) FROM readings WHERE device_id = {p}) \
               UNION ALL \
               SELECT (SELECT min(metric) FROM readings WHERE device_id = {p} AND metric > m.metric) \
               FROM m WHERE m.metric IS NOT NULL) \
             SELECT metric FROM m WHERE metric IS NOT NULL"
        )
    };
    let rows = match conn {
        DbConnection::Sqlite(c) => diesel::sql_query(statement("?1"))
            .bind::<BigInt, _>(device.0)
            .load::<Metric>(c)?,
        DbConnection::Postgres(c) => diesel::sql_query(statement("$1"))
            .bind::<BigInt, _>(device.0)
            .load::<Metric>(c)?,
    };
    let mut metrics: BTreeSet<String> = rows.into_iter().map(|m| m.metric).collect();
    metrics.extend(blocks::metrics_of(conn, device)?);
    Ok(metrics.into_iter().collect())
}
