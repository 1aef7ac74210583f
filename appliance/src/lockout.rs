//! Attempt counters for sign-in secrets (passwords and second-factor codes), and the
//! browsers an account has signed in with before.
//!
//! # Counting every attempt
//!
//! An attempt is counted *before* its secret is checked, by one statement the store runs
//! atomically on both backends:
//!
//! ```sql
//! UPDATE users SET failed_logins = failed_logins + 1
//!  WHERE id = $1 AND locked_until_us IS NULL AND failed_logins < $limit
//! RETURNING failed_logins
//! ```
//!
//! The number the store returns is this attempt's place in the budget; no row back means
//! the budget is spent (or locked) and the attempt is refused without computing a hash. So
//! however many guesses arrive at the same moment, exactly `limit` of them are checked,
//! and the lock is decided from the returned count, never from a value read earlier. A
//! secret that turns out right gives its place back (the count starts again at 0).
//!
//! # Whom a lock shuts out (the threat model)
//!
//! A hard per-account lock lets anyone who knows an email address keep its owner out by
//! guessing five times every quarter of an hour. Plantgate follows OWASP's "device cookie"
//! scheme (as NIST SP 800-63B 5.2.2 allows: rate limiting that does not let an attacker
//! deny the subscriber): a successful sign-in (password and, where enrolled, second
//! factor) gives the browser a random cookie (`known_browsers`, stored as SHA-256, kept for
//! [`KNOWN_BROWSER_DAYS`] after its last sign-in). Wrong passwords are then counted
//!
//! - per known browser, for attempts that present that browser's cookie: a stranger cannot
//!   reach this counter without the cookie, so the owner keeps signing in while an
//!   attacker is locked out; and someone who stole a cookie still gets only `limit` guesses;
//! - per account, for every other browser ("new browsers"): the attacker's guesses lock
//!   this one, which also stops a distributed guess from many addresses.
//!
//! The owner on a browser never used before shares the attacker's lock until it ends
//! (`web.lockout_minutes`) or an administrator unlocks the account; that is the price of
//! counting a guess from anywhere. Second-factor codes are counted per account (see
//! `second_factor::check`): only someone who already has the password reaches them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel::prelude::*;

use crate::error::Result;
use crate::ids::UserId;
use crate::schema::{known_browsers, users};
use crate::store::DbConnection;
use crate::store::on_backend;

/// A known browser stays known this long after its last successful sign-in.
pub const KNOWN_BROWSER_DAYS: i64 = 90;
/// The most browsers one account keeps; the least recently used go first.
pub const KNOWN_BROWSERS_PER_ACCOUNT: i64 = 20;

const DAY_US: i64 = 86_400_000_000;

/// One budget of attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Wrong passwords for an account from browsers it has not signed in with before.
    NewBrowsers(UserId),
    /// Wrong passwords from one known browser (its `known_browsers.id`).
    KnownBrowser(i64),
    /// Wrong second-factor codes for an account.
    Codes(UserId),
}

/// Runs `$body` with `$target` the counter's row and `$failures` / `$locked` its columns.
macro_rules! on_counter {
    ($counter:expr, |$target:ident, $failures:ident, $locked:ident| $body:expr) => {
        match $counter {
            Counter::NewBrowsers(user) => {
                #[allow(unused_imports)]
                use crate::schema::users::{
                    failed_logins as $failures, locked_until_us as $locked,
                };
                let $target = users::table.find(user);
                $body
            }
            Counter::KnownBrowser(id) => {
                #[allow(unused_imports)]
                use crate::schema::known_browsers::{
                    failed_logins as $failures, locked_until_us as $locked,
                };
                let $target = known_browsers::table.find(id);
                $body
            }
            Counter::Codes(user) => {
                #[allow(unused_imports)]
                use crate::schema::users::{
                    code_failures as $failures, code_locked_until_us as $locked,
                };
                let $target = users::table.find(user);
                $body
            }
        }
    };
}

/// Where an attempt stands after [`Counter::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// The attempt may be checked; it is the `n`th since the last success (1-based).
    Attempt(i32),
    /// The budget is spent or locked: refuse without checking.
    Refused,
}

