//! A safe, restricted pickle codec: [`decode`] reads the values producers send
//! through arq's default serializer, [`encode`] writes results back.
//!
//! **Invariant:** decoding never executes, imports or looks up code. A global is
//! matched against a fixed list of value types (`globals::global`), and each is
//! built by hand from its pickled state; anything else is an error that names
//! the global or opcode. Checked by `corpus::tests` over `tests/fixtures/pickle/`
//! (blobs written by CPython for protocols 2 to 5 by `make.py`, beside them:
//! every type), with `globals_outside_the_list_are_refused_naming_them`.

mod decode;
mod encode;
mod globals;
mod opcodes;
mod value;

pub use decode::{Error, decode};
pub use encode::encode;
pub use value::{DateTime, JsonError, Time, TimeDelta, Value};

#[cfg(test)]
mod corpus;
