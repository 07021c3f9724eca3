//! What a notification evicts: its object, every list of its collection and its dependents.
//! CONTRACT (issue 14): owned by T5.
