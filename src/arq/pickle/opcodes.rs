//! The opcode loop: what each opcode of protocols 0 to 5 does to the stack, the
//! memo and the arena; opcodes that would call or import code are refused.

use super::decode::{Error, Machine, Node, Result, Slot};
use super::globals::{Global, global};
use super::value::Value;

impl Machine<'_> {
    pub(super) fn run(&mut self) -> Result<usize> {
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
}
