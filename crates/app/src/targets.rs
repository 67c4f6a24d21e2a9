//! Where a tenant's webhooks may go. A campaign's `webhook` step names a URL that a tenant
//! chose; left open, a tenant could make the server post (signed) to the instance's own
//! loopback services, the private network or a cloud's metadata address, and read from a dead
//! letter's error which ports answer. So, unless the operator allows it
//! (`--allow-private-webhooks`, for tests and single-host setups):
//!
//! - a URL whose host is a literal address in a loopback, private, link-local, shared,
//!   unspecified, multicast or documentation range — or `localhost` — is refused when the
//!   campaign is saved;
//! - every address a name resolves to is checked when connecting (a name that resolves to
//!   loopback is refused too), and the connection goes only to the addresses checked;
//! - redirects are not followed;
//! - the error a tenant sees names no address or port.
//!
//! URLs the operator configures (the SMS and push providers) are trusted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether the operator lets tenants' webhooks reach internal addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookTargets {
    /// Public addresses only (the default).
    #[default]
    PublicOnly,
    /// Any address (`--allow-private-webhooks`).
    AllowPrivate,
}

/// Whether `ip` is one a tenant's webhook may not reach.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal_v4(v4),
            None => internal_v6(v6),
        },
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, 192.0.0.0/24; benchmarking, 198.18.0.0/15; reserved 240/4.
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, site-local fec0::/10 (deprecated).
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        // Documentation 2001:db8::/32; IPv4-compatible ::a.b.c.d.
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        || ip.segments()[..6].iter().all(|s| *s == 0)
}

/// The host of an `http(s)://` URL, without brackets or port.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    Some(host_port.rsplit_once(':').map_or(host_port, |(h, _)| h))
}

/// Why a tenant's webhook URL was refused when its campaign was saved.
#[derive(Debug, thiserror::Error)]
pub enum TargetRefused {
    #[error("{0:?} is not an http(s) URL")]
    NotHttp(String),
    #[error("the webhook URL {0:?} points at a loopback, private or link-local address, which tenants' webhooks may not reach")]
    Internal(String),
}

/// Checks a tenant's webhook URL when its campaign is saved: a literal internal address (or
/// `localhost`) is refused unless the operator allows it.
pub fn check_saved(url: &str, targets: WebhookTargets) -> Result<(), TargetRefused> {
    if targets == WebhookTargets::AllowPrivate {
        return Ok(());
    }
    let host = host_of(url).ok_or_else(|| TargetRefused::NotHttp(url.to_owned()))?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let internal = match host.parse::<IpAddr>() {
        Ok(ip) => is_internal(ip),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    };
    if internal {
        return Err(TargetRefused::Internal(url.to_owned()));
    }
    Ok(())
}

/// A resolver that refuses a name any of whose addresses is internal, so the connection can
/// only go to addresses that were checked (a name that resolves to loopback is refused too).
/// An address literal is not resolved: [`literal_is_internal`] checks it before sending.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct GuardedResolver;

/// The marker of a refused target, recognised to tell the tenant why without an address.
pub(crate) const REFUSED: &str = "the webhook target resolves to an internal address";

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.iter().any(|a| is_internal(a.ip())) {
                return Err(Box::new(std::io::Error::new(std::io::ErrorKind::PermissionDenied, REFUSED)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `url`'s host, read as the HTTP client reads it, is an internal address literal
/// (WHATWG URL parsing makes `127.1` and `0x7f.1` into 127.0.0.1). A URL that does not parse
/// is refused as well: it would not be sent anyway.
pub(crate) fn literal_is_internal(url: &str) -> bool {
    let parsed = reqwest::Url::parse(url);
    // The parser writes an address host in its canonical form (IPv6 in brackets).
    match parsed.as_ref().ok().and_then(|u| u.host_str()) {
        Some(host) => host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(is_internal),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges_are_told_apart_from_public_ones() {
        for ip in [
            "127.0.0.1", "127.9.9.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
            "0.0.0.0", "100.64.0.1", "255.255.255.255", "224.0.0.1", "::1", "::", "fe80::1", "fd00::1", "fc00::1",
            "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip} is internal");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn literal_internal_hosts_are_refused_at_save_unless_allowed() {
        let strict = WebhookTargets::PublicOnly;
        for url in [
            "http://127.0.0.1:8099/x",
            "http://[::1]/x",
            "http://169.254.169.254/latest/meta-data",
            "https://10.0.0.5",
            "http://user:pw@192.168.0.1:80/",
            "http://localhost:9000",
            "http://LOCALHOST./x",
            "http://a.localhost/",
            "http://[::ffff:127.0.0.1]:1/",
        ] {
            assert!(check_saved(url, strict).is_err(), "{url}");
            assert!(check_saved(url, WebhookTargets::AllowPrivate).is_ok(), "{url}");
        }
        for url in ["https://hooks.example.com/sales", "http://93.184.216.34:8080/x?y=1", "https://[2606:4700::1111]/"] {
            assert!(check_saved(url, strict).is_ok(), "{url}");
            assert!(!literal_is_internal(url), "{url}");
        }
        // What the HTTP client would connect to, checked before sending.
        for url in ["http://127.1:8080/x", "http://0x7f.1/", "http://[::1]/", "http://10.0.0.1/", "not a url"] {
            assert!(literal_is_internal(url), "{url}");
        }
    }
}
