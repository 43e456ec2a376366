//! `[cron.NAME]`: schedules that enqueue a job at their fire times. Parsing and
//! checking only; the loop that fires them is `scheduler`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schedule::{Schedule, ScheduleError};

/// One cron schedule. The job it enqueues is `kind` with `payload`, on `queue`
/// (default: the kind's queue) with `priority` (default 0).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CronConfig {
    /// A crontab line: 5 fields, or 6 with seconds first, or `@daily` and friends.
    pub schedule: String,
    /// The IANA zone the line's wall-clock times are read in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    pub kind: String,
    /// A TOML table, or a string holding JSON.
    #[serde(default = "default_payload")]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// What happens to fire times that passed while no daemon was running.
    #[serde(default)]
    pub catch_up: CatchUp,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
}

/// Fire times missed by more than the on-time grace (no daemon was running, or
/// the database was unreachable).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed fire times are logged and dropped.
    #[default]
    Skip,
    /// One job runs for the most recent missed fire time.
    RunOnce,
}

fn default_timezone() -> String {
    "UTC".to_owned()
}

fn default_payload() -> Value {
    Value::Object(Default::default())
}

fn default_enabled() -> bool {
    true
}

impl CronConfig {
    /// The payload as JSON: a table as it is, a string parsed as JSON text.
    pub fn payload_json(&self) -> Result<Value, String> {
        match &self.payload {
            Value::String(text) => {
                serde_json::from_str(text).map_err(|e| format!("the string is not JSON: {e}"))
            }
            other => Ok(other.clone()),
        }
    }

    /// The parsed line in its zone.
    pub fn parse_schedule(&self) -> Result<Schedule, ScheduleError> {
        Schedule::parse(&self.schedule, &self.timezone)
    }
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::RunOnce => "run_once",
        }
    }
}

/// Checks one `[cron.NAME]`; the error is `(key, reason)`.
pub(super) fn validate(name: &str, cron: &CronConfig) -> Result<(), (String, String)> {
    let key = |k: &str| format!("cron.{name}.{k}");
    if !super::valid_name(name) {
        return Err((format!("cron.{name}"), super::NAME_RULE.to_owned()));
    }
    match cron.parse_schedule() {
        Err(e @ ScheduleError::Zone(_)) => {
            return Err((key("timezone"), e.to_string()));
        }
        Err(e) => return Err((key("schedule"), e.to_string())),
        Ok(schedule) => {
            if schedule.next_after(chrono::Utc::now()).is_none() {
                return Err((
                    key("schedule"),
                    format!("`{}` never fires (no such date)", cron.schedule),
                ));
            }
        }
    }
    if cron.kind.is_empty() {
        return Err((key("kind"), "must not be empty".to_owned()));
    }
    if !super::valid_name(&cron.kind) {
        return Err((key("kind"), super::NAME_RULE.to_owned()));
    }
    if let Some(queue) = &cron.queue
        && !super::valid_name(queue)
    {
        return Err((key("queue"), super::NAME_RULE.to_owned()));
    }
    if let Some(p) = cron.priority
        && !(-1000..=1000).contains(&p)
    {
        return Err((key("priority"), "must be from -1000 to 1000".to_owned()));
    }
    let payload = cron.payload_json().map_err(|r| (key("payload"), r))?;
    if has_toml_datetime(&payload) {
        return Err((
            key("payload"),
            "TOML dates and times have no JSON form: write them as strings".to_owned(),
        ));
    }
    Ok(())
}

