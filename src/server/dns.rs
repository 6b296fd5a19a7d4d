//! `DNS TXT <name>` (docs/protocol.md §3.8): a TXT lookup for the client, through the system
//! resolver (`/etc/resolv.conf`) or the server that `dns_resolver` names.
//!
//! The lookup is asynchronous on the network thread, so other sessions go on meanwhile,
//! and bounded by `dns_timeout` in all.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

/// What the lookup gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtAnswer {
    /// The first character-string of each TXT record of the answer, authority and
    /// additional sections (possibly none: the name exists without TXT records).
    Records(Vec<Vec<u8>>),
    /// NXDOMAIN, a timeout, or any other failure.
    Failed,
}

pub struct Dns {
    /// `None` when no resolver could be made (no usable `/etc/resolv.conf`): every lookup
    /// fails, as a lookup without a name server does.
    resolver: Option<TokioResolver>,
    timeout: Duration,
}

impl Dns {
    /// A resolver for `server` (UDP, then TCP for truncated answers), or the system's.
    pub fn new(server: Option<SocketAddr>, timeout: Duration) -> Dns {
        let builder = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                ns.connections = vec![udp, tcp];
                Ok(TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                ))
            }
            None => TokioResolver::builder_tokio(),
        };
        let resolver = builder.and_then(|mut b| {
            let opts = b.options_mut();
            // A second try fits in the overall bound (below), which ends the lookup.
            opts.timeout = timeout * 2 / 3;
            opts.attempts = 2;
            // Names are asked as given: no search domains (Twisted's client adds none).
            opts.ndots = 0;
            b.build()
        });
        let resolver = match resolver {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("no DNS resolver (DNS TXT will answer NOT FOUND): {e}");
                None
            }
        };
        Dns { resolver, timeout }
    }

    pub async fn lookup_txt(&self, name: &str) -> TxtAnswer {
        let Some(resolver) = &self.resolver else {
            return TxtAnswer::Failed;
        };
        // Fully qualified, so that no search domain is tried.
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        let lookup = tokio::time::timeout(self.timeout, resolver.txt_lookup(fqdn.as_str()));
        match lookup.await {
            Ok(Ok(l)) => {
                let records = l
                    .answers()
                    .iter()
                    .chain(l.authorities())
                    .chain(l.additionals())
                    .filter_map(|r| match &r.data {
                        RData::TXT(t) => {
                            Some(t.txt_data.first().map_or(Vec::new(), |s| s.to_vec()))
                        }
                        _ => None,
                    })
                    .collect();
                TxtAnswer::Records(records)
            }
            // The name exists but has no TXT record: the original answers a bare EndBlock.
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(nr))))
                if nr.response_code == ResponseCode::NoError =>
            {
                TxtAnswer::Records(Vec::new())
            }
            Ok(Err(e)) => {
                tracing::debug!(name, "DNS TXT lookup failed: {e}");
                TxtAnswer::Failed
            }
            Err(_) => {
                tracing::info!(name, "DNS TXT lookup timed out after {:?}", self.timeout);
                TxtAnswer::Failed
            }
        }
    }
}
