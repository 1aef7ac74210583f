//! Server-side sessions. The browser holds a random 256-bit id; the store holds only its
//! SHA-256. A session ends on logout, at its absolute or idle limit, on a password change,
//! and when the user is disabled. Every check takes `now`, so tests inject the clock.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel::prelude::*;
use serde::Serialize;

use crate::audit::{Actor, Audit, AuditEvent};
use crate::error::Result;
use crate::ids::{SessionId, UserId};
use crate::models::User;
use crate::schema::{sessions, users};
use crate::store::DbConnection;
use crate::store::on_backend;

/// How long a session may live, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub absolute_us: i64,
    pub idle_us: i64,
}

impl SessionLimits {
    /// 8 hours is the most any configuration may give.
    pub const MAX_ABSOLUTE_MINUTES: u32 = 8 * 60;

    pub fn from_minutes(absolute: u32, idle: u32) -> SessionLimits {
        SessionLimits {
            absolute_us: i64::from(absolute.min(Self::MAX_ABSOLUTE_MINUTES)) * 60_000_000,
            idle_us: i64::from(idle) * 60_000_000,
        }
    }
}

/// The id handed to the browser, shown only in the cookie.
#[derive(PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = sessions)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at_us: i64,
    pub last_seen_us: i64,
    pub source: String,
    pub user_agent: String,
    pub ended_at_us: Option<i64>,
    pub end_reason: Option<String>,
    /// `done`, or `pending` (the second factor is still to be checked), or `enrol` (one
    /// must be enrolled first). Only a `done` session reaches the portal's pages.
    pub second_factor: String,
    /// The last confirmation of the password after login, if any.
    pub authenticated_at_us: Option<i64>,
}

impl Session {
    /// When the user last proved who they are in this session.
    pub fn last_authenticated_us(&self) -> i64 {
        self.authenticated_at_us
            .unwrap_or(self.created_at_us)
            .max(self.created_at_us)
    }
}

/// Records that the user just confirmed their password (and second factor) again.
pub fn confirm_authentication(audit: &Audit, session: &Session, now: i64) -> Result<()> {
    audit.record_with(|conn| {
        diesel::update(sessions::table.find(session.id))
            .set(sessions::authenticated_at_us.eq(now))
            .execute(conn)?;
        let event = AuditEvent::new(Actor::User(session.user_id), "auth.reauthenticated")
            .target(session.id);
        Ok(((), vec![event]))
    })
}

/// Where a new session stands with the second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondFactor {
    Done,
    Pending,
    Enrol,
}

impl SecondFactor {
    pub fn as_str(self) -> &'static str {
        match self {
            SecondFactor::Done => "done",
            SecondFactor::Pending => "pending",
            SecondFactor::Enrol => "enrol",
        }
    }
}

fn hash(token: &str) -> Vec<u8> {
    openssl::sha::sha256(token.as_bytes()).to_vec()
}

/// Starts a session for `user`. Each login gets a fresh id, so an id seen before login
/// never becomes a logged-in one.
pub fn start(
    conn: &mut DbConnection,
    user: UserId,
    source: &str,
    user_agent: &str,
    now: i64,
    second_factor: SecondFactor,
) -> Result<(SessionToken, Session)> {
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes)?;
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let user_agent: String = user_agent.chars().take(300).collect();
    let session = on_backend!(conn, c => diesel::insert_into(sessions::table)
        .values((
            sessions::token_hash.eq(hash(&token)),
            sessions::user_id.eq(user),
            sessions::created_at_us.eq(now),
            sessions::last_seen_us.eq(now),
            sessions::source.eq(source),
            sessions::user_agent.eq(&user_agent),
            sessions::second_factor.eq(second_factor.as_str()),
        ))
        .returning(Session::as_returning())
        .get_result(c))?;
    Ok((SessionToken(token), session))
}

/// Why a presented session id does not log anyone in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Unknown,
    Ended,
    AbsoluteLimit,
    IdleLimit,
    UserCannotLogIn,
}

