//! Sealed readings: once readings are older than the hot rows, each device's metric is
//! compressed into blocks of up to [`BLOCK_MAX`] readings ([`codec`]), a few bytes a reading
//! instead of a row and its index entries. [`crate::readings`] reads rows and blocks as one
//! store, so queries, charts, pages, streams and exports do not change.
//!
//! Sealing ([`seal_next`]) takes the series of the oldest row that may be sealed, writes its
//! earliest-measured rows that may be sealed as one block (in measured order) and deletes
//! them, in one transaction: a reading is a row
//! or in one block, never both and never neither, whatever moment a process is killed. Only
//! readings already counted in the rollups are sealed, and never the newest row (see
//! [`crate::rollups`]: ids must keep growing), so sealing changes no id and no rollup.
//!
//! A block's row says which readings it may hold (its ids, sequence numbers and measured
//! times, from lowest to highest), so a query decodes only the blocks that can match.

use std::collections::BTreeSet;

use diesel::prelude::*;

use crate::error::{Result, StoreError};
use crate::ids::{DeviceId, SiteId};
use crate::rollups;
use crate::schema::{devices, reading_blocks, readings};
use crate::store::{DbConnection, lock_for_writing};

pub mod codec;

pub use codec::SealedReading;

/// The most readings one block holds. An export in time order holds one block of each
/// series open at once, so this bounds its memory; past a few thousand readings a block
/// compresses little better.
pub const BLOCK_MAX: i64 = 2048;

#[derive(Insertable)]
#[diesel(table_name = reading_blocks)]
struct NewBlock<'a> {
    device_id: DeviceId,
    metric: &'a str,
    count: i64,
    first_id: i64,
    last_id: i64,
    min_seq: i64,
    max_seq: i64,
    min_measured_at_us: i64,
    max_measured_at_us: i64,
    min_received_at_us: i64,
    max_received_at_us: i64,
    data: Vec<u8>,
}

/// A block's row without its data: what a query needs to decide whether to open it.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = reading_blocks)]
pub struct BlockHeader {
    pub id: i64,
    pub device_id: DeviceId,
    pub metric: String,
    pub count: i64,
    pub first_id: i64,
    pub last_id: i64,
    pub min_measured_at_us: i64,
    pub max_measured_at_us: i64,
}

/// Seals the oldest series that has readings received before `received_before`: up to
/// [`BLOCK_MAX`] of its rows become one block. Returns how many readings it sealed; 0 when
/// nothing is left to seal.
pub fn seal_next(conn: &mut DbConnection, received_before: i64) -> Result<usize> {
    conn.transaction(|conn| {
        lock_for_writing(conn)?;
        let newest: Option<i64> = readings::table
            .select(diesel::dsl::max(readings::id))
            .first(conn)?;
        let Some(newest) = newest else {
            return Ok(0);
        };
        let through = rollups::rolled_through(conn)?.min(newest - 1);
        let oldest: Option<(DeviceId, String, i64)> = readings::table
            .filter(readings::id.le(through))
            .order(readings::id)
            .select((
                readings::device_id,
                readings::metric,
                readings::received_at_us,
            ))
            .first(conn)
            .optional()?;
        let Some((device, metric, received)) = oldest else {
            return Ok(0);
        };
        if received >= received_before {
            return Ok(0);
        }
        // The series' earliest-measured readings that may be sealed, read along its
        // (device, metric, measured time) index: a step visits about the rows it seals.
        let rows: Vec<(i64, i64, f64, i64, i64)> = readings::table
            .filter(readings::device_id.eq(device))
            .filter(readings::metric.eq(&metric))
            .filter(readings::id.le(through))
            .filter(readings::received_at_us.lt(received_before))
            .order((readings::measured_at_us, readings::seq))
            .limit(BLOCK_MAX)
            .select((
                readings::id,
                readings::seq,
                readings::value,
                readings::measured_at_us,
                readings::received_at_us,
            ))
            .load(conn)?;
        let rows: Vec<SealedReading> = rows
            .into_iter()
            .map(
                |(id, seq, value, measured_at_us, received_at_us)| SealedReading {
                    id,
                    seq,
                    value,
                    measured_at_us,
                    received_at_us,
                },
            )
            .collect();
        let block = NewBlock::of(device, &metric, &rows)?;
        diesel::insert_into(reading_blocks::table)
            .values(&block)
            .execute(conn)?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let deleted =
            diesel::delete(readings::table.filter(readings::id.eq_any(&ids))).execute(conn)?;
        if deleted != rows.len() {
            return Err(StoreError::Corrupt(format!(
                "sealing {} readings of device {device} {metric} would delete {deleted} rows",
                rows.len()
            ))
            .into());
        }
        Ok(rows.len())
    })
}

/// Seals every reading received before `received_before` that may be sealed; returns how
/// many. Each block is its own transaction.
pub fn seal_all(conn: &mut DbConnection, received_before: i64) -> Result<u64> {
    let mut sealed = 0;
    loop {
        match seal_next(conn, received_before)? {
            0 => return Ok(sealed),
            n => sealed += n as u64,
        }
    }
}

