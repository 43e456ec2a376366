//! The restricted pickle reader: a stack machine over the opcodes of protocols
//! 0 to 5 that build plain values, with a short list of globals it knows how to
//! build without calling them. Any other global, and every opcode that would
//! call or import something else (INST, OBJ, EXT*, persistent ids, out-of-band
//! buffers), is refused with an error naming it. Nothing is ever executed.
//!
//! Containers live in an arena and the stack and memo hold indices, so shared
//! references (PUT/GET, MEMOIZE) see the container as it is filled later, the way
//! Python's unpickler does. The tree is built at the end; a reference cycle is
//! refused, and the expanded size is capped so a few memo references cannot
//! expand into a huge value.

use std::collections::HashMap;

use super::value::{DateTime, Time, TimeDelta, Value};

/// The largest pickle read, and the most values the result may expand to.
const MAX_INPUT: usize = 16 << 20;
const MAX_NODES: usize = 1_000_000;
/// Deeper nesting than this is refused (the payload must fit serde_json's reader).
const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error(
        "pickle global {module}.{name} is not allowed: only None, bool, int, float, str, bytes, list, tuple, dict, set, frozenset, datetime, date, time, timedelta, timezone, Decimal and UUID values are read"
    )]
    Global { module: String, name: String },
    #[error("pickle opcode {name} at byte {at} is not allowed: it would call or import code")]
    Opcode { name: &'static str, at: usize },
    #[error("unknown pickle opcode 0x{code:02x} at byte {at}")]
    Unknown { code: u8, at: usize },
    #[error("pickle protocol {0} is not supported (0 to 5 are)")]
    Protocol(u8),
    #[error("the pickle ends before its STOP opcode")]
    Truncated,
    #[error("the pickle is larger than {MAX_INPUT} bytes")]
    TooLarge,
    #[error("malformed pickle at byte {at}: {reason}")]
    Malformed { at: usize, reason: String },
    #[error("the pickle holds a reference cycle, which has no JSON form")]
    Cycle,
    #[error(
        "the pickle nests deeper than {MAX_DEPTH} levels or expands to more than {MAX_NODES} values"
    )]
    TooBig,
}

type Result<T = (), E = Error> = std::result::Result<T, E>;

/// What the stack holds: a value in the arena, or a MARK.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Mark,
    Node(usize),
}

/// An arena entry. Containers hold indices; the rest are finished values.
#[derive(Debug, Clone)]
enum Node {
    Leaf(Value),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Set(Vec<usize>),
    FrozenSet(Vec<usize>),
    /// An allowed global, waiting for REDUCE or NEWOBJ.
    Global(Global),
    /// `uuid.UUID` made by NEWOBJ, waiting for BUILD with its `int`.
    UuidShell,
}

/// The globals a pickle may name, each built without calling anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
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

