//! What a template sees: the payload, the destination and the message's alerts as minijinja
//! values, built once per payload (or per destination) and shared by every message made from it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use minijinja::value::{Enumerator, Object, ObjectExt};
use minijinja::Value;

use super::super::payload::{Alert, Payload, Status};
use super::{RenderError, CONTEXT_VARIABLES};
use time::OffsetDateTime;

/// A payload as templates see it, built once for all the messages rendered from it: a split
/// per alert renders each alert once, and would otherwise rebuild the group's maps every time.
#[derive(Debug)]
pub struct PayloadValues {
    group: Arc<GroupValues>,
    alerts: Vec<Value>,
}

impl PayloadValues {
    pub fn new(p: &Payload) -> PayloadValues {
        PayloadValues {
            group: Arc::new(GroupValues {
                version: Value::from(p.version.as_str()),
                group_key: Value::from(p.group_key.as_str()),
                truncated_alerts: Value::from(p.truncated_alerts),
                status: Value::from(p.status.as_str()),
                receiver: Value::from(p.receiver.as_str()),
                group_labels: str_map(&p.group_labels),
                common_labels: str_map(&p.common_labels),
                common_annotations: str_map(&p.common_annotations),
                external_url: Value::from(p.external_url.as_str()),
            }),
            alerts: p.alerts.iter().map(alert_value).collect(),
        }
    }
}

/// A destination as templates see it: its name (`destination`) and its variables (`vars`),
/// built once when the config is.
#[derive(Debug, Clone)]
pub struct DestinationValues {
    name: Value,
    vars: Value,
}

impl DestinationValues {
    pub fn new(name: &str, vars: &BTreeMap<String, String>) -> DestinationValues {
        DestinationValues {
            name: Value::from(name),
            vars: str_map(vars),
        }
    }
}

/// What one outgoing message is rendered from.
#[derive(Debug, Clone)]
pub struct RenderContext<'a> {
    pub payload: &'a PayloadValues,
    /// The payload's alerts this message carries (`i..i + 1` for one message per alert).
    pub alerts: Range<usize>,
    pub destination: &'a DestinationValues,
}

/// The payload's fields that every message of it shares.
#[derive(Debug)]
struct GroupValues {
    version: Value,
    group_key: Value,
    truncated_alerts: Value,
    status: Value,
    receiver: Value,
    group_labels: Value,
    common_labels: Value,
    common_annotations: Value,
    external_url: Value,
}

/// The context of one message: the group's values, shared, and this message's alerts.
/// `firing` and `resolved` are only built when a template asks for them.
#[derive(Debug)]
struct MessageObject {
    group: Arc<GroupValues>,
    alerts: Value,
    alert: Value,
    destination: Value,
    vars: Value,
}

impl MessageObject {
    fn of_status(&self, status: Status) -> Value {
        let Ok(alerts) = self.alerts.try_iter() else {
            return Value::from(Vec::<Value>::new());
        };
        alerts
            .filter(|a| {
                a.downcast_object_ref::<AlertObject>()
                    .is_some_and(|a| a.status == status)
            })
            .collect()
    }
}

impl Object for MessageObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        let g = &self.group;
        let v = match key {
            "version" => &g.version,
            "groupKey" => &g.group_key,
            "truncatedAlerts" => &g.truncated_alerts,
            "status" => &g.status,
            "receiver" => &g.receiver,
            "groupLabels" => &g.group_labels,
            "commonLabels" => &g.common_labels,
            "commonAnnotations" => &g.common_annotations,
            "externalURL" => &g.external_url,
            "alerts" => &self.alerts,
            "alert" => &self.alert,
            "firing" => return Some(self.of_status(Status::Firing)),
            "resolved" => return Some(self.of_status(Status::Resolved)),
            "destination" => &self.destination,
            "vars" => &self.vars,
            _ => return None,
        };
        Some(v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(CONTEXT_VARIABLES)
    }
}

