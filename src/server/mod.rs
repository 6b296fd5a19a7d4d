//! The built-in store server (`storeherd store`): protocol, blocks, validation, auth.
//!
//! Network I/O runs on one thread; blocks are processed one at a time by one worker, as in
//! the original (PROTOCOL.md §1, §6).

pub mod compose;
pub mod dt;
pub mod header;
pub mod identity;
pub mod pow;
pub mod since;
pub mod validate;
