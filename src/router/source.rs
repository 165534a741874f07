//! The optional source-address allow-list: only Telegram's documented
//! delivery ranges may post, and X-Forwarded-For is believed only when the
//! peer is a configured trusted proxy.

use std::net::IpAddr;

use axum::http::HeaderValue;
use ipnet::IpNet;

/// The ranges Telegram delivers webhooks from.
pub const TELEGRAM_RANGES: [&str; 2] = ["149.154.160.0/20", "91.108.4.0/22"];

/// Which sources may post updates.
#[derive(Clone, Debug)]
pub struct SourceFilter {
    allowed: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
}

impl SourceFilter {
    /// Telegram's ranges, behind `trusted_proxies`.
    pub fn telegram(trusted_proxies: Vec<IpNet>) -> Self {
        let allowed = TELEGRAM_RANGES
            .iter()
            .map(|range| range.parse().expect("Telegram's ranges are valid CIDRs"))
            .collect();
        Self {
            allowed,
            trusted_proxies,
        }
    }

    /// Whether a request from `peer` carrying these X-Forwarded-For values
    /// (in header order) comes from an allowed source.
    pub fn admits<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    ) -> bool {
        self.client(peer, forwarded_for)
            .is_some_and(|client| contains(&self.allowed, client))
    }

    /// The address the request came from: the peer, or, through trusted
    /// proxies, the nearest X-Forwarded-For entry that is not one. `None` when
    /// a trusted proxy forwarded something that is not an address.
    fn client<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    ) -> Option<IpAddr> {
        let mut client = peer.to_canonical();
        if !contains(&self.trusted_proxies, client) {
            return Some(client);
        }
        for value in forwarded_for.rev() {
            let entries = value.to_str().ok()?;
            for entry in entries.rsplit(',') {
                client = entry.trim().parse::<IpAddr>().ok()?.to_canonical();
                if !contains(&self.trusted_proxies, client) {
                    return Some(client);
                }
            }
        }
        Some(client)
    }
}

fn contains(ranges: &[IpNet], address: IpAddr) -> bool {
    ranges.iter().any(|range| range.contains(&address))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(trusted: &[&str]) -> SourceFilter {
        SourceFilter::telegram(trusted.iter().map(|t| t.parse().unwrap()).collect())
    }

    fn admits(filter: &SourceFilter, peer: &str, forwarded: &[&str]) -> bool {
        let values: Vec<HeaderValue> = forwarded
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        filter.admits(peer.parse().unwrap(), values.iter())
    }

    #[test]
    fn telegram_ranges_are_admitted_directly() {
        let direct = filter(&[]);
        for telegram in [
            "149.154.160.1",
            "149.154.175.254",
            "91.108.4.1",
            "91.108.7.255",
        ] {
            assert!(admits(&direct, telegram, &[]), "{telegram}");
        }
        assert!(admits(&direct, "::ffff:149.154.167.99", &[]));
        for other in [
            "149.154.176.1",
            "91.108.8.1",
            "127.0.0.1",
            "::1",
            "10.0.0.1",
        ] {
            assert!(!admits(&direct, other, &[]), "{other}");
        }
    }

    #[test]
    fn forwarded_for_is_ignored_from_an_untrusted_peer() {
        let direct = filter(&[]);
        assert!(!admits(&direct, "203.0.113.9", &["149.154.167.99"]));
        let behind = filter(&["10.0.0.0/8"]);
        assert!(!admits(&behind, "203.0.113.9", &["149.154.167.99"]));
    }

    #[test]
    fn forwarded_for_names_the_client_behind_trusted_proxies() {
        let behind = filter(&["10.0.0.0/8", "127.0.0.1/32"]);
        assert!(admits(&behind, "10.1.2.3", &["149.154.167.99"]));
        assert!(admits(&behind, "127.0.0.1", &["149.154.167.99, 10.9.9.9"]));
        assert!(admits(&behind, "10.1.2.3", &["149.154.167.99", "10.9.9.9"]));
        assert!(
            !admits(&behind, "10.1.2.3", &[]),
            "the proxy itself is not Telegram"
        );
        assert!(!admits(&behind, "10.1.2.3", &["10.4.4.4"]));
    }

    #[test]
    fn a_spoofed_leftmost_entry_does_not_help() {
        let behind = filter(&["10.0.0.0/8"]);
        assert!(!admits(
            &behind,
            "10.1.2.3",
            &["149.154.167.99, 203.0.113.9"]
        ));
        assert!(!admits(
            &behind,
            "10.1.2.3",
            &["149.154.167.99", "203.0.113.9"]
        ));
    }

    #[test]
    fn garbage_forwarded_by_a_trusted_proxy_is_refused() {
        let behind = filter(&["10.0.0.0/8"]);
        assert!(!admits(&behind, "10.1.2.3", &["not-an-address"]));
        assert!(!admits(&behind, "10.1.2.3", &["149.154.167.99:443"]));
    }
}
