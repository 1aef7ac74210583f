//! The second factor: TOTP (RFC 6238: SHA-1, 6 digits, 30-second steps, one step of clock
//! skew either way) and ten one-time recovery codes; or, as the alternative, a one-time
//! code sent by email (8 digits, good once, for ten minutes).
//!
//! A code is accepted once: the last accepted time step is stored, and a code for that step
//! or an earlier one is refused as a replay, atomically, even if two requests race.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use diesel::prelude::*;
use totp_rs::{Algorithm, Secret, TOTP};

use crate::audit::{Actor, Audit, AuditEvent, Outcome};
use crate::connectors::SealingKey;
use crate::emails;
use crate::error::{Error, Result};
use crate::ids::UserId;
use crate::lockout::{Counter, Reserved};
use crate::models::{Role, User};
use crate::schema::{email_codes, recovery_codes, users};
use crate::sessions::SecondFactor;
use crate::store::DbConnection;

pub const ISSUER: &str = "Plantgate";
const STEP_SECONDS: i64 = 30;
pub const RECOVERY_CODES: usize = 10;

fn totp(secret_base32: &str, account: &str) -> Result<TOTP> {
    let bytes = Secret::Encoded(secret_base32.to_owned())
        .to_bytes()
        .map_err(|_| Error::invalid("secret", "not a base32 TOTP secret"))?;
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        STEP_SECONDS as u64,
        bytes,
        Some(ISSUER.to_owned()),
        account.to_owned(),
    )
    .map_err(|err| Error::invalid("secret", err.to_string()))
}

/// A new random secret (160 bits, as RFC 4226 recommends), base32.
pub fn new_secret() -> Result<String> {
    let mut bytes = [0u8; 20];
    openssl::rand::rand_bytes(&mut bytes)?;
    Ok(Secret::Raw(bytes.to_vec()).to_encoded().to_string())
}

/// The `otpauth://` URI an authenticator app scans.
pub fn provisioning_uri(secret: &str, email: &str) -> Result<String> {
    Ok(totp(secret, email)?.get_url())
}

/// The code for `now` (microseconds); what an authenticator app would show.
pub fn code_at(secret: &str, now_us: i64) -> Result<String> {
    Ok(totp(secret, "")?.generate(u64::try_from(now_us / 1_000_000).unwrap_or(0)))
}

