//! The store protocol's primitives, shared by the built-in server, the proxy, the client
//! side (`wire`, `bench`), upkeep and the tests: the greetings and line limit, header lines
//! and the `Data: n` rule, the protocol's dates, proof of work, block composition and
//! `auth.txt` lines (docs/protocol.md §2, §4, §5, §7, §8).

pub mod auth;
pub mod compose;
pub mod dt;
pub mod header;
pub mod pow;

/// Longest line the server accepts (Twisted's `MAX_LENGTH`); replies are held to the same.
pub const MAX_LINE: usize = 16384;

/// A greeting line's text (docs/protocol.md §2), as a literal so that lines can be built at
/// compile time.
macro_rules! greeting {
    ($word:literal) => {
        concat!("CONFIDANT MAIL SERVER PROTOCOL 1 ", $word)
    };
}

/// The greeting a ready server sends.
pub const GREETING_READY: &str = greeting!("READY");
/// The greeting of a server over `max_connections` (also sent by the proxy when full).
pub const GREETING_BUSY: &str = greeting!("BUSY");
/// [`GREETING_BUSY`] with its line end, as the proxy writes it to a client it turns away.
pub const BUSY_LINE: &[u8] = concat!(greeting!("BUSY"), "\r\n").as_bytes();
