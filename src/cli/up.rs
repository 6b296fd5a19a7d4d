//! `storeherd up`.
use super::{Outcome, UpArgs};

pub fn run(_args: UpArgs) -> Outcome {
    anyhow::bail!("`up` is not built yet")
}
