//! The one place zkgate calls `pingora::cache`, whose API is marked unstable: enabling the
//! cache with our storage and lock, keys, metas, and the storage traits over `store::Store`.
//!
//! CONTRACT (issue 14): owned by T1.