impl<'a> NewBlock<'a> {
    /// The block of `rows` (at least one) of `device`'s `metric`.
    fn of(device: DeviceId, metric: &'a str, rows: &[SealedReading]) -> Result<NewBlock<'a>> {
        let lowest = |f: fn(&SealedReading) -> i64| rows.iter().map(f).min().unwrap_or(0);
        let highest = |f: fn(&SealedReading) -> i64| rows.iter().map(f).max().unwrap_or(0);
        let data = codec::encode(rows)
            .map_err(|err| StoreError::Corrupt(format!("a block could not be written: {err}")))?;
        Ok(NewBlock {
            device_id: device,
            metric,
            count: rows.len() as i64,
            first_id: lowest(|r| r.id),
            last_id: highest(|r| r.id),
            min_seq: lowest(|r| r.seq),
            max_seq: highest(|r| r.seq),
            min_measured_at_us: lowest(|r| r.measured_at_us),
            max_measured_at_us: highest(|r| r.measured_at_us),
            min_received_at_us: lowest(|r| r.received_at_us),
            max_received_at_us: highest(|r| r.received_at_us),
            data,
        })
    }
}

/// Which of `seqs` of `device` are already sealed. One index lookup when none can be (the
/// usual case: a device's new sequence numbers lie above all it sent before).
pub fn sealed_seqs(
    conn: &mut DbConnection,
    device: DeviceId,
    seqs: &[i64],
) -> Result<BTreeSet<i64>> {
    let highest: Option<i64> = reading_blocks::table
        .filter(reading_blocks::device_id.eq(device))
        .select(diesel::dsl::max(reading_blocks::max_seq))
        .first(conn)?;
    let Some(highest) = highest else {
        return Ok(BTreeSet::new());
    };
    let candidates: BTreeSet<i64> = seqs.iter().copied().filter(|s| *s <= highest).collect();
    let (Some(&low), Some(&high)) = (candidates.first(), candidates.last()) else {
        return Ok(BTreeSet::new());
    };
    let blocks: Vec<(i64, i64, Vec<u8>)> = reading_blocks::table
        .filter(reading_blocks::device_id.eq(device))
        .filter(reading_blocks::max_seq.ge(low))
        .filter(reading_blocks::min_seq.le(high))
        .select((
            reading_blocks::id,
            reading_blocks::count,
            reading_blocks::data,
        ))
        .load(conn)?;
    let mut sealed = BTreeSet::new();
    for (id, count, data) in blocks {
        for reading in decode_block(id, count, &data)? {
            if candidates.contains(&reading.seq) {
                sealed.insert(reading.seq);
            }
        }
    }
    Ok(sealed)
}

/// Which blocks a query may need: every field narrows it. Times are `[since, until)` on
/// the time the device measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope<'a> {
    pub site: Option<SiteId>,
    pub device: Option<DeviceId>,
    pub metric: Option<&'a str>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    /// Only readings with a larger id.
    pub after_id: Option<i64>,
}

impl Scope<'_> {
    /// Whether a reading of a block this scope selected is itself selected.
    pub fn holds(&self, reading: &SealedReading) -> bool {
        self.since_us
            .is_none_or(|since| reading.measured_at_us >= since)
            && self
                .until_us
                .is_none_or(|until| reading.measured_at_us < until)
            && self.after_id.is_none_or(|after| reading.id > after)
    }
}

/// The order blocks are visited in, and where the previous page of them ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By lowest id: pages and live streams.
    Id { after_first_id: Option<i64> },
    /// By earliest measured time: exports and ranges, oldest first.
    Measured { after: Option<(i64, i64)> },
    /// By latest measured time, newest first: the latest values.
    NewestFirst { before: Option<(i64, i64)> },
}

impl Order {
    /// Where a page ending with `header` leaves off.
    pub fn after(self, header: &BlockHeader) -> Order {
        match self {
            Order::Id { .. } => Order::Id {
                after_first_id: Some(header.first_id),
            },
            Order::Measured { .. } => Order::Measured {
                after: Some((header.min_measured_at_us, header.id)),
            },
            Order::NewestFirst { .. } => Order::NewestFirst {
                before: Some((header.max_measured_at_us, header.id)),
            },
        }
    }
}

