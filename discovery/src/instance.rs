//! One registered instance read from its znode, whichever of the three accepted formats wrote it:
//! 1. zkgate's native JSON: `{"host": "10.0.0.5", "port": 8080, "weight": 10, "zone": "a", "metadata": {}}`;
//! 2. Curator's `ServiceInstance` JSON, as Spring Cloud Zookeeper and Dubbo 3 write it
//!    (`address`, `port`, `sslPort`, `enabled`, `payload.metadata`);
//! 3. empty data under a `host:port` node name (the go_gateway convention, e.g. `/real_server`).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// Weight when the registration names none.
pub const DEFAULT_WEIGHT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The znode's name under the watched path: a stable identity for the instance, which
    /// keeps when its address changes (the consistent-hash ring is keyed by it).
    pub node: String,
    /// An IP address or a host name (resolved by the gateway, off the request path).
    pub host: String,
    pub port: u16,
    /// Zero means registered but not to be picked (Curator `enabled: false`, a status other
    /// than UP).
    pub weight: u32,
    /// The backend speaks TLS (a Curator registration with only an `sslPort`).
    pub tls: bool,
    pub zone: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceError {
    /// The data is not JSON, or JSON of none of the accepted shapes.
    Format(String),
    /// Empty data, and the node name is not `host:port`.
    NodeName(String),
    /// A field is present but unusable (an empty host, port 0, ...).
    Field {
        field: &'static str,
        problem: String,
    },
}

impl fmt::Display for InstanceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstanceError::Format(e) => write!(f, "not a native or Curator instance: {e}"),
            InstanceError::NodeName(n) => {
                write!(f, "empty data and the node name `{n}` is not host:port")
            }
            InstanceError::Field { field, problem } => write!(f, "field `{field}`: {problem}"),
        }
    }
}

impl std::error::Error for InstanceError {}

#[derive(Deserialize)]
struct Native {
    host: String,
    port: u16,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Curator {
    address: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    ssl_port: Option<u16>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    payload: Option<CuratorPayload>,
}

#[derive(Deserialize)]
struct CuratorPayload {
    #[serde(default)]
    metadata: BTreeMap<String, Value>,
}

/// Reads the instance registered as node `name` with data `data`.
pub fn parse_instance(name: &str, data: &[u8]) -> Result<Instance, InstanceError> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return from_node_name(name);
    }
    let value: Value =
        serde_json::from_slice(data).map_err(|e| InstanceError::Format(e.to_string()))?;
    let is_curator = value.get("address").is_some() && value.get("host").is_none();
    let mut instance = if is_curator {
        let c: Curator =
            serde_json::from_value(value).map_err(|e| InstanceError::Format(e.to_string()))?;
        from_curator(c)?
    } else {
        let n: Native =
            serde_json::from_value(value).map_err(|e| InstanceError::Format(e.to_string()))?;
        from_native(n)
    };
    instance.node = name.to_owned();
    check(instance)
}

fn from_native(n: Native) -> Instance {
    let metadata = strings(n.metadata);
    Instance {
        node: String::new(),
        host: n.host,
        port: n.port,
        weight: n.weight.unwrap_or(DEFAULT_WEIGHT),
        tls: false,
        zone: n.zone.or_else(|| metadata.get("zone").cloned()),
        metadata,
    }
}

fn from_curator(c: Curator) -> Result<Instance, InstanceError> {
    let metadata = strings(c.payload.map(|p| p.metadata).unwrap_or_default());
    let (port, tls) = match (c.port, c.ssl_port) {
        (Some(p), _) if p != 0 => (p, false),
        (_, Some(p)) if p != 0 => (p, true),
        _ => {
            return Err(InstanceError::Field {
                field: "port",
                problem: "neither port nor sslPort is set".into(),
            })
        }
    };
    // Spring Cloud Zookeeper marks instances with `instance_status`; Curator with `enabled`.
    let up = c.enabled != Some(false)
        && metadata
            .get("instance_status")
            .is_none_or(|s| s.eq_ignore_ascii_case("UP"));
    let weight = match metadata.get("weight") {
        Some(w) => w.trim().parse().map_err(|_| InstanceError::Field {
            field: "payload.metadata.weight",
            problem: format!("`{w}` is not a whole number"),
        })?,
        None => DEFAULT_WEIGHT,
    };
    Ok(Instance {
        node: String::new(),
        host: c.address,
        port,
        weight: if up { weight } else { 0 },
        tls,
        zone: metadata.get("zone").cloned(),
        metadata,
    })
}

fn from_node_name(name: &str) -> Result<Instance, InstanceError> {
    let bad = || InstanceError::NodeName(name.to_owned());
    let (host, port) = name.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(Instance {
        node: name.to_owned(),
        host: host.to_owned(),
        port,
        weight: DEFAULT_WEIGHT,
        tls: false,
        zone: None,
        metadata: BTreeMap::new(),
    })
}

