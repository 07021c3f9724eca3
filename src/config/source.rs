//! Where a config comes from: a file, the embedded quickstart, or a ZooKeeper node
//! (`zk://[user[:password]@]host:port[,host:port...]/path`) that every replica follows.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use zkgate_discovery::config_node;
use zkgate_discovery::{Digest, Ensemble};

use super::parse::MAX_CONFIG_BYTES;
use crate::section::file::read_bounded;
use crate::section::ConfigErrors;

/// The quickstart config, compiled in so that `zkgate run` works with no file at all.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../conf/zkgate.yaml");

/// The node `zk://HOSTS` alone refers to.
pub const DEFAULT_CONFIG_NODE: &str = "/zkgate/config";

/// Read when a `zk://` URL names a user but no password, so that the password stays out of
/// the process list.
pub const PASSWORD_ENV: &str = "ZKGATE_ZK_PASSWORD";

/// How long a one-off read may wait for ZooKeeper before giving up.
pub const ZK_READ_LIMIT: Duration = Duration::from_secs(10);

const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Where a config comes from; kept so that a reload reads the same place again.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Embedded,
    Zookeeper(ZkNode),
}

/// A config node and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkNode {
    pub ensemble: Ensemble,
    pub node: String,
}

impl fmt::Display for ZkNode {
    // The form users wrote, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("zk://")?;
        if let Some(d) = &self.ensemble.digest {
            write!(f, "{}@", d.user)?;
        }
        write!(f, "{}{}", self.ensemble.connect, self.node)
    }
}

impl ZkNode {
    /// Parses `zk://[user[:password]@]hosts[/node]`; `env` supplies [`PASSWORD_ENV`].
    pub fn parse(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<ZkNode, String> {
        let rest = url
            .strip_prefix("zk://")
            .ok_or_else(|| format!("`{url}` does not start with zk://"))?;
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, rest),
        };
        let (hosts, node) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, DEFAULT_CONFIG_NODE),
        };
        if hosts.split(',').any(|h| h.trim().is_empty()) {
            return Err(format!("`{url}` names no ZooKeeper host:port"));
        }
        if node.len() < 2 || node.ends_with('/') || node.contains("//") {
            return Err(format!(
                "`{node}` in `{url}` is not a node path like /zkgate/config"
            ));
        }
        let digest = match userinfo {
            None => None,
            Some(u) => {
                let (user, password) = match u.split_once(':') {
                    Some((user, pw)) => (user, pw.to_owned()),
                    None => (
                        u,
                        env(PASSWORD_ENV).ok_or_else(|| {
                            format!("`{url}` names user {u}: set {PASSWORD_ENV} to its password")
                        })?,
                    ),
                };
                if user.is_empty() {
                    return Err(format!("`{url}` has an empty user name"));
                }
                Some(Digest {
                    user: user.to_owned(),
                    password,
                })
            }
        };
        Ok(ZkNode {
            ensemble: Ensemble {
                connect: hosts.to_owned(),
                session_timeout: SESSION_TIMEOUT,
                digest,
            },
            node: node.to_owned(),
        })
    }

    /// The node's content, read with a short-lived session; for start-up and the CLI.
    pub fn read_blocking(&self) -> Result<Option<config_node::Versioned>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        runtime
            .block_on(config_node::within(
                ZK_READ_LIMIT,
                config_node::read(&self.ensemble, &self.node),
            ))
            .map_err(|e| format!("cannot read {self}: {e}"))
    }
}

impl Source {
    /// The `-c` argument: a `zk://` URL or a file path.
    pub fn from_arg(arg: &str) -> Result<Source, String> {
        if arg.starts_with("zk://") {
            ZkNode::parse(arg, &|name| std::env::var(name).ok()).map(Source::Zookeeper)
        } else {
            Ok(Source::File(arg.into()))
        }
    }

    pub fn read(&self) -> Result<String, ConfigErrors> {
        self.read_versioned().map(|(text, _)| text)
    }

