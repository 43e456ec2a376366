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

use super::globals::Global;
use super::value::Value;

/// The largest pickle read, and the most values the result may expand to.
pub(super) const MAX_INPUT: usize = 16 << 20;
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

pub(super) type Result<T = (), E = Error> = std::result::Result<T, E>;

/// What the stack holds: a value in the arena, or a MARK.
#[derive(Debug, Clone, Copy)]
pub(super) enum Slot {
    Mark,
    Node(usize),
}

/// An arena entry. Containers hold indices; the rest are finished values.
#[derive(Debug, Clone)]
pub(super) enum Node {
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

pub(super) struct Machine<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    /// Where the current opcode starts, for errors.
    pub(super) at: usize,
    pub(super) arena: Vec<Node>,
    pub(super) stack: Vec<Slot>,
    pub(super) memo: HashMap<u64, usize>,
}

impl Machine<'_> {
    pub(super) fn malformed<T>(&self, reason: impl Into<String>) -> Result<T> {
        Err(Error::Malformed {
            at: self.at,
            reason: reason.into(),
        })
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).ok_or(Error::Truncated)?;
        let bytes = self.data.get(self.pos..end).ok_or(Error::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    pub(super) fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn uint(&mut self, width: usize) -> Result<u64> {
        let bytes = self.take(width)?;
        let mut v = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            v |= (*b as u64) << (8 * i);
        }
        Ok(v)
    }

    pub(super) fn sized(&mut self, width: usize) -> Result<Vec<u8>> {
        let n = self.uint(width)?;
        if n > MAX_INPUT as u64 {
            return Err(Error::TooLarge);
        }
        Ok(self.take(n as usize)?.to_vec())
    }

    /// A text-protocol line, without its newline.
    pub(super) fn line(&mut self) -> Result<String> {
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

    pub(super) fn text(&self, bytes: Vec<u8>) -> Result<String> {
        match String::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(_) => self.malformed("a string is not valid UTF-8"),
        }
    }

    pub(super) fn push(&mut self, node: Node) {
        self.arena.push(node);
        self.stack.push(Slot::Node(self.arena.len() - 1));
    }

    pub(super) fn push_leaf(&mut self, v: Value) {
        self.push(Node::Leaf(v));
    }

    pub(super) fn pop(&mut self) -> Result<usize> {
        match self.stack.pop() {
            Some(Slot::Node(i)) => Ok(i),
            Some(Slot::Mark) => self.malformed("a MARK where a value was expected"),
            None => self.malformed("the stack is empty"),
        }
    }

    pub(super) fn top(&self) -> Result<usize> {
        match self.stack.last() {
            Some(Slot::Node(i)) => Ok(*i),
            _ => self.malformed("no value on the stack"),
        }
    }

    /// Everything above the last MARK, which is removed.
    pub(super) fn pop_mark(&mut self) -> Result<Vec<usize>> {
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

    pub(super) fn memo_put(&mut self, key: u64) -> Result {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    pub(super) fn memo_get(&mut self, key: u64) -> Result {
        match self.memo.get(&key) {
            Some(i) => {
                self.stack.push(Slot::Node(*i));
                Ok(())
            }
            None => self.malformed(format!("memo {key} was never stored")),
        }
    }

    pub(super) fn leaf(&self, i: usize) -> Option<&Value> {
        match &self.arena[i] {
            Node::Leaf(v) => Some(v),
            _ => None,
        }
    }

    pub(super) fn str_at(&self, i: usize) -> Result<String> {
        match self.leaf(i) {
            Some(Value::Str(s)) => Ok(s.clone()),
            _ => self.malformed("expected a str"),
        }
    }

    pub(super) fn int_at(&self, i: usize) -> Result<i128> {
        match self.leaf(i) {
            Some(Value::Int(v)) => Ok(*v),
            Some(Value::Bool(b)) => Ok(*b as i128),
            _ => self.malformed("expected an int"),
        }
    }

    pub(super) fn bytes_at(&self, i: usize) -> Result<Vec<u8>> {
        match self.leaf(i) {
            Some(Value::Bytes(b)) => Ok(b.clone()),
            _ => self.malformed("expected bytes"),
        }
    }

    pub(super) fn tuple_at(&self, i: usize) -> Result<Vec<usize>> {
        match &self.arena[i] {
            Node::Tuple(items) => Ok(items.clone()),
            _ => self.malformed("expected a tuple of arguments"),
        }
    }

    pub(super) fn append(&mut self, target: usize, items: Vec<usize>) -> Result {
        match &mut self.arena[target] {
            Node::List(list) => list.extend(items),
            _ => return self.malformed("APPEND to something that is not a list"),
        }
        Ok(())
    }

    pub(super) fn set_items(&mut self, target: usize, items: Vec<usize>) -> Result {
        if !items.len().is_multiple_of(2) {
            return self.malformed("SETITEMS with an odd number of values");
        }
        let pairs: Vec<(usize, usize)> = items.chunks(2).map(|c| (c[0], c[1])).collect();
        match &mut self.arena[target] {
            Node::Dict(dict) => dict.extend(pairs),
            _ => return self.malformed("SETITEM on something that is not a dict"),
        }
        Ok(())
    }

    pub(super) fn add_items(&mut self, target: usize, items: Vec<usize>) -> Result {
        match &mut self.arena[target] {
            Node::Set(set) => set.extend(items),
            _ => return self.malformed("ADDITEMS on something that is not a set"),
        }
        Ok(())
    }

    pub(super) fn refused(&self, name: &'static str) -> Error {
        Error::Opcode { name, at: self.at }
    }

    /// Runs the opcodes to STOP; returns the arena index of the result.
    /// The value tree under `i`, refusing cycles and oversized expansions.
    pub(super) fn build(
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

#[cfg(test)]
mod tests {
    use super::*;

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
