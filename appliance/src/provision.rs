//! Making the appliance's keys: only `plantgate init` (first boot) does this, never a
//! service at start, so that which process can read which key is decided by
//! [`crate::keyring`]'s table and not by whichever service started first.

use std::fs;
use std::os::unix::fs::DirBuilderExt;

use crate::config::Config;
use crate::device_ca::DeviceCa;
use crate::error::{Error, Result};
use crate::keyring::{self, Accounts, Secret};
use crate::keys::SigningKey;
use crate::sealing::SealingKey;

/// Creates every key file of the table that is missing and returns the names it made. The
/// caller has made sure a missing audit signing key may be made (no records signed by a
/// lost one).
///
/// An appliance from before the keys were split had one sealing key,
/// `connector-sealing.key`, for TOTP seeds, the relay password and connector secrets; its
/// new TOTP and relay keys start as copies of it, so what was sealed stays openable.
pub fn create_missing_keys(config: &Config) -> Result<Vec<&'static str>> {
    let dir = config.keys_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(keyring::KEYS_DIR_MODE)
        .create(&dir)
        .map_err(|err| Error::Key {
            path: dir.clone(),
            problem: err.to_string(),
        })?;
    let mut made = Vec::new();
    let exists = |secret| keyring::path(config, secret).exists();
    if !exists(Secret::AuditSigning) {
        SigningKey::generate(&dir)?;
        made.extend(["audit-signing.key", "audit-signing.pub"]);
    }
    let legacy = if exists(Secret::ConnectorSealing) {
        Some(SealingKey::load(&keyring::path(
            config,
            Secret::ConnectorSealing,
        ))?)
    } else {
        None
    };
    for secret in [
        Secret::TotpSealing,
        Secret::RelaySealing,
        Secret::ConnectorSealing,
    ] {
        if !exists(secret) {
            SealingKey::generate(&keyring::path(config, secret), legacy.as_ref())?;
            made.push(keyring::spec(secret).file);
        }
    }
    if !DeviceCa::exists(&dir) {
        DeviceCa::generate(&dir)?;
        made.extend(["device-ca.key", "device-ca.crt"]);
    }
    Ok(made)
}

/// [`create_missing_keys`], then [`enforce_owners`].
pub fn keys(config: &Config) -> Result<Vec<&'static str>> {
    let made = create_missing_keys(config)?;
    enforce_owners(config)?;
    Ok(made)
}

/// Owners and modes from the table ([`keyring::enforce`]), with the config's accounts when
/// it names them: run after everything root wrote, so the services can use it.
pub fn enforce_owners(config: &Config) -> Result<()> {
    let accounts = config
        .accounts
        .as_ref()
        .map(Accounts::resolve)
        .transpose()?;
    keyring::enforce(config, accounts.as_ref())
}