    /// The text and, for a config node, its version.
    pub fn read_versioned(&self) -> Result<(String, Option<i32>), ConfigErrors> {
        match self {
            Source::Embedded => Ok((EMBEDDED_DEFAULT.to_owned(), None)),
            Source::File(path) => read_bounded(path, MAX_CONFIG_BYTES)
                .map(|t| (t, None))
                .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display()))),
            Source::Zookeeper(zk) => match zk.read_blocking() {
                Ok(Some(v)) => text(zk, v.data).map(|t| (t, Some(v.version))),
                Ok(None) => Err(ConfigErrors::one(
                    "",
                    format!("{zk} does not exist; write one with `zkgate config push`"),
                )),
                Err(e) => Err(ConfigErrors::one("", e)),
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Embedded => "embedded conf/zkgate.yaml".to_owned(),
            Source::File(p) => p.display().to_string(),
            Source::Zookeeper(zk) => zk.to_string(),
        }
    }

    pub fn file(path: impl Into<PathBuf>) -> Source {
        Source::File(path.into())
    }
}

/// A config node's bytes as text.
pub fn text(zk: &ZkNode, data: Vec<u8>) -> Result<String, ConfigErrors> {
    if data.len() > MAX_CONFIG_BYTES {
        return Err(ConfigErrors::one(
            "",
            format!(
                "{zk} holds {} bytes, more than the {MAX_CONFIG_BYTES} a config may have",
                data.len()
            ),
        ));
    }
    String::from_utf8(data).map_err(|_| ConfigErrors::one("", format!("{zk} is not UTF-8 text")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == PASSWORD_ENV).then(|| "s3cret".to_owned())
    }

    #[test]
    fn parses_zk_urls() {
        let n = ZkNode::parse("zk://h1:2181,h2:2181/zkgate/config", &env).unwrap();
        assert_eq!(n.ensemble.connect, "h1:2181,h2:2181");
        assert_eq!(n.node, "/zkgate/config");
        assert_eq!(n.ensemble.digest, None);

        let n = ZkNode::parse("zk://gw@h1:2181", &env).unwrap();
        assert_eq!(n.node, DEFAULT_CONFIG_NODE);
        assert_eq!(n.ensemble.digest.as_ref().unwrap().password, "s3cret");
        assert_eq!(n.to_string(), "zk://gw@h1:2181/zkgate/config");

        let n = ZkNode::parse("zk://gw:pw@h1:2181/c", &|_| None).unwrap();
        assert_eq!(n.ensemble.digest.as_ref().unwrap().password, "pw");
        assert!(!n.to_string().contains("pw@"), "{n}");
    }

    #[test]
    fn reads_are_bounded() {
        let e = Source::file("/dev/zero").read().unwrap_err().to_string();
        assert!(e.contains("larger than the 1048576 bytes allowed"), "{e}");
        let zk = ZkNode::parse("zk://h:1/c", &|_| None).unwrap();
        let e = text(&zk, vec![b'#'; MAX_CONFIG_BYTES + 1]).unwrap_err();
        assert!(e.to_string().contains("more than the 1048576"), "{e}");
        // What a node holds goes through the same parser, with its bounds.
        let deep = format!("routes: {}\n", "[".repeat(100_000));
        let t = text(&zk, deep.into_bytes()).unwrap();
        let e = crate::config::load_str(&t, None).unwrap_err().to_string();
        assert!(e.contains("64 deep"), "{e}");
    }

    #[test]
    fn rejects_bad_zk_urls() {
        for (url, why) in [
            ("zk:///zkgate/config", "names no ZooKeeper host"),
            ("zk://h:1,/c", "names no ZooKeeper host"),
            ("zk://h:1/", "is not a node path"),
            ("zk://h:1/a//b", "is not a node path"),
            ("zk://gw@h:1/c", "set ZKGATE_ZK_PASSWORD"),
            ("zk://:pw@h:1/c", "empty user name"),
        ] {
            let e = ZkNode::parse(url, &|_| None).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
