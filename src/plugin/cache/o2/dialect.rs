//! The notification dialects of the three O2 servers, parsed into one `Notification`.
//!
//! oran-o2ims sends `InventoryChangeNotification` (integer event type, states as objects,
//! `objectRef` even on deletes) and `AlarmEventNotification` (integer event 0..3, the alarm's
//! fields at the top level); pti-o2 sends the event type as the string `"0".."2"`, the states as
//! JSON-encoded strings, no `notificationId`, and drops `objectRef` on delete; netweave sends
//! `o2ims.<Kind>.<Created|Updated|Deleted>` with the ids at the top level (notes §1.8). A body
//! is only ever read to decide what to evict: nothing of it is stored.

use serde_json::{Map, Value};

use crate::plugin::cache::profile::Kind;

/// The largest body `parse` looks at, whatever the route's `max_body` says: a bound on the work
/// one request can cause.
pub const MAX_BODY: usize = 1024 * 1024;
/// The longest `objectRef` accepted (O2 paths are a base, a version and at most four segments).
const MAX_REF: usize = 2048;
/// The longest `notificationId` accepted: it is kept in the dedupe window.
const MAX_ID: usize = 256;

/// Which server's shape a notification has (the metrics' `dialect` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// oran-o2ims `InventoryChangeNotification`.
    Oran,
    /// oran-o2ims `AlarmEventNotification`.
    OranAlarm,
    /// pti-o2.
    Pti,
    /// netweave.
    Netweave,
}

impl Dialect {
    pub const ALL: [Dialect; 4] = [
        Dialect::Oran,
        Dialect::OranAlarm,
        Dialect::Pti,
        Dialect::Netweave,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Oran => "oran",
            Dialect::OranAlarm => "oran_alarm",
            Dialect::Pti => "pti",
            Dialect::Netweave => "netweave",
        }
    }
}

/// What happened to the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Created,
    Updated,
    Deleted,
    /// An alarm cleared (alarm event 2).
    Cleared,
    /// An alarm acknowledged (alarm event 3).
    Acknowledged,
}

/// One notification, whatever its dialect.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub dialect: Dialect,
    /// `notificationId`, when the sender gives one (pti does not).
    pub id: Option<Box<str>>,
    pub event: Event,
    /// The kind named by a netweave event type (`o2ims.Resource.Updated` -> resources), when
    /// the name is one the profile knows.
    pub kind: Option<Kind>,
    /// The object's path, scheme and authority stripped, without query or fragment.
    pub object_ref: Option<Box<str>>,
    /// `priorObjectState` and `postObjectState`, as objects (pti's strings parsed).
    pub prior: Option<Map<String, Value>>,
    pub post: Option<Map<String, Value>>,
    /// The rest of the top-level fields (netweave's and the alarm's ids live here).
    pub fields: Map<String, Value>,
}

impl Notification {
    /// The string field `name` of the post state, else the prior state, else the top level.
    pub fn field(&self, name: &str) -> Option<&str> {
        [self.post.as_ref(), self.prior.as_ref(), Some(&self.fields)]
            .into_iter()
            .flatten()
            .find_map(|m| m.get(name)?.as_str().filter(|s| !s.is_empty()))
    }
}

/// Why a body is not a notification: the status to answer and the ProblemDetails' text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub title: &'static str,
    pub detail: String,
}

impl Rejection {
    fn bad(detail: impl Into<String>) -> Rejection {
        Rejection {
            status: 400,
            title: "Bad Request",
            detail: detail.into(),
        }
    }

    pub fn too_large(limit: usize) -> Rejection {
        Rejection {
            status: 413,
            title: "Payload Too Large",
            detail: format!("the notification is larger than {limit} bytes"),
        }
    }

    /// The RFC 9457 body (`application/problem+json`), as O2 servers answer their errors.
    pub fn problem(&self) -> Value {
        serde_json::json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        })
    }
}

