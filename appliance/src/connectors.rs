//! Data connectors: per-site HTTPS endpoints that receive readings and/or alerts.
//!
//! Every event a connector is owed is a row of `connector_deliveries` (the outbox), written
//! in the same transaction as the readings or alert it carries, so nothing is lost to a
//! crash. `plantgate-ingest` sends them in id order per connector, signed with HMAC-SHA256
//! over `"{timestamp}.{body}"` ([`signature_header`]). The per-connector secret must stay
//! usable to sign, so it is sealed under the connector [`SealingKey`] (`crate::sealing`),
//! which only the ingest (and root's `plantgate`) can read.

use std::collections::{BTreeMap, HashMap};

use diesel::prelude::*;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use serde::Serialize;

use crate::audit::{Actor, Audit, AuditEvent, Outcome};
use crate::error::{Error, Result};
use crate::ids::{ConnectorId, DeviceId, SiteId};
use crate::readings::NewReading;
use crate::schema::{connector_deliveries, connectors, devices, sites};
pub use crate::sealing::SealingKey;
use crate::store::DbConnection;
use crate::store::on_backend;
pub use crate::values::check_url;

/// The header carrying `t={unix seconds},v1={hex HMAC-SHA256(secret, "{t}.{body}")}`.
pub const SIGNATURE_HEADER: &str = "Plantgate-Signature";
const MAX_NAME_LEN: usize = 64;

/// `t={unix_seconds},v1={hex HMAC-SHA256(secret, "{unix_seconds}.{body}")}`.
pub fn signature_header(secret: &str, unix_seconds: i64, body: &[u8]) -> Result<String> {
    let key = PKey::hmac(secret.as_bytes())?;
    let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
    signer.update(format!("{unix_seconds}.").as_bytes())?;
    signer.update(body)?;
    Ok(format!(
        "t={unix_seconds},v1={}",
        hex::encode(signer.sign_to_vec()?)
    ))
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Serialize)]
#[diesel(table_name = connectors)]
pub struct Connector {
    pub id: ConnectorId,
    pub site_id: SiteId,
    pub name: String,
    pub url: String,
    pub send_readings: bool,
    pub send_alerts: bool,
    #[serde(skip)]
    pub secret_sealed: Vec<u8>,
    #[serde(skip)]
    pub ca_pem: Option<String>,
    pub created_at_us: i64,
    pub removed_at_us: Option<i64>,
    /// A paused connector keeps being owed what it receives, and is sent nothing until it
    /// is resumed.
    pub paused_at_us: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorRequest {
    pub site: SiteId,
    pub name: String,
    pub url: String,
    pub send_readings: bool,
    pub send_alerts: bool,
    /// PEM certificates to trust for this endpoint besides the system's (an in-house CA).
    pub ca_pem: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = connectors)]
struct NewConnector<'a> {
    site_id: SiteId,
    name: &'a str,
    url: &'a str,
    send_readings: bool,
    send_alerts: bool,
    secret_sealed: &'a [u8],
    ca_pem: Option<&'a str>,
    created_at_us: i64,
}

/// A connector's signing secret, shown once at creation. `Debug` hides it.
pub struct ConnectorSecret(String);

impl std::fmt::Debug for ConnectorSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectorSecret(..)")
    }
}

impl ConnectorSecret {
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl Connector {
    /// Adds a connector as of `now` and returns it with its secret, which is shown only
    /// this once.
    pub fn add(
        audit: &Audit,
        actor: &Actor,
        key: &SealingKey,
        request: &ConnectorRequest,
        now: i64,
    ) -> Result<(Connector, ConnectorSecret)> {
        let name = request.name.trim();
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(Error::invalid(
                "name",
                format!("must be 1 to {MAX_NAME_LEN} characters"),
            ));
        }
        let url = check_url(request.url.trim())?;
        if !request.send_readings && !request.send_alerts {
            return Err(Error::invalid(
                "events",
                "a connector must receive readings, alerts or both",
            ));
        }
        if let Some(pem) = &request.ca_pem {
            let certs = openssl::x509::X509::stack_from_pem(pem.as_bytes())
                .map_err(|err| Error::invalid("ca", format!("not PEM certificates: {err}")))?;
            if certs.is_empty() {
                return Err(Error::invalid("ca", "holds no certificate"));
            }
        }
        let mut raw = [0u8; 32];
        openssl::rand::rand_bytes(&mut raw)?;
        let secret = ConnectorSecret(format!("pgwh_{}", hex::encode(raw)));
        let sealed = key.seal(secret.reveal())?;
        let connector = audit.record_with(|conn| {
            let site_exists = sites::table
                .find(request.site)
                .count()
                .get_result::<i64>(conn)?;
            if site_exists == 0 {
                return Err(Error::NotFound("site"));
            }
            let connector = on_backend!(conn, c => diesel::insert_into(connectors::table)
                .values(NewConnector {
                    site_id: request.site,
                    name,
                    url: url.as_str(),
                    send_readings: request.send_readings,
                    send_alerts: request.send_alerts,
                    secret_sealed: &sealed,
                    ca_pem: request.ca_pem.as_deref(),
                    created_at_us: now,
                })
                .returning(Connector::as_returning())
                .get_result(c))?;
            let event = AuditEvent::new(actor.clone(), "connector.added")
                .target(connector.id)
                .details(serde_json::json!({
                    "site": request.site, "name": name, "url": url.as_str(),
                    "readings": request.send_readings, "alerts": request.send_alerts,
                }));
            Ok((connector, vec![event]))
        })?;
        Ok((connector, secret))
    }