/// The time step `code` belongs to, within one step of `now`, if any.
fn matching_step(secret: &str, code: &str, now_us: i64) -> Result<Option<i64>> {
    let code = code.trim().replace(' ', "");
    if code.len() != 6 || !code.chars().all(|c| c.is_ascii_digit()) {
        return Ok(None);
    }
    let totp = totp(secret, "")?;
    let step = now_us / 1_000_000 / STEP_SECONDS;
    for candidate in [step - 1, step, step + 1] {
        let expected = totp.generate(u64::try_from(candidate * STEP_SECONDS).unwrap_or(0));
        if openssl::memcmp::eq(expected.as_bytes(), code.as_bytes()) {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// What the store holds of a TOTP secret: `sealed:` and the base64 of the secret sealed
/// under the appliance's sealing key for this user, so a copy of the database alone
/// cannot produce codes.
const SEALED_PREFIX: &str = "sealed:";

fn purpose(user: UserId) -> Vec<u8> {
    format!("plantgate totp secret of user {}", user.0).into_bytes()
}

fn seal(key: &SealingKey, user: UserId, secret: &str) -> Result<String> {
    let sealed = key.seal_for(&purpose(user), secret)?;
    Ok(format!("{SEALED_PREFIX}{}", STANDARD.encode(sealed)))
}

/// The secret in its stored form. Secrets stored before sealing existed are read as they
/// are, and sealed at the user's next enrolment.
fn unseal(key: &SealingKey, user: UserId, stored: &str) -> Result<String> {
    match stored.strip_prefix(SEALED_PREFIX) {
        Some(encoded) => {
            let sealed = STANDARD
                .decode(encoded)
                .map_err(|_| Error::invalid("totp_secret", "the stored secret is damaged"))?;
            key.open_for(&purpose(user), &sealed)
        }
        None => Ok(stored.to_owned()),
    }
}

pub fn is_enrolled(conn: &mut DbConnection, user: UserId) -> Result<bool> {
    let (secret, email): (Option<String>, bool) = users::table
        .find(user)
        .select((users::totp_secret, users::email_factor))
        .first(conn)?;
    Ok(secret.is_some() || email)
}

/// What a sign-in with the right password still needs: the code of the factor `user` has,
/// or enrolment when their role is one of `roles_needing_one` or their account is a
/// contractor's (limited to one site: contractors always use a second factor), or nothing.
/// The portal and any other sign-in surface ask this one rule.
pub fn step_after_password(
    conn: &mut DbConnection,
    user: &User,
    roles_needing_one: &[Role],
) -> Result<SecondFactor> {
    if is_enrolled(conn, user.id)? {
        return Ok(SecondFactor::Pending);
    }
    let site: Option<i64> = users::table
        .find(user.id)
        .select(users::site_id)
        .first(conn)?;
    Ok(
        if roles_needing_one.contains(&user.role()?) || site.is_some() {
            SecondFactor::Enrol
        } else {
            SecondFactor::Done
        },
    )
}

/// True when the user's second factor is the emailed code.
pub fn uses_email(conn: &mut DbConnection, user: UserId) -> Result<bool> {
    Ok(users::table
        .find(user)
        .select(users::email_factor)
        .first(conn)?)
}

const EMAIL_CODE_VALIDITY_US: i64 = 10 * 60 * 1_000_000;

fn email_code_hash(user: UserId, code: &str) -> Vec<u8> {
    let digits: String = code.chars().filter(char::is_ascii_digit).collect();
    openssl::sha::sha256(format!("plantgate email code\0{}\0{digits}", user.0).as_bytes()).to_vec()
}

/// Emails `user` a new one-time code (any older unused one stops working); audited
/// `auth.email_code.sent`. The email goes out through the outbox.
pub fn send_email_code(audit: &Audit, user: &User, source: &str, now_us: i64) -> Result<()> {
    let mut bytes = [0u8; 8];
    openssl::rand::rand_bytes(&mut bytes)?;
    let code = format!("{:08}", u64::from_le_bytes(bytes) % 100_000_000);
    audit.record_with(|conn| {
        diesel::update(
            email_codes::table
                .filter(email_codes::user_id.eq(user.id))
                .filter(email_codes::used_at_us.is_null()),
        )
        .set(email_codes::used_at_us.eq(now_us))
        .execute(conn)?;
        diesel::insert_into(email_codes::table)
            .values((
                email_codes::user_id.eq(user.id),
                email_codes::code_hash.eq(email_code_hash(user.id, &code)),
                email_codes::created_at_us.eq(now_us),
                email_codes::expires_at_us.eq(now_us + EMAIL_CODE_VALIDITY_US),
            ))
            .execute(conn)?;
        crate::mail::enqueue(
            conn,
            &user.email,
            &emails::sign_in_code(&code, source),
            &user.id.to_string(),
            now_us,
        )?;
        let event = AuditEvent::new(Actor::User(user.id), "auth.email_code.sent")
            .source(source)
            .target(user.id);
        Ok(((), vec![event]))
    })
}

/// Spends an emailed code inside the caller's transaction: true if it was sent to `user`,
/// is unused and has not expired.
fn spend_email_code(
    conn: &mut DbConnection,
    user: UserId,
    code: &str,
    now_us: i64,
) -> Result<bool> {
    let spent = diesel::update(
        email_codes::table
            .filter(email_codes::user_id.eq(user))
            .filter(email_codes::code_hash.eq(email_code_hash(user, code)))
            .filter(email_codes::used_at_us.is_null())
            .filter(email_codes::expires_at_us.gt(now_us)),
    )
    .set(email_codes::used_at_us.eq(now_us))
    .execute(conn)?;
    Ok(spent >= 1)
}

/// Makes the emailed code `user`'s second factor, once they typed the code they were sent.
pub fn enable_email(
    audit: &Audit,
    user: &User,
    code: &str,
    source: &str,
    now_us: i64,
) -> Result<()> {
    audit.record_with(|conn| {
        if !spend_email_code(conn, user.id, code, now_us)? {
            return Err(Error::invalid(
                "code",
                "that code does not match, or it was used or has expired; send a new one",
            ));
        }
        diesel::update(users::table.find(user.id))
            .set(users::email_factor.eq(true))
            .execute(conn)?;
        crate::mail::enqueue(
            conn,
            &user.email,
            &emails::second_factor_set_up(emails::SecondFactor::EmailCodes),
            &user.id.to_string(),
            now_us,
        )?;
        let event = AuditEvent::new(Actor::User(user.id), "auth.second_factor.enabled")
            .source(source)
            .target(user.id)
            .details(serde_json::json!({ "method": "email" }));
        Ok(((), vec![event]))
    })
}

fn recovery_hash(code: &str) -> Vec<u8> {
    let normalised: String = code
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    openssl::sha::sha256(normalised.as_bytes()).to_vec()
}

/// Turns on TOTP once the user proves their app has `secret` by a current code. Returns the
/// recovery codes, shown once; only their hashes are kept.
pub fn enable(
    audit: &Audit,
    key: &SealingKey,
    user: &User,
    secret: &str,
    code: &str,
    now_us: i64,
) -> Result<Vec<String>> {
    let Some(step) = matching_step(secret, code, now_us)? else {
        return Err(Error::invalid(
            "code",
            "that code does not match; check the clock of your phone and try the next one",
        ));
    };
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let mut bytes = [0u8; 8];
        openssl::rand::rand_bytes(&mut bytes)?;
        let text = hex::encode(bytes);
        codes.push(format!(
            "{}-{}-{}-{}",
            &text[0..4],
            &text[4..8],
            &text[8..12],
            &text[12..16]
        ));
    }
    let stored = seal(key, user.id, secret)?;
    audit.record_with(|conn| {
        diesel::update(users::table.find(user.id))
            .set((
                users::totp_secret.eq(&stored),
                users::totp_last_step.eq(step),
            ))
            .execute(conn)?;
        diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user.id)))
            .execute(conn)?;
        for code in &codes {
            diesel::insert_into(recovery_codes::table)
                .values((
                    recovery_codes::user_id.eq(user.id),
                    recovery_codes::code_hash.eq(recovery_hash(code)),
                ))
                .execute(conn)?;
        }
        crate::mail::enqueue(
            conn,
            &user.email,
            &emails::second_factor_set_up(emails::SecondFactor::AuthenticatorApp),
            &user.id.to_string(),
            now_us,
        )?;
        let event = AuditEvent::new(Actor::User(user.id), "auth.second_factor.enabled")
            .target(user.id)
            .details(serde_json::json!({ "method": "totp", "recovery_codes": RECOVERY_CODES }));
        Ok((codes, vec![event]))
    })
}

