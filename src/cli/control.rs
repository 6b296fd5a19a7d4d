//! Control commands: thin clients of the admin API.
use super::*;

pub fn status(_a: StatusArgs) -> Outcome {
    anyhow::bail!("not built yet")
}
pub fn scale(_a: ScaleArgs) -> Outcome {
    anyhow::bail!("not built yet")
}
pub fn add(_a: AddArgs) -> Outcome {
    anyhow::bail!("not built yet")
}
pub fn remove(_a: RemoveArgs) -> Outcome {
    anyhow::bail!("not built yet")
}
pub fn restart(_a: RestartArgs) -> Outcome {
    anyhow::bail!("not built yet")
}
pub fn accounts(_a: AccountsArgs) -> Outcome {
    anyhow::bail!("not built yet")
}
pub fn shards(_a: ShardsArgs) -> Outcome {
    anyhow::bail!("not built yet")
}
