//! `storeherd bench`.
use super::{BenchArgs, Outcome};

pub fn run(_args: BenchArgs) -> Outcome {
    anyhow::bail!("`bench` is not built yet")
}