/// Wrong codes (TOTP, emailed or recovery) an account may give before codes are refused
/// for a while; see [`check`].
pub const WRONG_CODES_ALLOWED: u32 = 5;

/// What [`check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    Accepted,
    /// Wrong, already used, or expired.
    Refused,
    /// The account gave too many wrong codes: refused without looking at the code, and
    /// every sign-in still waiting for a code was ended.
    LockedOut,
}

/// Checks a TOTP code, an emailed code or a recovery code for `user` at `now`; records the
/// attempt.
///
/// Wrong codes are counted per account, whichever sign-in or address they come from, and
/// counted in the store before the code is looked at (`crate::lockout`). The
/// [`WRONG_CODES_ALLOWED`]th wrong code locks codes for `lock_minutes` and tells the owner
/// by email: someone has their password. Any code given while locked is refused unread
/// and ends every sign-in of the account that still waits for its second factor, so the
/// next wrong code ends the sign-in that gave it. An administrator's unlock lifts it.
pub fn check(
    audit: &Audit,
    key: &SealingKey,
    user: UserId,
    code: &str,
    source: &str,
    now_us: i64,
    lock_minutes: u32,
) -> Result<CodeCheck> {
    let counter = Counter::Codes(user);
    let until = now_us + i64::from(lock_minutes) * 60_000_000;
    let reserved = counter.reserve(&mut *audit.store().conn()?, WRONG_CODES_ALLOWED, now_us)?;
    let Reserved::Attempt(attempt) = reserved else {
        return audit.record_with(|conn| {
            let mut events = lock_codes(conn, user, source, until, now_us)?
                .into_iter()
                .collect::<Vec<_>>();
            let ended = crate::sessions::end_pending(
                conn,
                user,
                "too many wrong second-factor codes",
                now_us,
            )?;
            events.push(
                AuditEvent::new(Actor::User(user), "auth.second_factor.failed")
                    .source(source)
                    .target(user)
                    .outcome(Outcome::Denied)
                    .details(serde_json::json!({
                        "reason": "too many wrong codes", "sign_ins_ended": ended,
                    })),
            );
            Ok((CodeCheck::LockedOut, events))
        });
    };
    let secret: Option<String> = users::table
        .find(user)
        .select(users::totp_secret)
        .first(&mut *audit.store().conn()?)?;
    let step = match secret {
        Some(secret) => matching_step(&unseal(key, user, &secret)?, code, now_us)?,
        None => None,
    };
    audit.record_with(|conn| {
        let (accepted, method, why) = match step {
            Some(step) => {
                // Only a later step than any accepted before: a replay within the window fails.
                let updated = diesel::update(
                    users::table.find(user).filter(
                        users::totp_last_step
                            .is_null()
                            .or(users::totp_last_step.lt(step)),
                    ),
                )
                .set(users::totp_last_step.eq(step))
                .execute(conn)?;
                (
                    updated == 1,
                    "totp",
                    if updated == 1 {
                        ""
                    } else {
                        "code already used"
                    },
                )
            }
            None if spend_email_code(conn, user, code, now_us)? => (true, "email code", ""),
            None => {
                let used = diesel::update(
                    recovery_codes::table
                        .filter(recovery_codes::user_id.eq(user))
                        .filter(recovery_codes::code_hash.eq(recovery_hash(code)))
                        .filter(recovery_codes::used_at_us.is_null()),
                )
                .set(recovery_codes::used_at_us.eq(now_us))
                .execute(conn)?;
                (
                    used >= 1,
                    "recovery code",
                    if used >= 1 { "" } else { "wrong code" },
                )
            }
        };
        if accepted {
            counter.reset(conn)?;
            let event = AuditEvent::new(Actor::User(user), "auth.second_factor.accepted")
                .source(source)
                .target(user)
                .details(serde_json::json!({ "method": method }));
            return Ok((CodeCheck::Accepted, vec![event]));
        }
        let mut events = vec![
            AuditEvent::new(Actor::User(user), "auth.second_factor.failed")
                .source(source)
                .target(user)
                .outcome(Outcome::Failure)
                .details(serde_json::json!({ "reason": why, "wrong_codes": attempt })),
        ];
        // The count the store returned decides: the wrong code that fills the budget locks.
        if i64::from(attempt) >= i64::from(WRONG_CODES_ALLOWED) {
            events.extend(lock_codes(conn, user, source, until, now_us)?);
        }
        Ok((CodeCheck::Refused, events))
    })
}