impl Counter {
    /// Counts one attempt, atomically, and says whether it may be checked. A lock that ran
    /// out by `now` is lifted first (and its count cleared).
    pub fn reserve(self, conn: &mut DbConnection, limit: u32, now: i64) -> Result<Reserved> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        on_counter!(self, |target, failures, locked| {
            diesel::update(target.filter(locked.le(now)))
                .set((failures.eq(0), locked.eq(None::<i64>)))
                .execute(conn)?;
            let counted: Option<i32> = on_backend!(conn, c => diesel::update(
                target.filter(locked.is_null()).filter(failures.lt(limit)),
            )
            .set(failures.eq(failures + 1))
            .returning(failures)
            .get_result(c)
            .optional())?;
            Ok(counted.map_or(Reserved::Refused, Reserved::Attempt))
        })
    }

    /// Locks the counter until `until` unless it is locked already; true when this call
    /// locked it (so exactly one caller audits and emails a lock).
    pub fn lock(self, conn: &mut DbConnection, until: i64) -> Result<bool> {
        on_counter!(self, |target, _failures, locked| {
            Ok(diesel::update(target.filter(locked.is_null()))
                .set(locked.eq(until))
                .execute(conn)?
                == 1)
        })
    }

    /// Gives back the place [`Counter::reserve`] counted for an attempt that was then not
    /// checked at all (the password checks were too busy): it was no guess. A lock set
    /// meanwhile stays, with its count.
    pub fn release(self, conn: &mut DbConnection) -> Result<()> {
        on_counter!(self, |target, failures, locked| {
            diesel::update(target.filter(locked.is_null()).filter(failures.gt(0)))
                .set(failures.eq(failures - 1))
                .execute(conn)?;
            Ok(())
        })
    }

    /// A right secret: the count starts again.
    pub fn reset(self, conn: &mut DbConnection) -> Result<()> {
        on_counter!(self, |target, failures, locked| {
            diesel::update(target)
                .set((failures.eq(0), locked.eq(None::<i64>)))
                .execute(conn)?;
            Ok(())
        })
    }

    /// The current count and lock, for messages and tests.
    pub fn state(self, conn: &mut DbConnection) -> Result<(i32, Option<i64>)> {
        on_counter!(self, |target, failures, locked| {
            Ok(target.select((failures, locked)).first(conn)?)
        })
    }
}

/// Clears every counter of `user`: new browsers, each known browser, and codes. For an
/// administrator's unlock.
pub fn clear_all(conn: &mut DbConnection, user: UserId) -> Result<()> {
    Counter::NewBrowsers(user).reset(conn)?;
    Counter::Codes(user).reset(conn)?;
    diesel::update(known_browsers::table.filter(known_browsers::user_id.eq(user)))
        .set((
            known_browsers::failed_logins.eq(0),
            known_browsers::locked_until_us.eq(None::<i64>),
        ))
        .execute(conn)?;
    Ok(())
}

fn browser_hash(token: &str) -> Vec<u8> {
    openssl::sha::sha256(format!("plantgate known browser\0{token}").as_bytes()).to_vec()
}

/// The known browser of `user` that `token` (the cookie's value) names, if it is still
/// known at `now`.
pub fn known_browser(
    conn: &mut DbConnection,
    user: UserId,
    token: &str,
    now: i64,
) -> Result<Option<i64>> {
    if token.is_empty() {
        return Ok(None);
    }
    Ok(known_browsers::table
        .filter(known_browsers::user_id.eq(user))
        .filter(known_browsers::token_hash.eq(browser_hash(token)))
        .filter(known_browsers::last_signed_in_at_us.gt(now - KNOWN_BROWSER_DAYS * DAY_US))
        .select(known_browsers::id)
        .first(conn)
        .optional()?)
}

/// A browser's cookie after a successful sign-in: the one it presented if that is a known
/// browser of `user` (its time is renewed), else a new one. The second value is true when
/// the browser is new, for the caller to audit.
pub fn remember_browser(
    conn: &mut DbConnection,
    user: UserId,
    presented: Option<&str>,
    source: &str,
    user_agent: &str,
    now: i64,
) -> Result<(String, bool)> {
    if let Some(token) = presented
        && let Some(id) = known_browser(conn, user, token, now)?
    {
        diesel::update(known_browsers::table.find(id))
            .set(known_browsers::last_signed_in_at_us.eq(now))
            .execute(conn)?;
        return Ok((token.to_owned(), false));
    }
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes)?;
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let user_agent: String = user_agent.chars().take(300).collect();
    diesel::insert_into(known_browsers::table)
        .values((
            known_browsers::user_id.eq(user),
            known_browsers::token_hash.eq(browser_hash(&token)),
            known_browsers::created_at_us.eq(now),
            known_browsers::last_signed_in_at_us.eq(now),
            known_browsers::source.eq(source),
            known_browsers::user_agent.eq(&user_agent),
        ))
        .execute(conn)?;
    // Keep the newest few; forget the rest and any that are no longer known.
    let keep: Vec<i64> = known_browsers::table
        .filter(known_browsers::user_id.eq(user))
        .order((
            known_browsers::last_signed_in_at_us.desc(),
            known_browsers::id.desc(),
        ))
        .limit(KNOWN_BROWSERS_PER_ACCOUNT)
        .select(known_browsers::id)
        .load(conn)?;
    diesel::delete(
        known_browsers::table
            .filter(known_browsers::user_id.eq(user))
            .filter(known_browsers::id.ne_all(keep)),
    )
    .execute(conn)?;
    Ok((token, true))
}