fn global(module: &str, name: &str) -> Result<Global> {
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

/// Reads one pickle into a [`Value`], refusing anything outside the list.
pub fn decode(data: &[u8]) -> Result<Value> {
    if data.len() > MAX_INPUT {
        return Err(Error::TooLarge);
    }
    let mut m = Machine {
        data,
        pos: 0,
        at: 0,
        arena: Vec::new(),
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    let root = m.run()?;
    let mut budget = MAX_NODES;
    let mut visiting = Vec::new();
    m.build(root, 0, &mut budget, &mut visiting)
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Where the current opcode starts, for errors.
    at: usize,
    arena: Vec<Node>,
    stack: Vec<Slot>,
    memo: HashMap<u64, usize>,
}

impl Machine<'_> {
    fn malformed<T>(&self, reason: impl Into<String>) -> Result<T> {
        Err(Error::Malformed {
            at: self.at,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).ok_or(Error::Truncated)?;
        let bytes = self.data.get(self.pos..end).ok_or(Error::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, width: usize) -> Result<u64> {
        let bytes = self.take(width)?;
        let mut v = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            v |= (*b as u64) << (8 * i);
        }
        Ok(v)
    }

    fn sized(&mut self, width: usize) -> Result<Vec<u8>> {
        let n = self.uint(width)?;
        if n > MAX_INPUT as u64 {
            return Err(Error::TooLarge);
        }
        Ok(self.take(n as usize)?.to_vec())
    }

    /// A text-protocol line, without its newline.
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(Error::Truncated)?;
        let text = String::from_utf8(rest[..n].to_vec());
        self.pos += n + 1;
        match text {
            Ok(t) => Ok(t),
            Err(_) => self.malformed("a text line is not UTF-8"),
        }
    }

    fn text(&self, bytes: Vec<u8>) -> Result<String> {
        match String::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(_) => self.malformed("a string is not valid UTF-8"),
        }
    }

    fn push(&mut self, node: Node) {
        self.arena.push(node);
        self.stack.push(Slot::Node(self.arena.len() - 1));
    }

    fn push_leaf(&mut self, v: Value) {
        self.push(Node::Leaf(v));
    }

    fn pop(&mut self) -> Result<usize> {
        match self.stack.pop() {
            Some(Slot::Node(i)) => Ok(i),
            Some(Slot::Mark) => self.malformed("a MARK where a value was expected"),
            None => self.malformed("the stack is empty"),
        }
    }

    fn top(&self) -> Result<usize> {
        match self.stack.last() {
            Some(Slot::Node(i)) => Ok(*i),
            _ => self.malformed("no value on the stack"),
        }
    }

    /// Everything above the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<usize>> {
        let Some(mark) = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)) else {
            return self.malformed("no MARK on the stack");
        };
        let items = self
            .stack
            .drain(mark + 1..)
            .map(|s| match s {
                Slot::Node(i) => i,
                Slot::Mark => unreachable!("rposition found the last mark"),
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    fn memo_put(&mut self, key: u64) -> Result {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result {
        match self.memo.get(&key) {
            Some(i) => {
                self.stack.push(Slot::Node(*i));
                Ok(())
            }
            None => self.malformed(format!("memo {key} was never stored")),
        }
    }

    fn leaf(&self, i: usize) -> Option<&Value> {
        match &self.arena[i] {
            Node::Leaf(v) => Some(v),
            _ => None,
        }
    }

    fn str_at(&self, i: usize) -> Result<String> {
        match self.leaf(i) {
            Some(Value::Str(s)) => Ok(s.clone()),
            _ => self.malformed("expected a str"),
        }
    }

    fn int_at(&self, i: usize) -> Result<i128> {
        match self.leaf(i) {
            Some(Value::Int(v)) => Ok(*v),
            Some(Value::Bool(b)) => Ok(*b as i128),
            _ => self.malformed("expected an int"),
        }
    }

    fn bytes_at(&self, i: usize) -> Result<Vec<u8>> {
        match self.leaf(i) {
            Some(Value::Bytes(b)) => Ok(b.clone()),
            _ => self.malformed("expected bytes"),
        }
    }

    fn tuple_at(&self, i: usize) -> Result<Vec<usize>> {
        match &self.arena[i] {
            Node::Tuple(items) => Ok(items.clone()),
            _ => self.malformed("expected a tuple of arguments"),
        }
    }

    fn append(&mut self, target: usize, items: Vec<usize>) -> Result {
        match &mut self.arena[target] {
            Node::List(list) => list.extend(items),
            _ => return self.malformed("APPEND to something that is not a list"),
        }
        Ok(())
    }

    fn set_items(&mut self, target: usize, items: Vec<usize>) -> Result {
        if items.len() % 2 != 0 {
            return self.malformed("SETITEMS with an odd number of values");
        }
        let pairs: Vec<(usize, usize)> = items.chunks(2).map(|c| (c[0], c[1])).collect();
        match &mut self.arena[target] {
            Node::Dict(dict) => dict.extend(pairs),
            _ => return self.malformed("SETITEM on something that is not a dict"),
        }
        Ok(())
    }

    fn add_items(&mut self, target: usize, items: Vec<usize>) -> Result {
        match &mut self.arena[target] {
            Node::Set(set) => set.extend(items),
            _ => return self.malformed("ADDITEMS on something that is not a set"),
        }
        Ok(())
    }

    fn refused(&self, name: &'static str) -> Error {
        Error::Opcode { name, at: self.at }
    }

    /// Runs the opcodes to STOP; returns the arena index of the result.
    fn run(&mut self) -> Result<usize> {
        loop {
            self.at = self.pos;
            let op = self.byte()?;
            match op {
                0x80 => {
                    let proto = self.byte()?;
                    if proto > 5 {
                        return Err(Error::Protocol(proto));
                    }
                }
                0x95 => {
                    // FRAME: a length prefix for buffering; the data follows inline.
                    self.uint(8)?;
                }
                b'.' => {
                    let root = self.pop()?;
                    return Ok(root);
                }
                b'(' => self.stack.push(Slot::Mark),
                b'0' => {
                    self.stack.pop();
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.stack.push(Slot::Node(top));
                }
                b'N' => self.push_leaf(Value::None),
                0x88 => self.push_leaf(Value::Bool(true)),
                0x89 => self.push_leaf(Value::Bool(false)),
                b'I' => {
                    let line = self.line()?;
                    let v = match line.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        text => match text.parse::<i128>() {
                            Ok(i) => Value::Int(i),
                            Err(_) => return self.malformed("INT is not a number"),
                        },
                    };
                    self.push_leaf(v);
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.push_leaf(Value::Int(v as i128));
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push_leaf(Value::Int(v as i128));
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.push_leaf(Value::Int(v as i128));
                }
                b'L' => {
                    let line = self.line()?;
                    let digits = line.trim_end_matches('L');
                    let v = match digits.parse::<i128>() {
                        Ok(i) => Value::Int(i),
                        Err(_)
                            if digits
                                .trim_start_matches('-')
                                .bytes()
                                .all(|b| b.is_ascii_digit()) =>
                        {
                            Value::BigInt(digits.to_owned())
                        }
                        Err(_) => return self.malformed("LONG is not a number"),
                    };
                    self.push_leaf(v);
                }
                0x8a | 0x8b => {
                    let width = if op == 0x8a { 1 } else { 4 };
                    let bytes = self.sized(width)?;
                    self.push_leaf(long_from_le(&bytes));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(b);
                    self.push_leaf(Value::Float(f64::from_be_bytes(raw)));
                }
                b'F' => {
                    let line = self.line()?;
                    match line.parse::<f64>() {
                        Ok(f) => self.push_leaf(Value::Float(f)),
                        Err(_) => return self.malformed("FLOAT is not a number"),
                    }
                }
                b'X' | 0x8c | 0x8d => {
                    let width = match op {
                        b'X' => 4,
                        0x8c => 1,
                        _ => 8,
                    };
                    let bytes = self.sized(width)?;
                    let s = self.text(bytes)?;
                    self.push_leaf(Value::Str(s));
                }
                b'V' => {
                    let line = self.line()?;
                    let s = unescape_raw_unicode(&line);
                    self.push_leaf(Value::Str(s));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let width = match op {
                        b'B' => 4,
                        b'C' => 1,
                        _ => 8,
                    };
                    let bytes = self.sized(width)?;
                    self.push_leaf(Value::Bytes(bytes));
                }
                b'T' | b'U' => {
                    // Python 2 str: read as bytes (Python 3 does with encoding='bytes').
                    let width = if op == b'T' { 4 } else { 1 };
                    let bytes = self.sized(width)?;
                    self.push_leaf(Value::Bytes(bytes));
                }
                b'S' => return Err(self.refused("STRING")),
                b']' => self.push(Node::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b'a' => {
                    let item = self.pop()?;
                    let list = self.top()?;
                    self.append(list, vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.append(list, items)?;
                }
                b')' => self.push(Node::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items));
                }
                b'}' => self.push(Node::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Dict(Vec::new()));
                    let dict = self.top()?;
                    self.set_items(dict, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let dict = self.top()?;
                    self.set_items(dict, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let dict = self.top()?;
                    self.set_items(dict, items)?;
                }
                0x8f => self.push(Node::Set(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    let set = self.top()?;
                    self.add_items(set, items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::FrozenSet(items));
                }
                b'p' => {
                    let line = self.line()?;
                    match line.parse::<u64>() {
                        Ok(k) => self.memo_put(k)?,
                        Err(_) => return self.malformed("PUT is not a number"),
                    }
                }
                b'q' => {
                    let k = self.byte()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.uint(4)?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let line = self.line()?;
                    match line.parse::<u64>() {
                        Ok(k) => self.memo_get(k)?,
                        Err(_) => return self.malformed("GET is not a number"),
                    }
                }
                b'h' => {
                    let k = self.byte()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.uint(4)?;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = global(&module, &name)?;
                    self.push(Node::Global(g));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (module, name) = (self.str_at(module)?, self.str_at(name)?);
                    let g = global(&module, &name)?;
                    self.push(Node::Global(g));
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Node::Global(g) = self.arena[callable] else {
                        return self.malformed("REDUCE on something that is not a global");
                    };
                    let args = self.tuple_at(args)?;
                    let node = self.construct(g, &args)?;
                    self.push(node);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    match (&self.arena[cls], self.tuple_at(args)?.is_empty()) {
                        (Node::Global(Global::Uuid), true) => self.push(Node::UuidShell),
                        _ => return self.malformed("NEWOBJ is only read for uuid.UUID"),
                    }
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    let Node::UuidShell = self.arena[target] else {
                        return self.malformed("BUILD is only read for uuid.UUID");
                    };
                    let Node::Dict(pairs) = &self.arena[state] else {
                        return self.malformed("uuid.UUID state is not a dict");
                    };
                    let mut int = None;
                    for (k, v) in pairs.clone() {
                        if self.str_at(k)? == "int" {
                            int = Some(match self.leaf(v) {
                                Some(Value::Int(i)) if *i >= 0 => *i as u128,
                                Some(Value::BigInt(d)) => match d.parse::<u128>() {
                                    Ok(u) => u,
                                    Err(_) => {
                                        return self.malformed("uuid.UUID int is out of range");
                                    }
                                },
                                _ => return self.malformed("uuid.UUID int is not an int"),
                            });
                        }
                    }
                    match int {
                        Some(u) => self.arena[target] = Node::Leaf(Value::Uuid(u)),
                        None => return self.malformed("uuid.UUID state has no int"),
                    }
                }
                b'P' => return Err(self.refused("PERSID")),
                b'Q' => return Err(self.refused("BINPERSID")),
                b'i' => return Err(self.refused("INST")),
                b'o' => return Err(self.refused("OBJ")),
                0x82 => return Err(self.refused("EXT1")),
                0x83 => return Err(self.refused("EXT2")),
                0x84 => return Err(self.refused("EXT4")),
                0x92 => return Err(self.refused("NEWOBJ_EX")),
                0x97 => return Err(self.refused("NEXT_BUFFER")),
                0x98 => return Err(self.refused("READONLY_BUFFER")),
                code => return Err(Error::Unknown { code, at: self.at }),
            }
        }
    }

    /// What REDUCE makes of an allowed global and its arguments, built by hand.
    fn construct(&self, g: Global, args: &[usize]) -> Result<Node> {
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

    fn small_int(&self, i: usize) -> Result<i32> {
        match i32::try_from(self.int_at(i)?) {
            Ok(v) => Ok(v),
            Err(_) => self.malformed("a timedelta field is out of range"),
        }
    }

    /// The 6-byte time state (hour, minute, second, microsecond) and its tzinfo.
    fn time_state(&self, s: &[u8], tz: Option<usize>) -> Result<Time> {
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

    /// The value tree under `i`, refusing cycles and oversized expansions.
    fn build(
        &self,
        i: usize,
        depth: usize,
        budget: &mut usize,
        visiting: &mut Vec<usize>,
    ) -> Result<Value> {
        if depth > MAX_DEPTH || *budget == 0 {
            return Err(Error::TooBig);
        }
        *budget -= 1;
        if visiting.contains(&i) {
            return Err(Error::Cycle);
        }
        visiting.push(i);
        let mut all = |items: &[usize], budget: &mut usize| -> Result<Vec<Value>> {
            items
                .iter()
                .map(|c| self.build(*c, depth + 1, budget, visiting))
                .collect()
        };
        let v = match &self.arena[i] {
            Node::Leaf(v) => v.clone(),
            Node::List(items) => Value::List(all(items, budget)?),
            Node::Tuple(items) => Value::Tuple(all(items, budget)?),
            Node::Set(items) => Value::Set(all(items, budget)?),
            Node::FrozenSet(items) => Value::FrozenSet(all(items, budget)?),
            Node::Dict(pairs) => {
                let flat: Vec<usize> = pairs.iter().flat_map(|(k, v)| [*k, *v]).collect();
                let mut values = all(&flat, budget)?.into_iter();
                let mut out = Vec::with_capacity(pairs.len());
                while let (Some(k), Some(v)) = (values.next(), values.next()) {
                    out.push((k, v));
                }
                Value::Dict(out)
            }
            Node::Global(g) => {
                return self.malformed(format!("a bare global {g:?} is not a value"));
            }
            Node::UuidShell => return self.malformed("uuid.UUID without its state"),
        };
        visiting.pop();
        Ok(v)
    }
}

/// LONG1/LONG4: little-endian two's complement.
fn long_from_le(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    if bytes.len() <= 16 {
        let fill = if negative { 0xff } else { 0 };
        let mut raw = [fill; 16];
        raw[..bytes.len()].copy_from_slice(bytes);
        return Value::Int(i128::from_le_bytes(raw));
    }
    // Magnitude of a two's complement number: invert and add one when negative.
    let mut mag: Vec<u8> = bytes.to_vec();
    if negative {
        for b in mag.iter_mut() {
            *b = !*b;
        }
        for b in mag.iter_mut() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    let mut digits = decimal_digits(&mag);
    if negative {
        digits.insert(0, '-');
    }
    Value::BigInt(digits)
}

/// The decimal text of an unsigned little-endian magnitude.
fn decimal_digits(le: &[u8]) -> String {
    // Base 10^9 limbs, most significant last.
    let mut limbs: Vec<u32> = vec![0];
    for byte in le.iter().rev() {
        let mut carry = *byte as u64;
        for limb in limbs.iter_mut() {
            let v = (*limb as u64) * 256 + carry;
            *limb = (v % 1_000_000_000) as u32;
            carry = v / 1_000_000_000;
        }
        while carry > 0 {
            limbs.push((carry % 1_000_000_000) as u32);
            carry /= 1_000_000_000;
        }
    }
    let mut text = String::new();
    for (n, limb) in limbs.iter().rev().enumerate() {
        if n == 0 {
            text.push_str(&limb.to_string());
        } else {
            text.push_str(&format!("{limb:09}"));
        }
    }
    text
}

/// Protocol 0's UNICODE argument: raw-unicode-escape (`\uXXXX`, `\UXXXXXXXX`).
fn unescape_raw_unicode(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && matches!(chars.peek(), Some('u' | 'U')) {
            let width = if chars.next() == Some('u') { 4 } else { 8 };
            let hex: String = chars.by_ref().take(width).collect();
            match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                Some(ch) => out.push(ch),
                None => {
                    out.push('\\');
                    out.push_str(&hex);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_beyond_128_bits_keep_every_digit() {
        let mut two_200 = vec![0u8; 26];
        two_200[25] = 0x01;
        assert_eq!(
            long_from_le(&two_200),
            Value::BigInt("1606938044258990275541962092341162602522202993782792835301376".into())
        );
        two_200[25] = 0xff;
        assert_eq!(
            long_from_le(&two_200),
            Value::BigInt("-1606938044258990275541962092341162602522202993782792835301376".into())
        );
    }

    #[test]
    fn a_global_outside_the_list_is_refused_by_name() {
        let blob = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.";
        assert_eq!(
            decode(blob),
            Err(Error::Global {
                module: "os".into(),
                name: "system".into()
            })
        );
    }

    #[test]
    fn a_self_referencing_list_is_refused() {
        // l = []; l.append(l), protocol 2.
        assert_eq!(decode(b"\x80\x02]q\x00h\x00a."), Err(Error::Cycle));
    }
}
