//! Sign-in: checking a password, counting wrong ones and locking (for new browsers and
//! for each known browser; `crate::lockout` keeps the counters), remembering the browsers
//! an account signed in with, and an administrator's unlock.
//!
//! A login's outcome is recorded in the audit log with its real reason, but the caller only
//! learns success or refusal, so no message reveals whether an account exists.

use diesel::prelude::*;

use super::passwords::{decoy_hash, verify_password};
use crate::audit::{Actor, Audit, AuditEvent, Outcome};
use crate::error::{Error, Result};
use crate::ids::UserId;
use crate::lockout::{Counter, Reserved};
use crate::models::User;
use crate::refusals::{CheckGate, Noted, Refusals};
use crate::schema::{organisations, users};
use crate::store::DbConnection;
use crate::time::format_us;

/// How many failures lock an account, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    pub attempts: u32,
    pub minutes: u32,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
struct Credentials {
    id: UserId,
    password_hash: Option<String>,
    disabled_at_us: Option<i64>,
    expires_at_us: Option<i64>,
}

/// A login attempt's result. Only `user` matters to the caller; `reason` is for the log.
#[derive(Debug, Clone)]
pub struct LoginResult {
    pub user: Option<User>,
    pub reason: &'static str,
}

/// The reason of an attempt refused unchecked because too many password checks wait.
pub const TOO_BUSY: &str = "too busy";

impl LoginResult {
    /// Refused unchecked because too many password checks wait: the caller says "try again
    /// shortly" (429 with `Retry-After`), not "wrong password".
    pub fn too_busy(&self) -> bool {
        self.reason == TOO_BUSY
    }
}

/// True when the user's organisation is disabled.
fn organisation_disabled(audit: &Audit, user: UserId) -> Result<bool> {
    let disabled: Option<Option<i64>> = users::table
        .inner_join(organisations::table)
        .filter(users::id.eq(user))
        .select(organisations::disabled_at_us)
        .first(&mut *audit.store().conn()?)
        .optional()?;
    Ok(disabled.flatten().is_some())
}

/// Checks `email` and `password` at `now` from a browser that presents no known-browser
/// cookie; see [`login_from`].
pub fn login(
    audit: &Audit,
    email: &str,
    password: &str,
    source: &str,
    now: i64,
    lockout: Lockout,
) -> Result<LoginResult> {
    login_from(audit, email, password, source, None, now, lockout)
}

/// Checks `email` and `password` at `now` and records the attempt. A locked, disabled or
/// expired account is refused even with the right password.
///
/// `browser` is the known-browser cookie the request carried, if any. Wrong passwords are
/// counted for that browser when it is one the account signed in with before, else for
/// the account's "new browsers" (`crate::lockout` explains why). Each attempt is counted
/// in the store before the password is checked, and one that finds its budget spent or
/// locked is refused without computing a hash: `lockout.attempts` guesses arriving at once
/// are all counted, and only that many are ever checked. Every refusal is recorded, and the
/// password check waits for the [`CheckGate`] as long as it takes; the sign-in page uses
/// [`login_summarised`] instead.
pub fn login_from(
    audit: &Audit,
    email: &str,
    password: &str,
    source: &str,
    browser: Option<&str>,
    now: i64,
    lockout: Lockout,
) -> Result<LoginResult> {
    let attempt = Attempt {
        email,
        password,
        source,
        browser,
        now,
    };
    check_login(audit, None, &attempt, lockout)
}

/// One sign-in attempt as it arrived: `browser` is its known-browser cookie, if any.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub email: &'a str,
    pub password: &'a str,
    pub source: &'a str,
    pub browser: Option<&'a str>,
    pub now: i64,
}

/// [`login_from`] for the sign-in page under a flood: refusals go through `refusals`
/// (each kind recorded in full once per source and window, the rest summarised; see
/// `crate::refusals`), and when too many password checks already wait for the
/// [`CheckGate`] the attempt is refused at once, as [`LoginResult::too_busy`], counting
/// nothing. Successful sign-ins, wrong passwords, locks and a right password on a closed
/// account are recorded one by one as always.
pub fn login_summarised(
    audit: &Audit,
    refusals: &Refusals,
    attempt: &Attempt<'_>,
    lockout: Lockout,
) -> Result<LoginResult> {
    check_login(audit, Some(refusals), attempt, lockout)
}

