//! The game-session router (issue 15): a TCP listener kind that routes game sessions, framed as
//! the seed game gateway frames them, to ZooKeeper-discovered servers. This first part is the
//! wire format; the listener, sessions and backend links build on it.

pub mod codec;