    /// Stops deliveries to a connector as of `now`; what it was still owed is dead-lettered.
    pub fn remove(audit: &Audit, actor: &Actor, id: ConnectorId, now: i64) -> Result<Connector> {
        audit.record_with(|conn| {
            let updated = diesel::update(
                connectors::table
                    .find(id)
                    .filter(connectors::removed_at_us.is_null()),
            )
            .set(connectors::removed_at_us.eq(Some(now)))
            .execute(conn)?;
            if updated == 0 {
                return Err(Error::NotFound("active connector"));
            }
            let dropped = diesel::update(owed().filter(connector_deliveries::connector_id.eq(id)))
                .set((
                    connector_deliveries::dead_at_us.eq(Some(now)),
                    connector_deliveries::last_error.eq(Some("connector removed")),
                ))
                .execute(conn)?;
            let connector = connectors::table
                .find(id)
                .select(Connector::as_select())
                .first(conn)?;
            let event = AuditEvent::new(actor.clone(), "connector.removed")
                .target(id)
                .details(serde_json::json!({ "name": connector.name, "undelivered": dropped }));
            Ok((connector, vec![event]))
        })
    }

    /// Pauses (`paused` true) or resumes a connector as of `now`, audited
    /// `connector.paused` or `connector.resumed`. Deliveries keep being queued while it is
    /// paused and go out in order once it is resumed. Asking for the state it is already
    /// in changes nothing and records nothing.
    pub fn set_paused(
        audit: &Audit,
        actor: &Actor,
        id: ConnectorId,
        paused: bool,
        now: i64,
    ) -> Result<Connector> {
        audit.record_with(|conn| {
            let connector = connectors::table
                .find(id)
                .filter(connectors::removed_at_us.is_null())
                .select(Connector::as_select())
                .first(conn)
                .optional()?
                .ok_or(Error::NotFound("active connector"))?;
            if connector.paused_at_us.is_some() == paused {
                return Ok((connector, Vec::new()));
            }
            diesel::update(connectors::table.find(id))
                .set(connectors::paused_at_us.eq(paused.then_some(now)))
                .execute(conn)?;
            let owed_now: i64 = owed()
                .filter(connector_deliveries::connector_id.eq(id))
                .count()
                .get_result(conn)?;
            let action = if paused {
                "connector.paused"
            } else {
                "connector.resumed"
            };
            let event = AuditEvent::new(actor.clone(), action)
                .target(id)
                .details(serde_json::json!({ "name": connector.name, "owed": owed_now }));
            let connector = connectors::table
                .find(id)
                .select(Connector::as_select())
                .first(conn)?;
            Ok((connector, vec![event]))
        })
    }

    /// A connector by id, removed or not, at one of `sites` (the caller's), or "not found".
    pub fn find_at(
        conn: &mut DbConnection,
        sites: &[SiteId],
        id: ConnectorId,
    ) -> Result<Connector> {
        connectors::table
            .find(id)
            .select(Connector::as_select())
            .first(conn)
            .optional()?
            .filter(|connector| sites.contains(&connector.site_id))
            .ok_or(Error::NotFound("connector"))
    }

    /// How many deliveries it still owes.
    pub fn owed_count(&self, conn: &mut DbConnection) -> Result<i64> {
        Ok(owed()
            .filter(connector_deliveries::connector_id.eq(self.id))
            .count()
            .get_result(conn)?)
    }

    /// Every connector, removed ones included, by id.
    pub fn list(conn: &mut DbConnection) -> Result<Vec<Connector>> {
        Ok(connectors::table
            .order(connectors::id)
            .select(Connector::as_select())
            .load(conn)?)
    }

