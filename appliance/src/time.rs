//! Wall-clock time as the store keeps it: microseconds since the Unix epoch, UTC.

use chrono::{DateTime, NaiveDate, Utc};

pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// RFC 3339 with microseconds, as exports print it.
pub fn format_us(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| format!("@{us}us"))
}

/// Reads an RFC 3339 time (`2026-11-22T08:00:00Z`) or a date (`2026-11-22`, meaning its
/// midnight UTC).
pub fn parse_instant(raw: &str) -> Result<i64, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.timestamp_micros());
    }
    if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        && let Some(midnight) = date.and_hms_opt(0, 0, 0)
    {
        return Ok(midnight.and_utc().timestamp_micros());
    }
    Err(format!(
        "{raw:?} is not a time; use 2026-11-22 or 2026-11-22T08:00:00Z"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_parse_to_the_same_instant() {
        assert_eq!(
            parse_instant("2026-11-22"),
            parse_instant("2026-11-22T00:00:00Z")
        );
        assert_eq!(
            parse_instant("2026-11-22T01:00:00+01:00"),
            parse_instant("2026-11-22")
        );
        assert!(parse_instant("yesterday").is_err());
    }
}