fn check(i: Instance) -> Result<Instance, InstanceError> {
    if i.host.trim().is_empty() {
        return Err(InstanceError::Field {
            field: "host",
            problem: "is empty".into(),
        });
    }
    if i.port == 0 {
        return Err(InstanceError::Field {
            field: "port",
            problem: "is 0".into(),
        });
    }
    Ok(i)
}

/// Metadata values as strings: registries write numbers and booleans too.
fn strings(map: BTreeMap<String, Value>) -> BTreeMap<String, String> {
    map.into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_json() {
        let i = parse_instance(
            "inst-0000000001",
            br#"{"host":"10.0.0.5","port":8080,"weight":10,"zone":"a","metadata":{"v":2}}"#,
        )
        .unwrap();
        assert_eq!((i.host.as_str(), i.port, i.weight), ("10.0.0.5", 8080, 10));
        assert_eq!(i.zone.as_deref(), Some("a"));
        assert_eq!(i.metadata["v"], "2");
        assert_eq!(
            i.node, "inst-0000000001",
            "the node name is the stable identity"
        );
        let i = parse_instance("x", br#"{"host":"api.internal","port":80}"#).unwrap();
        assert_eq!((i.weight, i.zone), (DEFAULT_WEIGHT, None));
    }

    #[test]
    fn spring_cloud_zookeeper_service_instance() {
        // As Spring Cloud Zookeeper 4 writes it under /services/<name>/<uuid>.
        let data = br#"{"name":"api","id":"6b3c3e0a-3a43-4b43-9b1b-1c1f0e3c8f00","address":"192.168.1.20","port":8081,"sslPort":null,
            "payload":{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance","id":"api-1","name":"api",
            "metadata":{"instance_status":"UP","zone":"eu-1","weight":"3"}},
            "registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":{"parts":[{"value":"scheme","variable":true}]}}"#;
        let i = parse_instance("6b3c3e0a-3a43-4b43-9b1b-1c1f0e3c8f00", data).unwrap();
        assert_eq!(
            (i.host.as_str(), i.port, i.weight, i.tls),
            ("192.168.1.20", 8081, 3, false)
        );
        assert_eq!(i.zone.as_deref(), Some("eu-1"));
        let down = String::from_utf8_lossy(data).replace("\"UP\"", "\"OUT_OF_SERVICE\"");
        assert_eq!(parse_instance("x", down.as_bytes()).unwrap().weight, 0);
    }

    #[test]
    fn dubbo3_and_plain_curator_instances() {
        let dubbo = br#"{"name":"org.example.Greeter","id":"10.0.0.7:20880","address":"10.0.0.7","port":20880,
            "payload":{"@class":"org.apache.dubbo.registry.zookeeper.ZookeeperInstance","id":"10.0.0.7:20880","name":"org.example.Greeter",
            "metadata":{"dubbo.metadata.revision":"abc","timestamp":1700000000000}},"enabled":true}"#;
        let i = parse_instance("10.0.0.7:20880", dubbo).unwrap();
        assert_eq!((i.port, i.weight), (20880, DEFAULT_WEIGHT));
        assert_eq!(i.metadata["timestamp"], "1700000000000");
        let ssl_only = br#"{"name":"s","id":"1","address":"h","sslPort":8443,"enabled":false}"#;
        let i = parse_instance("1", ssl_only).unwrap();
        assert_eq!((i.port, i.tls, i.weight), (8443, true, 0));
        let no_port = br#"{"name":"s","id":"1","address":"h"}"#;
        assert!(matches!(
            parse_instance("1", no_port),
            Err(InstanceError::Field { field: "port", .. })
        ));
        let bad_weight = br#"{"address":"h","port":1,"payload":{"metadata":{"weight":"heavy"}}}"#;
        assert!(parse_instance("1", bad_weight).is_err());
    }

    #[test]
    fn host_port_node_names() {
        let i = parse_instance("127.0.0.1:2003", b"").unwrap();
        assert_eq!(
            (i.host.as_str(), i.port, i.weight),
            ("127.0.0.1", 2003, DEFAULT_WEIGHT)
        );
        let i = parse_instance("[::1]:8080", b" \n").unwrap();
        assert_eq!((i.host.as_str(), i.port), ("::1", 8080));
        for bad in ["inst-0001", "host:", ":80", "h:0", "h:99999"] {
            assert!(
                matches!(parse_instance(bad, b""), Err(InstanceError::NodeName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        for data in [
            &b"{"[..],
            b"[]",
            b"42",
            b"\"x\"",
            b"{\"host\":\"\",\"port\":1}",
            b"{\"host\":\"h\",\"port\":0}",
            b"{\"host\":\"h\",\"port\":70000}",
            b"\xff\xfe",
        ] {
            assert!(
                parse_instance("n", data).is_err(),
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }
}
