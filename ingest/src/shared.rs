//! What every listener shares: the appliance, the writer, the limits, the device CA, the
//! gate for connections that have not authenticated and the rate-limited audit of
//! authentication failures. HTTPS handlers get it as
//! `web::Data<Shared>`, the MQTT listener as an `Arc<Shared>`.

use std::sync::{Arc, Mutex};

use appliance::device_ca::DeviceCa;
use appliance::time::now_us;
use appliance::{Actor, Appliance, AuditEvent, Outcome};

use crate::decode::Limits;
use crate::gate::Gate;
use crate::writer::Writer;

/// What every handler, of either channel, shares.
#[derive(Debug)]
pub struct Shared {
    pub app: Appliance,
    pub writer: Writer,
    pub limits: Limits,
    pub auth_failures: AuthFailureLog,
    pub device_ca: DeviceCa,
    /// The slots of connections that have not authenticated, of both listeners.
    pub gate: Arc<Gate>,
}

/// Audits authentication failures, at most `per_minute` a minute, so that a flood of bad
/// credentials cannot fill the audit log. The rest are counted in the next record.
#[derive(Debug)]
pub struct AuthFailureLog {
    per_minute: u32,
    window: Mutex<(i64, u32, u64)>,
}

impl AuthFailureLog {
    pub fn new(per_minute: u32) -> AuthFailureLog {
        AuthFailureLog {
            per_minute,
            window: Mutex::new((0, 0, 0)),
        }
    }

    pub fn record(&self, app: &Appliance, source: &str, channel: &str, who: Option<&str>) {
        let minute = now_us() / 60_000_000;
        let suppressed = {
            let Ok(mut window) = self.window.lock() else {
                return;
            };
            if window.0 != minute {
                window.0 = minute;
                window.1 = 0;
            }
            window.1 += 1;
            if window.1 > self.per_minute {
                window.2 += 1;
                return;
            }
            std::mem::take(&mut window.2)
        };
        let event = AuditEvent::new(Actor::System("ingest".into()), "device.auth.failed")
            .source(source)
            .target(who.unwrap_or("unknown"))
            .outcome(Outcome::Denied)
            .details(serde_json::json!({ "channel": channel, "suppressed_before": suppressed }));
        if let Err(err) = app.audit.record(event) {
            tracing::error!(error = %err, "cannot audit an authentication failure");
        }
    }
}