    pub fn active(conn: &mut DbConnection) -> Result<Vec<Connector>> {
        Ok(connectors::table
            .filter(connectors::removed_at_us.is_null())
            .order(connectors::id)
            .select(Connector::as_select())
            .load(conn)?)
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Serialize)]
#[diesel(table_name = connector_deliveries)]
pub struct Delivery {
    pub id: i64,
    pub connector_id: ConnectorId,
    pub kind: String,
    pub body: String,
    pub created_at_us: i64,
    pub attempts: i32,
    pub next_attempt_at_us: i64,
    pub delivered_at_us: Option<i64>,
    pub dead_at_us: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = connector_deliveries)]
struct NewDelivery<'a> {
    connector_id: ConnectorId,
    kind: &'a str,
    body: &'a str,
    created_at_us: i64,
    next_attempt_at_us: i64,
}

type Owed = diesel::dsl::Filter<
    diesel::dsl::Filter<
        connector_deliveries::table,
        diesel::dsl::IsNull<connector_deliveries::delivered_at_us>,
    >,
    diesel::dsl::IsNull<connector_deliveries::dead_at_us>,
>;

fn owed() -> Owed {
    connector_deliveries::table
        .filter(connector_deliveries::delivered_at_us.is_null())
        .filter(connector_deliveries::dead_at_us.is_null())
}

fn enqueue(
    conn: &mut DbConnection,
    connector: ConnectorId,
    kind: &str,
    body: &str,
    now: i64,
) -> Result<()> {
    diesel::insert_into(connector_deliveries::table)
        .values(NewDelivery {
            connector_id: connector,
            kind,
            body,
            created_at_us: now,
            next_attempt_at_us: now,
        })
        .execute(conn)?;
    Ok(())
}

#[derive(Serialize)]
struct ReadingOut<'a> {
    device: &'a str,
    seq: i64,
    metric: &'a str,
    value: f64,
    measured_at_us: i64,
}

/// Queues `rows` for every connector of their sites that receives readings, due at `now`:
/// one delivery per (connector, group commit). Run it inside the transaction that stores
/// the readings.
pub fn enqueue_readings(conn: &mut DbConnection, rows: &[&NewReading], now: i64) -> Result<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let wanted: Vec<(ConnectorId, SiteId)> = connectors::table
        .filter(connectors::removed_at_us.is_null())
        .filter(connectors::send_readings.eq(true))
        .select((connectors::id, connectors::site_id))
        .load(conn)?;
    if wanted.is_empty() {
        return Ok(0);
    }
    let mut ids: Vec<DeviceId> = rows.iter().map(|r| r.device_id).collect();
    ids.sort();
    ids.dedup();
    let known: HashMap<DeviceId, (SiteId, String)> = devices::table
        .filter(devices::id.eq_any(&ids))
        .select((devices::id, devices::site_id, devices::serial))
        .load::<(DeviceId, SiteId, String)>(conn)?
        .into_iter()
        .map(|(id, site, serial)| (id, (site, serial)))
        .collect();
    let mut by_site: BTreeMap<SiteId, Vec<ReadingOut>> = BTreeMap::new();
    for r in rows {
        if let Some((site, serial)) = known.get(&r.device_id) {
            by_site.entry(*site).or_default().push(ReadingOut {
                device: serial,
                seq: r.seq,
                metric: &r.metric,
                value: r.value,
                measured_at_us: r.measured_at_us,
            });
        }
    }
    let mut queued = 0;
    for (connector, site) in wanted {
        if let Some(readings) = by_site.get(&site) {
            let body =
                serde_json::json!({ "type": "readings", "site": site.0, "readings": readings })
                    .to_string();
            enqueue(conn, connector, "readings", &body, now)?;
            queued += 1;
        }
    }
    Ok(queued)
}

/// What an alert delivery says.
#[derive(Debug, Clone, Serialize)]
pub struct AlertOut<'a> {
    pub state: &'a str,
    pub alert_id: i64,
    pub rule_id: i64,
    pub rule: &'a str,
    pub kind: &'a str,
    pub metric: &'a str,
    pub device: DeviceId,
    pub value: Option<f64>,
    pub at_us: i64,
}

/// Queues an alert's raise or clearing for the connectors of the device's site, due at the
/// alert's `at_us`.
pub fn enqueue_alert(conn: &mut DbConnection, alert: &AlertOut<'_>) -> Result<usize> {
    let (site, serial): (SiteId, String) = devices::table
        .find(alert.device)
        .select((devices::site_id, devices::serial))
        .first(conn)?;
    let wanted: Vec<ConnectorId> = connectors::table
        .filter(connectors::removed_at_us.is_null())
        .filter(connectors::send_alerts.eq(true))
        .filter(connectors::site_id.eq(site))
        .select(connectors::id)
        .load(conn)?;
    let mut body = serde_json::json!({ "type": "alert", "site": site.0, "device": serial });
    if let (Some(object), Ok(serde_json::Value::Object(fields))) =
        (body.as_object_mut(), serde_json::to_value(alert))
    {
        for (k, v) in fields {
            if k != "device" {
                object.insert(k, v);
            }
        }
    }
    let body = body.to_string();
    for connector in &wanted {
        enqueue(conn, *connector, "alert", &body, alert.at_us)?;
    }
    Ok(wanted.len())
}

