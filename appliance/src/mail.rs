//! Email: the outbox every notice goes through, and the SMTP relay it is sent to.
//!
//! A notice is written to `mail_outbox` in the same transaction as the change it tells of,
//! so an acknowledged change never loses its email to a crash. The portal's mailer sends
//! what is due, retries with backoff, and audits every outcome (`mail.sent`, `mail.failed`).

use std::time::Duration;

use diesel::prelude::*;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SmtpTransport, Transport};

use crate::audit::{Actor, Audit, AuditEvent, Outcome};
use crate::config::{SmtpConfig, SmtpSecurity};
use crate::emails::Email;
use crate::error::Result;
use crate::schema::mail_outbox;
use crate::store::DbConnection;

/// An email owed.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = mail_outbox)]
pub struct OwedMail {
    pub id: i64,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub about: String,
    pub attempts: i32,
}

/// Queues `email` (its words come from [`crate::emails`]) inside the caller's transaction;
/// `about` names what it tells of, for the audit record of its sending.
pub fn enqueue(
    conn: &mut DbConnection,
    recipient: &str,
    email: &Email,
    about: &str,
    now: i64,
) -> Result<()> {
    diesel::insert_into(mail_outbox::table)
        .values((
            mail_outbox::recipient.eq(recipient),
            mail_outbox::subject.eq(&email.subject),
            mail_outbox::body.eq(&email.body),
            mail_outbox::about.eq(about),
            mail_outbox::created_at_us.eq(now),
            mail_outbox::next_attempt_at_us.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// Emails due now, oldest first.
pub fn due(conn: &mut DbConnection, now: i64, limit: i64) -> Result<Vec<OwedMail>> {
    Ok(mail_outbox::table
        .filter(mail_outbox::sent_at_us.is_null())
        .filter(mail_outbox::failed_at_us.is_null())
        .filter(mail_outbox::next_attempt_at_us.le(now))
        .order(mail_outbox::id)
        .limit(limit)
        .select(OwedMail::as_select())
        .load(conn)?)
}

/// Records the outcome of one attempt: sent, retried later (backoff doubling from 15 s to
/// 15 min), or given up after `max_attempts`. Audited.
pub fn record_attempt(
    audit: &Audit,
    actor: &Actor,
    mail: &OwedMail,
    outcome: std::result::Result<(), String>,
    max_attempts: i32,
    now: i64,
) -> Result<()> {
    audit.record_with(|conn| {
        let attempts = mail.attempts + 1;
        let row = mail_outbox::table.find(mail.id);
        let event = match &outcome {
            Ok(()) => {
                diesel::update(row)
                    .set((
                        mail_outbox::sent_at_us.eq(now),
                        mail_outbox::attempts.eq(attempts),
                    ))
                    .execute(conn)?;
                AuditEvent::new(actor.clone(), "mail.sent")
            }
            Err(reason) => {
                let backoff_us = 15_000_000_i64 << attempts.clamp(0, 6);
                let gave_up = attempts >= max_attempts;
                diesel::update(row)
                    .set((
                        mail_outbox::attempts.eq(attempts),
                        mail_outbox::last_error.eq(reason),
                        mail_outbox::next_attempt_at_us.eq(now + backoff_us),
                        mail_outbox::failed_at_us.eq(gave_up.then_some(now)),
                    ))
                    .execute(conn)?;
                AuditEvent::new(actor.clone(), "mail.failed").outcome(Outcome::Failure)
            }
        };
        let event = event.target(&mail.about).details(serde_json::json!({
            "to": mail.recipient,
            "subject": mail.subject,
            "attempt": attempts,
            "error": outcome.as_ref().err(),
        }));
        Ok(((), vec![event]))
    })
}

/// The relay, or `None` when `smtp.host` is unset (emails stay in the outbox).
pub fn transport(smtp: &SmtpConfig) -> Option<SmtpTransport> {
    let host = smtp.host.as_deref()?;
    let builder = match smtp.security {
        SmtpSecurity::None => Some(SmtpTransport::builder_dangerous(host)),
        SmtpSecurity::Starttls => SmtpTransport::starttls_relay(host).ok(),
        SmtpSecurity::Tls => SmtpTransport::relay(host).ok(),
    };
    let Some(mut builder) = builder else {
        tracing::error!(host, "cannot set up TLS for the SMTP relay");
        return None;
    };
    builder = builder
        .port(smtp.port)
        .timeout(Some(Duration::from_secs(30)));
    if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Some(builder.build())
}

/// The relay in force and its transport, built again only when an administrator saved new
/// settings in the portal. Each sending loop keeps one and asks it before every round.
#[derive(Default)]
pub struct RelayCache {
    key: Option<crate::sealing::SealingKey>,
    built_for: Option<Option<i64>>,
    relay: Option<(SmtpConfig, SmtpTransport)>,
}

impl std::fmt::Debug for RelayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayCache")
            .field("built_for", &self.built_for)
            .field("host", &self.relay.as_ref().map(|(smtp, _)| &smtp.host))
            .finish()
    }
}

impl RelayCache {
    /// The relay to send through now, or `None` when no host is set (mail stays owed).
    pub fn current(
        &mut self,
        app: &crate::Appliance,
    ) -> Result<Option<&(SmtpConfig, SmtpTransport)>> {
        // The key file is read once; after that a round costs one small query.
        if self.key.is_none() {
            self.key = Some(crate::sealing::SealingKey::load(&crate::keyring::path(
                &app.config,
                crate::keyring::Secret::RelaySealing,
            ))?);
        }
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let relay = crate::settings::relay(&mut *app.store.conn()?, &app.config, key)?;
        if self.built_for != Some(relay.saved_at_us) {
            if relay.smtp.host.is_none() {
                tracing::warn!(
                    "no mail relay is set (smtp.host, or the portal's mail settings): emails stay in the outbox"
                );
            }
            self.relay = transport(&relay.smtp).map(|t| (relay.smtp, t));
            self.built_for = Some(relay.saved_at_us);
        }
        Ok(self.relay.as_ref())
    }
}

/// Sends everything due through `transport`; returns how many were sent.
pub fn send_due(
    audit: &Audit,
    actor: &Actor,
    smtp: &SmtpConfig,
    transport: &SmtpTransport,
    now: i64,
) -> Result<usize> {
    let owed = due(&mut *audit.store().conn()?, now, 100)?;
    let mut sent = 0;
    for mail in owed {
        let outcome = compose(&smtp.from, &mail).and_then(|message| {
            transport
                .send(&message)
                .map(|_| ())
                .map_err(|err| err.to_string())
        });
        match &outcome {
            Ok(()) => sent += 1,
            Err(reason) => tracing::warn!(mail = mail.id, %reason, "email failed"),
        }
        record_attempt(audit, actor, &mail, outcome, smtp.max_attempts, now)?;
    }
    Ok(sent)
}

fn compose(from: &str, mail: &OwedMail) -> std::result::Result<Message, String> {
    message(from, &mail.recipient, &mail.subject, &mail.body)
}

fn message(
    from: &str,
    to: &str,
    subject: &str,
    body: &str,
) -> std::result::Result<Message, String> {
    let from: Mailbox = from.parse().map_err(|err| format!("smtp.from: {err}"))?;
    let to: Mailbox = to
        .parse()
        .map_err(|err| format!("recipient {to:?}: {err}"))?;
    Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .body(body.to_owned())
        .map_err(|err| err.to_string())
}

/// Sends one email now, not through the outbox: for the portal's "send a test email",
/// whose point is the relay's answer. The error is what the relay (or the network) said.
pub fn send_now(smtp: &SmtpConfig, to: &str, email: &Email) -> std::result::Result<(), String> {
    let transport = transport(smtp).ok_or("no mail relay is set")?;
    let message = message(&smtp.from, to, &email.subject, &email.body)?;
    transport
        .send(&message)
        .map(|_| ())
        .map_err(|err| err.to_string())
}
