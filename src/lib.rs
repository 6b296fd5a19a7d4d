//! storeherd: runs many Confidant Mail store servers behind one public port.
//!
//! `docs/design.md` describes how the modules fit together; `docs/protocol.md` is the store
//! protocol that the built-in server ([`server`]) implements (comments cite its sections).

pub mod accounts;
pub mod admin;
pub mod bench;
pub mod cli;
pub mod control;
pub mod dht;
pub mod handoff;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod serverlog;
pub mod store;
pub mod supervisor;
pub mod topology;
pub mod upkeep;
pub mod wire;
