//! Invitations: a one-time emailed link with which a new account (an organisation's first
//! administrator, a site's contractor) sets its first password. The link is an enrolment
//! token of the account's own purpose, spent when the password is set.

use diesel::prelude::*;

use super::passwords::{PasswordPolicy, hash_password};
use crate::audit::{Actor, Audit, AuditEvent};
use crate::error::{Error, Result};
use crate::ids::UserId;
use crate::models::User;
use crate::schema::users;
use crate::store::DbConnection;
use crate::{emails, enrolment};

/// Emails `user` a one-time link that sets their first password, good for `valid_us`; the
/// token is spent by [`accept_invitation`]. Returns the token's audit event.
pub(crate) fn invite_in(
    conn: &mut DbConnection,
    actor: &Actor,
    config: &crate::config::Config,
    user: &User,
    invited: emails::Invitation<'_>,
    valid_us: i64,
    now: i64,
) -> Result<AuditEvent> {
    let purpose = invitation_purpose(user.id);
    let (token, _, event) = enrolment::issue_in(conn, actor, &purpose, valid_us, now)?;
    let link = format!(
        "{}/invite/{}/{}",
        config.portal_url(),
        user.id.0,
        token.reveal()
    );
    let email = emails::invitation(config, invited, &link, now + valid_us);
    crate::mail::enqueue(conn, &user.email, &email, &user.id.to_string(), now)?;
    Ok(event)
}

/// A contractor sets the first password through the invitation link; the token is spent in
/// the same transaction. Audited as `user.invitation.accepted`.
pub fn accept_invitation(
    audit: &Audit,
    policy: PasswordPolicy,
    user: UserId,
    token: &str,
    password: &str,
    source: &str,
    now: i64,
) -> Result<User> {
    let account: User = users::table
        .find(user)
        .select(User::as_select())
        .first(&mut *audit.store().conn()?)
        .optional()?
        .ok_or_else(|| {
            Error::invalid(
                "token",
                "this invitation is not valid (used, replaced or expired)",
            )
        })?;
    policy.check(password, &account.email)?;
    let hash = hash_password(password)?;
    audit.record_with(|conn| {
        enrolment::redeem(conn, &invitation_purpose(user), token, now)?;
        diesel::update(users::table.find(user))
            .set((
                users::password_hash.eq(&hash),
                users::password_changed_at_us.eq(now),
            ))
            .execute(conn)?;
        let event = AuditEvent::new(Actor::User(user), "user.invitation.accepted")
            .source(source)
            .target(user);
        Ok((account.clone(), vec![event]))
    })
}

/// The enrolment-token purpose of a contractor's invitation.
pub fn invitation_purpose(user: UserId) -> String {
    format!("invitation:{}", user.0)
}
