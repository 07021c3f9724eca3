//! Path templates (`{base}/resourcePools/{poolId}/resources`): `{version}` as a wildcard,
//! `{name}` captures, compiled once and matched without allocating.
//!
//! CONTRACT (issue 14): owned by T2.
