//! The memory tier: entries bounded in bytes, a primary-to-variant index and a tag index.
//!
//! CONTRACT (issue 14): owned by T4.