#[derive(Debug)]
pub(super) struct AlertObject {
    pub(super) status: Status,
    pub(super) status_value: Value,
    pub(super) labels: Value,
    pub(super) annotations: Value,
    pub(super) starts_at: Value,
    pub(super) ends_at: Value,
    pub(super) generator_url: Value,
    pub(super) fingerprint: Value,
    pub(super) alertname: Option<Value>,
    pub(super) severity: Option<Value>,
    /// `startsAt` and `endsAt` as the payload parsed them, for `duration`.
    pub(super) starts: OffsetDateTime,
    pub(super) ends: Option<OffsetDateTime>,
}

/// Alertmanager's fields only: `alertname` and `severity` are shortcuts, so `tojson` and
/// iteration give an alert exactly as Alertmanager sent it.
const ALERT_KEYS: &[&str] = &[
    "status",
    "labels",
    "annotations",
    "startsAt",
    "endsAt",
    "generatorURL",
    "fingerprint",
];

impl Object for AlertObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        Some(match key {
            "status" => self.status_value.clone(),
            "labels" => self.labels.clone(),
            "annotations" => self.annotations.clone(),
            "startsAt" => self.starts_at.clone(),
            "endsAt" => self.ends_at.clone(),
            "generatorURL" => self.generator_url.clone(),
            "fingerprint" => self.fingerprint.clone(),
            "alertname" => return self.alertname.clone(),
            "severity" => return self.severity.clone(),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(ALERT_KEYS)
    }
}

/// A label or annotation map. A minijinja map value is a `BTreeMap<Value, Value>`, whose
/// building sorts its entries again; these arrive sorted, so a vector and a binary search do.
#[derive(Debug)]
pub(super) struct StrMap(pub(super) Vec<(Value, Value)>);

impl Object for StrMap {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        let i = self
            .0
            .binary_search_by(|(k, _)| k.as_str().unwrap_or_default().cmp(key))
            .ok()?;
        Some(self.0[i].1.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_key_value_enumerator(|this| Box::new(this.0.iter().cloned()))
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}

static EMPTY_MAP: LazyLock<Value> = LazyLock::new(|| Value::from_object(StrMap(Vec::new())));

fn str_map(map: &BTreeMap<String, String>) -> Value {
    if map.is_empty() {
        return EMPTY_MAP.clone();
    }
    Value::from_object(StrMap(
        map.iter()
            .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
            .collect(),
    ))
}

fn alert_value(a: &Alert) -> Value {
    Value::from_object(AlertObject {
        status: a.status,
        status_value: Value::from(a.status.as_str()),
        labels: str_map(&a.labels),
        annotations: str_map(&a.annotations),
        starts_at: Value::from(a.starts_at.as_str()),
        ends_at: Value::from(a.ends_at.as_str()),
        generator_url: Value::from(a.generator_url.as_str()),
        fingerprint: Value::from(a.fingerprint.as_str()),
        alertname: a.labels.get("alertname").map(|v| Value::from(v.as_str())),
        severity: a.labels.get("severity").map(|v| Value::from(v.as_str())),
        starts: a.starts_at_time,
        ends: a.ends_at_time,
    })
}

pub(super) fn context_value(ctx: &RenderContext<'_>) -> Result<Value, RenderError> {
    let p = ctx.payload;
    let Some(chosen) = p.alerts.get(ctx.alerts.clone()) else {
        return Err(RenderError::AlertRange {
            range: ctx.alerts.clone(),
            len: p.alerts.len(),
        });
    };
    Ok(Value::from_object(MessageObject {
        group: p.group.clone(),
        alert: chosen.first().cloned().unwrap_or(Value::UNDEFINED),
        alerts: Value::from(chosen.to_vec()),
        destination: ctx.destination.name.clone(),
        vars: ctx.destination.vars.clone(),
    }))
}
