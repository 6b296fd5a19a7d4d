//! The store protocol's primitives, shared by the built-in server, the client side
//! (`wire`, `bench`), upkeep and the tests: header lines and the `Data: n` rule, the
//! protocol's dates, and proof of work (docs/protocol.md §4, §7, §8).

pub mod dt;
pub mod header;
pub mod pow;