/// Parses a notification body of any dialect.
pub fn parse(body: &[u8]) -> Result<Notification, Rejection> {
    if body.len() > MAX_BODY {
        return Err(Rejection::too_large(MAX_BODY));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::bad(format!("the body is not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(Rejection::bad("the body is not a JSON object"));
    };
    let object_ref = match fields.remove("objectRef") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(path_of(&s)?),
        Some(_) => return Err(Rejection::bad("objectRef is not a string")),
    };
    let prior = state(fields.remove("priorObjectState"), "priorObjectState")?;
    let post = state(fields.remove("postObjectState"), "postObjectState")?;
    let id = match fields.remove("notificationId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s.len() > MAX_ID => {
            return Err(Rejection::bad(format!(
                "notificationId is longer than {MAX_ID} bytes"
            )))
        }
        Some(Value::String(s)) => Some(s.into_boxed_str()),
        Some(_) => return Err(Rejection::bad("notificationId is not a string")),
    };
    let alarm = fields.contains_key("alarmEventRecordId")
        || object_ref
            .as_deref()
            .is_some_and(|r| r.starts_with("/o2ims-infrastructureMonitoring/"));
    let (dialect, event, kind) = match fields.remove("notificationEventType") {
        None | Some(Value::Null) => return Err(Rejection::bad("notificationEventType is missing")),
        Some(Value::Number(n)) => {
            let code = n
                .as_u64()
                .ok_or_else(|| Rejection::bad(format!("notificationEventType {n} is unknown")))?;
            if alarm {
                (Dialect::OranAlarm, alarm_event(code)?, None)
            } else if fields.contains_key("callbackUrl") {
                // netweave with integer event types.
                (Dialect::Netweave, inventory_event(code)?, None)
            } else {
                (Dialect::Oran, inventory_event(code)?, None)
            }
        }
        Some(Value::String(s)) => match s.strip_prefix("o2ims.") {
            Some(named) => {
                let (kind, event) = netweave_event(named)?;
                (Dialect::Netweave, event, kind)
            }
            None => {
                let code: u64 = s.trim().parse().map_err(|_| {
                    Rejection::bad(format!("notificationEventType {s:?} is unknown"))
                })?;
                let event = if alarm {
                    alarm_event(code)?
                } else {
                    inventory_event(code)?
                };
                (Dialect::Pti, event, None)
            }
        },
        Some(_) => {
            return Err(Rejection::bad(
                "notificationEventType is neither a number nor a string",
            ))
        }
    };
    Ok(Notification {
        dialect,
        id,
        event,
        kind,
        object_ref,
        prior,
        post,
        fields,
    })
}

fn inventory_event(code: u64) -> Result<Event, Rejection> {
    match code {
        0 => Ok(Event::Created),
        1 => Ok(Event::Updated),
        2 => Ok(Event::Deleted),
        _ => Err(Rejection::bad(format!(
            "notificationEventType {code} is not 0 (create), 1 (modify) or 2 (delete)"
        ))),
    }
}

fn alarm_event(code: u64) -> Result<Event, Rejection> {
    match code {
        0 => Ok(Event::Created),
        1 => Ok(Event::Updated),
        2 => Ok(Event::Cleared),
        3 => Ok(Event::Acknowledged),
        _ => Err(Rejection::bad(format!(
            "alarm notificationEventType {code} is not 0 (new), 1 (change), 2 (clear) or 3 \
             (acknowledge)"
        ))),
    }
}

/// `<Kind>.<Created|Updated|Deleted>` of netweave's `o2ims.` event types. An unknown kind
/// name is not an error: the `objectRef` or the ids may still say what changed.
fn netweave_event(named: &str) -> Result<(Option<Kind>, Event), Rejection> {
    let bad = || {
        Rejection::bad(format!(
            "notificationEventType \"o2ims.{named}\" is unknown"
        ))
    };
    let (kind, event) = named.rsplit_once('.').ok_or_else(bad)?;
    let event = match event {
        "Created" => Event::Created,
        "Updated" => Event::Updated,
        "Deleted" => Event::Deleted,
        _ => return Err(bad()),
    };
    let kind = match kind {
        "Resource" => Some(Kind::Resources),
        "ResourcePool" => Some(Kind::ResourcePools),
        "ResourceType" => Some(Kind::ResourceTypes),
        "DeploymentManager" => Some(Kind::DeploymentManagers),
        "Location" => Some(Kind::Locations),
        "OCloudSite" => Some(Kind::OCloudSites),
        "OCloud" | "Cloud" => Some(Kind::Ocloud),
        "Subscription" => Some(Kind::Subscriptions),
        "Alarm" => Some(Kind::Alarms),
        "AlarmDictionary" => Some(Kind::AlarmDictionaries),
        "" => return Err(bad()),
        _ => None,
    };
    Ok((kind, event))
}

/// A state: an object, a JSON string holding one (pti), or nothing.
fn state(value: Option<Value>, name: &str) -> Result<Option<Map<String, Value>>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(Value::String(s)) if s.trim().is_empty() || s.trim() == "null" => Ok(None),
        Some(Value::String(s)) => match serde_json::from_str(&s) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            Ok(_) => Err(Rejection::bad(format!(
                "{name} is a string that does not hold a JSON object"
            ))),
            Err(e) => Err(Rejection::bad(format!("{name} is not JSON: {e}"))),
        },
        Some(_) => Err(Rejection::bad(format!("{name} is not an object"))),
    }
}

