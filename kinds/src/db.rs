//! What the kinds make of a database error: one rule for every kind that writes
//! its own tables.

use jobrunner::jobs::JobError;

/// A kind's database error as the job's error, `doing: cause`. SQLSTATE classes
/// 22 (data exception), 23 (integrity violation) and 54 (a program limit, such
/// as an index row too large) mean this input can never be written, so it is
/// permanent; anything else (a lost connection, a pool timeout, a deadlock) may
/// pass on the next attempt.
pub(crate) fn db_error(doing: &str, error: &sqlx::Error) -> JobError {
    let message = format!("{doing}: {}", jobrunner::error_chain(error));
    let class = error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|code| code.chars().take(2).collect::<String>());
    match class.as_deref() {
        Some("22" | "23" | "54") => JobError::permanent(message),
        _ => JobError::retryable(message),
    }
}