fn check_login(
    audit: &Audit,
    refusals: Option<&Refusals>,
    attempt: &Attempt<'_>,
    lockout: Lockout,
) -> Result<LoginResult> {
    let Attempt {
        password,
        source,
        browser,
        now,
        ..
    } = *attempt;
    let email = attempt.email.trim().to_lowercase();
    // Refusals that cost nothing to repeat are summarised on the sign-in page; elsewhere
    // (and the first of each kind) they are recorded in full.
    let in_full = |reason: &'static str| {
        refusals.is_none_or(|r| r.note(source, reason, Some(&email), now) == Noted::InFull)
    };
    // The sign-in page refuses rather than queue without end; other callers wait.
    let gate = CheckGate::shared();
    let enter = || gate.enter(refusals.is_some());
    let busy = |actor: Actor, target: Option<UserId>| -> Result<LoginResult> {
        if in_full(TOO_BUSY) {
            let mut event = AuditEvent::new(actor, "auth.login.failed")
                .source(source)
                .outcome(Outcome::Denied)
                .details(serde_json::json!({ "reason": TOO_BUSY, "email": email }));
            if let Some(user) = target {
                event = event.target(user);
            }
            audit.record(event)?;
        }
        Ok(LoginResult {
            user: None,
            reason: TOO_BUSY,
        })
    };
    let mut conn = audit.store().conn()?;
    let found: Option<Credentials> = users::table
        .filter(users::email.eq(&email))
        .select(Credentials::as_select())
        .first(&mut *conn)
        .optional()?;
    let known = match (&found, browser) {
        (Some(account), Some(token)) => {
            crate::lockout::known_browser(&mut conn, account.id, token, now)?
        }
        _ => None,
    };
    drop(conn);
    let Some(account) = found else {
        let Some(pass) = enter() else {
            return busy(Actor::System("web".into()), None);
        };
        verify_password(decoy_hash(), password);
        drop(pass);
        if in_full("unknown account") {
            let event = AuditEvent::new(Actor::System("web".into()), "auth.login.failed")
                .source(source)
                .outcome(Outcome::Failure)
                .details(serde_json::json!({ "reason": "unknown account", "email": email }));
            audit.record(event)?;
        }
        return Ok(LoginResult {
            user: None,
            reason: "unknown account",
        });
    };
    let actor = Actor::User(account.id);
    let (counter, browser) = match known {
        Some(id) => (Counter::KnownBrowser(id), "known"),
        None => (Counter::NewBrowsers(account.id), "new"),
    };
    // An account that cannot sign in at all is refused first, and counts nothing.
    let closed = if account.disabled_at_us.is_some() {
        Some("account disabled")
    } else if organisation_disabled(audit, account.id)? {
        Some("organisation disabled")
    } else if account.expires_at_us.is_some_and(|at| at <= now) {
        Some("account expired")
    } else {
        None
    };
    if let Some(reason) = closed {
        let Some(pass) = enter() else {
            return busy(actor, Some(account.id));
        };
        let password_ok = verify_password(
            account.password_hash.as_deref().unwrap_or(decoy_hash()),
            password,
        ) && account.password_hash.is_some();
        drop(pass);
        // Someone who has the password of a closed account is always worth a record.
        if password_ok || in_full(reason) {
            audit.record(
                AuditEvent::new(actor, "auth.login.failed")
                    .source(source)
                    .target(account.id)
                    .outcome(Outcome::Denied)
                    .details(
                        serde_json::json!({ "reason": reason, "password_correct": password_ok }),
                    ),
            )?;
        }
        return Ok(LoginResult { user: None, reason });
    }
    let until = now + i64::from(lockout.minutes) * 60_000_000;
    let lock = LockNotice {
        actor: &actor,
        email: &email,
        user: account.id,
        counter,
        attempts: lockout.attempts,
        source,
        until,
        now,
    };
    let reserved = counter.reserve(&mut *audit.store().conn()?, lockout.attempts, now)?;
    let Reserved::Attempt(failures) = reserved else {
        // Locked, or every attempt of the budget is being checked right now: refused
        // before any hash is computed.
        let full = in_full("account locked");
        // The lock itself is always recorded, by the one caller that sets it; when the
        // counter is locked already (the usual case in a flood) there is nothing to set,
        // and a summarised refusal then writes nothing at all.
        let unlocked = counter.state(&mut *audit.store().conn()?)?.1.is_none();
        if full || unlocked {
            audit.record_with(|conn| {
                let mut events = Vec::new();
                if full {
                    events.push(
                        AuditEvent::new(actor.clone(), "auth.login.failed")
                            .source(source)
                            .target(account.id)
                            .outcome(Outcome::Denied)
                            .details(serde_json::json!({ "reason": "account locked", "browser": browser })),
                    );
                }
                events.extend(lock.apply(conn)?);
                Ok(((), events))
            })?;
        }
        return Ok(LoginResult {
            user: None,
            reason: "account locked",
        });
    };
    let Some(pass) = enter() else {
        // Not checked, so no guess: its place in the budget goes back.
        counter.release(&mut *audit.store().conn()?)?;
        return busy(actor, Some(account.id));
    };
    let password_ok = verify_password(
        account.password_hash.as_deref().unwrap_or(decoy_hash()),
        password,
    ) && account.password_hash.is_some();
    drop(pass);
    if !password_ok {
        audit.record_with(|conn| {
            let mut events = vec![
                AuditEvent::new(actor.clone(), "auth.login.failed")
                    .source(source)
                    .target(account.id)
                    .outcome(Outcome::Failure)
                    .details(serde_json::json!({
                        "reason": "wrong password", "failures": failures, "browser": browser,
                    })),
            ];
            // The count the store returned decides: the attempt that fills the budget locks.
            if i64::from(failures) >= i64::from(lockout.attempts) {
                events.extend(lock.apply(conn)?);
            }
            Ok(((), events))
        })?;
        return Ok(LoginResult {
            user: None,
            reason: "wrong password",
        });
    }
    let user = audit.record_with(|conn| {
        counter.reset(conn)?;
        let user = users::table
            .find(account.id)
            .select(User::as_select())
            .first(conn)?;
        let event = AuditEvent::new(actor.clone(), "auth.login.succeeded")
            .source(source)
            .target(account.id)
            .details(serde_json::json!({ "browser": browser }));
        Ok((user, vec![event]))
    })?;
    Ok(LoginResult {
        user: Some(user),
        reason: "ok",
    })
}

