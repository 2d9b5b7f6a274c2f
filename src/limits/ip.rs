//! Limits by client address, checked before authentication: requests per second with a burst,
//! and failed authentications per minute. Counting uses pingora-limits' `Rate`, a count-min
//! sketch, so many addresses sharing its slots can make a count too high but never too low.
//!
//! Each limit counts in fixed windows (1 s for the burst, 10 s for the sustained rate, 60 s for
//! failed authentications), so an address can send up to twice a limit across the boundary of
//! two windows.

use std::net::IpAddr;
use std::time::Duration;

use http::StatusCode;
use ipnet::IpNet;
use pingora_limits::rate::{Rate, RateComponents};

use super::settings::IpSettings;
use crate::error::{ErrorSource, GatewayError};

/// Width of each count-min sketch row. More slots mean fewer collisions between addresses, but
/// more memory to touch and to clear at the end of each window.
const SKETCH_SLOTS: usize = 2048;
const SKETCH_HASHES: usize = 4;
/// The window over which the sustained rate is averaged.
const SUSTAINED_WINDOW_S: u64 = 10;

/// Returns the client's address: the socket peer, unless the peer is a trusted proxy. Then
/// `X-Forwarded-For` is read from the right, and the first address that is not a trusted proxy
/// is the client. When every listed address is trusted, the leftmost one is the client.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|network| network.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else { return peer };
    let mut client = peer;
    for entry in header.rsplit(',') {
        let Ok(ip) = entry.trim().parse::<IpAddr>().map(canonical) else {
            // An entry that is not an address ends the walk at the last address read.
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// Maps an IPv4-mapped IPv6 address to IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Returns the key an address is counted under: the address itself, or an IPv6 address's /64.
pub fn limit_key(ip: IpAddr) -> u128 {
    match canonical(ip) {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) & !((1u128 << 64) - 1)) | (1u128 << 127) | 1,
    }
}

/// Whole seconds until the current window of `rate` ends, at least 1.
fn retry_after(rate: &Rate, key: u128) -> u64 {
    let remaining = rate.rate_with(&key, |c: RateComponents| c.interval.as_secs_f64() * (1.0 - c.current_interval_fraction));
    (remaining.ceil() as u64).max(1)
}

pub struct IpLimiter {
    per_second: Rate,
    sustained: Rate,
    failed_auth: Rate,
}

impl Default for IpLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl IpLimiter {
    pub fn new() -> Self {
        let rate = |seconds| Rate::new_with_estimator_config(Duration::from_secs(seconds), SKETCH_HASHES, SKETCH_SLOTS);
        IpLimiter { per_second: rate(1), sustained: rate(SUSTAINED_WINDOW_S), failed_auth: rate(60) }
    }

    /// Counts one request from `ip` and checks the address limits. `Err` contains the seconds to
    /// wait and whether failed authentications caused it.
    pub fn check(&self, ip: IpAddr, settings: &IpSettings) -> Result<(), IpRejection> {
        if !settings.enabled || settings.allow.iter().any(|network| network.contains(&canonical(ip))) {
            return Ok(());
        }
        let key = limit_key(ip);
        // Observing 0 events reads the window's count without adding to it.
        if settings.failed_auth_per_minute > 0 && self.failed_auth.observe(&key, 0) >= settings.failed_auth_per_minute as isize {
            return Err(IpRejection { retry_after_s: retry_after(&self.failed_auth, key), failed_auth: true });
        }
        if self.per_second.observe(&key, 1) > settings.burst as isize {
            return Err(IpRejection { retry_after_s: 1, failed_auth: false });
        }
        let sustained_limit = settings.requests_per_second as u64 * SUSTAINED_WINDOW_S;
        if self.sustained.observe(&key, 1) > sustained_limit as isize {
            return Err(IpRejection { retry_after_s: retry_after(&self.sustained, key), failed_auth: false });
        }
        Ok(())
    }

    /// Counts a failed authentication from `ip`.
    pub fn record_failed_auth(&self, ip: IpAddr, settings: &IpSettings) {
        if settings.enabled && !settings.allow.iter().any(|network| network.contains(&canonical(ip))) {
            self.failed_auth.observe(&limit_key(ip), 1);
        }
    }
}

/// A request stopped by the address limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRejection {
    pub retry_after_s: u64,
    pub failed_auth: bool,
}

impl IpRejection {
    pub fn to_error(self) -> GatewayError {
        let (code, message) = if self.failed_auth {
            ("too_many_failed_authentications", "Too many failed authentications from this address.")
        } else {
            ("rate_limit_exceeded", "Too many requests from this address.")
        };
        GatewayError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            code,
            message: format!("{message} Retry after {} seconds.", self.retry_after_s),
            source: ErrorSource::Client,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(values: &[&str]) -> Vec<IpNet> {
        values.iter().map(|v| v.parse().unwrap()).collect()
    }

    fn settings(burst: u32) -> IpSettings {
        IpSettings { enabled: true, requests_per_second: burst, burst, failed_auth_per_minute: 3, trusted_proxies: Vec::new(), allow: networks(&["10.0.0.0/8"]) }
    }

    #[test]
    fn untrusted_peer_header_ignored() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(peer, Some("198.51.100.1"), &networks(&["10.0.0.0/8"])), peer);
    }

    #[test]
    fn forwarded_for_walked_from_right() {
        let trusted = networks(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let client = client_ip(peer, Some("198.51.100.7, 203.0.113.5, 10.0.0.3"), &trusted);
        assert_eq!(client, "203.0.113.5".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, Some("10.0.0.4"), &trusted), "10.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, Some("garbage, 10.0.0.4"), &trusted), "10.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, None, &trusted), peer);
    }

    #[test]
    fn ipv6_counted_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_key(a), limit_key(b));
        assert_ne!(limit_key(a), limit_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(limit_key(mapped), limit_key("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn burst_limited_per_address() {
        let limiter = IpLimiter::new();
        let settings = settings(5);
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..20).filter(|_| limiter.check(one, &settings).is_ok()).count();
        assert_eq!(admitted, 5);
        assert!(limiter.check("192.0.2.2".parse().unwrap(), &settings).is_ok());
        let allowed: IpAddr = "10.1.2.3".parse().unwrap();
        assert!((0..20).all(|_| limiter.check(allowed, &settings).is_ok()));
    }

    #[test]
    fn failed_auth_blocks_address() {
        let limiter = IpLimiter::new();
        let settings = settings(100);
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(one, &settings).is_ok());
            limiter.record_failed_auth(one, &settings);
        }
        let rejected = limiter.check(one, &settings).unwrap_err();
        assert!(rejected.failed_auth);
        assert!(rejected.retry_after_s >= 1);
        assert!(limiter.check("192.0.2.2".parse().unwrap(), &settings).is_ok());
    }
}
