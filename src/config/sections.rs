//! Top-level sections that a layer above the core claims (the binary's business
//! kinds' settings, or a user's own crate's).
//!
//! The core names none of them. A layer describes its section as a type that
//! implements [`Section`]; whoever loads the config passes the layers' [`Claim`]s,
//! and the file may then hold those tables and no other unknown one (a typo at the
//! top level is still an error). Each claimed table is read through its type
//! (unknown keys refused, defaults filled in), validated by it, and kept in
//! [`super::Config::sections`] in that normalised form, so `jobrunner config`
//! prints it and a reload compares it like any other section.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::with_secrets_exposed;

/// A layer's top-level config section.
pub trait Section:
    Serialize + DeserializeOwned + Default + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// The table's name in the file, e.g. `shop` for `[shop]`.
    const NAME: &'static str;

    /// Checks the values; an error is the key (within the section) and the reason.
    fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}

/// A layer's claim on a top-level table: its name and how to read it.
#[derive(Clone, Copy)]
pub struct Claim {
    name: &'static str,
    normalize: fn(Value) -> Result<Value, (String, String)>,
}

impl Claim {
    pub fn of<S: Section>() -> Claim {
        Claim {
            name: S::NAME,
            normalize: normalize::<S>,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Reads `value` (an absent table is `{}`) through the section's type and
    /// validates it; returns it with every default filled in.
    pub(super) fn normalize(&self, value: Value) -> Result<Value, (String, String)> {
        (self.normalize)(value)
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Claim").field(&self.name).finish()
    }
}

fn normalize<S: Section>(value: Value) -> Result<Value, (String, String)> {
    let section: S = serde_json::from_value(value).map_err(|e| (String::new(), e.to_string()))?;
    section.validate()?;
    to_value(&section)
}

/// The stored form of a section: secrets kept as values (the stored form is read
/// back by [`super::Config::section`]; printing hides them again).
pub(super) fn to_value<S: Section>(section: &S) -> Result<Value, (String, String)> {
    with_secrets_exposed(|| serde_json::to_value(section))
        .map_err(|e| (String::new(), e.to_string()))
}
