//! What a failed ZooKeeper call means, for the code that follows nodes (the service watcher and
//! the config node): a broken connection is waited out within the session, since the client
//! reconnects on its own; only a session that ended calls for a new one.

use tokio::sync::watch;
use zookeeper_client as zk;

/// What a failed ZooKeeper call means for a follower of nodes. The client ends a session only on these
/// (zookeeper-client 0.11 `Session::resolve_serve_error` / `resolve_start_error`): ZooKeeper
/// answered `SessionExpired` or `SessionMoved` (state `Expired`), `AuthFailed`, the client was
/// closed, or it gave up reconnecting within 1.4 × the session timeout (`Timeout`, which it turns
/// into `Expired`). Everything else that breaks a connection (an I/O error such as "Connection
/// reset by peer", which arrives as `Custom`; `ConnectionLoss` at end of stream; "no response from
/// connection" as `Custom`; a reply it could not decode) leaves the state `Disconnected` and the
/// client reconnects by itself within the same session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The session is over: only a new one helps.
    SessionEnded,
    /// The connection broke, or the server could not answer now (`Throttled`): the session
    /// stands, so wait for the client to be connected again and read again.
    Connection,
    /// ZooKeeper refused this one request (no such node, not allowed, ...): the path or node in
    /// question is skipped, the others are unaffected.
    Refused,
}

pub(crate) fn classify(e: &zk::Error) -> Failure {
    use zk::Error as E;
    match e {
        E::SessionExpired | E::SessionMoved | E::AuthFailed | E::ClientClosed | E::NoHosts => {
            Failure::SessionEnded
        }
        E::NoNode
        | E::NoAuth
        | E::BadArguments(_)
        | E::BadVersion
        | E::NoChildrenForEphemerals
        | E::NodeExists
        | E::NotEmpty
        | E::InvalidAcl
        | E::NotReadOnly
        | E::NoWatcher
        | E::QuotaExceeded
        | E::MarshallingError
        | E::Unimplemented
        | E::ReconfigDisabled
        | E::UnexpectedErrorCode(_)
        | E::RuntimeInconsistent => Failure::Refused,
        // ConnectionLoss, Custom (I/O), Timeout, UnmarshalError, UnexpectedError, Throttled, and
        // whatever a later version adds: whether the session survived is the client's state to
        // tell, which [`connected_again`] asks before reading again.
        _ => Failure::Connection,
    }
}

/// The error that stands for a terminal session state.
pub(crate) fn ended(state: zk::SessionState) -> zk::Error {
    match state {
        zk::SessionState::AuthFailed => zk::Error::AuthFailed,
        zk::SessionState::Closed => zk::Error::ClientClosed,
        _ => zk::Error::SessionExpired,
    }
}

