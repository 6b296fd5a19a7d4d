//! The `GET … SINCE d` filter (PROTOCOL.md §4.3).