/// toml hands a datetime to a `serde_json::Value` as a private one-key map.
fn has_toml_datetime(v: &Value) -> bool {
    match v {
        Value::Object(map) => {
            map.contains_key("$__toml_private_datetime") || map.values().any(has_toml_datetime)
        }
        Value::Array(items) => items.iter().any(has_toml_datetime),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::Config;
    use super::*;

    fn invalid(text: &str) -> String {
        let config = Config::from_toml(text, "c.toml").unwrap();
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn a_cron_table_takes_its_defaults() {
        let config = Config::from_toml(
            "[cron.nightly]\nschedule = \"30 2 * * *\"\nkind = \"noop\"\n",
            "c.toml",
        )
        .unwrap();
        config.validate().unwrap();
        let cron = &config.cron["nightly"];
        assert_eq!(cron.timezone, "UTC");
        assert_eq!(cron.payload, json!({}));
        assert_eq!(cron.catch_up, CatchUp::Skip);
        assert!(cron.enabled);
        assert_eq!((cron.queue.as_deref(), cron.priority), (None, None));
    }

    #[test]
    fn a_payload_is_a_table_or_json_text_and_survives_a_round_trip() {
        let text = "[cron.a]\nschedule = \"@daily\"\nkind = \"noop\"\ncatch_up = \"run_once\"\ntimezone = \"Europe/Berlin\"\nqueue = \"mail\"\npriority = -5\n[cron.a.payload]\nreport = \"daily\"\nto = [\"ops\"]\n\n[cron.b]\nschedule = \"0 0 * * *\"\nkind = \"noop\"\npayload = '{\"n\": 1}'\nenabled = false\n";
        let config = Config::from_toml(text, "c.toml").unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.cron["a"].payload_json().unwrap(),
            json!({"report": "daily", "to": ["ops"]})
        );
        assert_eq!(config.cron["b"].payload_json().unwrap(), json!({"n": 1}));
        let again = Config::from_toml(&toml::to_string(&config).unwrap(), "again").unwrap();
        assert_eq!(again.cron, config.cron);
    }

    #[test]
    fn a_bad_schedule_names_its_key_and_the_reason() {
        let text = invalid("[cron.tick]\nschedule = \"61 * * * *\"\nkind = \"noop\"\n");
        assert!(
            text.starts_with(
                "config c.toml: key `cron.tick.schedule`: `61 * * * *` is not a cron schedule: "
            ),
            "{text}"
        );
        let text = invalid("[cron.tick]\nschedule = \"every minute\"\nkind = \"noop\"\n");
        assert!(text.contains("key `cron.tick.schedule`"), "{text}");
        let text = invalid("[cron.feb]\nschedule = \"0 0 30 2 *\"\nkind = \"noop\"\n");
        assert!(
            text.contains("key `cron.feb.schedule`") && text.contains("never fires"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_zone_kind_queue_priority_or_payload_names_its_key() {
        for (extra, key) in [
            (
                "timezone = \"Europe/Atlantis\"\nkind = \"noop\"",
                "cron.t.timezone",
            ),
            ("kind = \"\"", "cron.t.kind"),
            ("kind = \"two words\"", "cron.t.kind"),
            ("kind = \"noop\"\nqueue = \"a b\"", "cron.t.queue"),
            ("kind = \"noop\"\npriority = 5000", "cron.t.priority"),
            ("kind = \"noop\"\npayload = \"{oops\"", "cron.t.payload"),
            (
                "kind = \"noop\"\n[cron.t.payload]\nat = 2026-01-01T00:00:00Z",
                "cron.t.payload",
            ),
        ] {
            let text = invalid(&format!("[cron.t]\nschedule = \"@hourly\"\n{extra}\n"));
            assert!(text.contains(&format!("key `{key}`")), "{extra}: {text}");
        }
        let err = Config::from_toml("[cron.t]\nschedule = \"@hourly\"\n", "c.toml").unwrap_err();
        assert!(err.to_string().contains("kind"), "{err}");
        let err = Config::from_toml(
            "[cron.t]\nschedule = \"@hourly\"\nkind = \"noop\"\ncatch_up = \"all\"\n",
            "c.toml",
        )
        .unwrap_err();
        assert!(err.to_string().contains("run_once"), "{err}");
    }
}