/// Waits until the client is connected again: `Ok(true)`; `Ok(false)` on shutdown; `Err` when
/// the session ended meanwhile. `disconnected` is called once if it has to wait.
pub(crate) async fn connected_again(
    state: &mut zk::StateWatcher,
    shutdown: &mut watch::Receiver<bool>,
    mut disconnected: impl FnMut(),
) -> Result<bool, zk::Error> {
    let mut reported = false;
    loop {
        match state.state() {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                return Ok(true)
            }
            s if s.is_terminated() => return Err(ended(s)),
            _ if !reported => {
                disconnected();
                reported = true;
            }
            _ => {}
        }
        // Not terminated yet, so `changed` does return on the next state.
        tokio::select! {
            _ = shutdown.changed() => return Ok(false),
            _ = state.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    #[test]
    fn only_an_ended_session_ends_the_session() {
        use zk::Error as E;
        for e in [
            E::SessionExpired,
            E::SessionMoved,
            E::AuthFailed,
            E::ClientClosed,
            E::NoHosts,
        ] {
            assert_eq!(classify(&e), Failure::SessionEnded, "{e:?}");
        }
        for e in [
            E::ConnectionLoss,
            E::Timeout,
            E::Throttled,
            E::UnexpectedError("recv response with xid 7 but no pending request".into()),
        ] {
            assert_eq!(classify(&e), Failure::Connection, "{e:?}");
        }
        for e in [
            E::NoNode,
            E::NoAuth,
            E::Unimplemented,
            E::MarshallingError,
            E::UnexpectedErrorCode(-999),
        ] {
            assert_eq!(classify(&e), Failure::Refused, "{e:?}");
        }
        assert_eq!(ended(zk::SessionState::Expired), E::SessionExpired);
        assert_eq!(ended(zk::SessionState::AuthFailed), E::AuthFailed);
        assert_eq!(ended(zk::SessionState::Closed), E::ClientClosed);
    }

    /// What the fake server does with the first request after the handshake.
    #[derive(Clone, Copy)]
    enum Then {
        /// Resets the connection (a member killed mid-read).
        Reset,
        /// Closes it cleanly.
        Close,
        /// Answers with this ZooKeeper error code.
        Answer(i32),
    }

    async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
        let len = s.read_i32().await.ok()?;
        let mut body = vec![0; usize::try_from(len).ok()?];
        s.read_exact(&mut body).await.ok()?;
        Some(body)
    }

    async fn write_frame(s: &mut TcpStream, body: &[u8]) {
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        let _ = s.write_all(&frame).await;
    }

    /// A reply header: xid, zxid, error code.
    fn reply(xid: i32, err: i32) -> Vec<u8> {
        let mut r = xid.to_be_bytes().to_vec();
        r.extend(1i64.to_be_bytes());
        r.extend(err.to_be_bytes());
        r
    }

    /// A fake ZooKeeper server speaking just enough of the protocol to hand out one session
    /// (and take it back on a reconnect) and answer pings: a real server cannot be made to fail
    /// a read in each of these ways on cue. The first request of the first connection gets
    /// `then`.
    async fn fake_server(then: Then) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((mut s, _)) = listener.accept().await {
                let then = std::mem::take(&mut first).then_some(then);
                tokio::spawn(async move {
                    if read_frame(&mut s).await.is_none() {
                        return;
                    }
                    // Protocol version, session timeout (ms), session id, password, read-only.
                    let mut hello = 0i32.to_be_bytes().to_vec();
                    hello.extend(4000i32.to_be_bytes());
                    hello.extend(0x5eed_i64.to_be_bytes());
                    hello.extend(16i32.to_be_bytes());
                    hello.extend([7u8; 16]);
                    hello.push(0);
                    write_frame(&mut s, &hello).await;
                    while let Some(request) = read_frame(&mut s).await {
                        let xid =
                            i32::from_be_bytes([request[0], request[1], request[2], request[3]]);
                        if xid == -2 {
                            write_frame(&mut s, &reply(-2, 0)).await;
                            continue;
                        }
                        match then {
                            Some(Then::Reset) => {
                                let _ = s.set_zero_linger();
                                return;
                            }
                            Some(Then::Close) => return,
                            Some(Then::Answer(err)) => write_frame(&mut s, &reply(xid, err)).await,
                            None => write_frame(&mut s, &reply(xid, -101)).await,
                        }
                    }
                });
            }
        });
        addr
    }

    async fn failed_read(then: Then) -> (zk::Client, zk::Error) {
        let addr = fake_server(then).await;
        let client = zk::Client::connector()
            .with_session_timeout(Duration::from_secs(4))
            .connect(&addr)
            .await
            .unwrap();
        let e = client.get_data("/zkgate/services/api/a").await.unwrap_err();
        (client, e)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_reset_mid_read_keeps_the_session_and_reconnects() {
        let (client, e) = failed_read(Then::Reset).await;
        // "Connection reset by peer", as the client hands it to the read in flight.
        assert!(matches!(e, zk::Error::Custom(_)), "{e:?}");
        assert_eq!(classify(&e), Failure::Connection);
        let mut state = client.state_watcher();
        assert!(!state.peek_state().is_terminated());
        // The client comes back on the same session: the reads can be retried on it.
        let waits = AtomicUsize::new(0);
        let (_tx, mut shutdown) = watch::channel(false);
        let back = tokio::time::timeout(
            Duration::from_secs(30),
            connected_again(&mut state, &mut shutdown, || {
                waits.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .await
        .expect("reconnected within the session");
        assert_eq!(back, Ok(true));
        assert!(waits.load(Ordering::SeqCst) <= 1);
        assert_eq!(
            client.get_data("/x").await.unwrap_err(),
            zk::Error::NoNode,
            "the session answers again"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_closed_mid_read_is_a_connection_loss() {
        let (client, e) = failed_read(Then::Close).await;
        assert_eq!(e, zk::Error::ConnectionLoss);
        assert_eq!(classify(&e), Failure::Connection);
        assert!(!client.state().is_terminated());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expiry_reported_mid_read_ends_the_session() {
        let (client, e) = failed_read(Then::Answer(-112)).await;
        assert_eq!(e, zk::Error::SessionExpired);
        assert_eq!(classify(&e), Failure::SessionEnded);
        assert_eq!(client.state(), zk::SessionState::Expired);
        let (_tx, mut shutdown) = watch::channel(false);
        let mut state = client.state_watcher();
        assert_eq!(
            connected_again(&mut state, &mut shutdown, || {}).await,
            Err(zk::Error::SessionExpired)
        );
        let (client, e) = failed_read(Then::Answer(-115)).await;
        assert_eq!(
            (classify(&e), client.state()),
            (Failure::SessionEnded, zk::SessionState::AuthFailed)
        );
    }
}
