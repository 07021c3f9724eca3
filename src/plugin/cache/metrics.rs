//! The cache plugin's request metrics: hits, misses, stale answers, coalesced requests and
//! bypasses, by route and resource kind, with handles resolved at build.
//!
//! CONTRACT (issue 14): owned by T1. Store metrics (T4) and notification metrics (T5) live in
//! their owners' files.
