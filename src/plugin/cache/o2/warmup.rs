//! The warm-up of listed collections at start and after a channel outage.
//! CONTRACT (issue 14): owned by T5.
