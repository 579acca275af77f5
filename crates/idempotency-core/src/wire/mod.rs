//! The wire format: everything about the bytes a record is stored as, shared with the
//! Python idempotency-kit 0.5.0 (a Python and a Rust service sharing one store must
//! agree on every stored value).
//!
//! - `encode`: a record to the bytes Python writes;
//! - `decode`: bytes to a record as Python reads them (a fast typed pass for the
//!   layouts both libraries write, the detailed decoder for the rest), failing with a
//!   typed [`DecodeError`] that knows its metric label;
//! - `plain`: which values the fast pass may take as they are;
//! - `json_text`: JSON text as Python's `json`/orjson read and write it (floats,
//!   nesting and integer limits);
//! - `python_floats`: Python's spellings of non-finite floats;
//! - `timestamp`: timestamps as pydantic reads and Python writes them;
//! - `storable`: which results a record can hold and read back.

pub(crate) mod decode;
pub(crate) mod encode;
pub(crate) mod json_text;
pub(crate) mod plain;
pub(crate) mod python_floats;
pub(crate) mod storable;
pub(crate) mod timestamp;

pub use decode::DecodeError;
pub use json_text::to_result_json;
pub use storable::{
    check_storable, looks_finished, storable_form, unstorable_marker, unstorable_reason,
};
