//! `zkgate::fuzz::fast_head` under libFuzzer; tests/fuzz_corpora.rs replays this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| zkgate::fuzz::fast_head(data));
