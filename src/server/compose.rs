//! Builders of valid blocks (data, message announcement, acknowledgment, address claim) with
//! their proof of work, for the tests, the benchmarks and `storeherd bench`.
