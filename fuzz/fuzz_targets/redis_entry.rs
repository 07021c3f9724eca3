//! `zkgate::fuzz::redis_entry` under libFuzzer; tests/fuzz_corpora.rs replays this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| zkgate::fuzz::redis_entry(data));
