//! The repository's README, so that `cargo test` compiles and runs its Rust blocks against
//! the coordinator with its default features off (what the README's first example claims).
#![doc = include_str!("../../README.md")]
// The README is prose for people, not API docs.
#![allow(clippy::doc_markdown)]
