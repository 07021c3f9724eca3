//! The gateway's own subscription to the O2 IMS, owned by one replica.
//! CONTRACT (issue 14): owned by T5.
