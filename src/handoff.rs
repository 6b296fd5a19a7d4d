//! The hand-off channel between the supervisor's proxy and a built-in instance: one
//! `SOCK_SEQPACKET` Unix socket per instance, `<home>/handoff.sock` (mode 600), over which
//! the proxy passes accepted client sockets with `SCM_RIGHTS` and the instance answers and
//! reports its handed sessions' counts.
//!
//! Packets are short ASCII lines, one message each (seqpacket keeps the boundaries and ties
//! a descriptor to its message):
//!
//! | direction | message | meaning |
//! | --- | --- | --- |
//! | proxy → instance | `H <sid> <peer>` + descriptor | take this client (its address `peer`) |
//! | instance → proxy | `A <sid>` | adopted; sent once the READY greeting is written |
//! | instance → proxy | `R <sid>` | refused (full or stopping); the socket is untouched |
//! | instance → proxy | `E <sid> <in> <out>` | the session ended |
//! | instance → proxy | `T <in> <out>` | byte totals, sent while sessions are active |
//!
//! An instance that dies between taking a socket and answering leaves the proxy without an
//! answer; the socket itself then tells whether the client was greeted (see
//! `proxy::handoff`). `<in>` and `<out>` are the channel's running totals (client → instance, instance →
//! client) over every session adopted through it; the proxy adds the differences.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The channel's file name in an instance's home.
pub const SOCKET_NAME: &str = "handoff.sock";

/// Longest message (an `E` with two 20-digit totals is about 60 bytes).
pub const MAX_MESSAGE: usize = 128;

/// Where an instance's channel lives.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_NAME)
}

/// One message on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Hand {
        sid: u64,
        peer: SocketAddr,
    },
    Adopted {
        sid: u64,
    },
    Refused {
        sid: u64,
    },
    Ended {
        sid: u64,
        bytes_in: u64,
        bytes_out: u64,
    },
    Totals {
        bytes_in: u64,
        bytes_out: u64,
    },
}

impl Msg {
    pub fn encode(&self) -> String {
        match self {
            Msg::Hand { sid, peer } => format!("H {sid} {peer}"),
            Msg::Adopted { sid } => format!("A {sid}"),
            Msg::Refused { sid } => format!("R {sid}"),
            Msg::Ended {
                sid,
                bytes_in,
                bytes_out,
            } => format!("E {sid} {bytes_in} {bytes_out}"),
            Msg::Totals {
                bytes_in,
                bytes_out,
            } => format!("T {bytes_in} {bytes_out}"),
        }
    }

    /// `None` for anything that is not a well-formed message.
    pub fn parse(bytes: &[u8]) -> Option<Msg> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut it = text.split(' ');
        let kind = it.next()?;
        let mut num = || it.next()?.parse::<u64>().ok();
        let msg = match kind {
            "H" => {
                let sid = num()?;
                let peer = text.splitn(3, ' ').nth(2)?.parse().ok()?;
                return Some(Msg::Hand { sid, peer });
            }
            "A" => Msg::Adopted { sid: num()? },
            "R" => Msg::Refused { sid: num()? },
            "E" => Msg::Ended {
                sid: num()?,
                bytes_in: num()?,
                bytes_out: num()?,
            },
            "T" => Msg::Totals {
                bytes_in: num()?,
                bytes_out: num()?,
            },
            _ => return None,
        };
        it.next().is_none().then_some(msg)
    }
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// One end of a channel.
#[derive(Debug)]
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

/// The instance's listening socket.
#[derive(Debug)]
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
}

/// Registers a socket this module created and owns with the reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is a valid socket owned by the `AsyncFd` from here on, and nothing
    // closes or replaces it while it is registered.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

fn seqpacket(nonblock: bool) -> io::Result<OwnedFd> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblock {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    socket::socket(AddressFamily::Unix, SockType::SeqPacket, flags, None).map_err(nix_io)
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(nix_io)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(nix_io)?;
    Ok(())
}

impl Listener {
    /// Listens on `path`, replacing a socket file left by an earlier run. The socket is
    /// bound under a temporary name, made mode 600, then renamed into place, so that no
    /// other user can ever connect to it.
    pub fn bind(path: &Path) -> io::Result<Listener> {
        use std::os::unix::fs::PermissionsExt;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let fd = seqpacket(true)?;
        let addr = UnixAddr::new(&tmp).map_err(nix_io)?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(nix_io)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        socket::listen(&fd, Backlog::new(8).map_err(nix_io)?).map_err(nix_io)?;
        Ok(Listener { fd: register(fd)? })
    }

