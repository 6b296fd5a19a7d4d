//! The local store tree, its lock files, and the flat queues: shared by the server and the tools.
