//! What every handler shares: the appliance, the clock, the limits, and the portal's own
//! counters and handles ([`AppState`]).

use std::net::IpAddr;
use std::sync::Arc;

use appliance::Appliance;
use appliance::accounts::{Lockout, PasswordPolicy};
use appliance::ids::TokenId;
use appliance::models::Role;
use appliance::sessions::SessionLimits;

use crate::jobs::Jobs;
use crate::rate::RateLimiter;
use crate::worker::Worker;

/// Microseconds since the epoch; tests put their own clock here.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// What every handler shares.
pub struct AppState {
    pub app: Appliance,
    pub clock: Clock,
    pub limits: SessionLimits,
    pub policy: PasswordPolicy,
    pub lockout: Lockout,
    /// Roles that must use a second factor.
    pub second_factor_roles: Vec<Role>,
    logins_per_minute: u32,
    /// Attempts at a password or code, per source address.
    logins: RateLimiter<IpAddr>,
    /// Refused sign-ins, summarised per source address (`appliance::refusals`).
    pub refusals: appliance::refusals::Refusals,
    pub api_requests_per_minute: u32,
    pub reauthenticate_us: i64,
    pub api_by_address: RateLimiter<IpAddr>,
    pub api_by_token: RateLimiter<TokenId>,
    /// Wakes the remote-access worker after a change, so emails and signals follow at once.
    pub worker: Worker,
    /// The HTTPS listener's certificate, which an administrator may replace while it serves.
    pub certificate: Option<appliance::tls::LiveCertificate>,
    /// Firmware uploads being verified, for their progress pages.
    pub firmware_jobs: Jobs,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("limits", &self.limits)
            .field("lockout", &self.lockout)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(app: Appliance, clock: Clock) -> AppState {
        let web = &app.config.web;
        AppState {
            limits: SessionLimits::from_minutes(
                web.session_absolute_minutes,
                web.session_idle_minutes,
            ),
            policy: PasswordPolicy {
                min_chars: web.password_min_chars,
            },
            lockout: Lockout {
                attempts: web.lockout_attempts,
                minutes: web.lockout_minutes,
            },
            logins_per_minute: web.logins_per_minute,
            second_factor_roles: web
                .second_factor_roles
                .iter()
                .filter_map(|r| r.parse().ok())
                .collect(),
            logins: RateLimiter::default(),
            refusals: appliance::refusals::Refusals::new(web.refusal_summary_seconds),
            api_requests_per_minute: web.api_requests_per_minute,
            reauthenticate_us: i64::from(web.reauthenticate_seconds) * 1_000_000,
            api_by_address: RateLimiter::default(),
            api_by_token: RateLimiter::default(),
            worker: Worker::default(),
            certificate: None,
            firmware_jobs: Jobs::default(),
            app,
            clock,
        }
    }

    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The key that seals TOTP seeds (the portal's alone: `appliance::keyring`).
    pub fn totp_key(&self) -> appliance::error::Result<appliance::sealing::SealingKey> {
        self.sealing_key(appliance::keyring::Secret::TotpSealing)
    }

    /// The key that seals the mail relay's password.
    pub fn relay_key(&self) -> appliance::error::Result<appliance::sealing::SealingKey> {
        self.sealing_key(appliance::keyring::Secret::RelaySealing)
    }

    fn sealing_key(
        &self,
        secret: appliance::keyring::Secret,
    ) -> appliance::error::Result<appliance::sealing::SealingKey> {
        appliance::sealing::SealingKey::load(&appliance::keyring::path(&self.app.config, secret))
    }

    /// Counts a login attempt from `source`; `Err(seconds)` when it is one too many. Locking
    /// out a victim by guessing needs this many tries per minute from each address.
    pub(crate) fn throttle_login(&self, source: IpAddr) -> Result<(), u64> {
        self.logins.hit(source, self.logins_per_minute, self.now())
    }
}
