//! Settings an administrator changes in the portal, kept in the store over the
//! configuration file's defaults (table `settings`, one JSON value per name). Every process
//! reads them through here, so the portal and the ingest service send mail through the same
//! relay. Today: the mail relay (`smtp`) and how much of the data partition telemetry may
//! use (`telemetry_budget_mib`).

use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use crate::audit::{Actor, Audit, AuditEvent};
use crate::config::{Config, SmtpConfig, SmtpSecurity};
use crate::connectors::SealingKey;
use crate::error::{Error, Result};
use crate::schema::settings;
use crate::store::DbConnection;
use crate::store::on_backend;

const SMTP: &str = "smtp";
const TELEMETRY_BUDGET: &str = "telemetry_budget_mib";
/// What the relay's password is sealed for, so it opens for nothing else.
const SMTP_PASSWORD_PURPOSE: &[u8] = b"plantgate settings smtp.password v1";

/// The relay as stored: the password only sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSmtp {
    host: Option<String>,
    port: u16,
    security: SmtpSecurity,
    username: Option<String>,
    sealed_password: Option<String>,
    from: String,
}

/// The mail relay in force and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Relay {
    pub smtp: SmtpConfig,
    /// When an administrator last saved it in the portal; `None`: the configuration file's.
    pub saved_at_us: Option<i64>,
}

/// The relay in force: the one an administrator saved in the portal, else the configuration
/// file's `[smtp]`.
pub fn relay(conn: &mut DbConnection, config: &Config, key: &SealingKey) -> Result<Relay> {
    let row: Option<(String, i64)> = settings::table
        .find(SMTP)
        .select((settings::value, settings::updated_at_us))
        .first(conn)
        .optional()?;
    let Some((value, saved_at_us)) = row else {
        return Ok(Relay {
            smtp: config.smtp.clone(),
            saved_at_us: None,
        });
    };
    let stored: StoredSmtp = serde_json::from_str(&value)
        .map_err(|err| Error::invalid("settings.smtp", format!("unreadable: {err}")))?;
    let password = stored
        .sealed_password
        .map(|sealed| {
            let bytes = hex::decode(sealed)
                .map_err(|err| Error::invalid("settings.smtp", format!("password: {err}")))?;
            key.open_for(SMTP_PASSWORD_PURPOSE, &bytes)
        })
        .transpose()?;
    Ok(Relay {
        smtp: SmtpConfig {
            host: stored.host,
            port: stored.port,
            security: stored.security,
            username: stored.username,
            password,
            from: stored.from,
            max_attempts: config.smtp.max_attempts,
        },
        saved_at_us: Some(saved_at_us),
    })
}

/// What the portal's mail form sends. `password` `None` keeps the one stored.
#[derive(Debug, Clone, Default)]
pub struct RelayChange {
    pub host: String,
    pub port: String,
    pub security: String,
    pub username: String,
    pub password: Option<String>,
    pub from: String,
}

fn is_host_name(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
        || (host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }))
}

impl RelayChange {
    /// Checks every field before anything is stored; `current` supplies a kept password.
    fn validate(&self, current: &SmtpConfig, max_attempts: i32) -> Result<SmtpConfig> {
        let host = self.host.trim();
        let host = if host.is_empty() {
            None
        } else if is_host_name(host) {
            Some(host.to_ascii_lowercase())
        } else {
            return Err(Error::invalid(
                "host",
                format!("{host:?} is not a host name or IP address"),
            ));
        };
        let port = self
            .port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::invalid("port", "must be a number from 1 to 65535"))?;
        let security = match self.security.trim() {
            "starttls" => SmtpSecurity::Starttls,
            "tls" => SmtpSecurity::Tls,
            "none" => SmtpSecurity::None,
            other => {
                return Err(Error::invalid(
                    "security",
                    format!("{other:?} is not starttls, tls or none"),
                ));
            }
        };
        let from = crate::models::clean_email(&self.from)
            .map_err(|_| Error::invalid("from", "must be an email address"))?;
        let username = Some(self.username.trim())
            .filter(|u| !u.is_empty())
            .map(str::to_owned);
        if username
            .as_deref()
            .is_some_and(|u| u.len() > 256 || u.chars().any(char::is_control))
        {
            return Err(Error::invalid(
                "username",
                "at most 256 characters, no control characters",
            ));
        }
        let password = match &self.password {
            Some(new) if new.is_empty() => None,
            Some(new) if new.len() > 1024 || new.contains(['\r', '\n']) => {
                return Err(Error::invalid(
                    "password",
                    "at most 1024 characters, on one line",
                ));
            }
            Some(new) => Some(new.clone()),
            None => current.password.clone(),
        };
        if username.is_some() != password.is_some() {
            return Err(Error::invalid(
                "username",
                "set the user name and password together, or neither",
            ));
        }
        Ok(SmtpConfig {
            host,
            port,
            security,
            username,
            password,
            from,
            max_attempts,
        })
    }
}

