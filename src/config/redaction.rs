//! `[redaction]`: the payload and result fields that hold personal data, as JSON
//! pointers. `crate::redact` applies them; this file only reads and checks them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which fields of jobs' payloads and results are shown as `"[redacted]"`
/// (docs/OPERATIONS.md, "Security"). The lists at the top apply to every kind;
/// `[redaction.kinds.NAME]` adds a kind's own.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// Pointers into every job's payload.
    pub payload: Vec<JsonPointer>,
    /// Pointers into every job's result.
    pub result: Vec<JsonPointer>,
    /// More pointers for the jobs of one kind.
    pub kinds: BTreeMap<String, KindRedaction>,
}

/// One kind's pointers, added to the global ones.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KindRedaction {
    pub payload: Vec<JsonPointer>,
    pub result: Vec<JsonPointer>,
}

/// A JSON pointer (RFC 6901: `/webhook/tenant`, `~1` for `/`, `~0` for `~`),
/// where a segment `*` stands for every element of an array or every member of
/// an object, so `/entry/*/text` names the `text` of every entry.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonPointer {
    text: String,
    segments: Vec<String>,
}

impl JsonPointer {
    /// Parses a pointer; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<JsonPointer, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "`{text}` is not a JSON pointer: it must start with `/` (e.g. `/phone`)"
            ));
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            let mut segment = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next() {
                        Some('0') => segment.push('~'),
                        Some('1') => segment.push('/'),
                        _ => {
                            return Err(format!(
                                "`{text}` is not a JSON pointer: `~` must be followed by 0 or 1"
                            ));
                        }
                    },
                    c => segment.push(c),
                }
            }
            segments.push(segment);
        }
        Ok(JsonPointer {
            text: text.to_owned(),
            segments,
        })
    }

    /// The unescaped segments; `*` is the wildcard.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl fmt::Debug for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for JsonPointer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for JsonPointer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        JsonPointer::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_unescape_their_segments() {
        let p = JsonPointer::parse("/a~1b/*/c~0d").unwrap();
        assert_eq!(p.segments(), ["a/b", "*", "c~d"]);
        assert_eq!(p.to_string(), "/a~1b/*/c~0d");
    }

    #[test]
    fn a_pointer_without_a_leading_slash_or_with_a_bad_escape_is_refused() {
        assert!(
            JsonPointer::parse("phone")
                .unwrap_err()
                .contains("start with `/`")
        );
        assert!(JsonPointer::parse("/a~2").unwrap_err().contains("~"));
    }

    #[test]
    fn a_bad_pointer_in_a_file_is_an_error_at_its_line() {
        let error = toml::from_str::<RedactionConfig>("[kinds.x]\npayload = [\"phone\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 2") && error.contains("`phone` is not a JSON pointer"),
            "{error}"
        );
    }
}
