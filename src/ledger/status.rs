//! The job vocabulary: [`Status`], its SQL, clap and serde forms, and the status
//! sets the statements bind as `text[]` parameters.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

/// Where a job is in its life. The strings are what the `status` column (`text`)
/// holds; the CLI's `--status` takes the same names (clap's `ValueEnum`), so the
/// list it offers and checks is this enum, and JSON output and events use them too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Scheduled,
    Queued,
    Running,
    Retrying,
    Succeeded,
    Dead,
    Cancelled,
}

/// Every status, in lifecycle order: the order listings and tables use.
pub const ALL_STATUSES: [Status; 7] = [
    Status::Scheduled,
    Status::Queued,
    Status::Running,
    Status::Retrying,
    Status::Succeeded,
    Status::Dead,
    Status::Cancelled,
];

impl Status {
    /// The statuses of a job that has not ended: the outbox, recovery and the
    /// counts of waiting work bind this set (`status = ANY($n)`).
    pub const OPEN: [Status; 4] = [
        Status::Scheduled,
        Status::Queued,
        Status::Retrying,
        Status::Running,
    ];

    /// The statuses a job never leaves (`status <> ALL($n)` fences writes).
    pub const FINAL: [Status; 3] = [Status::Succeeded, Status::Dead, Status::Cancelled];

    /// The statuses `retry` takes a job back from.
    pub const RETRYABLE: [Status; 2] = [Status::Dead, Status::Cancelled];

    /// The first status of a job due at `run_at`: `scheduled` while that is
    /// still ahead of `now`, `queued` once it is due. Both are times
    /// (`DateTime<Utc>`) or both Unix milliseconds, as the caller holds them.
    pub fn initial<T: PartialOrd>(run_at: T, now: T) -> Status {
        if run_at > now {
            Status::Scheduled
        } else {
            Status::Queued
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Retrying => "retrying",
            Status::Succeeded => "succeeded",
            Status::Dead => "dead",
            Status::Cancelled => "cancelled",
        }
    }

    /// A final job never changes status again.
    pub fn is_final(self) -> bool {
        Status::FINAL.contains(&self)
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        ALL_STATUSES
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown status `{s}`"))
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, not `write_str`: tables give the status a width.
        f.pad(self.as_str())
    }
}

// The column is `text` (with a CHECK), not a Postgres enum, so `Status` is
// written by hand as text rather than derived with a type name: a derived
// `#[sqlx(type_name = "text")]` would look the type up by name on every
// connection, and `text[]` parameters need the array form below.
impl Type<Postgres> for Status {
    fn type_info() -> PgTypeInfo {
        <str as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <str as Type<Postgres>>::compatible(ty)
    }
}

impl PgHasArrayType for Status {
    fn array_type_info() -> PgTypeInfo {
        <&str as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for Status {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as Encode<Postgres>>::encode(self.as_str(), buf)
    }
}

impl Decode<'_, Postgres> for Status {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Postgres>>::decode(value)?;
        Ok(text.parse()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn every_status_reads_back_from_its_text() {
        for status in ALL_STATUSES {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
        }
        assert!("finished".parse::<Status>().is_err());
    }

    #[test]
    fn the_open_and_final_sets_split_every_status() {
        for status in ALL_STATUSES {
            assert_ne!(
                Status::OPEN.contains(&status),
                Status::FINAL.contains(&status)
            );
            assert_eq!(status.is_final(), Status::FINAL.contains(&status));
        }
    }

    #[test]
    fn a_job_due_later_starts_scheduled_and_one_due_now_queued() {
        let now = Utc::now();
        assert_eq!(
            Status::initial(now + chrono::Duration::seconds(1), now),
            Status::Scheduled
        );
        assert_eq!(Status::initial(now, now), Status::Queued);
        assert_eq!(
            Status::initial(now - chrono::Duration::seconds(1), now),
            Status::Queued
        );
    }
}
