//! The globals a pickle may name, each built by hand from its arguments:
//! never imported, looked up or called.

use super::decode::{Error, Machine, Node, Result};
use super::value::{DateTime, Time, TimeDelta, Value};
/// The globals a pickle may name, each built without calling anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Global {
    /// `_codecs.encode(text, 'latin1')`: protocols 0-2 write bytes this way.
    CodecsEncode,
    Bytes,
    Bytearray,
    Set,
    FrozenSet,
    DateTime,
    Date,
    Time,
    TimeDelta,
    TimeZone,
    Decimal,
    Uuid,
}

pub(super) fn global(module: &str, name: &str) -> Result<Global> {
    let builtin = matches!(module, "builtins" | "__builtin__");
    Ok(match (module, name) {
        ("_codecs", "encode") => Global::CodecsEncode,
        (_, "bytes") if builtin => Global::Bytes,
        (_, "bytearray") if builtin => Global::Bytearray,
        (_, "set") if builtin => Global::Set,
        (_, "frozenset") if builtin => Global::FrozenSet,
        ("datetime", "datetime") => Global::DateTime,
        ("datetime", "date") => Global::Date,
        ("datetime", "time") => Global::Time,
        ("datetime", "timedelta") => Global::TimeDelta,
        ("datetime", "timezone") => Global::TimeZone,
        ("decimal" | "_pydecimal", "Decimal") => Global::Decimal,
        ("uuid", "UUID") => Global::Uuid,
        _ => {
            return Err(Error::Global {
                module: module.to_owned(),
                name: name.to_owned(),
            });
        }
    })
}

impl Machine<'_> {
    /// What REDUCE makes of an allowed global and its arguments, built by hand.
    pub(super) fn construct(&self, g: Global, args: &[usize]) -> Result<Node> {
        let arg = |n: usize| -> Result<usize> {
            match args.get(n) {
                Some(i) => Ok(*i),
                None => self.malformed(format!("{g:?} needs argument {}", n + 1)),
            }
        };
        Ok(match g {
            Global::CodecsEncode => {
                let text = self.str_at(arg(0)?)?;
                let encoding = self.str_at(arg(1)?)?;
                if encoding != "latin1" && encoding != "latin-1" {
                    return self.malformed(format!("_codecs.encode with {encoding}"));
                }
                let mut bytes = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match u8::try_from(c as u32) {
                        Ok(b) => bytes.push(b),
                        Err(_) => return self.malformed("latin1 text beyond U+00FF"),
                    }
                }
                Node::Leaf(Value::Bytes(bytes))
            }
            Global::Bytes | Global::Bytearray => match args.first() {
                None => Node::Leaf(Value::Bytes(Vec::new())),
                Some(i) => Node::Leaf(Value::Bytes(self.bytes_at(*i)?)),
            },
            Global::Set | Global::FrozenSet => {
                let items = match args.first().map(|i| &self.arena[*i]) {
                    None => Vec::new(),
                    Some(Node::List(items)) => items.clone(),
                    Some(_) => return self.malformed("set() of something that is not a list"),
                };
                if g == Global::Set {
                    Node::Set(items)
                } else {
                    Node::FrozenSet(items)
                }
            }
            Global::DateTime => {
                let state = self.bytes_at(arg(0)?)?;
                if state.len() != 10 {
                    return self.malformed("datetime state is not 10 bytes");
                }
                let time = self.time_state(&state[4..], args.get(1).copied())?;
                Node::Leaf(Value::DateTime(DateTime {
                    year: u16::from_be_bytes([state[0], state[1]]),
                    month: state[2] & 0x7f,
                    day: state[3],
                    time: Time {
                        fold: state[2] & 0x80 != 0,
                        ..time
                    },
                }))
            }
            Global::Date => {
                let state = self.bytes_at(arg(0)?)?;
                if state.len() != 4 {
                    return self.malformed("date state is not 4 bytes");
                }
                Node::Leaf(Value::Date {
                    year: u16::from_be_bytes([state[0], state[1]]),
                    month: state[2],
                    day: state[3],
                })
            }
            Global::Time => {
                let state = self.bytes_at(arg(0)?)?;
                if state.len() != 6 {
                    return self.malformed("time state is not 6 bytes");
                }
                let mut time = self.time_state(&state, args.get(1).copied())?;
                time.fold = state[0] & 0x80 != 0;
                time.hour = state[0] & 0x7f;
                Node::Leaf(Value::Time(time))
            }
            Global::TimeDelta => Node::Leaf(Value::TimeDelta(TimeDelta {
                days: self.small_int(arg(0)?)?,
                seconds: self.small_int(arg(1)?)?,
                microseconds: self.small_int(arg(2)?)?,
            })),
            Global::TimeZone => {
                let offset = match self.leaf(arg(0)?) {
                    Some(Value::TimeDelta(d)) => *d,
                    _ => return self.malformed("timezone offset is not a timedelta"),
                };
                let name = match args.get(1) {
                    Some(i) => Some(self.str_at(*i)?),
                    None => None,
                };
                Node::Leaf(Value::TimeZone { offset, name })
            }
            Global::Decimal => {
                let text = self.str_at(arg(0)?)?;
                Node::Leaf(Value::Decimal(text))
            }
            Global::Uuid => return self.malformed("uuid.UUID is only read through NEWOBJ"),
        })
    }

    pub(super) fn small_int(&self, i: usize) -> Result<i32> {
        match i32::try_from(self.int_at(i)?) {
            Ok(v) => Ok(v),
            Err(_) => self.malformed("a timedelta field is out of range"),
        }
    }

    /// The 6-byte time state (hour, minute, second, microsecond) and its tzinfo.
    pub(super) fn time_state(&self, s: &[u8], tz: Option<usize>) -> Result<Time> {
        let tz = match tz.map(|i| self.leaf(i)) {
            None => None,
            Some(Some(v @ Value::TimeZone { .. })) => Some(Box::new(v.clone())),
            Some(Some(Value::None)) => None,
            Some(_) => return self.malformed("tzinfo other than datetime.timezone"),
        };
        Ok(Time {
            hour: s[0],
            minute: s[1],
            second: s[2],
            microsecond: (s[3] as u32) << 16 | (s[4] as u32) << 8 | s[5] as u32,
            fold: false,
            tz,
        })
    }
}
