//! The public round-robin TCP proxy: accept loop, backend pool, relay.
