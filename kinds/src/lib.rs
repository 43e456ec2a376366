//! jobrunner's built-in business kinds, a layer on the core library:
//!
//! - `content-generation` ([`content_generation`]): plans a month of posts for a
//!   campaign and drafts each one.
//! - `data-extraction` ([`data_extraction`]): fetches a query's source pages and
//!   upserts the records that match.
//! - `message-processing` ([`message_processing`]): applies a messaging
//!   provider's webhook to conversations and messages.
//!
//! They use only the core's public API, the one a user's own crate of kinds
//! would use: handlers go into a [`jobrunner::jobs::Registry`] ([`register`]),
//! their config sections are claimed through [`jobrunner::config::Section`]
//! ([`sections`]), and the migrations that create their tables
//! (kinds/migrations/) are handed to the ledger, which applies them in one
//! sequence with its own ([`migrations`]).
//!
//! **Invariant:** the core never names these kinds, their settings or their
//! tables; the binary is the only place that puts the two together. Checked by
//! `tests/integration/invariants.rs::the_core_never_names_a_business_kind`.

pub mod content_generation;
pub mod data_extraction;
mod db;
pub mod message_processing;
mod settings;

use jobrunner::config::{Claim, Config};
use jobrunner::jobs::Registry;
use sqlx::migrate::Migration;

pub use settings::{ContentGenerationConfig, ContentGenerator, DataExtractionConfig};

/// The config sections the kinds claim: `[content_generation]` and
/// `[data_extraction]`.
pub fn sections() -> Vec<Claim> {
    settings::sections()
}

/// Adds the three kinds' handlers to `registry`, each reading its settings from
/// `config`.
pub fn register(config: &Config, registry: &mut Registry) {
    content_generation::register(registry, config);
    data_extraction::register(registry, &config.section());
    message_processing::register(registry);
}

/// The migrations that create the kinds' tables. Their versions interleave with
/// the ledger's (they were one directory once), so installed databases already
/// hold them under the same versions and checksums.
pub fn migrations() -> Vec<Migration> {
    sqlx::migrate!().iter().cloned().collect()
}

/// The core's built-in kinds plus these, with their migrations: the registry the
/// binary's daemon runs. Kinds an admin configured with a generic handler still
/// come last and win.
pub fn registry(config: &Config) -> Registry {
    Registry::builtin_with(config, |registry| {
        register(config, registry);
        registry.add_migrations(migrations());
    })
}
