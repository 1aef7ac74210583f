//! A rule's settings as a person gives them, in the portal's form or the API's JSON, and
//! how they become the core library's [`RuleRequest`]: the scope is named by site, device
//! kind and device serial, which are resolved within the caller's organisation.

use appliance::DbConnection;
use appliance::alerts::{AlertKind, Measure, RuleRequest, RuleScope};
use appliance::devices::{Device, DeviceKind};
use appliance::models::User;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An alert rule's settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    /// 1 to 200 characters.
    #[serde(default)]
    pub name: String,
    /// The site whose devices it covers (with `device_kind`, only those of that kind).
    #[serde(default, deserialize_with = "whole_or_null")]
    pub site: Option<i64>,
    /// monitor, data_logger or gateway; with `site`.
    #[serde(default)]
    pub device_kind: Option<String>,
    /// One device's serial, instead of a site.
    #[serde(default)]
    pub device: Option<String>,
    /// above, below, silent or event.
    #[serde(default)]
    pub kind: String,
    /// The metric it watches (not for silent).
    #[serde(default)]
    pub metric: String,
    #[serde(default)]
    pub threshold: f64,
    /// How far back past the threshold a reading must come to clear the alert.
    #[serde(default)]
    pub hysteresis: f64,
    /// Readings in a row beyond the threshold before it raises (1 to 1000).
    #[serde(default = "one", deserialize_with = "whole")]
    pub consecutive: i32,
    /// When above 0: beyond the threshold for this long instead (above and below).
    #[serde(default, deserialize_with = "whole")]
    pub for_seconds: i64,
    /// value or rate (change per minute); above and below only.
    #[serde(default = "value")]
    pub measure: String,
    /// For silent: raised after this long without a reading.
    #[serde(default, deserialize_with = "whole")]
    pub silent_seconds: i64,
    /// Comma-separated addresses to email when it is raised and cleared.
    #[serde(default)]
    pub notify_email: String,
}

/// A whole number as JSON may write it (`5` or `5.0`, which JSON Schema calls an integer
/// too), in the range of `T`.
pub(crate) fn whole<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole = match (number.as_i64(), number.as_f64()) {
        (Some(n), _) => n,
        (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e18 => f as i64,
        _ => return Err(D::Error::custom(format!("{number} is not a whole number"))),
    };
    T::try_from(whole).map_err(|_| D::Error::custom(format!("{number} is out of range")))
}

pub(crate) fn whole_or_null<'de, D>(deserializer: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole")] i64);
    Ok(Option::<Whole>::deserialize(deserializer)?.map(|w| w.0))
}

fn one() -> i32 {
    1
}

fn value() -> String {
    "value".into()
}

impl RuleInput {
    /// The request the core library checks, with its scope resolved among what `user` can
    /// see: another organisation's site or device is "not found".
    pub fn resolve(
        &self,
        conn: &mut DbConnection,
        user: &User,
    ) -> appliance::error::Result<RuleRequest> {
        let serial = self
            .device
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let kind_filter = self
            .device_kind
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty());
        let scope = match (serial, self.site) {
            (Some(serial), _) => {
                let device = Device::find_in(conn, user.organisation_id, serial).map_err(|_| {
                    appliance::Error::invalid(
                        "device",
                        format!("no device {serial:?} at your sites"),
                    )
                })?;
                super::visible_site(conn, user, device.site_id.0).map_err(|_| {
                    appliance::Error::invalid(
                        "device",
                        format!("no device {serial:?} at your sites"),
                    )
                })?;
                RuleScope::Device(device.id)
            }
            (None, Some(site)) => {
                let site = super::visible_site(conn, user, site)
                    .map_err(|_| appliance::Error::invalid("site", "no such site among yours"))?;
                match kind_filter {
                    None => RuleScope::Site(site.id),
                    Some(kind) => RuleScope::SiteKind(
                        site.id,
                        kind.parse::<DeviceKind>()
                            .map_err(|_| appliance::Error::invalid("device_kind", format!("{kind:?} is not a device kind; allowed: monitor, data_logger, gateway")))?,
                    ),
                }
            }
            (None, None) => {
                return Err(appliance::Error::invalid(
                    "site",
                    "choose a site, or name a device",
                ));
            }
        };
        Ok(RuleRequest {
            scope,
            name: self.name.clone(),
            kind: self.kind.trim().parse::<AlertKind>()?,
            metric: self.metric.trim().to_owned(),
            threshold: self.threshold,
            hysteresis: self.hysteresis,
            consecutive: self.consecutive,
            silent_seconds: self.silent_seconds,
            notify_email: self.notify_email.clone(),
            measure: self.measure.trim().parse::<Measure>()?,
            for_seconds: self.for_seconds,
        })
    }
}