/// The session and its user for a presented id, or why not. A session found past a limit
/// is ended (and audited) here, so it cannot come back.
pub fn resume(
    audit: &Audit,
    token: &str,
    now: i64,
    limits: SessionLimits,
) -> Result<std::result::Result<(Session, User), Rejected>> {
    let mut conn = audit.store().conn()?;
    // The user's disabled and expiry times, and their organisation's disabled time.
    type Found = (Session, User, Option<i64>, Option<i64>, Option<i64>);
    let found: Option<Found> = sessions::table
        .inner_join(users::table.inner_join(crate::schema::organisations::table))
        .filter(sessions::token_hash.eq(hash(token)))
        .select((
            Session::as_select(),
            User::as_select(),
            users::disabled_at_us,
            users::expires_at_us,
            crate::schema::organisations::disabled_at_us,
        ))
        .first(&mut *conn)
        .optional()?;
    drop(conn);
    let Some((session, user, disabled, expires, organisation_disabled)) = found else {
        return Ok(Err(Rejected::Unknown));
    };
    if session.ended_at_us.is_some() {
        return Ok(Err(Rejected::Ended));
    }
    let expired = if now - session.created_at_us >= limits.absolute_us {
        Some((Rejected::AbsoluteLimit, "absolute limit"))
    } else if now - session.last_seen_us >= limits.idle_us {
        Some((Rejected::IdleLimit, "idle limit"))
    } else if disabled.is_some()
        || organisation_disabled.is_some()
        || expires.is_some_and(|at| at <= now)
    {
        Some((Rejected::UserCannotLogIn, "account disabled or expired"))
    } else {
        None
    };
    if let Some((rejected, reason)) = expired {
        end(audit, &Actor::System("web".into()), session.id, reason, now)?;
        return Ok(Err(rejected));
    }
    // Write the last-seen time at most once a minute, not on every request.
    // On a full disk the page is still served (reading stores nothing); the time is written
    // at a later request, and meanwhile the idle limit counts from the last one written.
    if now - session.last_seen_us >= 60_000_000 {
        let mut conn = audit.store().conn()?;
        let written = diesel::update(sessions::table.find(session.id))
            .set(sessions::last_seen_us.eq(now))
            .execute(&mut *conn)
            .map_err(crate::Error::from);
        match written {
            Err(err) if err.is_storage_full() => {
                tracing::warn!(error = %err, "session last-seen time not written");
            }
            other => {
                other?;
            }
        }
    }
    Ok(Ok((
        Session {
            last_seen_us: now,
            ..session
        },
        user,
    )))
}

/// Ends one session; audited as `auth.session.ended` with the reason.
pub fn end(
    audit: &Audit,
    actor: &Actor,
    session: SessionId,
    reason: &str,
    now: i64,
) -> Result<bool> {
    audit.record_with(|conn| {
        let ended = diesel::update(
            sessions::table
                .find(session)
                .filter(sessions::ended_at_us.is_null()),
        )
        .set((
            sessions::ended_at_us.eq(now),
            sessions::end_reason.eq(reason),
        ))
        .execute(conn)?;
        let events = (ended == 1)
            .then(|| {
                AuditEvent::new(actor.clone(), "auth.session.ended")
                    .target(session)
                    .details(serde_json::json!({ "reason": reason }))
            })
            .into_iter()
            .collect();
        Ok((ended == 1, events))
    })
}

/// Ends every open session of `user` except `keep`; returns how many ended.
pub fn end_all(
    conn: &mut DbConnection,
    user: UserId,
    keep: Option<SessionId>,
    reason: &str,
    now: i64,
) -> Result<usize> {
    let open = sessions::table
        .filter(sessions::user_id.eq(user))
        .filter(sessions::ended_at_us.is_null());
    let ended = match keep {
        Some(keep) => diesel::update(open.filter(sessions::id.ne(keep)))
            .set((
                sessions::ended_at_us.eq(now),
                sessions::end_reason.eq(reason),
            ))
            .execute(conn)?,
        None => diesel::update(open)
            .set((
                sessions::ended_at_us.eq(now),
                sessions::end_reason.eq(reason),
            ))
            .execute(conn)?,
    };
    Ok(ended)
}

/// Ends every open session of `user` that still waits for its second factor (a sign-in
/// that gave the password only); returns how many ended.
pub fn end_pending(conn: &mut DbConnection, user: UserId, reason: &str, now: i64) -> Result<usize> {
    Ok(diesel::update(
        sessions::table
            .filter(sessions::user_id.eq(user))
            .filter(sessions::ended_at_us.is_null())
            .filter(sessions::second_factor.eq(SecondFactor::Pending.as_str())),
    )
    .set((
        sessions::ended_at_us.eq(now),
        sessions::end_reason.eq(reason),
    ))
    .execute(conn)?)
}

/// The user's sessions that are still open and inside their limits.
pub fn open_sessions(
    conn: &mut DbConnection,
    user: UserId,
    now: i64,
    limits: SessionLimits,
) -> Result<Vec<Session>> {
    Ok(sessions::table
        .filter(sessions::user_id.eq(user))
        .filter(sessions::ended_at_us.is_null())
        .filter(sessions::created_at_us.gt(now - limits.absolute_us))
        .filter(sessions::last_seen_us.gt(now - limits.idle_us))
        .order(sessions::created_at_us.desc())
        .select(Session::as_select())
        .load(conn)?)
}
