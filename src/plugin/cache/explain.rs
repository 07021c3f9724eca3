//! What `zkgate explain` prints for a request on a cached route: the rule, the scope, the key
//! and the tags.
//!
//! CONTRACT (issue 14): owned by T2.
