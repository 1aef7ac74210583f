//! A device's metric summarised over a time range for a chart: the range cut into buckets
//! of equal width, each with the count, minimum, maximum and mean of the readings measured
//! in it. The store does the summing (one indexed range scan, grouped), so a chart of a
//! long range moves a few hundred rows, not every reading. A bucket with no reading is
//! absent: the chart shows a gap there rather than a line drawn across it.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Text};

use crate::error::{Error, Result};
use crate::ids::DeviceId;
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

/// The buckets of `metric` of `device` over `span` that hold a reading, in time order.
pub fn buckets(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: &str,
    span: Span,
) -> Result<Vec<Bucket>> {
    let width = span.width_us();
    // The same statement on both backends but for its placeholders; integer division of
    // 64-bit integers truncates on both, and every bucket index is 0 or more.
    let statement = |p: [&str; 6]| {
        format!(
            "SELECT ((measured_at_us - {0}) / {1}) AS \"index\", count(*) AS count, \
             min(value) AS min, max(value) AS max, avg(value) AS mean \
             FROM readings WHERE device_id = {2} AND metric = {3} \
             AND measured_at_us >= {4} AND measured_at_us < {5} \
             GROUP BY 1 ORDER BY 1",
            p[0], p[1], p[2], p[3], p[4], p[5]
        )
    };
    let rows = match conn {
        DbConnection::Sqlite(c) => {
            diesel::sql_query(statement(["?1", "?2", "?3", "?4", "?5", "?6"]))
                .bind::<BigInt, _>(span.from_us)
                .bind::<BigInt, _>(width)
                .bind::<BigInt, _>(device.0)
                .bind::<Text, _>(metric)
                .bind::<BigInt, _>(span.from_us)
                .bind::<BigInt, _>(span.to_us)
                .load::<Bucket>(c)?
        }
        DbConnection::Postgres(c) => {
            diesel::sql_query(statement(["$1", "$2", "$3", "$4", "$5", "$6"]))
                .bind::<BigInt, _>(span.from_us)
                .bind::<BigInt, _>(width)
                .bind::<BigInt, _>(device.0)
                .bind::<Text, _>(metric)
                .bind::<BigInt, _>(span.from_us)
                .bind::<BigInt, _>(span.to_us)
                .load::<Bucket>(c)?
        }
    };
    Ok(rows)
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
    Ok(rows.into_iter().map(|m| m.metric).collect())
}
