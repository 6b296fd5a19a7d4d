//! PROXY protocol v1/v2 in (`proxy.accept_proxy`): the header a front balancer puts before
//! the client's bytes, parsed with the `ppp` crate. Exactly the header is consumed (it is
//! peeked first), so that the socket can still be handed to an instance with the client's
//! own bytes intact.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header taken: a v1 line is at most 107 bytes; v2 headers with a few TLVs fit.
const MAX_HEADER: usize = 536;
/// Pause before peeking again at a header that arrived in pieces (rare: balancers send it
/// in one segment), since a peek that finds the same bytes does not wait.
const PIECES_PAUSE: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("source {0} is not in proxy.accept_proxy")]
    Untrusted(IpAddr),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("closed before its PROXY header")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub(crate) fn trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// What a complete header says: `Some(client)` for a proxied TCP connection, `None` for a
/// header without one (v1 `UNKNOWN`, v2 `LOCAL`: the balancer's own health checks).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    Incomplete,
    Done {
        len: usize,
        client: Option<SocketAddr>,
    },
}

/// Pure, so it can be tested on bytes.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return if buf.len() >= MAX_HEADER {
            Err(HeaderError::Malformed("longer than 536 bytes".into()))
        } else {
            Ok(Parsed::Incomplete)
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let client = match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Ok(Parsed::Done {
                len: h.header.len(),
                client,
            })
        }
        HeaderResult::V2(Ok(h)) => {
            let client = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            Ok(Parsed::Done {
                len: h.len(),
                client,
            })
        }
        HeaderResult::V1(Err(e)) => Err(HeaderError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(HeaderError::Malformed(e.to_string())),
    }
}

/// Reads the PROXY header of a client from `peer` (one of `nets`) and returns the client
/// address it carries (`peer` itself for a header without one).
pub(crate) async fn read(
    client: &mut TcpStream,
    peer: SocketAddr,
    nets: &[IpNet],
    timeout: Duration,
) -> Result<SocketAddr, HeaderError> {
    if !trusted(nets, peer.ip()) {
        return Err(HeaderError::Untrusted(peer.ip()));
    }
    let work = async {
        let mut buf = [0u8; MAX_HEADER];
        let mut seen = 0;
        loop {
            let n = client.peek(&mut buf).await?;
            if n == 0 {
                return Err(HeaderError::Closed);
            }
            match parse(&buf[..n])? {
                Parsed::Done { len, client: from } => {
                    let mut sink = [0u8; MAX_HEADER];
                    client.read_exact(&mut sink[..len]).await?;
                    return Ok(from.unwrap_or(peer));
                }
                Parsed::Incomplete => {
                    if n == seen {
                        tokio::time::sleep(PIECES_PAUSE).await;
                    }
                    seen = n;
                }
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HeaderError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_carry_the_client_and_the_length() {
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 8081\r\nREST";
        assert_eq!(
            parse(v1).unwrap(),
            Parsed::Done {
                len: v1.len() - 4,
                client: Some("192.0.2.7:40000".parse().unwrap())
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::9 2001:db8::1 5 6\r\n";
        assert!(matches!(
            parse(v6).unwrap(),
            Parsed::Done { client: Some(a), .. } if a == "[2001:db8::9]:5".parse().unwrap()
        ));
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown).unwrap(),
            Parsed::Done {
                len: unknown.len(),
                client: None
            }
        );
        let src: SocketAddr = "198.51.100.4:1234".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:8081".parse().unwrap();
        let mut h = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (src, dst),
        )
        .build()
        .unwrap();
        let len = h.len();
        h.extend_from_slice(b"LOGIN x");
        assert_eq!(
            parse(&h).unwrap(),
            Parsed::Done {
                len,
                client: Some(src)
            }
        );
    }

    #[test]
    fn pieces_wait_and_garbage_is_refused() {
        assert_eq!(parse(b"PROXY TCP4 192.0").unwrap(), Parsed::Incomplete);
        assert_eq!(parse(b"\r\n\r\n\0").unwrap(), Parsed::Incomplete);
        for bad in [&b"HELLO there\r\n"[..], b"PROXY TCP4 nonsense here 1 2\r\n"] {
            assert!(
                matches!(parse(bad), Err(HeaderError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(parse(&[b'P'; MAX_HEADER]).is_err());
    }

    #[test]
    fn trust_is_by_network_and_mapped_v4_counts_as_v4() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(trusted(&nets, "10.2.3.4".parse().unwrap()));
        assert!(trusted(&nets, "::ffff:10.2.3.4".parse().unwrap()));
        assert!(trusted(&nets, "::1".parse().unwrap()));
        assert!(!trusted(&nets, "127.0.0.1".parse().unwrap()));
        assert!(!trusted(&[], "10.2.3.4".parse().unwrap()));
    }
}
