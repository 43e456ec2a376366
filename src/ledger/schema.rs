//! The schema: the ledger's migrations (migrations/), those that crates of kinds
//! above the core bring for their own tables, and the check that all of them are
//! applied before a daemon starts.
//!
//! Every migration, the ledger's and the kinds', is recorded in one table,
//! `jobrunner._sqlx_migrations`, and applied in one sequence ordered by version.
//! The business kinds' migrations lived in migrations/ until they moved to their
//! crate with the same versions and contents, so a database installed before the
//! move already holds them under the same checksums and an upgrade applies only
//! what is new. One table also keeps sqlx's guard: a migration recorded in the
//! database that this binary does not know (a newer binary migrated it) stops
//! `migrate` instead of being skipped.
//!
//! **Invariant:** the ledger never names a crate of kinds; their migrations come in
//! as values ([`crate::jobs::Registry::add_migrations`], [`crate::cli::Layer`]).
//! Checked by `tests/integration/invariants.rs::the_core_never_names_a_business_kind`.

use sqlx::migrate::{Migration, Migrator};

use super::{Error, Ledger, Result};

/// The ledger's migrations and `layers` (the kinds' migrations), ordered by
/// version, recorded in `jobrunner._sqlx_migrations`.
pub fn migrator(layers: &[Migration]) -> Migrator {
    let mut all: Vec<Migration> = sqlx::migrate!().iter().cloned().collect();
    all.extend(layers.iter().cloned());
    let mut migrator = Migrator::with_migrations(all);
    migrator.dangerous_set_table_name("jobrunner._sqlx_migrations");
    migrator.create_schema("jobrunner");
    migrator
}

/// The newest migration of the ledger and `layers`: the schema version a binary
/// with those kinds expects.
pub fn schema_version(layers: &[Migration]) -> i64 {
    migrator(layers)
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

impl Ledger {
    /// Applies every pending migration of the ledger and `layers`. Safe to run
    /// from several processes at once: the migrator takes an advisory lock.
    pub async fn migrate(&self, layers: &[Migration]) -> Result {
        migrator(layers).run(self.pool()).await?;
        Ok(())
    }

    /// Fails with [`Error::SchemaOutdated`] unless every migration of the ledger
    /// and `layers` has been applied (each one: the kinds' versions are older
    /// than the ledger's newest, so the newest applied version alone proves nothing).
    pub async fn check_schema(&self, layers: &[Migration]) -> Result {
        let needed = schema_version(layers);
        let applied: Vec<i64> = match sqlx::query_scalar(
            "SELECT version FROM jobrunner._sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(self.pool())
        .await
        {
            Ok(v) => v,
            // 42P01: undefined table, 3F000: undefined schema: never migrated.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P01") | Some("3F000")) =>
            {
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        let Some(newest) = applied.last() else {
            return Err(Error::SchemaOutdated {
                found: "no jobrunner schema".into(),
                needed,
            });
        };
        let missing: Vec<String> = migrator(layers)
            .iter()
            .filter(|m| applied.binary_search(&m.version).is_err())
            .map(|m| m.version.to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::SchemaOutdated {
            found: format!("version {newest}, without {}", missing.join(", ")),
            needed,
        })
    }
}
