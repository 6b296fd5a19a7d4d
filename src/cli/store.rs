//! `storeherd store --homedir DIR`.
use super::{Outcome, StoreArgs};

pub fn run(_args: StoreArgs) -> Outcome {
    anyhow::bail!("`store` is not built yet")
}
