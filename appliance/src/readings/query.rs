//! Reading readings back: each query asks the hot rows and the sealed blocks
//! ([`crate::blocks`]) and merges the two in the order it promises, so no caller can tell a
//! sealed reading from a row. A query with a limit opens blocks in its own order and stops
//! as soon as the next block cannot change its answer.

use std::collections::HashMap;

use diesel::prelude::*;

use super::{ExportFilter, Reading};
use crate::blocks::{self, BlockHeader, Order, Scope, SealedReading};
use crate::error::Result;
use crate::ids::DeviceId;
use crate::schema::{devices, readings};
use crate::store::DbConnection;

/// Block headers read per query while walking the blocks.
const HEADERS_PAGE: i64 = 64;

pub(super) fn reading_of(header: &BlockHeader, sealed: &SealedReading) -> Reading {
    Reading {
        id: sealed.id,
        device_id: header.device_id,
        seq: sealed.seq,
        metric: header.metric.clone(),
        value: sealed.value,
        measured_at_us: sealed.measured_at_us,
        received_at_us: sealed.received_at_us,
    }
}

/// `rows` (what the query found among the rows) with the sealed readings `scope` selects,
/// opening blocks in `order` until `settled` says that those found so far (which it may
/// sort and trim) are the answer whatever the block it is shown holds. Seeded with the
/// rows, a query the rows already answer opens no block.
fn with_sealed(
    conn: &mut DbConnection,
    rows: Vec<Reading>,
    scope: &Scope<'_>,
    mut order: Order,
    mut settled: impl FnMut(&mut Vec<Reading>, &BlockHeader) -> bool,
) -> Result<Vec<Reading>> {
    let mut found = rows;
    loop {
        let page = blocks::headers(conn, scope, order, HEADERS_PAGE)?;
        for header in &page {
            if settled(&mut found, header) {
                return Ok(found);
            }
            for reading in blocks::open(conn, header)? {
                if scope.holds(&reading) {
                    found.push(reading_of(header, &reading));
                }
            }
        }
        match page.last() {
            Some(last) if page.len() as i64 == HEADERS_PAGE => order = order.after(last),
            _ => return Ok(found),
        }
    }
}

/// Settled once `limit` readings were found with ids below the next block's lowest.
fn lowest_ids(limit: usize) -> impl FnMut(&mut Vec<Reading>, &BlockHeader) -> bool {
    move |found, next| {
        if limit == 0 {
            return true;
        }
        if found.len() < limit {
            return false;
        }
        found.sort_by_key(|r| r.id);
        found.truncate(limit);
        found[limit - 1].id < next.first_id
    }
}

fn newest_first(a: &Reading, b: &Reading) -> std::cmp::Ordering {
    (b.measured_at_us, b.seq).cmp(&(a.measured_at_us, a.seq))
}

fn oldest_first(a: &Reading, b: &Reading) -> std::cmp::Ordering {
    (a.measured_at_us, a.seq).cmp(&(b.measured_at_us, b.seq))
}

/// Settled once `limit` readings were found measured after all the next block holds.
fn latest(limit: usize) -> impl FnMut(&mut Vec<Reading>, &BlockHeader) -> bool {
    move |found, next| {
        if limit == 0 {
            return true;
        }
        if found.len() < limit {
            return false;
        }
        found.sort_by(newest_first);
        found.truncate(limit);
        found[limit - 1].measured_at_us > next.max_measured_at_us
    }
}

/// Settled once `limit` readings were found measured before all the next block holds.
fn earliest(limit: usize) -> impl FnMut(&mut Vec<Reading>, &BlockHeader) -> bool {
    move |found, next| {
        if limit == 0 {
            return true;
        }
        if found.len() < limit {
            return false;
        }
        found.sort_by(oldest_first);
        found.truncate(limit);
        found[limit - 1].measured_at_us < next.min_measured_at_us
    }
}

fn every(_: &mut Vec<Reading>, _: &BlockHeader) -> bool {
    false
}

fn count(limit: i64) -> usize {
    usize::try_from(limit).unwrap_or(0)
}

/// The serial of each device of `sealed`.
pub(super) fn serials_of(
    conn: &mut DbConnection,
    sealed: impl Iterator<Item = DeviceId>,
) -> Result<HashMap<DeviceId, String>> {
    let ids: Vec<DeviceId> = sealed
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(devices::table
        .filter(devices::id.eq_any(ids))
        .select((devices::id, devices::serial))
        .load::<(DeviceId, String)>(conn)?
        .into_iter()
        .collect())
}