/// Stores the relay the portal's form describes, after checking all of it. Audited
/// `settings.smtp.changed` with everything but the password (only whether it changed).
pub fn set_relay(
    audit: &Audit,
    actor: &Actor,
    config: &Config,
    key: &SealingKey,
    change: &RelayChange,
    now: i64,
) -> Result<SmtpConfig> {
    let current = relay(&mut *audit.store().conn()?, config, key)?;
    let smtp = change.validate(&current.smtp, config.smtp.max_attempts)?;
    let sealed_password = smtp
        .password
        .as_deref()
        .map(|p| key.seal_for(SMTP_PASSWORD_PURPOSE, p).map(hex::encode))
        .transpose()?;
    let stored = StoredSmtp {
        host: smtp.host.clone(),
        port: smtp.port,
        security: smtp.security,
        username: smtp.username.clone(),
        sealed_password,
        from: smtp.from.clone(),
    };
    let value = serde_json::to_string(&stored)
        .map_err(|err| Error::invalid("settings.smtp", err.to_string()))?;
    audit.record_with(|conn| {
        on_backend!(conn, c => diesel::insert_into(settings::table)
            .values((settings::name.eq(SMTP), settings::value.eq(&value), settings::updated_at_us.eq(now)))
            .on_conflict(settings::name)
            .do_update()
            .set((settings::value.eq(&value), settings::updated_at_us.eq(now)))
            .execute(c))?;
        let event = AuditEvent::new(actor.clone(), "settings.smtp.changed")
            .target("settings:smtp")
            .details(serde_json::json!({
                "host": smtp.host,
                "port": smtp.port,
                "security": smtp.security,
                "username": smtp.username,
                "from": smtp.from,
                "password_changed": smtp.password != current.smtp.password,
            }));
        Ok(((), vec![event]))
    })?;
    Ok(smtp)
}

/// How many MiB the SQLite store may use for telemetry: what an administrator saved in the
/// portal (a number, or no limit), else the configuration file's `ingest.retention_max_mib`.
pub fn telemetry_budget_mib(conn: &mut DbConnection, config: &Config) -> Result<Option<u64>> {
    let stored: Option<String> = settings::table
        .find(TELEMETRY_BUDGET)
        .select(settings::value)
        .first(conn)
        .optional()?;
    match stored {
        None => Ok(config.ingest.retention_max_mib),
        Some(value) => serde_json::from_str::<Option<u64>>(&value).map_err(|err| {
            Error::invalid(
                "settings.telemetry_budget_mib",
                format!("unreadable: {err}"),
            )
        }),
    }
}

/// [`telemetry_budget_mib`] in bytes, as the store measures itself.
pub fn telemetry_budget_bytes(conn: &mut DbConnection, config: &Config) -> Result<Option<i64>> {
    Ok(telemetry_budget_mib(conn, config)?.map(mib_bytes))
}

/// `mib` MiB in bytes, at most `i64::MAX`.
pub fn mib_bytes(mib: u64) -> i64 {
    i64::try_from(mib)
        .unwrap_or(i64::MAX)
        .saturating_mul(1 << 20)
}

