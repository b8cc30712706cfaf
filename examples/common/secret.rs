//! A webhook secret made up for one run of an example, when none is set.

/// 64 hex digits from the operating system's generator (two version 4 UUIDs: 244 random bits).
pub(crate) fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}
