//! The notification dialects of the three O2 servers, parsed into one `Notification`.
//! CONTRACT (issue 14): owned by T5.