/// Locks `user`'s codes until `until` unless they are locked already; when this call
/// locked them, queues the owner's email and returns the audit record.
fn lock_codes(
    conn: &mut DbConnection,
    user: UserId,
    source: &str,
    until: i64,
    now_us: i64,
) -> Result<Option<AuditEvent>> {
    if !Counter::Codes(user).lock(conn, until)? {
        return Ok(None);
    }
    let email: String = users::table.find(user).select(users::email).first(conn)?;
    crate::mail::enqueue(
        conn,
        &email,
        &emails::codes_locked(WRONG_CODES_ALLOWED, source, until),
        &user.to_string(),
        now_us,
    )?;
    Ok(Some(
        AuditEvent::new(Actor::User(user), "auth.second_factor.locked")
            .source(source)
            .target(user)
            .outcome(Outcome::Denied)
            .details(serde_json::json!({ "until": until, "wrong_codes": WRONG_CODES_ALLOWED })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_matches_its_step_and_its_neighbours_only() -> Result<()> {
        let secret = new_secret()?;
        let now = 1_800_000_000_000_000;
        let code = code_at(&secret, now)?;
        assert_eq!(
            matching_step(&secret, &code, now)?,
            Some(now / 1_000_000 / 30)
        );
        assert!(
            matching_step(&secret, &code, now + 30_000_000)?.is_some(),
            "one step of skew is allowed"
        );
        assert!(
            matching_step(&secret, &code, now + 90_000_000)?.is_none(),
            "a stale code was accepted"
        );
        assert!(matching_step(&secret, "12345", now)?.is_none());
        assert!(matching_step(&secret, "abcdef", now)?.is_none());
        assert!(
            provisioning_uri(&secret, "ada@plant.example")?
                .starts_with("otpauth://totp/Plantgate:")
        );
        Ok(())
    }
}
