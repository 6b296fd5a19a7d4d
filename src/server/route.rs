//! How the sender reaches a server (docs/protocol.md §10.4 "Servers to try", "Routing"): the order
//! in which a target's servers are tried and the SOCKS5 proxy, if any, for each of them —
//! the same rules for relay targets and for the replication peer.

use rand::seq::SliceRandom;

use crate::server::config::{Config, HostPort};

/// How to connect to one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Direct,
    Socks(HostPort),
}

fn is_onion(host: &str) -> bool {
    host.to_ascii_lowercase().ends_with(".onion")
}

fn is_i2p(host: &str) -> bool {
    host.to_ascii_lowercase().ends_with(".i2p")
}

/// The route to `host`, or `None` when it needs a proxy that is not configured (the
/// server is skipped, as the original skips it): `.onion` via `tor_proxy`, `.i2p` via
/// `i2p_proxy`, anything else via `tor_proxy` with `use_exit_node`, else via
/// `socks_proxy` if set, else direct.
pub fn route(host: &str, cfg: &Config) -> Option<Route> {
    let via = |p: &Option<HostPort>| p.clone().map(Route::Socks);
    if is_onion(host) {
        via(&cfg.tor_proxy)
    } else if is_i2p(host) {
        via(&cfg.i2p_proxy)
    } else if cfg.use_exit_node {
        via(&cfg.tor_proxy)
    } else {
        Some(via(&cfg.socks_proxy).unwrap_or(Route::Direct))
    }
}

/// A target's servers in the order to try them: shuffled, then grouped — I2P first with
/// `preferred_connection: I2P`; Tor first with `use_exit_node` or `TOR`; otherwise direct,
/// then Tor, then I2P.
pub fn order(servers: &[HostPort], cfg: &Config) -> Vec<HostPort> {
    let mut all = servers.to_vec();
    if all.len() < 2 {
        return all;
    }
    all.shuffle(&mut rand::thread_rng());
    let (tor, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|s| is_onion(&s.host));
    let (i2p, direct): (Vec<_>, Vec<_>) = rest.into_iter().partition(|s| is_i2p(&s.host));
    let groups = if cfg.preferred_connection == "I2P" {
        [i2p, tor, direct]
    } else if cfg.use_exit_node || cfg.preferred_connection == "TOR" {
        [tor, direct, i2p]
    } else {
        [direct, tor, i2p]
    };
    groups.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort {
        let (h, p) = s.split_once(':').unwrap();
        HostPort {
            host: h.into(),
            port: p.parse().unwrap(),
        }
    }

    #[test]
    fn routes() {
        let mut c = Config::default();
        assert_eq!(route("a.onion", &c), None);
        assert_eq!(route("a.i2p", &c), None);
        assert_eq!(route("example.org", &c), Some(Route::Direct));
        c.tor_proxy = Some(hp("127.0.0.1:9050"));
        c.i2p_proxy = Some(hp("127.0.0.1:4447"));
        c.socks_proxy = Some(hp("127.0.0.1:1080"));
        assert_eq!(
            route("A.ONION", &c),
            Some(Route::Socks(hp("127.0.0.1:9050")))
        );
        assert_eq!(route("x.i2p", &c), Some(Route::Socks(hp("127.0.0.1:4447"))));
        assert_eq!(
            route("1.2.3.4", &c),
            Some(Route::Socks(hp("127.0.0.1:1080")))
        );
        c.use_exit_node = true;
        assert_eq!(
            route("1.2.3.4", &c),
            Some(Route::Socks(hp("127.0.0.1:9050")))
        );
        c.tor_proxy = None;
        assert_eq!(route("1.2.3.4", &c), None);
    }

    #[test]
    fn ordering_groups_by_network() {
        let list: Vec<HostPort> = ["a.i2p:1", "b.onion:2", "c:3", "d.onion:4", "e:5"]
            .iter()
            .map(|s| hp(s))
            .collect();
        let kinds = |v: Vec<HostPort>| -> String {
            v.iter()
                .map(|s| {
                    if is_onion(&s.host) {
                        'T'
                    } else if is_i2p(&s.host) {
                        'I'
                    } else {
                        'D'
                    }
                })
                .collect()
        };
        let mut c = Config::default();
        assert_eq!(kinds(order(&list, &c)), "DDTTI");
        c.preferred_connection = "TOR".into();
        assert_eq!(kinds(order(&list, &c)), "TTDDI");
        c.preferred_connection = "I2P".into();
        assert_eq!(kinds(order(&list, &c)), "ITTDD");
        c.preferred_connection = "Direct".into();
        c.use_exit_node = true;
        assert_eq!(kinds(order(&list, &c)), "TTDDI");
        assert_eq!(order(&list[..1], &c), vec![hp("a.i2p:1")]);
    }
}
