//! Block validation and merge (PROTOCOL.md §7): `validate_merge`.

/// Validation limits: the `max_age_*` keys of config.txt, in seconds (PROTOCOL.md §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_age_key: i64,
    pub max_age_data: i64,
    pub max_age_message: i64,
    pub max_age_ack: i64,
    pub max_age_claim: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_age_key: 2_678_400,
            max_age_data: 864_000,
            max_age_message: 864_000,
            max_age_ack: 864_000,
            max_age_claim: 864_000,
        }
    }
}

/// A block accepted for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The bytes to write as the key's file.
    pub block: Vec<u8>,
    /// For message announcements: the recipient (lower-case hex) to notify, if any.
    pub notify: Option<String>,
}

/// Why a block was not stored (logged, never told to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("{0}")]
    Invalid(String),
}

/// Validates `new` for `key` (40 upper-case hex digits) against the `existing` block and
/// returns what to store. `posting_user` is the upload's `LoginUser` (`None` for the DHT).
pub fn validate_merge(
    _key: &str,
    _existing: Option<&[u8]>,
    _new: &[u8],
    _entangled: bool,
    _posting_user: Option<&str>,
    _limits: &Limits,
    _now: chrono::DateTime<chrono::Utc>,
) -> Result<Merged, Reject> {
    Err(Reject::Invalid("validation is not built yet".into()))
}
