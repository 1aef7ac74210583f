//! One-time enrolment tokens. `plantgate init` issues the first-admin token, printed once;
//! only its SHA-256 is stored, so a copy of the store cannot enrol anyone.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel::prelude::*;

use crate::audit::{Actor, Audit, AuditEvent};
use crate::error::{Error, Result};
use crate::schema::enrolment_tokens;
use crate::store::DbConnection;
use crate::time::format_us;

pub const FIRST_ADMIN: &str = "first-admin";
/// Long enough for the console to be read days after first boot.
pub const FIRST_ADMIN_VALIDITY_US: i64 = 7 * 24 * 3600 * 1_000_000;

/// A token as handed to a person; shown once and never stored.
#[derive(PartialEq, Eq)]
pub struct EnrolmentToken(String);

impl EnrolmentToken {
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for EnrolmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnrolmentToken(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = enrolment_tokens)]
pub struct PendingToken {
    pub id: i64,
    pub purpose: String,
    pub created_at_us: i64,
    pub expires_at_us: i64,
}

fn token_hash(token: &str) -> Vec<u8> {
    openssl::sha::sha256(token.as_bytes()).to_vec()
}

/// The unused, unrevoked token for `purpose` that is unexpired at `now`, if there is one.
pub fn pending(conn: &mut DbConnection, purpose: &str, now: i64) -> Result<Option<PendingToken>> {
    Ok(enrolment_tokens::table
        .filter(enrolment_tokens::purpose.eq(purpose))
        .filter(enrolment_tokens::used_at_us.is_null())
        .filter(enrolment_tokens::revoked_at_us.is_null())
        .filter(enrolment_tokens::expires_at_us.gt(now))
        .select(PendingToken::as_select())
        .first(conn)
        .optional()?)
}

/// Revokes any pending token for `purpose` and issues a new one at `now`, good for
/// `validity_us`, audited in one transaction.
pub fn issue(
    audit: &Audit,
    actor: &Actor,
    purpose: &str,
    validity_us: i64,
    now: i64,
) -> Result<(EnrolmentToken, PendingToken)> {
    audit.record_with(|conn| {
        let (token, pending, event) = issue_in(conn, actor, purpose, validity_us, now)?;
        Ok(((token, pending), vec![event]))
    })
}

/// [`issue`] inside the caller's transaction; returns the audit event to record with it.
pub fn issue_in(
    conn: &mut DbConnection,
    actor: &Actor,
    purpose: &str,
    validity_us: i64,
    now: i64,
) -> Result<(EnrolmentToken, PendingToken, AuditEvent)> {
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes)?;
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = token_hash(&token);
    let revoked = diesel::update(
        enrolment_tokens::table
            .filter(enrolment_tokens::purpose.eq(purpose))
            .filter(enrolment_tokens::used_at_us.is_null())
            .filter(enrolment_tokens::revoked_at_us.is_null()),
    )
    .set(enrolment_tokens::revoked_at_us.eq(now))
    .execute(conn)?;
    diesel::insert_into(enrolment_tokens::table)
        .values((
            enrolment_tokens::token_hash.eq(&hash),
            enrolment_tokens::purpose.eq(purpose),
            enrolment_tokens::created_at_us.eq(now),
            enrolment_tokens::expires_at_us.eq(now + validity_us),
        ))
        .execute(conn)?;
    let pending = pending(conn, purpose, now)?.ok_or(Error::NotFound("enrolment token"))?;
    let event = AuditEvent::new(actor.clone(), "enrolment.token.issued")
        .target(format!("enrolment:{}", pending.id))
        .details(serde_json::json!({
            "purpose": purpose,
            "expires": format_us(pending.expires_at_us),
            "replaced_pending": revoked,
        }));
    Ok((EnrolmentToken(token), pending, event))
}

/// Marks `token` used at `now` if it is pending for `purpose` then. The caller's change and
/// this commit together, so a token enrols exactly one account even when two people race.
pub fn redeem(conn: &mut DbConnection, purpose: &str, token: &str, now: i64) -> Result<i64> {
    let target = enrolment_tokens::table
        .filter(enrolment_tokens::token_hash.eq(token_hash(token)))
        .filter(enrolment_tokens::purpose.eq(purpose))
        .filter(enrolment_tokens::used_at_us.is_null())
        .filter(enrolment_tokens::revoked_at_us.is_null())
        .filter(enrolment_tokens::expires_at_us.gt(now));
    let id: Option<i64> = target.select(enrolment_tokens::id).first(conn).optional()?;
    let id = id.ok_or_else(|| {
        Error::invalid(
            "token",
            "this enrolment token is not valid (used, replaced or expired)",
        )
    })?;
    let updated = diesel::update(
        enrolment_tokens::table
            .filter(enrolment_tokens::id.eq(id))
            .filter(enrolment_tokens::used_at_us.is_null()),
    )
    .set(enrolment_tokens::used_at_us.eq(now))
    .execute(conn)?;
    if updated == 1 {
        Ok(id)
    } else {
        Err(Error::invalid(
            "token",
            "this enrolment token was just used",
        ))
    }
}
