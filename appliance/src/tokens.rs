//! REST API tokens for service accounts: scoped, expiring and revocable. A token is shown
//! once; the store keeps its SHA-256 (it is 256 random bits, so a fast hash is enough), and
//! every request looks it up again, so a revocation counts from the next request on.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel::prelude::*;
use serde::Serialize;

use crate::audit::{Actor, Audit, AuditEvent};
use crate::error::{Error, Result};
use crate::ids::{TokenId, UserId};
use crate::models::User;
use crate::schema::{api_tokens, users};
use crate::store::DbConnection;
use crate::store::on_backend;
use crate::time::format_us;

/// What a token may do.
pub const SCOPES: [&str; 13] = [
    "audit:read",
    "users:read",
    "grants:read",
    "readings:read",
    "access:read",
    "firmware:read",
    "firmware:write",
    "devices:read",
    "devices:write",
    "alerts:read",
    "alerts:write",
    "connectors:read",
    "connectors:write",
];
pub const MAX_DAYS: u32 = 366;
const PREFIX: &str = "pgt_";

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = api_tokens)]
pub struct ApiToken {
    pub id: TokenId,
    pub user_id: UserId,
    pub name: String,
    pub scopes: String,
    pub created_at_us: i64,
    pub expires_at_us: i64,
    pub revoked_at_us: Option<i64>,
    pub last_used_at_us: Option<i64>,
}

impl ApiToken {
    pub fn allows(&self, scope: &str) -> bool {
        self.scopes.split(',').any(|s| s == scope)
    }
}

/// A token as handed to its owner; shown once.
pub struct TokenSecret(String);

impl TokenSecret {
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

fn hash(secret: &str) -> Vec<u8> {
    openssl::sha::sha256(secret.as_bytes()).to_vec()
}

/// Issues a token for `user` with `scopes`, valid for `days`; audited.
pub fn create(
    audit: &Audit,
    actor: &Actor,
    user: &User,
    name: &str,
    scopes: &[String],
    days: u32,
    now: i64,
) -> Result<(TokenSecret, ApiToken)> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Error::invalid(
            "name",
            "name the token (1-100 characters), e.g. after the system that uses it",
        ));
    }
    if scopes.is_empty() {
        return Err(Error::invalid(
            "scopes",
            format!("give at least one of {}", SCOPES.join(", ")),
        ));
    }
    if let Some(unknown) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(Error::invalid(
            "scopes",
            format!("{unknown:?} is not a scope; allowed: {}", SCOPES.join(", ")),
        ));
    }
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(Error::invalid(
            "days",
            format!("a token lives 1 to {MAX_DAYS} days"),
        ));
    }
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes)?;
    let secret = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let scopes = scopes.join(",");
    let expires = now + i64::from(days) * 86_400_000_000;
    let token = audit.record_with(|conn| {
        let token: ApiToken = on_backend!(conn, c => diesel::insert_into(api_tokens::table)
            .values((
                api_tokens::token_hash.eq(hash(&secret)),
                api_tokens::user_id.eq(user.id),
                api_tokens::name.eq(name),
                api_tokens::scopes.eq(&scopes),
                api_tokens::created_at_us.eq(now),
                api_tokens::expires_at_us.eq(expires),
            ))
            .returning(ApiToken::as_returning())
            .get_result(c))?;
        let event = AuditEvent::new(actor.clone(), "api.token.created")
            .target(token.id)
            .details(serde_json::json!({
                "user": user.id, "name": name, "scopes": scopes, "expires": format_us(expires),
            }));
        Ok((token, vec![event]))
    })?;
    Ok((TokenSecret(secret), token))
}

pub fn revoke(audit: &Audit, actor: &Actor, id: TokenId, now: i64) -> Result<()> {
    audit.record_with(|conn| {
        let updated = diesel::update(
            api_tokens::table
                .find(id)
                .filter(api_tokens::revoked_at_us.is_null()),
        )
        .set(api_tokens::revoked_at_us.eq(now))
        .execute(conn)?;
        if updated == 0 {
            return Err(Error::NotFound("token"));
        }
        Ok((
            (),
            vec![AuditEvent::new(actor.clone(), "api.token.revoked").target(id)],
        ))
    })
}

/// The token and its user for a presented secret, if it is live and its user may log in.
pub fn authenticate(
    conn: &mut DbConnection,
    secret: &str,
    now: i64,
) -> Result<Option<(ApiToken, User)>> {
    if !secret.starts_with(PREFIX) {
        return Ok(None);
    }
    let found: Option<(ApiToken, User, Option<i64>, Option<i64>)> = api_tokens::table
        .inner_join(users::table)
        .filter(api_tokens::token_hash.eq(hash(secret)))
        .select((
            ApiToken::as_select(),
            User::as_select(),
            users::disabled_at_us,
            users::expires_at_us,
        ))
        .first(conn)
        .optional()?;
    let Some((token, user, disabled, user_expires)) = found else {
        return Ok(None);
    };
    let live = token.revoked_at_us.is_none()
        && token.expires_at_us > now
        && disabled.is_none()
        && user_expires.is_none_or(|at| at > now);
    if !live {
        return Ok(None);
    }
    // Last use, at most once a minute per token.
    if token
        .last_used_at_us
        .is_none_or(|at| now - at >= 60_000_000)
    {
        diesel::update(api_tokens::table.find(token.id))
            .set(api_tokens::last_used_at_us.eq(now))
            .execute(conn)?;
    }
    Ok(Some((token, user)))
}

pub fn list(conn: &mut DbConnection) -> Result<Vec<ApiToken>> {
    Ok(api_tokens::table
        .order(api_tokens::id)
        .select(ApiToken::as_select())
        .load(conn)?)
}