/// Stores the telemetry budget from the portal's form (`raw` MiB; empty for no limit).
/// Refused on PostgreSQL, whose files the appliance does not measure. Audited
/// `settings.telemetry_budget.changed` with the old and new values.
pub fn set_telemetry_budget_mib(
    audit: &Audit,
    actor: &Actor,
    config: &Config,
    raw: &str,
    now: i64,
) -> Result<Option<u64>> {
    let raw = raw.trim();
    let budget = if raw.is_empty() {
        None
    } else {
        match raw.parse::<u64>() {
            Ok(mib) if (1..=16 * 1024 * 1024).contains(&mib) => Some(mib),
            _ => {
                return Err(Error::invalid(
                    "budget_mib",
                    format!(
                        "{raw:?} is not a size: a whole number of MiB, 1 to 16777216, or empty for no limit"
                    ),
                ));
            }
        }
    };
    if budget.is_some() && matches!(audit.store().backend(), crate::store::Backend::Postgres) {
        return Err(Error::invalid(
            "budget_mib",
            "a size limit applies to the SQLite store; with PostgreSQL, readings are kept by age (ingest.retention_days)",
        ));
    }
    let value = serde_json::to_string(&budget)
        .map_err(|err| Error::invalid("budget_mib", err.to_string()))?;
    audit.record_with(|conn| {
        let before = telemetry_budget_mib(conn, config)?;
        on_backend!(conn, c => diesel::insert_into(settings::table)
            .values((settings::name.eq(TELEMETRY_BUDGET), settings::value.eq(&value), settings::updated_at_us.eq(now)))
            .on_conflict(settings::name)
            .do_update()
            .set((settings::value.eq(&value), settings::updated_at_us.eq(now)))
            .execute(c))?;
        let event = AuditEvent::new(actor.clone(), "settings.telemetry_budget.changed")
            .target("settings:telemetry_budget_mib")
            .details(serde_json::json!({ "before_mib": before, "after_mib": budget }));
        Ok((budget, vec![event]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> RelayChange {
        RelayChange {
            host: "mail.plant.example".into(),
            port: "587".into(),
            security: "starttls".into(),
            username: "plantgate".into(),
            password: Some("relay secret".into()),
            from: "plantgate@plant.example".into(),
        }
    }

    #[test]
    fn a_relay_form_is_checked_field_by_field() {
        let current = SmtpConfig::default();
        let field = |c: RelayChange| match c.validate(&current, 10) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(change().validate(&current, 10).is_ok());
        assert_eq!(
            field(RelayChange {
                host: "mail relay".into(),
                ..change()
            }),
            "host"
        );
        assert_eq!(
            field(RelayChange {
                host: "-bad.example".into(),
                ..change()
            }),
            "host"
        );
        assert_eq!(
            field(RelayChange {
                port: "0".into(),
                ..change()
            }),
            "port"
        );
        assert_eq!(
            field(RelayChange {
                port: "70000".into(),
                ..change()
            }),
            "port"
        );
        assert_eq!(
            field(RelayChange {
                security: "ssl3".into(),
                ..change()
            }),
            "security"
        );
        assert_eq!(
            field(RelayChange {
                from: "nobody".into(),
                ..change()
            }),
            "from"
        );
        assert_eq!(
            field(RelayChange {
                password: Some("a\nb".into()),
                ..change()
            }),
            "password"
        );
        assert_eq!(
            field(RelayChange {
                password: Some(String::new()),
                ..change()
            }),
            "username"
        );
        let none = RelayChange {
            host: String::new(),
            username: String::new(),
            password: Some(String::new()),
            ..change()
        };
        assert_eq!(none.validate(&current, 10).map(|s| s.host).ok(), Some(None));
    }

    #[test]
    fn an_untouched_password_is_kept() {
        let current = SmtpConfig {
            username: Some("plantgate".into()),
            password: Some("kept".into()),
            ..SmtpConfig::default()
        };
        let kept = RelayChange {
            password: None,
            ..change()
        }
        .validate(&current, 10);
        assert_eq!(kept.ok().and_then(|s| s.password).as_deref(), Some("kept"));
    }
}