/// The portal's rule form: every field as text, so that a number that is not one is
/// refused with its field named rather than by the form decoder.
#[derive(Debug, Default, Deserialize)]
pub struct RuleForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub site: String,
    #[serde(default)]
    pub device_kind: String,
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metric: String,
    #[serde(default)]
    pub threshold: String,
    #[serde(default)]
    pub hysteresis: String,
    #[serde(default)]
    pub consecutive: String,
    #[serde(default)]
    pub for_seconds: String,
    #[serde(default)]
    pub measure: String,
    #[serde(default)]
    pub silent_seconds: String,
    #[serde(default)]
    pub notify_email: String,
    /// `test` to see what the rule would have raised over the last week instead of saving.
    #[serde(default)]
    pub action: String,
}

fn number<T: std::str::FromStr>(
    field: &'static str,
    raw: &str,
    blank: T,
) -> appliance::error::Result<T> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(blank);
    }
    raw.parse()
        .map_err(|_| appliance::Error::invalid(field, format!("{raw:?} is not a number")))
}

impl RuleForm {
    pub fn input(&self) -> appliance::error::Result<RuleInput> {
        let site = self.site.trim();
        Ok(RuleInput {
            name: self.name.clone(),
            site: if site.is_empty() {
                None
            } else {
                Some(number("site", site, 0)?)
            },
            device_kind: Some(self.device_kind.clone()),
            device: Some(self.device.clone()),
            kind: self.kind.clone(),
            metric: self.metric.clone(),
            // Blank is no threshold: refused for above and below, unused by the others.
            threshold: number(
                "threshold",
                &self.threshold,
                if matches!(self.kind.trim(), "above" | "below") {
                    f64::NAN
                } else {
                    0.0
                },
            )?,
            hysteresis: number("hysteresis", &self.hysteresis, 0.0)?,
            consecutive: number("consecutive", &self.consecutive, 1)?,
            for_seconds: number("for_seconds", &self.for_seconds, 0)?,
            measure: if self.measure.trim().is_empty() {
                "value".into()
            } else {
                self.measure.clone()
            },
            silent_seconds: number("silent_seconds", &self.silent_seconds, 0)?,
            notify_email: self.notify_email.clone(),
        })
    }

    /// The form filled in with a rule's settings, for changing it.
    pub fn of(input: &RuleInput) -> RuleForm {
        RuleForm {
            name: input.name.clone(),
            site: input.site.map(|s| s.to_string()).unwrap_or_default(),
            device_kind: input.device_kind.clone().unwrap_or_default(),
            device: input.device.clone().unwrap_or_default(),
            kind: input.kind.clone(),
            metric: input.metric.clone(),
            threshold: input.threshold.to_string(),
            hysteresis: input.hysteresis.to_string(),
            consecutive: input.consecutive.to_string(),
            for_seconds: input.for_seconds.to_string(),
            measure: input.measure.clone(),
            silent_seconds: input.silent_seconds.to_string(),
            notify_email: input.notify_email.clone(),
            ..RuleForm::default()
        }
    }
}

/// A stored rule's settings in the words a person gave them.
pub fn input_of(
    conn: &mut DbConnection,
    rule: &appliance::alerts::AlertRule,
) -> appliance::error::Result<RuleInput> {
    let (site, device) = match (rule.site_id, rule.device_id) {
        (Some(site), _) => (Some(site.0), None),
        (None, Some(device)) => (None, Device::find(conn, device)?.map(|d| d.serial)),
        (None, None) => (None, None),
    };
    Ok(RuleInput {
        name: rule.name.clone(),
        site,
        device_kind: rule.device_kind.clone(),
        device,
        kind: rule.kind.clone(),
        metric: rule.metric.clone(),
        threshold: rule.threshold,
        hysteresis: rule.hysteresis,
        consecutive: rule.consecutive,
        for_seconds: rule.for_seconds,
        measure: rule.measure.clone(),
        silent_seconds: rule.silent_seconds,
        notify_email: rule.notify_email.clone(),
    })
}
