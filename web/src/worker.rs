//! The portal's background worker for remote access: every `access.tick_seconds`, and at
//! once when a page pokes it, it
//! - runs [`access::tick`] (pending requests expire, ended sessions are closed, sessions of
//!   ended accounts are revoked) and pokes the firewall when a session ended;
//! - drives each site's "remote access active" signal (command and/or webhook) when it
//!   changes, and once at start, so a restart never leaves a lamp lit or dark by mistake;
//! - sends the emails the outbox owes, through the relay in force (see `settings`);
//! - serves a portal certificate replaced from the command line.
//!
//! It is one thread, so signals are driven in order and never twice at once.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use appliance::access;
use appliance::config::AccessConfig;
use appliance::ids::SiteId;
use appliance::models::Site;
use appliance::time::now_us;
use appliance::tls::LiveCertificate;
use appliance::{Actor, Appliance, mail};

/// A handle to wake the worker; a portal without one (tests of pages alone) does nothing.
#[derive(Debug, Clone, Default)]
pub struct Worker {
    pokes: Option<Sender<()>>,
}

impl Worker {
    pub fn poke(&self) {
        if let Some(pokes) = &self.pokes {
            let _ = pokes.send(());
        }
    }
}

pub fn start(app: Appliance, certificate: Option<LiveCertificate>) -> std::io::Result<Worker> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("access-worker".into())
        .spawn(move || run(&app, certificate.as_ref(), &receiver))?;
    Ok(Worker {
        pokes: Some(sender),
    })
}

fn run(app: &Appliance, certificate: Option<&LiveCertificate>, pokes: &Receiver<()>) {
    let mut relay = mail::RelayCache::default();
    let mailer = Actor::System("web".into());
    let every = Duration::from_secs(app.config.access.tick_seconds);
    let mut driven: HashMap<SiteId, bool> = HashMap::new();
    loop {
        let now = now_us();
        match access::tick(&app.audit, &app.config, now) {
            Ok(report) if report.ended > 0 => {
                if let Err(why) = appliance::grants::poke_firewall(&app.config) {
                    tracing::warn!(%why, "firewall did not answer; it closes ended sessions at its next reconcile");
                }
            }
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "access tick failed"),
        }
        drive_signals(app, &mut driven, now);
        // A certificate installed from the command line is served from here on.
        match certificate.map(LiveCertificate::reload_if_changed) {
            Some(Ok(true)) => tracing::info!("the portal's certificate was replaced; serving it"),
            Some(Err(err)) => {
                tracing::warn!(error = %err, "cannot load the replaced certificate; serving the previous one")
            }
            _ => {}
        }
        let sent = relay.current(app).and_then(|current| match current {
            Some((smtp, transport)) => mail::send_due(&app.audit, &mailer, smtp, transport, now),
            None => Ok(0),
        });
        if let Err(err) = sent {
            tracing::error!(error = %err, "cannot send the emails owed");
        }
        match pokes.recv_timeout(every) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn drive_signals(app: &Appliance, driven: &mut HashMap<SiteId, bool>, now: i64) {
    let sites = match app
        .store
        .conn()
        .and_then(|mut c| access::active_sites(&mut c))
    {
        Ok(sites) => sites,
        Err(err) => {
            tracing::error!(error = %err, "cannot read which sites have remote access active");
            return;
        }
    };
    let hooked =
        !app.config.access.signal_command.is_empty() || app.config.access.signal_webhook.is_some();
    for (site, on) in sites {
        if driven.get(&site.id) == Some(&on) {
            continue;
        }
        let outcome = if hooked {
            drive(&app.config.access, &site, on)
        } else {
            Ok(())
        };
        if let Err(why) = &outcome {
            tracing::error!(site = %site.id, on, %why, "cannot drive the remote-access signal");
        }
        // Recorded only on a change the store has not seen yet, or a failure.
        let recorded_on = app
            .store
            .conn()
            .and_then(|mut c| access::SitePolicy::of(&mut c, site.id))
            .map(|p| p.signal_on);
        if (outcome.is_err() || recorded_on.as_ref().ok() != Some(&on))
            && let Err(err) = access::record_signal(&app.audit, &site, on, outcome.clone(), now)
        {
            tracing::error!(error = %err, "cannot record the signal");
        }
        if outcome.is_ok() {
            driven.insert(site.id, on);
        }
    }
}

/// Drives the configured outputs for one site.
fn drive(config: &AccessConfig, site: &Site, on: bool) -> Result<(), String> {
    let word = if on { "on" } else { "off" };
    if let Some((program, args)) = config.signal_command.split_first() {
        let mut child = Command::new(program)
            .args(args)
            .args([word, &site.id.0.to_string(), &site.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|err| format!("{program}: {err}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait().map_err(|err| err.to_string())? {
                Some(status) if status.success() => break,
                Some(status) => return Err(format!("{program} exited with {status}")),
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{program} took longer than 10 s"));
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    if let Some(url) = &config.signal_webhook {
        let body = serde_json::json!({ "site_id": site.id.0, "site": site.name, "active": on });
        let url = url.clone();
        let status = actix_web::rt::System::new().block_on(async move {
            awc::Client::builder()
                .timeout(Duration::from_secs(10))
                .finish()
                .post(url)
                .send_json(&body)
                .await
                .map(|response| response.status())
                .map_err(|err| err.to_string())
        })?;
        if !status.is_success() {
            return Err(format!("webhook answered {status}"));
        }
    }
    Ok(())
}
