//! Time arithmetic on values from outside (a huge `Retry-After`, a long TTL in the
//! config, a `run_at` a producer wrote): it saturates at the range the ledger
//! carries (the Unix epoch to the end of year 9999) instead of panicking.
//! Text from outside is made storable by `crate::pgtext`.

use chrono::{DateTime, TimeDelta, Utc};

/// The latest time the ledger hands out: the end of year 9999.
fn latest() -> DateTime<Utc> {
    // 9999-12-31T23:59:59Z; a literal in range, so the fallback never applies.
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `from + d`, saturating at the end of year 9999: time arithmetic never panics
/// on a value from outside (a huge `Retry-After`, a long TTL in the config).
pub fn after(from: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| from.checked_add_signed(d))
        .map_or_else(latest, |t| t.min(latest()))
}

/// `from - d`, saturating at the Unix epoch.
pub fn before(from: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| from.checked_sub_signed(d))
        .map_or(DateTime::UNIX_EPOCH, |t| t.max(DateTime::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_arithmetic_saturates_instead_of_panicking() {
        let now = Utc::now();
        let huge = std::time::Duration::from_secs(u64::MAX);
        assert_eq!(after(now, huge).format("%Y").to_string(), "9999");
        assert_eq!(before(now, huge), DateTime::UNIX_EPOCH);
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(after(now, hour) - now, TimeDelta::hours(1));
        assert_eq!(now - before(now, hour), TimeDelta::hours(1));
    }
}
