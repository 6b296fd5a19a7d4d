//! Proof of work (PROTOCOL.md §8).
