//! Port ranges and lists as the firewall settings and grants write them: `tcp/102`,
//! `udp/5000-5003`, and comma-separated lists of those.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `tcp/102` or `udp/5000-5003`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    pub protocol: Protocol,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn parse(raw: &str) -> std::result::Result<PortRange, String> {
        let expected =
            "expected PROTOCOL/PORT or PROTOCOL/FIRST-LAST, such as tcp/102 or udp/5000-5003";
        let (protocol, ports) = raw
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{raw:?}: {expected}"))?;
        let protocol = match protocol {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(format!("{other:?} is not a protocol; allowed: tcp, udp")),
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
            Ok(port) => Ok(port),
        };
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(ports)?, port(ports)?),
        };
        if first > last {
            return Err(format!("{raw:?}: the range runs backwards"));
        }
        Ok(PortRange {
            protocol,
            first,
            last,
        })
    }

    pub fn count(&self) -> u32 {
        u32::from(self.last - self.first) + 1
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}/{}", self.protocol.as_str(), self.first)
        } else {
            write!(f, "{}/{}-{}", self.protocol.as_str(), self.first, self.last)
        }
    }
}

/// A sorted, de-duplicated list of port ranges; its text form is comma-separated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortList(pub Vec<PortRange>);

impl PortList {
    pub fn parse(raw: &str) -> std::result::Result<PortList, String> {
        let ranges: BTreeSet<PortRange> = raw
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(PortRange::parse)
            .collect::<Result<_, _>>()?;
        if ranges.is_empty() {
            return Err("no ports given".to_owned());
        }
        Ok(PortList(ranges.into_iter().collect()))
    }

    /// How many (protocol, port) pairs the list opens.
    pub fn count(&self) -> u32 {
        self.0.iter().map(PortRange::count).sum()
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_parse_sort_and_count() {
        let list = PortList::parse("udp/2222, tcp/44818,tcp/5000-5003").expect("valid");
        assert_eq!(list.to_string(), "tcp/5000-5003,tcp/44818,udp/2222");
        assert_eq!(list.count(), 6);
        for bad in [
            "",
            "tcp",
            "tcp/0",
            "tcp/65536",
            "icmp/1",
            "tcp/10-5",
            "tcp/x",
            "tcp/1-",
        ] {
            assert!(PortList::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