    pub async fn accept(&self) -> io::Result<Channel> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                socket::accept4(
                    fd.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map_err(nix_io)
            }) {
                Ok(Ok(raw)) => {
                    // SAFETY: accept4 returned a new descriptor that nothing else owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    return Ok(Channel { fd: register(fd)? });
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

impl Channel {
    /// Connects to an instance's channel. A local connect completes at once or fails (no
    /// listener, full backlog), so it is made blocking and the socket switched afterwards.
    pub fn connect(path: &Path) -> io::Result<Channel> {
        let fd = seqpacket(false)?;
        let addr = UnixAddr::new(path).map_err(nix_io)?;
        socket::connect(fd.as_raw_fd(), &addr).map_err(nix_io)?;
        set_nonblocking(&fd)?;
        Ok(Channel { fd: register(fd)? })
    }

    /// Sends one message, with `pass` attached as `SCM_RIGHTS` when given.
    pub async fn send(&self, msg: &Msg, pass: Option<RawFd>) -> io::Result<()> {
        let text = msg.encode();
        let fds;
        let cmsgs: &[ControlMessage] = match pass {
            Some(fd) => {
                fds = [fd];
                &[ControlMessage::ScmRights(&fds)]
            }
            None => &[],
        };
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                socket::sendmsg::<()>(
                    fd.as_raw_fd(),
                    &[IoSlice::new(text.as_bytes())],
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(nix_io)
            })
            .await
            .map(drop)
    }

    /// Receives one message and the descriptor that came with it. `Ok(None)` when the other
    /// end closed. A packet that is not a message is skipped (its descriptor closed).
    pub async fn recv(&self) -> io::Result<Option<(Msg, Option<OwnedFd>)>> {
        loop {
            let mut buf = [0u8; MAX_MESSAGE];
            let (len, fd) = self
                .fd
                .async_io(Interest::READABLE, |fd| recv_one(fd.as_fd(), &mut buf))
                .await?;
            if len == 0 {
                return Ok(None);
            }
            match Msg::parse(&buf[..len]) {
                Some(msg) => return Ok(Some((msg, fd))),
                None => tracing::debug!(
                    "hand-off channel: unreadable message {:?}",
                    String::from_utf8_lossy(&buf[..len])
                ),
            }
        }
    }

    /// Stops both directions: the other end sees EOF, pending reads here end.
    pub fn shutdown(&self) {
        let _ = socket::shutdown(self.fd.as_raw_fd(), socket::Shutdown::Both);
    }
}

fn recv_one(
    fd: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = socket::recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(nix_io)?;
    let mut passed = None;
    for c in msg.cmsgs().map_err(nix_io)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: the kernel installed these descriptors for this process just now.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                // One descriptor per message; any extra is closed by the drop.
                if passed.is_none() {
                    passed = Some(owned);
                }
            }
        }
    }
    Ok((msg.bytes, passed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let peer: SocketAddr = "[2001:db8::1]:4242".parse().unwrap();
        for m in [
            Msg::Hand { sid: 7, peer },
            Msg::Hand {
                sid: 8,
                peer: "10.1.2.3:9".parse().unwrap(),
            },
            Msg::Adopted { sid: 1 },
            Msg::Refused { sid: u64::MAX },
            Msg::Ended {
                sid: 3,
                bytes_in: 10,
                bytes_out: 20,
            },
            Msg::Totals {
                bytes_in: 0,
                bytes_out: 5,
            },
        ] {
            assert_eq!(Msg::parse(m.encode().as_bytes()), Some(m));
        }
        for bad in [
            "",
            "A",
            "A x",
            "A 1 2",
            "Z 1",
            "H 1",
            "H 1 nowhere",
            "T 1",
            "E 1 2",
        ] {
            assert_eq!(Msg::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_socket_passes_through_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let listener = Listener::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let proxy = Channel::connect(&path).unwrap();
        let instance = listener.accept().await.unwrap();

        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(tcp.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, peer) = tcp.accept().await.unwrap();
        let hand = Msg::Hand { sid: 1, peer };
        proxy.send(&hand, Some(accepted.as_raw_fd())).await.unwrap();
        drop(accepted);
        let (msg, fd) = instance.recv().await.unwrap().unwrap();
        assert_eq!(msg, hand);
        let std = std::net::TcpStream::from(fd.expect("a descriptor"));
        std.set_nonblocking(true).unwrap();
        let mut adopted = tokio::net::TcpStream::from_std(std).unwrap();
        adopted.write_all(b"READY\r\n").await.unwrap();
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"READY\r\n");

        instance.send(&Msg::Adopted { sid: 1 }, None).await.unwrap();
        assert_eq!(
            proxy.recv().await.unwrap().unwrap().0,
            Msg::Adopted { sid: 1 }
        );
        drop(instance);
        assert!(proxy.recv().await.unwrap().is_none());
    }
}
