//! The values a restricted pickle may hold, and how they read as JSON.
//!
//! Every variant is a plain value: there are no callables, classes or objects of
//! any other kind, so nothing decoded here can run code when it is used.

use serde_json::{Map, Number, Value as Json};

/// One decoded Python value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// An int that fits in 128 bits.
    Int(i128),
    /// A larger int, as its decimal digits (with a leading `-` when negative).
    BigInt(String),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Keys and values in the order the pickle gave them.
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    FrozenSet(Vec<Value>),
    DateTime(DateTime),
    Date {
        year: u16,
        month: u8,
        day: u8,
    },
    Time(Time),
    TimeDelta(TimeDelta),
    /// `datetime.timezone(offset[, name])`.
    TimeZone {
        offset: TimeDelta,
        name: Option<String>,
    },
    /// `decimal.Decimal`, as the text it was built from.
    Decimal(String),
    Uuid(u128),
    /// An exception to raise in Python (written, never read): `module.name(*args)`.
    Exception {
        module: &'static str,
        name: &'static str,
        args: Vec<Value>,
    },
}

/// `datetime.datetime`: its fields, as the pickled state holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct DateTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub time: Time,
}

/// `datetime.time`, also the time part of a [`DateTime`].
#[derive(Debug, Clone, PartialEq)]
pub struct Time {
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub microsecond: u32,
    /// The `fold` attribute (the second of two equal wall-clock times).
    pub fold: bool,
    /// A `datetime.timezone` value, when the time is aware.
    pub tz: Option<Box<Value>>,
}

/// `datetime.timedelta`, normalised as Python keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeDelta {
    pub days: i32,
    pub seconds: i32,
    pub microseconds: i32,
}

impl TimeDelta {
    pub fn total_microseconds(self) -> i64 {
        (self.days as i64 * 86_400 + self.seconds as i64) * 1_000_000 + self.microseconds as i64
    }
}

/// Why a value has no JSON form.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonError {
    #[error("the float {0} has no JSON form")]
    Float(f64),
    #[error("a bytes value is not UTF-8 text ({0} bytes)")]
    Bytes(usize),
    #[error("a time zone other than a fixed offset cannot be written as JSON")]
    TimeZone,
    #[error("an exception value cannot be written as JSON")]
    Exception,
}

impl Value {
    /// The value as JSON, the way the job's payload carries it: tuples and sets
    /// become arrays, dict keys that are not text are written as their JSON text,
    /// datetimes, dates and times ISO 8601 text (as Python's `isoformat()`),
    /// timedeltas seconds, Decimals and UUIDs their text, ints beyond 64 bits
    /// their decimal digits, and bytes their UTF-8 text (other bytes are refused).
    pub fn to_json(&self) -> Result<Json, JsonError> {
        Ok(match self {
            Value::None => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => {
                if let Ok(v) = i64::try_from(*i) {
                    Json::from(v)
                } else if let Ok(v) = u64::try_from(*i) {
                    Json::from(v)
                } else {
                    Json::String(i.to_string())
                }
            }
            Value::BigInt(digits) => Json::String(digits.clone()),
            Value::Float(f) => Json::Number(Number::from_f64(*f).ok_or(JsonError::Float(*f))?),
            Value::Str(s) => Json::String(s.clone()),
            Value::Bytes(b) => {
                Json::String(String::from_utf8(b.clone()).map_err(|_| JsonError::Bytes(b.len()))?)
            }
            Value::List(items)
            | Value::Tuple(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => {
                Json::Array(items.iter().map(Value::to_json).collect::<Result<_, _>>()?)
            }
            Value::Dict(pairs) => {
                let mut map = Map::new();
                for (k, v) in pairs {
                    let key = match k {
                        Value::Str(s) => s.clone(),
                        other => match other.to_json()? {
                            Json::String(s) => s,
                            j => j.to_string(),
                        },
                    };
                    map.insert(key, v.to_json()?);
                }
                Json::Object(map)
            }
            Value::DateTime(dt) => Json::String(format!(
                "{:04}-{:02}-{:02}T{}",
                dt.year,
                dt.month,
                dt.day,
                time_text(&dt.time)?
            )),
            Value::Date { year, month, day } => {
                Json::String(format!("{year:04}-{month:02}-{day:02}"))
            }
            Value::Time(t) => Json::String(time_text(t)?),
            Value::TimeDelta(d) => {
                let micros = d.total_microseconds();
                if micros % 1_000_000 == 0 {
                    Json::from(micros / 1_000_000)
                } else {
                    Json::Number(
                        Number::from_f64(micros as f64 / 1e6).ok_or(JsonError::Float(0.0))?,
                    )
                }
            }
            Value::TimeZone { offset, .. } => Json::String(offset_text(*offset)),
            Value::Decimal(text) => Json::String(text.clone()),
            Value::Uuid(u) => Json::String(uuid::Uuid::from_u128(*u).to_string()),
            Value::Exception { .. } => return Err(JsonError::Exception),
        })
    }

    /// A JSON value as Python would hold it after `json.loads`: objects are dicts,
    /// arrays lists, whole numbers ints.
    pub fn from_json(json: &Json) -> Value {
        match json {
            Json::Null => Value::None,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i as i128)
                } else if let Some(u) = n.as_u64() {
                    Value::Int(u as i128)
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Json::String(s) => Value::Str(s.clone()),
            Json::Array(items) => Value::List(items.iter().map(Value::from_json).collect()),
            Json::Object(map) => Value::Dict(
                map.iter()
                    .map(|(k, v)| (Value::Str(k.clone()), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// `HH:MM:SS[.ffffff][+HH:MM]`, as Python's `isoformat()` writes it.
fn time_text(t: &Time) -> Result<String, JsonError> {
    let mut text = format!("{:02}:{:02}:{:02}", t.hour, t.minute, t.second);
    if t.microsecond != 0 {
        text.push_str(&format!(".{:06}", t.microsecond));
    }
    match t.tz.as_deref() {
        None => {}
        Some(Value::TimeZone { offset, .. }) => text.push_str(&offset_text(*offset)),
        Some(_) => return Err(JsonError::TimeZone),
    }
    Ok(text)
}

/// `+HH:MM`, with `:SS` and `.ffffff` only when the offset has them.
fn offset_text(offset: TimeDelta) -> String {
    let micros = offset.total_microseconds();
    let sign = if micros < 0 { '-' } else { '+' };
    let micros = micros.unsigned_abs();
    let (secs, us) = (micros / 1_000_000, micros % 1_000_000);
    let mut text = format!("{sign}{:02}:{:02}", secs / 3600, secs / 60 % 60);
    if secs % 60 != 0 || us != 0 {
        text.push_str(&format!(":{:02}", secs % 60));
    }
    if us != 0 {
        text.push_str(&format!(".{us:06}"));
    }
    text
}
