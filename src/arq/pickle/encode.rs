//! Writes a [`Value`] as a protocol 3 pickle that Python's `pickle.loads` reads
//! back to the same value: results written back to producers, and the job's own
//! arguments repeated in arq's result record. No memo, no framing: the values are
//! trees, and protocol 3 is read by every Python 3.

use super::value::{Time, TimeDelta, Value};

/// The pickle of `value`.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = vec![0x80, 3];
    write(&mut out, value);
    out.push(b'.');
    out
}

fn global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(b'c');
    out.extend_from_slice(module.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
}

fn int(out: &mut Vec<u8>, v: i128) {
    if (0..256).contains(&v) {
        out.push(b'K');
        out.push(v as u8);
    } else if (0..65536).contains(&v) {
        out.push(b'M');
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if let Ok(small) = i32::try_from(v) {
        out.push(b'J');
        out.extend_from_slice(&small.to_le_bytes());
    } else {
        // LONG1: the shortest little-endian two's complement form.
        let bytes = v.to_le_bytes();
        let mut n = 16;
        while n > 1 {
            let (last, prev) = (bytes[n - 1], bytes[n - 2]);
            if (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0) {
                n -= 1;
            } else {
                break;
            }
        }
        out.push(0x8a);
        out.push(n as u8);
        out.extend_from_slice(&bytes[..n]);
    }
}

fn str(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'B');
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn tuple(out: &mut Vec<u8>, items: &[Value]) {
    out.push(b'(');
    for item in items {
        write(out, item);
    }
    out.push(b't');
}

/// `module.name(*args)` by REDUCE.
fn call(out: &mut Vec<u8>, module: &str, name: &str, args: &[Value]) {
    global(out, module, name);
    tuple(out, args);
    out.push(b'R');
}

fn time_state(t: &Time, hour: u8) -> [u8; 6] {
    let us = t.microsecond;
    [
        hour,
        t.minute,
        t.second,
        (us >> 16) as u8,
        (us >> 8) as u8,
        us as u8,
    ]
}

fn timedelta(d: TimeDelta) -> Value {
    Value::Tuple(vec![
        Value::Int(d.days as i128),
        Value::Int(d.seconds as i128),
        Value::Int(d.microseconds as i128),
    ])
}

fn write(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::None => out.push(b'N'),
        Value::Bool(true) => out.push(0x88),
        Value::Bool(false) => out.push(0x89),
        Value::Int(v) => int(out, *v),
        Value::BigInt(digits) => {
            // Rare enough to write as protocol 0's LONG, which takes decimal text.
            out.push(b'L');
            out.extend_from_slice(digits.as_bytes());
            out.extend_from_slice(b"L\n");
        }
        Value::Float(f) => {
            out.push(b'G');
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Str(s) => str(out, s),
        Value::Bytes(b) => bytes(out, b),
        Value::List(items) => {
            out.push(b']');
            if !items.is_empty() {
                out.push(b'(');
                for item in items {
                    write(out, item);
                }
                out.push(b'e');
            }
        }
        Value::Tuple(items) => tuple(out, items),
        Value::Dict(pairs) => {
            out.push(b'}');
            if !pairs.is_empty() {
                out.push(b'(');
                for (k, v) in pairs {
                    write(out, k);
                    write(out, v);
                }
                out.push(b'u');
            }
        }
        Value::Set(items) | Value::FrozenSet(items) => {
            let name = if matches!(value, Value::Set(_)) {
                "set"
            } else {
                "frozenset"
            };
            call(out, "builtins", name, &[Value::List(items.clone())]);
        }
        Value::DateTime(dt) => {
            let t = &dt.time;
            let mut state = vec![(dt.year >> 8) as u8, dt.year as u8, dt.month, dt.day];
            state[2] |= if t.fold { 0x80 } else { 0 };
            state.extend_from_slice(&time_state(t, t.hour));
            let mut args = vec![Value::Bytes(state)];
            if let Some(tz) = &t.tz {
                args.push((**tz).clone());
            }
            call(out, "datetime", "datetime", &args);
        }
        Value::Date { year, month, day } => {
            let state = vec![(year >> 8) as u8, *year as u8, *month, *day];
            call(out, "datetime", "date", &[Value::Bytes(state)]);
        }
        Value::Time(t) => {
            let hour = t.hour | if t.fold { 0x80 } else { 0 };
            let mut args = vec![Value::Bytes(time_state(t, hour).to_vec())];
            if let Some(tz) = &t.tz {
                args.push((**tz).clone());
            }
            call(out, "datetime", "time", &args);
        }
        Value::TimeDelta(d) => {
            global(out, "datetime", "timedelta");
            write(out, &timedelta(*d));
            out.push(b'R');
        }
        Value::TimeZone { offset, name } => {
            global(out, "datetime", "timezone");
            out.push(b'(');
            write(out, &Value::TimeDelta(*offset));
            if let Some(name) = name {
                str(out, name);
            }
            out.push(b't');
            out.push(b'R');
        }
        Value::Decimal(text) => call(out, "decimal", "Decimal", &[Value::Str(text.clone())]),
        Value::Uuid(u) => {
            // As Python writes it: NEWOBJ on the class, then BUILD with {'int': n}.
            global(out, "uuid", "UUID");
            out.push(b')');
            out.push(0x81);
            write(
                out,
                &Value::Dict(vec![(
                    Value::Str("int".into()),
                    match i128::try_from(*u) {
                        Ok(i) => Value::Int(i),
                        Err(_) => Value::BigInt(u.to_string()),
                    },
                )]),
            );
            out.push(b'b');
        }
        Value::Exception { module, name, args } => call(out, module, name, args),
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode;
    use super::*;

    #[test]
    fn every_value_reads_back_as_itself() {
        let values = [
            Value::None,
            Value::Bool(true),
            Value::Int(-1),
            Value::Int(70_000),
            Value::Int(-(1 << 40)),
            Value::Int(i128::MAX),
            Value::Int(i128::MIN),
            Value::BigInt("-1606938044258990275541962092341162602522202993782792835301376".into()),
            Value::Float(0.5),
            Value::Str("héllo".into()),
            Value::Bytes(vec![0, 255]),
            Value::List(vec![Value::Int(1), Value::Str("a".into())]),
            Value::Tuple(vec![]),
            Value::Dict(vec![(Value::Str("k".into()), Value::List(vec![]))]),
            Value::Set(vec![Value::Int(3)]),
            Value::Decimal("1.10".into()),
            Value::Uuid(0xffff_0000_1234_5678_9abc_def0_1234_5678),
        ];
        for v in values {
            assert_eq!(decode::decode(&encode(&v)), Ok(v.clone()), "{v:?}");
        }
    }
}
