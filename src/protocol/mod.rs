//! The store protocol's primitives, shared by the built-in server, the client side
//! (`wire`, `bench`), upkeep and the tests: header lines and the `Data: n` rule, the
//! protocol's dates, proof of work and `auth.txt` lines (docs/protocol.md §4, §5, §7, §8).

pub mod auth;
pub mod compose;
pub mod dt;
pub mod header;
pub mod pow;
