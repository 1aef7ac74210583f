//! Alert emails through lettre, from the outbox the `alerts` table keeps: an email owed is
//! sent after a restart too, and each outcome is audited.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use appliance::alerts::{self, PendingNotification};
use appliance::config::SmtpConfig;
use appliance::time::format_us;
use appliance::{Actor, Appliance};
use lettre::message::Mailbox;
use lettre::{Message, SmtpTransport, Transport};

const RETRY_EVERY: Duration = Duration::from_secs(15);

/// Starts the notifier thread; it sends what is owed at start, when poked, and every 15 s.
pub fn start(app: Appliance, pokes: Receiver<()>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ingest-notify".into())
        .spawn(move || run(app, pokes))?;
    Ok(())
}

fn run(app: Appliance, pokes: Receiver<()>) {
    let actor = Actor::System("ingest".into());
    let mut relay = appliance::mail::RelayCache::default();
    loop {
        match relay.current(&app) {
            Ok(Some((smtp, transport))) => send_owed(&app, &actor, smtp, transport),
            Ok(None) => {}
            Err(err) => tracing::error!(error = %err, "cannot read the mail relay settings"),
        }
        match pokes.recv_timeout(RETRY_EVERY) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn send_owed(app: &Appliance, actor: &Actor, smtp: &SmtpConfig, transport: &SmtpTransport) {
    let owed = app
        .store
        .conn()
        .and_then(|mut conn| alerts::pending_notifications(&mut conn, smtp.max_attempts));
    let owed = match owed {
        Ok(owed) => owed,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the alert outbox");
            return;
        }
    };
    for pending in owed {
        let outcome = compose(&smtp.from, &pending).and_then(|message| {
            transport
                .send(&message)
                .map(|_| ())
                .map_err(|err| err.to_string())
        });
        if let Err(reason) = &outcome {
            tracing::warn!(alert = %pending.alert.id, %reason, "alert email failed");
        }
        if let Err(err) = alerts::mark_notified(&app.audit, actor, &pending, outcome) {
            tracing::error!(error = %err, "cannot record an alert email");
        }
    }
}

/// The email for one alert event.
pub fn compose(from: &str, pending: &PendingNotification) -> Result<Message, String> {
    let rule = &pending.rule;
    let (what, at, value) = if pending.cleared {
        (
            "cleared",
            pending.alert.cleared_at_us.unwrap_or_default(),
            pending.alert.cleared_value,
        )
    } else {
        (
            "RAISED",
            pending.alert.raised_at_us,
            pending.alert.raised_value,
        )
    };
    let subject = format!(
        "[Plantgate] alert {what}: {} on {}",
        rule.name, pending.device_serial
    );
    let condition = match rule.kind.as_str() {
        "silent" => format!("no data for {} s", rule.silent_seconds),
        "event" => format!("device reported {}", rule.metric),
        kind => {
            let measure = if rule.measure == "rate" {
                format!("{} change per minute", rule.metric)
            } else {
                rule.metric.clone()
            };
            if rule.for_seconds > 0 {
                format!(
                    "{measure} {kind} {} for {} s",
                    rule.threshold, rule.for_seconds
                )
            } else {
                format!(
                    "{measure} {kind} {} for {} reading(s) in a row",
                    rule.threshold, rule.consecutive
                )
            }
        }
    };
    let body = format!(
        "Alert {what}.\n\nRule: {} ({condition})\nDevice: {}\nValue: {}\nAt: {}\nAlert id: {}\n",
        rule.name,
        pending.device_serial,
        value.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
        format_us(at),
        pending.alert.id,
    );
    let from: Mailbox = from.parse().map_err(|err| format!("smtp.from: {err}"))?;
    let mut builder = Message::builder().from(from).subject(subject);
    let recipients = pending.recipients();
    if recipients.is_empty() {
        return Err("the rule names no recipient".into());
    }
    for to in recipients {
        let mailbox: Mailbox = to
            .parse()
            .map_err(|err| format!("recipient {to:?}: {err}"))?;
        builder = builder.to(mailbox);
    }
    builder.body(body).map_err(|err| err.to_string())
}
