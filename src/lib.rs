//! storeherd: runs many Confidant Mail store servers behind one public port.
//!
//! See `../shared/DESIGN.md` for the product contract and `../shared/PROTOCOL.md` for the
//! store protocol that the built-in server ([`server`]) implements.

pub mod accounts;
pub mod admin;
pub mod bench;
pub mod cli;
pub mod proxy;
pub mod server;
pub mod serverlog;
pub mod store;
pub mod supervisor;
pub mod topology;
pub mod wire;
