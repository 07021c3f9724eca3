//! What the admin API does with the caches: stats, listings and purges, on this replica or on
//! all of them through the replica bus.
//!
//! CONTRACT (issue 14): owned by T4. `src/admin.rs` routes `GET /cache`, `GET /cache/entries`
//! and `POST /cache/purge` here.