/// The oldest delivery each active connector still owes, if it is due at `now`. Only the
/// head of each connector's queue is offered, so a connector receives events in order.
pub fn due(conn: &mut DbConnection, now: i64) -> Result<Vec<(Connector, Delivery)>> {
    let mut out = Vec::new();
    for connector in Connector::active(conn)?
        .into_iter()
        .filter(|c| c.paused_at_us.is_none())
    {
        let head = owed()
            .filter(connector_deliveries::connector_id.eq(connector.id))
            .order(connector_deliveries::id)
            .select(Delivery::as_select())
            .first(conn)
            .optional()?;
        if let Some(delivery) = head
            && delivery.next_attempt_at_us <= now
        {
            out.push((connector, delivery));
        }
    }
    Ok(out)
}

/// The outbox rows of one connector, oldest first (the delivery log).
pub fn deliveries(conn: &mut DbConnection, connector: ConnectorId) -> Result<Vec<Delivery>> {
    Ok(connector_deliveries::table
        .filter(connector_deliveries::connector_id.eq(connector))
        .order(connector_deliveries::id)
        .select(Delivery::as_select())
        .load(conn)?)
}

/// The newest `limit` outbox rows of one connector, newest first: the delivery log a
/// person reads.
pub fn recent_deliveries(
    conn: &mut DbConnection,
    connector: ConnectorId,
    limit: i64,
) -> Result<Vec<Delivery>> {
    Ok(connector_deliveries::table
        .filter(connector_deliveries::connector_id.eq(connector))
        .order(connector_deliveries::id.desc())
        .select(Delivery::as_select())
        .limit(limit)
        .load(conn)?)
}

/// Records that `delivery` was delivered at `now`.
pub fn mark_delivered(conn: &mut DbConnection, delivery: &Delivery, now: i64) -> Result<()> {
    diesel::update(connector_deliveries::table.find(delivery.id))
        .set((
            connector_deliveries::delivered_at_us.eq(Some(now)),
            connector_deliveries::attempts.eq(delivery.attempts + 1),
            connector_deliveries::last_error.eq(None::<String>),
        ))
        .execute(conn)?;
    Ok(())
}

/// The wait before attempt `attempts + 1`: 1 s, doubling, at most `max_backoff_seconds`.
pub fn backoff_us(attempts: i32, max_backoff_seconds: u64) -> i64 {
    let exponent = attempts.clamp(1, 30) - 1;
    let seconds = (1u64 << exponent).min(max_backoff_seconds.max(1));
    i64::try_from(seconds).unwrap_or(i64::MAX / 1_000_000) * 1_000_000
}

/// Records an attempt that failed at `now`, audited: retried after a backoff, or
/// dead-lettered once it has failed `max_attempts` times (the next event then goes ahead).
pub fn mark_failed(
    audit: &Audit,
    actor: &Actor,
    delivery: &Delivery,
    reason: &str,
    max_attempts: i32,
    max_backoff_seconds: u64,
    now: i64,
) -> Result<()> {
    let attempts = delivery.attempts + 1;
    let dead = attempts >= max_attempts;
    audit.record_with(|conn| {
        diesel::update(connector_deliveries::table.find(delivery.id))
            .set((
                connector_deliveries::attempts.eq(attempts),
                connector_deliveries::next_attempt_at_us
                    .eq(now + backoff_us(attempts, max_backoff_seconds)),
                connector_deliveries::dead_at_us.eq(dead.then_some(now)),
                connector_deliveries::last_error.eq(Some(reason)),
            ))
            .execute(conn)?;
        let action = if dead {
            "connector.delivery.dead_lettered"
        } else {
            "connector.delivery.failed"
        };
        let event = AuditEvent::new(actor.clone(), action)
            .target(delivery.connector_id)
            .outcome(Outcome::Failure)
            .details(serde_json::json!({
                "delivery": delivery.id, "attempt": attempts, "reason": reason,
            }));
        Ok(((), vec![event]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() -> Result<()> {
        // Cross-checked with: printf '1700000000.{}' | openssl dgst -sha256 -hmac k
        let header = signature_header("k", 1_700_000_000, b"{}")?;
        assert_eq!(
            header,
            "t=1700000000,v1=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
        );
        Ok(())
    }

    #[test]
    fn retries_wait_one_second_doubling_up_to_the_cap() {
        let waits: Vec<i64> = (1..=6).map(|n| backoff_us(n, 10) / 1_000_000).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff_us(1000, 300), 300_000_000);
    }
}
