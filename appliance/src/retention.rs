//! How long readings are kept: by age (`ingest.retention_days`) and by size
//! (`ingest.retention_max_mib`, the SQLite store only). Either way the oldest readings go
//! first, one chunk per transaction, each chunk audited `readings.pruned` in the
//! transaction that deletes it, with why.
//!
//! Size is what the store file uses: its pages less its free list. Deleted readings free
//! their pages for new ones, so the file stops growing at the limit; it does not shrink
//! (that takes a `VACUUM`, which rewrites the whole file).

use diesel::prelude::*;
use diesel::sql_types::BigInt;

use crate::audit::{Actor, Audit, AuditEvent};
use crate::blocks;
use crate::error::Result;
use crate::readings::prune_received_before;
use crate::schema::readings;
use crate::store::DbConnection;
use crate::time::format_us;

/// Readings deleted per transaction.
pub const CHUNK: i64 = 10_000;

#[derive(QueryableByName)]
struct Pages {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The bytes the SQLite store file uses (its pages less its free list); `None` on
/// PostgreSQL, whose files are the server's.
pub fn used_bytes(conn: &mut DbConnection) -> Result<Option<i64>> {
    let DbConnection::Sqlite(c) = conn else {
        return Ok(None);
    };
    let pragma = |c: &mut diesel::SqliteConnection, name: &str| -> Result<i64> {
        Ok(
            diesel::sql_query(format!("SELECT {name} AS n FROM pragma_{name}"))
                .get_result::<Pages>(c)?
                .n,
        )
    };
    let (pages, free, size) = (
        pragma(c, "page_count")?,
        pragma(c, "freelist_count")?,
        pragma(c, "page_size")?,
    );
    Ok(Some((pages - free) * size))
}

fn pruned(actor: &Actor, deleted: usize, details: serde_json::Value) -> Vec<AuditEvent> {
    if deleted == 0 {
        return Vec::new();
    }
    let mut details = details;
    details["deleted"] = deleted.into();
    vec![
        AuditEvent::new(actor.clone(), "readings.pruned")
            .target("readings")
            .details(details),
    ]
}

/// Deletes up to [`CHUNK`] readings received more than `days` before `now`; returns how
/// many.
pub fn prune_by_age(audit: &Audit, actor: &Actor, days: u32, now: i64) -> Result<usize> {
    let cutoff = now.saturating_sub(i64::from(days) * 86_400_000_000);
    audit.record_with(|conn| {
        let deleted = prune_received_before(conn, cutoff, CHUNK)?;
        let details = serde_json::json!({
            "reason": "age", "retention_days": days, "received_before": format_us(cutoff),
        });
        Ok((deleted, pruned(actor, deleted, details)))
    })
}

/// When the store uses more than `budget_bytes`, deletes the oldest [`CHUNK`] readings;
/// returns how many (0 when within the budget).
pub fn prune_by_size(audit: &Audit, actor: &Actor, budget_bytes: i64) -> Result<usize> {
    audit.record_with(|conn| {
        let Some(used) = used_bytes(conn)? else {
            return Ok((0, Vec::new()));
        };
        if used <= budget_bytes {
            return Ok((0, Vec::new()));
        }
        let deleted = prune_received_before(conn, i64::MAX, CHUNK)?;
        let details = serde_json::json!({
            "reason": "size", "budget_bytes": budget_bytes, "used_bytes": used,
        });
        Ok((deleted, pruned(actor, deleted, details)))
    })
}

/// What the telemetry store holds and, at the last day's pace, how long a size budget
/// keeps readings.
#[derive(Debug, Clone, PartialEq)]
pub struct Outlook {
    pub used_bytes: Option<i64>,
    /// About how many readings are stored.
    pub readings: i64,
    /// About how many readings arrived in the last 24 hours.
    pub last_day: i64,
    /// Days of readings the budget holds at the last day's pace, when there is a budget, a
    /// size and a pace to reckon with.
    pub days: Option<f64>,
}

/// The id of the first reading received at or after `since_us`, found by halving the id
/// range (ids grow with arrival): a few dozen primary-key lookups, not a scan.
fn first_id_since(conn: &mut DbConnection, (low, high): (i64, i64), since_us: i64) -> Result<i64> {
    let (mut low, mut high) = (low, high + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        let received: Option<i64> = readings::table
            .filter(readings::id.ge(middle))
            .order(readings::id)
            .select(readings::received_at_us)
            .first(conn)
            .optional()?;
        match received {
            Some(at) if at >= since_us => high = middle,
            Some(_) => low = middle + 1,
            None => high = middle,
        }
    }
    Ok(low)
}

/// The store's [`Outlook`] as of `now`, for a budget of `budget_bytes` if one is set.
pub fn outlook(conn: &mut DbConnection, budget_bytes: Option<i64>, now: i64) -> Result<Outlook> {
    let (min, max): (Option<i64>, Option<i64>) = readings::table
        .select((
            diesel::dsl::min(readings::id),
            diesel::dsl::max(readings::id),
        ))
        .first(conn)?;
    let used_bytes = used_bytes(conn)?;
    let min_row = min.unwrap_or(i64::MAX);
    // Ids are dense across rows and blocks: the lowest of either starts the count.
    let min = match (blocks::lowest_id(conn)?, min) {
        (Some(sealed), Some(row)) => Some(sealed.min(row)),
        (sealed, row) => sealed.or(row),
    };
    let (Some(min), Some(max)) = (min, max) else {
        return Ok(Outlook {
            used_bytes,
            readings: 0,
            last_day: 0,
            days: None,
        });
    };
    let readings = max - min + 1;
    let day_ago = now - 86_400_000_000;
    let mut since = first_id_since(conn, (min, max), day_ago)?;
    if since <= min_row {
        // Every row arrived within the day: the day began among the sealed readings.
        since = blocks::first_id_received_since(conn, day_ago)?.unwrap_or(since);
    }
    let last_day = max + 1 - since;
    let days = match (budget_bytes, used_bytes) {
        (Some(budget), Some(used)) if last_day > 0 && readings > 0 => {
            let per_reading = used as f64 / readings as f64;
            Some(budget as f64 / (per_reading * last_day as f64))
        }
        _ => None,
    };
    Ok(Outlook {
        used_bytes,
        readings,
        last_day,
        days,
    })
}
