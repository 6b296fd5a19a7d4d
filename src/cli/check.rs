//! `storeherd check`.
use super::{CheckArgs, Outcome};

pub fn run(_args: CheckArgs) -> Outcome {
    anyhow::bail!("`check` is not built yet")
}