/// Up to `limit` readings with an id above `after` that `filter` selects, in id (storage)
/// order, each with its device's serial: what a live stream sends next.
pub fn page_after(
    conn: &mut DbConnection,
    filter: &ExportFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<(String, Reading)>> {
    let mut query = readings::table
        .inner_join(devices::table)
        .select((devices::serial, Reading::as_select()))
        .filter(readings::id.gt(after))
        .into_boxed();
    if let Some(site) = filter.site {
        query = query.filter(devices::site_id.eq(site));
    }
    if let Some(device) = filter.device {
        query = query.filter(readings::device_id.eq(device));
    }
    if let Some(metric) = &filter.metric {
        query = query.filter(readings::metric.eq(metric.clone()));
    }
    if let Some(since) = filter.since_us {
        query = query.filter(readings::measured_at_us.ge(since));
    }
    if let Some(until) = filter.until_us {
        query = query.filter(readings::measured_at_us.lt(until));
    }
    let rows: Vec<(String, Reading)> = query.order(readings::id).limit(limit).load(conn)?;
    let mut serials: HashMap<DeviceId, String> = rows
        .iter()
        .map(|(serial, r)| (r.device_id, serial.clone()))
        .collect();
    let scope = Scope {
        after_id: Some(after),
        ..filter.scope()
    };
    let rows = rows.into_iter().map(|(_, r)| r).collect();
    let by_id = Order::Id {
        after_first_id: None,
    };
    let mut page = with_sealed(conn, rows, &scope, by_id, lowest_ids(count(limit)))?;
    page.sort_by_key(|r| r.id);
    page.truncate(count(limit));
    let unnamed: Vec<DeviceId> = page
        .iter()
        .map(|r| r.device_id)
        .filter(|d| !serials.contains_key(d))
        .collect();
    serials.extend(serials_of(conn, unnamed.into_iter())?);
    Ok(page
        .into_iter()
        .map(|r| (serials.get(&r.device_id).cloned().unwrap_or_default(), r))
        .collect())
}

/// One page of a device's readings in storage order: up to `limit` with an id above `after`
/// (the previous page's last id), optionally of one metric and measured in `[since, until)`.
pub fn page(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: Option<&str>,
    since_us: Option<i64>,
    until_us: Option<i64>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<Reading>> {
    let mut query = readings::table
        .filter(readings::device_id.eq(device))
        .into_boxed();
    if let Some(metric) = metric {
        query = query.filter(readings::metric.eq(metric.to_owned()));
    }
    if let Some(since) = since_us {
        query = query.filter(readings::measured_at_us.ge(since));
    }
    if let Some(until) = until_us {
        query = query.filter(readings::measured_at_us.lt(until));
    }
    if let Some(after) = after {
        query = query.filter(readings::id.gt(after));
    }
    let rows: Vec<Reading> = query
        .order(readings::id)
        .limit(limit)
        .select(Reading::as_select())
        .load(conn)?;
    let scope = Scope {
        device: Some(device),
        metric,
        since_us,
        until_us,
        after_id: after,
        ..Scope::default()
    };
    let by_id = Order::Id {
        after_first_id: None,
    };
    let mut page = with_sealed(conn, rows, &scope, by_id, lowest_ids(count(limit)))?;
    page.sort_by_key(|r| r.id);
    page.truncate(count(limit));
    Ok(page)
}

/// The latest `n` values of a device's metric, newest first.
pub fn latest_values(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: &str,
    n: i64,
) -> Result<Vec<f64>> {
    Ok(latest_points(conn, device, metric, None, n)?
        .into_iter()
        .map(|(value, _)| value)
        .collect())
}

/// Up to `n` (value, measured_at_us) of a device's metric measured before `before_us` (or
/// at all), newest first.
pub fn latest_points(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: &str,
    before_us: Option<i64>,
    n: i64,
) -> Result<Vec<(f64, i64)>> {
    let mut query = readings::table
        .filter(readings::device_id.eq(device))
        .filter(readings::metric.eq(metric.to_owned()))
        .into_boxed();
    if let Some(before) = before_us {
        query = query.filter(readings::measured_at_us.lt(before));
    }
    let rows: Vec<Reading> = query
        .order((readings::measured_at_us.desc(), readings::seq.desc()))
        .limit(n)
        .select(Reading::as_select())
        .load(conn)?;
    let scope = Scope {
        device: Some(device),
        metric: Some(metric),
        until_us: before_us,
        ..Scope::default()
    };
    let newest = Order::NewestFirst { before: None };
    let mut points = with_sealed(conn, rows, &scope, newest, latest(count(n)))?;
    points.sort_by(newest_first);
    points.truncate(count(n));
    Ok(points
        .into_iter()
        .map(|r| (r.value, r.measured_at_us))
        .collect())
}

/// Every (value, measured_at_us) of a device's metric measured at or after `since_us`,
/// newest first.
pub fn points_since(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: &str,
    since_us: i64,
) -> Result<Vec<(f64, i64)>> {
    let rows: Vec<Reading> = readings::table
        .filter(readings::device_id.eq(device))
        .filter(readings::metric.eq(metric))
        .filter(readings::measured_at_us.ge(since_us))
        .select(Reading::as_select())
        .load(conn)?;
    let scope = Scope {
        device: Some(device),
        metric: Some(metric),
        since_us: Some(since_us),
        ..Scope::default()
    };
    let oldest = Order::Measured { after: None };
    let mut points = with_sealed(conn, rows, &scope, oldest, every)?;
    points.sort_by(newest_first);
    Ok(points
        .into_iter()
        .map(|r| (r.value, r.measured_at_us))
        .collect())
}

/// Up to `limit` (value, measured_at_us) of a device's readings measured in
/// `[since_us, until_us)`, oldest first: of one metric, or of every metric when `metric` is
/// `None` (a silence check needs only when something arrived).
pub fn points_between(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: Option<&str>,
    (since_us, until_us): (i64, i64),
    limit: i64,
) -> Result<Vec<(f64, i64)>> {
    let mut query = readings::table
        .filter(readings::device_id.eq(device))
        .filter(readings::measured_at_us.ge(since_us))
        .filter(readings::measured_at_us.lt(until_us))
        .into_boxed();
    if let Some(metric) = metric {
        query = query.filter(readings::metric.eq(metric.to_owned()));
    }
    let rows: Vec<Reading> = query
        .order((readings::measured_at_us, readings::seq))
        .select(Reading::as_select())
        .limit(limit)
        .load(conn)?;
    let scope = Scope {
        device: Some(device),
        metric,
        since_us: Some(since_us),
        until_us: Some(until_us),
        ..Scope::default()
    };
    let oldest = Order::Measured { after: None };
    let mut points = with_sealed(conn, rows, &scope, oldest, earliest(count(limit)))?;
    points.sort_by(oldest_first);
    points.truncate(count(limit));
    Ok(points
        .into_iter()
        .map(|r| (r.value, r.measured_at_us))
        .collect())
}

pub fn count_for(conn: &mut DbConnection, device: DeviceId) -> Result<i64> {
    let rows: i64 = readings::table
        .filter(readings::device_id.eq(device))
        .count()
        .get_result(conn)?;
    Ok(rows + blocks::count(conn, Some(device))?)
}

/// The stored sequence numbers of a device, ascending.
pub fn seqs_for(conn: &mut DbConnection, device: DeviceId) -> Result<Vec<i64>> {
    let mut seqs: Vec<i64> = readings::table
        .filter(readings::device_id.eq(device))
        .select(readings::seq)
        .load(conn)?;
    let scope = Scope {
        device: Some(device),
        ..Scope::default()
    };
    let by_id = Order::Id {
        after_first_id: None,
    };
    seqs.extend(
        with_sealed(conn, Vec::new(), &scope, by_id, every)?
            .iter()
            .map(|r| r.seq),
    );
    seqs.sort_unstable();
    Ok(seqs)
}

/// Every sealed (value, measured_at_us) of a device's metric measured in
/// `[since_us, until_us)`, in no particular order: what a chart sums beside the rows.
pub fn sealed_points(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: &str,
    (since_us, until_us): (i64, i64),
) -> Result<Vec<(f64, i64)>> {
    let scope = Scope {
        device: Some(device),
        metric: Some(metric),
        since_us: Some(since_us),
        until_us: Some(until_us),
        ..Scope::default()
    };
    Ok(with_sealed(
        conn,
        Vec::new(),
        &scope,
        Order::Measured { after: None },
        every,
    )?
    .into_iter()
    .map(|r| (r.value, r.measured_at_us))
    .collect())
}