/// What locking a counter of a password attempt tells: the audit record and the owner's
/// email, once per lock.
struct LockNotice<'a> {
    actor: &'a Actor,
    email: &'a str,
    user: UserId,
    counter: Counter,
    attempts: u32,
    source: &'a str,
    until: i64,
    now: i64,
}

impl LockNotice<'_> {
    /// Locks the counter unless it is locked already; when this call locked it, queues the
    /// owner's email and returns the audit record.
    fn apply(&self, conn: &mut DbConnection) -> Result<Option<AuditEvent>> {
        if !self.counter.lock(conn, self.until)? {
            return Ok(None);
        }
        let (attempts, source, until) = (self.attempts, self.source, format_us(self.until));
        let (scope, browser) = match self.counter {
            Counter::KnownBrowser(id) => ("known browser", Some(id)),
            _ => ("new browsers", None),
        };
        crate::mail::enqueue(
            conn,
            self.email,
            &crate::emails::account_locked(browser.is_some(), attempts, source, self.until),
            &self.user.to_string(),
            self.now,
        )?;
        Ok(Some(
            AuditEvent::new(self.actor.clone(), "auth.account.locked")
                .source(self.source)
                .target(self.user)
                .outcome(Outcome::Denied)
                .details(serde_json::json!({
                    "until": until, "after_failures": attempts, "scope": scope, "browser": browser,
                })),
        ))
    }
}

/// Remembers the browser a user just signed in with (password and any second factor):
/// returns the cookie value to give it, the one it presented when that is one of the
/// user's known browsers. A new browser is audited `auth.browser.remembered`.
pub fn remember_browser(
    audit: &Audit,
    user: UserId,
    presented: Option<&str>,
    source: &str,
    user_agent: &str,
    now: i64,
) -> Result<String> {
    audit.record_with(|conn| {
        let (token, new) =
            crate::lockout::remember_browser(conn, user, presented, source, user_agent, now)?;
        let events = new
            .then(|| {
                AuditEvent::new(Actor::User(user), "auth.browser.remembered")
                    .source(source)
                    .target(user)
                    .details(serde_json::json!({ "user_agent": user_agent.chars().take(300).collect::<String>() }))
            })
            .into_iter()
            .collect();
        Ok((token, events))
    })
}

/// Lifts a lockout before it runs out: wrong passwords from new browsers and from each
/// known browser, and wrong second-factor codes. `user` must belong to `organisation`.
pub fn unlock(
    audit: &Audit,
    actor: &Actor,
    organisation: crate::ids::OrganisationId,
    user: UserId,
) -> Result<()> {
    audit.record_with(|conn| {
        let found: Option<UserId> = users::table
            .find(user)
            .filter(users::organisation_id.eq(organisation))
            .select(users::id)
            .first(conn)
            .optional()?;
        if found.is_none() {
            return Err(Error::NotFound("user"));
        }
        crate::lockout::clear_all(conn, user)?;
        Ok((
            (),
            vec![AuditEvent::new(actor.clone(), "auth.account.unlocked").target(user)],
        ))
    })
}