/// Up to `limit` headers of the blocks `scope` may need, in `order`.
pub fn headers(
    conn: &mut DbConnection,
    scope: &Scope<'_>,
    order: Order,
    limit: i64,
) -> Result<Vec<BlockHeader>> {
    let mut query = reading_blocks::table
        .inner_join(devices::table)
        .select(BlockHeader::as_select())
        .into_boxed();
    if let Some(site) = scope.site {
        query = query.filter(devices::site_id.eq(site));
    }
    if let Some(device) = scope.device {
        query = query.filter(reading_blocks::device_id.eq(device));
    }
    if let Some(metric) = scope.metric {
        query = query.filter(reading_blocks::metric.eq(metric.to_owned()));
    }
    if let Some(since) = scope.since_us {
        query = query.filter(reading_blocks::max_measured_at_us.ge(since));
    }
    if let Some(until) = scope.until_us {
        query = query.filter(reading_blocks::min_measured_at_us.lt(until));
    }
    if let Some(after) = scope.after_id {
        query = query.filter(reading_blocks::last_id.gt(after));
    }
    use reading_blocks::{
        first_id, id, max_measured_at_us as latest, min_measured_at_us as earliest,
    };
    query = match order {
        Order::Id { after_first_id } => {
            if let Some(after) = after_first_id {
                query = query.filter(first_id.gt(after));
            }
            query.order(first_id)
        }
        Order::Measured { after } => {
            if let Some((at, block)) = after {
                query = query.filter(earliest.gt(at).or(earliest.eq(at).and(id.gt(block))));
            }
            query.order((earliest, id))
        }
        Order::NewestFirst { before } => {
            if let Some((at, block)) = before {
                query = query.filter(latest.lt(at).or(latest.eq(at).and(id.lt(block))));
            }
            query.order((latest.desc(), id.desc()))
        }
    };
    Ok(query.limit(limit).load(conn)?)
}

/// The readings of the block `header` describes, in id order.
pub fn open(conn: &mut DbConnection, header: &BlockHeader) -> Result<Vec<SealedReading>> {
    let data: Vec<u8> = reading_blocks::table
        .find(header.id)
        .select(reading_blocks::data)
        .first(conn)?;
    decode_block(header.id, header.count, &data)
}

/// The readings of block `block`, whose row says it holds `count`.
pub fn decode_block(block: i64, count: i64, data: &[u8]) -> Result<Vec<SealedReading>> {
    codec::decode(data, usize::try_from(count).unwrap_or(0)).map_err(|err| {
        StoreError::Corrupt(format!("block {block} of sealed readings: {err}")).into()
    })
}

#[derive(QueryableByName)]
struct Total {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// How many readings are sealed: of `device`, or of every device.
pub fn count(conn: &mut DbConnection, device: Option<DeviceId>) -> Result<i64> {
    // The device id is an integer of ours, so one statement serves both backends.
    let only = device.map_or(String::new(), |d| format!(" WHERE device_id = {}", d.0));
    Ok(diesel::sql_query(format!(
        "SELECT CAST(COALESCE(sum(count), 0) AS BIGINT) AS n FROM reading_blocks{only}"
    ))
    .get_result::<Total>(conn)?
    .n)
}

/// The metrics `device` has sealed readings of.
pub fn metrics_of(conn: &mut DbConnection, device: DeviceId) -> Result<Vec<String>> {
    Ok(reading_blocks::table
        .filter(reading_blocks::device_id.eq(device))
        .select(reading_blocks::metric)
        .distinct()
        .order(reading_blocks::metric)
        .load(conn)?)
}

/// Deletes the sealed readings received before `cutoff_us` from up to `limit` blocks, those
/// holding the earliest received first; returns how many. A block whose readings all go is
/// deleted; one that keeps some is written again with those alone, so a reading past
/// retention never outlives it for sharing a block with younger ones.
pub fn prune_received_before(conn: &mut DbConnection, cutoff_us: i64, limit: i64) -> Result<usize> {
    let oldest: Vec<(BlockHeader, i64, Vec<u8>)> = reading_blocks::table
        .inner_join(devices::table)
        .filter(reading_blocks::min_received_at_us.lt(cutoff_us))
        .order((reading_blocks::min_received_at_us, reading_blocks::id))
        .limit(limit)
        .select((
            BlockHeader::as_select(),
            reading_blocks::max_received_at_us,
            reading_blocks::data,
        ))
        .load(conn)?;
    let mut deleted = 0;
    for (header, latest, data) in oldest {
        diesel::delete(reading_blocks::table.find(header.id)).execute(conn)?;
        if latest < cutoff_us {
            deleted += usize::try_from(header.count).unwrap_or(0);
            continue;
        }
        let all = decode_block(header.id, header.count, &data)?;
        let kept: Vec<SealedReading> = all
            .iter()
            .copied()
            .filter(|r| r.received_at_us >= cutoff_us)
            .collect();
        deleted += all.len() - kept.len();
        if !kept.is_empty() {
            let block = NewBlock::of(header.device_id, &header.metric, &kept)?;
            diesel::insert_into(reading_blocks::table)
                .values(&block)
                .execute(conn)?;
        }
    }
    Ok(deleted)
}

/// The lowest reading id sealed.
pub fn lowest_id(conn: &mut DbConnection) -> Result<Option<i64>> {
    Ok(reading_blocks::table
        .select(diesel::dsl::min(reading_blocks::first_id))
        .first(conn)?)
}

/// The lowest id among blocks holding a reading received at or after `since_us`.
pub fn first_id_received_since(conn: &mut DbConnection, since_us: i64) -> Result<Option<i64>> {
    Ok(reading_blocks::table
        .filter(reading_blocks::max_received_at_us.ge(since_us))
        .select(diesel::dsl::min(reading_blocks::first_id))
        .first(conn)?)
}
