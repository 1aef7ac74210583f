//! The URLs Plantgate posts webhooks to (data connectors, the access signal): HTTPS
//! anywhere, plain HTTP only to loopback, never with credentials in them.

use crate::error::{Error, Result};

const MAX_URL_LEN: usize = 2048;

/// HTTPS anywhere; plain HTTP only to a loopback address (tests and local relays).
pub fn check_url(raw: &str) -> Result<url::Url> {
    if raw.len() > MAX_URL_LEN {
        return Err(Error::invalid("url", format!("longer than {MAX_URL_LEN}")));
    }
    let url = url::Url::parse(raw).map_err(|err| Error::invalid("url", err.to_string()))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => return Err(Error::invalid("url", "has no host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(Error::invalid(
                "url",
                "must be https (plain http is allowed to loopback only)",
            ));
        }
        other => {
            return Err(Error::invalid(
                "url",
                format!("scheme {other:?} is not https"),
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid(
            "url",
            "must not carry credentials; the signature authenticates",
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_accepted() {
        assert!(check_url("https://erp.example/hook").is_ok());
        assert!(check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(check_url("http://erp.example/hook").is_err());
        assert!(check_url("ftp://erp.example/").is_err());
        assert!(check_url("https://u:p@erp.example/").is_err());
    }
}
