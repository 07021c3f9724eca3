//! Where and how to reach ZooKeeper: the connect string, the session timeout and the digest
//! credentials every new session authenticates with.

use std::fmt;
use std::time::Duration;

use zookeeper_client as zk;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensemble {
    /// `host:port[,host:port...][/chroot]`.
    pub connect: String,
    pub session_timeout: Duration,
    pub digest: Option<Digest>,
}

/// ZooKeeper `digest` scheme credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Digest {
    // Keeps the password out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Digest")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Ensemble {
    pub fn new(connect: impl Into<String>, session_timeout: Duration) -> Ensemble {
        Ensemble {
            connect: connect.into(),
            session_timeout,
            digest: None,
        }
    }

    /// A new session; the credentials are sent before it is handed out, so reads of nodes that
    /// only this identity may see succeed from the first one.
    pub async fn connect(&self) -> Result<zk::Client, zk::Error> {
        let mut connector = zk::Client::connector();
        connector = connector.with_session_timeout(self.session_timeout);
        if let Some(d) = &self.digest {
            connector =
                connector.with_auth("digest", format!("{}:{}", d.user, d.password).as_bytes());
        }
        connector.connect(&self.connect).await
    }

    /// The ACL for nodes this identity creates: only itself when it has credentials, so that a
    /// digest-protected registry stays protected; anyone otherwise.
    pub fn acls(&self) -> zk::Acls<'static> {
        if self.digest.is_some() {
            zk::Acls::creator_all()
        } else {
            zk::Acls::anyone_all()
        }
    }
}