/// The path of an `objectRef`: an absolute URL loses its scheme and authority, a relative one
/// gains a leading `/`; query and fragment go.
fn path_of(object_ref: &str) -> Result<Box<str>, Rejection> {
    if object_ref.len() > MAX_REF {
        return Err(Rejection::bad(format!(
            "objectRef is longer than {MAX_REF} bytes"
        )));
    }
    let r = object_ref.trim();
    let r = match r.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        _ => r,
    };
    let r = r.split(['?', '#']).next().unwrap_or_default();
    if r.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(Rejection::bad(
            "objectRef holds spaces or control characters",
        ));
    }
    Ok(if r.starts_with('/') {
        r.into()
    } else {
        format!("/{r}").into_boxed_str()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// oran-o2ims InventoryChangeNotification, as `converters.go` builds it (notes §1.8).
    const ORAN_MODIFY: &str = r#"{"notificationId":"8c1c3b8e-0f7a-4a43-9a55-0c1f7a1f6a01",
      "consumerSubscriptionId":"3f20d850-af4f-a84f-fb5a-0ad585410361",
      "notificationEventType":1,
      "objectRef":"/o2ims-infrastructureInventory/v2/resourcePools/P1/resources/R1",
      "priorObjectState":{"resourceId":"R1","resourcePoolId":"P1","description":"old"},
      "postObjectState":{"resourceId":"R1","resourcePoolId":"P1","description":"new"}}"#;

    /// pti-o2 `callback_smo`: string event type and JSON-string states, no notificationId.
    const PTI_MODIFY: &str = r#"{"consumerSubscriptionId":"c1","notificationEventType":"1",
      "objectRef":"/o2ims-infrastructureInventory/v1/resourcePools/P1/resources/R1",
      "updateTime":"2026-12-05T10:00:00",
      "priorObjectState":"{\"resourceId\": \"R1\", \"resourcePoolId\": \"P1\"}",
      "postObjectState":"{\"resourceId\": \"R1\", \"resourcePoolId\": \"P1\"}"}"#;

    /// pti-o2 delete: objectRef popped, only the prior state.
    const PTI_DELETE: &str = r#"{"consumerSubscriptionId":"c1","notificationEventType":"2",
      "updateTime":"2026-12-05T10:00:00",
      "priorObjectState":"{\"resourceId\": \"R1\", \"resourcePoolId\": \"P1\"}"}"#;

    /// netweave `subscription_controller.go`.
    const NETWEAVE: &str = r#"{"subscriptionId":"s1","notificationEventType":"o2ims.Resource.Updated",
      "objectRef":"/o2ims/v1/resources/node-1","resourceTypeId":"T1","resourcePoolId":"P1",
      "globalResourceId":"g1","timestamp":"2026-12-05T10:00:00Z","notificationId":"n-1",
      "callbackUrl":"https://smo.example.com/cb"}"#;

    /// oran-o2ims AlarmEventNotification.
    const ORAN_ALARM: &str = r#"{"globalCloudID":"G","consumerSubscriptionId":"c1",
      "notificationEventType":0,
      "objectRef":"/o2ims-infrastructureMonitoring/v1/alarms/A1",
      "alarmEventRecordId":"A1","resourceTypeID":"T1","resourceID":"R1",
      "alarmDefinitionID":"D1","probableCauseID":"C1","alarmRaisedTime":"2026-12-05T10:00:00Z",
      "alarmChangedTime":"","alarmAcknowledgeTime":"","alarmAcknowledged":false,
      "perceivedSeverity":1,"extensions":{}}"#;

    #[test]
    fn oran_inventory() {
        let n = parse(ORAN_MODIFY.as_bytes()).unwrap();
        assert_eq!(n.dialect, Dialect::Oran);
        assert_eq!(n.event, Event::Updated);
        assert_eq!(
            n.id.as_deref(),
            Some("8c1c3b8e-0f7a-4a43-9a55-0c1f7a1f6a01")
        );
        assert_eq!(
            n.object_ref.as_deref(),
            Some("/o2ims-infrastructureInventory/v2/resourcePools/P1/resources/R1")
        );
        assert_eq!(n.field("description"), Some("new"));
        assert_eq!(n.prior.unwrap()["description"], "old");
    }

    #[test]
    fn pti_strings() {
        let n = parse(PTI_MODIFY.as_bytes()).unwrap();
        assert_eq!(n.dialect, Dialect::Pti);
        assert_eq!(n.event, Event::Updated);
        assert_eq!(n.id, None);
        assert_eq!(n.field("resourceId"), Some("R1"));
        let d = parse(PTI_DELETE.as_bytes()).unwrap();
        assert_eq!(
            (d.event, &d.object_ref, &d.post),
            (Event::Deleted, &None, &None)
        );
        assert_eq!(d.field("resourcePoolId"), Some("P1"));
        for (code, event) in [("0", Event::Created), ("2", Event::Deleted)] {
            let body = format!(r#"{{"notificationEventType":"{code}"}}"#);
            assert_eq!(parse(body.as_bytes()).unwrap().event, event);
        }
    }

    #[test]
    fn netweave_named_events() {
        let n = parse(NETWEAVE.as_bytes()).unwrap();
        assert_eq!(n.dialect, Dialect::Netweave);
        assert_eq!((n.event, n.kind), (Event::Updated, Some(Kind::Resources)));
        assert_eq!(n.id.as_deref(), Some("n-1"));
        assert_eq!(n.field("resourcePoolId"), Some("P1"));
        let other = r#"{"notificationEventType":"o2ims.NodeCluster.Deleted"}"#;
        let n = parse(other.as_bytes()).unwrap();
        assert_eq!((n.event, n.kind), (Event::Deleted, None));
        for bad in ["o2ims.Resource.Moved", "o2ims.Resource", "o2ims..Created"] {
            let body = format!(r#"{{"notificationEventType":"{bad}"}}"#);
            assert_eq!(parse(body.as_bytes()).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn oran_alarm() {
        let n = parse(ORAN_ALARM.as_bytes()).unwrap();
        assert_eq!((n.dialect, n.event), (Dialect::OranAlarm, Event::Created));
        assert_eq!(n.field("alarmEventRecordId"), Some("A1"));
        let ack = ORAN_ALARM.replace(
            r#""notificationEventType":0"#,
            r#""notificationEventType":3"#,
        );
        assert_eq!(parse(ack.as_bytes()).unwrap().event, Event::Acknowledged);
        // 3 is not an inventory event.
        let inv = ORAN_MODIFY.replace(
            r#""notificationEventType":1"#,
            r#""notificationEventType":3"#,
        );
        assert_eq!(parse(inv.as_bytes()).unwrap_err().status, 400);
    }

    #[test]
    fn object_refs() {
        let cases = [
            (
                "https://o2.example.com:8443/o2ims/v1/resources/x?a=b",
                "/o2ims/v1/resources/x",
            ),
            ("http://h", "/"),
            (
                "o2ims-infrastructureInventory/v1/resourcePools/P",
                "/o2ims-infrastructureInventory/v1/resourcePools/P",
            ),
            (
                "/o2ims-infrastructureInventory/v1#frag",
                "/o2ims-infrastructureInventory/v1",
            ),
        ];
        for (given, want) in cases {
            let body = format!(r#"{{"notificationEventType":1,"objectRef":"{given}"}}"#);
            assert_eq!(
                parse(body.as_bytes()).unwrap().object_ref.as_deref(),
                Some(want)
            );
        }
        let none = r#"{"notificationEventType":1,"objectRef":null}"#;
        assert_eq!(parse(none.as_bytes()).unwrap().object_ref, None);
    }

    #[test]
    fn rejections() {
        let cases: &[(&str, u16)] = &[
            ("", 400),
            ("not json", 400),
            ("[1,2]", 400),
            ("{}", 400),
            (r#"{"notificationEventType":null}"#, 400),
            (r#"{"notificationEventType":7}"#, 400),
            (r#"{"notificationEventType":-1}"#, 400),
            (r#"{"notificationEventType":1.5}"#, 400),
            (r#"{"notificationEventType":"x"}"#, 400),
            (r#"{"notificationEventType":true}"#, 400),
            (r#"{"notificationEventType":1,"objectRef":5}"#, 400),
            (
                r#"{"notificationEventType":1,"postObjectState":"{broken"}"#,
                400,
            ),
            (
                r#"{"notificationEventType":1,"postObjectState":"[1]"}"#,
                400,
            ),
            (r#"{"notificationEventType":1,"postObjectState":3}"#, 400),
            (r#"{"notificationEventType":1,"notificationId":{}}"#, 400),
            (r#"{"notificationEventType":1,"objectRef":"/a b"}"#, 400),
        ];
        for (body, status) in cases {
            let r = parse(body.as_bytes()).unwrap_err();
            assert_eq!(r.status, *status, "{body}");
            assert_eq!(r.problem()["status"], *status);
        }
        let long_id = format!(
            r#"{{"notificationEventType":1,"notificationId":"{}"}}"#,
            "x".repeat(MAX_ID + 1)
        );
        assert_eq!(parse(long_id.as_bytes()).unwrap_err().status, 400);
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(parse(&big).unwrap_err().status, 413);
        // Nesting past serde_json's recursion limit is an error, not a stack overflow.
        let deep = format!(
            r#"{{"notificationEventType":1,"x":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(parse(deep.as_bytes()).unwrap_err().status, 400);
    }
}
