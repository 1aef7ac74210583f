//! What the remote-access pages say about the firewall: the poke after a change to a site,
//! the per-grant change after a decision, an end or an extension; a revoke the controller has not confirmed; and the
//! controller's own state for the overview, read from the row it writes at every renewal.

use actix_web::web;
use appliance::Actor;
use appliance::access;
use appliance::grants::Grant;
use appliance::grants::control::{self, Enforcement, FirewallStatus, Health};
use appliance::ids::GrantId;

use super::shared::blocking;
use crate::error::WebError;
use crate::state::AppState;

/// Asks the firewall to act now and the access worker to send what is owed. A firewall
/// that does not answer still applies the store's state at its next reconcile.
pub(super) async fn after_change(state: &web::Data<AppState>) {
    state.worker.poke();
    let config = state.app.config.clone();
    if let Ok(Err(why)) = web::block(move || appliance::grants::poke_firewall(&config)).await {
        tracing::warn!(%why, "firewall did not answer the poke; it applies the change at its next reconcile");
    }
}

/// After a decision, an end or an extension of one request: the firewall changes only that
/// request's grant. A revoke the controller does not confirm is audited and mailed to the
/// administrators as pending (`control::enforce_revoke`); the request page then shows it.
pub(super) async fn after_grant_change(
    state: &web::Data<AppState>,
    actor: Actor,
    grant: Option<GrantId>,
) {
    state.worker.poke();
    let Some(id) = grant else { return };
    let (app, now) = (state.app.clone(), state.now());
    let done = web::block(move || -> Result<(), String> {
        let grant = Grant::find(&mut *app.store.conn().map_err(|e| e.to_string())?, id)
            .map_err(|e| e.to_string())?;
        if grant.revoked_at_us.is_some() {
            match control::enforce_revoke(&app.audit, &actor, &app.config, id, now) {
                Enforcement::Confirmed { .. } => Ok(()),
                pending => Err(pending.to_string()),
            }
        } else {
            control::apply_grant(&app.config, id).map(|_| ())
        }
    })
    .await;
    if let Ok(Err(why)) = done {
        tracing::warn!(grant = id.0, %why, "the firewall did not confirm the change");
    }
}

/// What a revoked grant's page says until the controller confirms the kernel dropped it.
pub(super) fn revoke_pending(
    grant: &Grant,
    health: &Health,
    lease_seconds: u64,
    now: i64,
) -> Option<String> {
    let revoked = grant.revoked_at_us?;
    if grant.closed_at_us.is_some() {
        return None;
    }
    // A live controller closes ended grants before each renewal, so the lease cannot keep
    // the pinhole open past its end; nor can the grant's own expiry.
    let lease_ends = match health {
        Health::Running(status) | Health::Unreachable { status, .. } => status.lease_ends_at_us(),
        Health::NeverRan => revoked + i64::try_from(lease_seconds).unwrap_or(0) * 1_000_000,
    };
    let closes = lease_ends.min(grant.expires_at_us);
    let when = access::short_time(closes);
    Some(if closes <= now {
        format!(
            "revoke pending: firewall controller unreachable. The kernel closed the pinhole by itself at {when}; the controller records it when it runs again."
        )
    } else {
        format!(
            "revoke pending: firewall controller unreachable. The pinhole closes by itself by {when}."
        )
    })
}

/// The firewall controller's state for the overview, from the row it writes at every
/// renewal of its lease: the text, and whether it is running.
pub async fn firewall_overview(state: &web::Data<AppState>) -> Result<(String, bool), WebError> {
    let (app, now) = (state.app.clone(), state.now());
    let status = blocking(move || FirewallStatus::read(&mut *app.store.conn()?)).await?;
    Ok(match FirewallStatus::health(status, now) {
        Health::NeverRan => (
            "not running: it has not started on this appliance".to_owned(),
            false,
        ),
        Health::Running(status) => {
            let reconciled = status
                .reconciled_at_us
                .map(access::short_time)
                .unwrap_or_else(|| "never".to_owned());
            let mut text = format!(
                "running: lease renewed {}, last full reconcile {reconciled}",
                access::short_time(status.lease_renewed_at_us)
            );
            if let Some(error) = status.last_error {
                text.push_str(&format!("; the last reconcile failed: {error}"));
            }
            (text, true)
        }
        Health::Unreachable {
            status,
            lease_ends_at_us,
        } => {
            let closed = if lease_ends_at_us <= now {
                "every pinhole closed by itself at"
            } else {
                "every pinhole closes by itself at"
            };
            (
                format!(
                    "unreachable: last seen {}; {closed} {}",
                    access::short_time(status.lease_renewed_at_us),
                    access::short_time(lease_ends_at_us)
                ),
                false,
            )
        }
    })
}
