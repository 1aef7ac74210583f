//! The client behind a request: its address, also behind a trusted proxy, and what a
//! trusted proxy says the client asked for.

use std::net::IpAddr;

use actix_web::{HttpRequest, web};

use crate::state::AppState;

/// True when the TCP peer is one of `web.trusted_proxies`.
pub(crate) fn from_trusted_proxy(req: &HttpRequest, config: &appliance::config::Config) -> bool {
    req.peer_addr()
        .is_some_and(|peer| is_trusted_proxy(config, peer.ip()))
}

fn is_trusted_proxy(config: &appliance::config::Config, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    config.web.trusted_proxies.contains(&ip)
}

/// The `Forwarded` header's parameters, element by element (RFC 7239), lower-case names,
/// quotes removed.
fn forwarded_elements(req: &HttpRequest) -> Vec<Vec<(String, String)>> {
    req.headers()
        .get_all("forwarded")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| {
                    (
                        k.trim().to_ascii_lowercase(),
                        v.trim().trim_matches('"').to_owned(),
                    )
                })
                .collect()
        })
        .collect()
}

/// The host and scheme a proxy says the client asked for: `Forwarded: host=..;proto=..`
/// (its first element, the one nearest the client), else `X-Forwarded-Host` and
/// `X-Forwarded-Proto` (their first values); the scheme defaults to https.
pub(crate) fn forwarded_host(req: &HttpRequest) -> Option<(String, String)> {
    let first_value = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let elements = forwarded_elements(req);
    let param = |name: &str| {
        elements
            .first()
            .and_then(|e| e.iter().find(|(k, _)| k == name))
            .map(|(_, v)| v.clone())
    };
    let host = param("host").or_else(|| first_value("x-forwarded-host"))?;
    let scheme = param("proto")
        .or_else(|| first_value("x-forwarded-proto"))
        .unwrap_or_else(|| "https".to_owned());
    Some((host, scheme))
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the nearest
/// address before it that is not one (`Forwarded: for=`, else `X-Forwarded-For`, read from
/// the right, since a client can write anything on the left).
pub(crate) fn client_ip(req: &HttpRequest) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Some(peer);
    };
    let config = &state.app.config;
    if !is_trusted_proxy(config, peer) {
        return Some(peer);
    }
    let parse = |text: &str| -> Option<IpAddr> {
        let text = text.trim().trim_matches('"');
        // `for=` may be `"[2001:db8::1]:4711"` or `192.0.2.1:4711`.
        text.parse::<IpAddr>()
            .ok()
            .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
            .or_else(|| {
                text.strip_prefix('[')
                    .and_then(|t| t.split(']').next())
                    .and_then(|t| t.parse().ok())
            })
    };
    let mut chain: Vec<String> = forwarded_elements(req)
        .into_iter()
        .filter_map(|e| e.into_iter().find(|(k, _)| k == "for").map(|(_, v)| v))
        .collect();
    if chain.is_empty() {
        chain = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::to_owned)
            .collect();
    }
    for hop in chain.iter().rev() {
        match parse(hop) {
            Some(ip) if is_trusted_proxy(config, ip) => continue,
            Some(ip) => return Some(ip),
            // An address hidden by the proxy ("unknown", an obfuscated name): the proxy is
            // the nearest address known.
            None => return Some(peer),
        }
    }
    Some(peer)
}

/// The address a request came from, as audit records give it: the client's, also behind
/// a trusted proxy ([`client_ip`]).
pub(crate) fn source(req: &HttpRequest) -> String {
    client_ip(req)
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into())
}
