//! What a notification evicts: its object, every list of its collection and its dependents.
//!
//! The tags are the ones the profile gives cached responses (design §4.3, `profile::tag`): an
//! item `i:<kind>:<id>` (every query variant and sub-path of it), a collection
//! `c:<path without base and version>` (every page, filter and field set of a list). The
//! `objectRef` is matched first; without one the states' and the top level's id fields say what
//! changed (notes §1.10). What cannot be pinned down evicts more, never less: the whole kind,
//! or the whole API family.

use crate::plugin::cache::profile::{tag, Family, Kind, TagName};
use crate::plugin::cache::store::TagSet;

use super::dialect::{Dialect, Event, Notification};

/// How precisely a notification was mapped; the tags are in the `out` given to [`map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapped {
    /// The object, its collections and dependents.
    Tags,
    /// An unknown path under a known kind, or no id to name the object: the whole kind.
    Kind(Kind),
    /// No `objectRef` and no usable id: the whole API family.
    Family(Family),
    /// An `objectRef` outside every O2 base, or under none of its kinds: nothing (422).
    Unknown,
}

/// The API bases (design §1.2), with the family each belongs to.
const BASES: &[(&str, Base)] = &[
    (
        "/o2ims-infrastructureInventory/",
        Base::Family(Family::Inventory),
    ),
    ("/o2ims/", Base::Family(Family::Inventory)),
    (
        "/o2ims-infrastructureMonitoring/",
        Base::Family(Family::Monitoring),
    ),
    ("/o2ims-infrastructureCluster/", Base::Cluster),
];

#[derive(Clone, Copy)]
enum Base {
    Family(Family),
    /// The cluster API has no kind in the profile: its paths are cached, if at all, by a
    /// generic rule, whose tags are the paths themselves.
    Cluster,
}

/// Fills `out` with what `n` evicts in store `store`.
pub fn map(n: &Notification, store: &str, out: &mut TagSet) -> Mapped {
    out.clear();
    let Some(r) = n.object_ref.as_deref() else {
        return by_ids(n, store, out);
    };
    let Some((base, after)) = BASES
        .iter()
        .find_map(|(prefix, base)| Some((*base, r.strip_prefix(prefix)?)))
    else {
        return Mapped::Unknown;
    };
    // The version segment (`v1`, `v2`) is never part of a tag: one upstream speaks one version.
    let (version, rest) = after.split_once('/').unwrap_or((after, ""));
    if !is_version(version) {
        return Mapped::Unknown;
    }
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let family = match base {
        Base::Cluster => return cluster(version, &segs, store, out),
        Base::Family(f) => f,
    };
    let Some(first) = segs.first() else {
        // `/o2ims-infrastructureInventory/v1`: pti's OCloud change.
        if family != Family::Inventory {
            return Mapped::Unknown;
        }
        out.push(tag(store, TagName::Kind(Kind::Ocloud)));
        return Mapped::Tags;
    };
    let Some(kind) = kind_of(first, family) else {
        return Mapped::Unknown;
    };
    match (kind, &segs[1..]) {
        (Kind::Ocloud, []) => {
            out.push(tag(store, TagName::Kind(Kind::Ocloud)));
            Mapped::Tags
        }
        (Kind::ResourcePools, [pool, "resources", res, ..]) => {
            resource(n, store, res, Some(pool), out);
            Mapped::Tags
        }
        (Kind::ResourcePools, [pool, "resources"]) => {
            out.push(tag(
                store,
                TagName::Collection(&format!("resourcePools/{pool}/resources")),
            ));
            Mapped::Tags
        }
        (Kind::Resources, [res, ..]) => {
            resource(n, store, res, None, out);
            Mapped::Tags
        }
        // oran names a location by a tracking UUID (SHA-1 of its globalLocationId), which no
        // cached URL holds: without the real id in a state, only the kind is certain.
        (Kind::Locations, [_]) if n.field("globalLocationId").is_none() => {
            out.push(tag(store, TagName::Kind(kind)));
            Mapped::Kind(kind)
        }
        // `…/resourceTypes/{t}/alarmDictionary` is a sub-path of the item.
        (_, [id]) | (Kind::ResourceTypes, [id, "alarmDictionary"]) => {
            item(n, store, kind, id, out);
            Mapped::Tags
        }
        _ => {
            out.push(tag(store, TagName::Kind(kind)));
            Mapped::Kind(kind)
        }
    }
}

fn is_version(s: &str) -> bool {
    s.len() > 1 && s.starts_with('v') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// The kind a path segment under a base of `family` names.
fn kind_of(segment: &str, family: Family) -> Option<Kind> {
    let kind = match segment {
        // netweave's OCloud is `oCloudInfrastructure`.
        "api_versions" | "oCloudInfrastructure" => Kind::Ocloud,
        "resourcePools" => Kind::ResourcePools,
        "resources" => Kind::Resources,
        "resourceTypes" => Kind::ResourceTypes,
        "alarmDictionaries" => Kind::AlarmDictionaries,
        "deploymentManagers" => Kind::DeploymentManagers,
        "locations" => Kind::Locations,
        "oCloudSites" => Kind::OCloudSites,
        "subscriptions" if family == Family::Inventory => Kind::Subscriptions,
        "alarms" => Kind::Alarms,
        "alarmSubscriptions" => Kind::AlarmSubscriptions,
        _ => return None,
    };
    (kind.family() == family || kind == Kind::Ocloud).then_some(kind)
}

/// A resource: the item, its pool's list of resources, and netweave's top-level list.
fn resource(n: &Notification, store: &str, id: &str, pool: Option<&str>, out: &mut TagSet) {
    out.push(tag(store, TagName::Item(Kind::Resources, id)));
    out.push(tag(store, TagName::Collection("resources")));
    if let Some(pool) = pool.or_else(|| n.field("resourcePoolId")) {
        out.push(tag(
            store,
            TagName::Collection(&format!("resourcePools/{pool}/resources")),
        ));
    }
}

/// An item of `kind` named `id` by the `objectRef` or the ids: the item, its collection and its
/// dependents.
fn item(n: &Notification, store: &str, kind: Kind, id: &str, out: &mut TagSet) {
    if kind == Kind::Resources {
        return resource(n, store, id, None, out);
    }
    // oran's location refs hold a tracking UUID: the states carry the real id.
    let id = match kind {
        Kind::Locations => n.field("globalLocationId").unwrap_or(id),
        _ => id,
    };
    out.push(tag(store, TagName::Item(kind, id)));
    out.push(tag(store, TagName::Collection(kind.as_str())));
    match kind {
        Kind::ResourcePools => {
            // OCloudSiteInfo embeds its pools' ids.
            if let Some(site) = n.field("oCloudSiteId") {
                out.push(tag(store, TagName::Item(Kind::OCloudSites, site)));
                out.push(tag(store, TagName::Collection("oCloudSites")));
            }
            if n.event == Event::Deleted {
                out.push(tag(
                    store,
                    TagName::Collection(&format!("resourcePools/{id}/resources")),
                ));
            }
        }
        Kind::OCloudSites => {
            // LocationInfo embeds its sites' ids.
            if let Some(loc) = n.field("globalLocationId") {
                out.push(tag(store, TagName::Item(Kind::Locations, loc)));
                out.push(tag(store, TagName::Collection("locations")));
            }
        }
        Kind::ResourceTypes => {
            // oran sends no event for alarm dictionaries, which hang off resource types.
            out.push(tag(store, TagName::Collection("alarmDictionaries")));
            if let Some(dict) = n.field("alarmDictionaryId") {
                out.push(tag(store, TagName::Item(Kind::AlarmDictionaries, dict)));
            }
        }
        _ => {}
    }
}

/// No `objectRef` (pti's deletes, oran's kinds outside its switch): the kind from netweave's
/// event type or from the first id field found, in an order where a more specific object's id
/// comes before the ids of what it points at.
fn by_ids(n: &Notification, store: &str, out: &mut TagSet) -> Mapped {
    const IDS: &[(&str, Kind)] = &[
        ("resourceId", Kind::Resources),
        ("alarmEventRecordId", Kind::Alarms),
        ("deploymentManagerId", Kind::DeploymentManagers),
        ("resourcePoolId", Kind::ResourcePools),
        ("resourceTypeId", Kind::ResourceTypes),
        ("oCloudSiteId", Kind::OCloudSites),
        ("globalLocationId", Kind::Locations),
        ("subscriptionId", Kind::Subscriptions),
    ];
    let id_field = |kind: Kind| IDS.iter().find(|(_, k)| *k == kind).map(|(f, _)| *f);
    // A top-level `subscriptionId` (netweave) is the subscription the notification belongs to,
    // not the changed object: a subscription is named only by its states.
    let id = |field: &str| match field {
        "subscriptionId" => [n.post.as_ref(), n.prior.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|m| m.get(field)?.as_str().filter(|s| !s.is_empty())),
        _ => n.field(field),
    };
    let kind = n.kind.or_else(|| {
        IDS.iter()
            .find(|(field, _)| id(field).is_some())
            .map(|(_, k)| *k)
    });
    let Some(kind) = kind else {
        let family = if n.dialect == Dialect::OranAlarm {
            Family::Monitoring
        } else {
            Family::Inventory
        };
        out.push(tag(store, TagName::Family(family)));
        return Mapped::Family(family);
    };
    if kind == Kind::Ocloud {
        out.push(tag(store, TagName::Kind(Kind::Ocloud)));
        return Mapped::Tags;
    }
    match id_field(kind).and_then(id) {
        Some(id) => {
            item(n, store, kind, id, out);
            Mapped::Tags
        }
        None => {
            out.push(tag(store, TagName::Kind(kind)));
            Mapped::Kind(kind)
        }
    }
}

/// A cluster API ref: the item path and its collection's path as generic tags, with oran's
/// singular `clusterResource` made the API's plural.
fn cluster(version: &str, segs: &[&str], store: &str, out: &mut TagSet) -> Mapped {
    const KINDS: &[&str] = &[
        "nodeClusterTypes",
        "nodeClusters",
        "clusterResourceTypes",
        "clusterResources",
        "alarmDictionaries",
        "subscriptions",
    ];
    let Some(first) = segs.first() else {
        return Mapped::Unknown;
    };
    let plural = match *first {
        "clusterResource" => "clusterResources",
        "clusterResourceType" => "clusterResourceTypes",
        "nodeCluster" => "nodeClusters",
        "nodeClusterType" => "nodeClusterTypes",
        other => other,
    };
    if !KINDS.contains(&plural) {
        return Mapped::Unknown;
    }
    let base = format!("/o2ims-infrastructureCluster/{version}/{plural}");
    out.push(tag(store, TagName::Uri(&base)));
    if let Some(id) = segs.get(1) {
        out.push(tag(store, TagName::Uri(&format!("{base}/{id}"))));
    }
    if segs.len() > 2 {
        // A sub-path (`…/alarmDictionary`): the ref as given, plural fixed.
        out.push(tag(
            store,
            TagName::Uri(&format!("{base}/{}", segs[1..].join("/"))),
        ));
    }
    Mapped::Tags
}

#[cfg(test)]
mod tests {
    use super::super::dialect::parse;
    use super::*;

    const S: &str = "o2";

    fn t(name: TagName<'_>) -> crate::plugin::cache::store::TagId {
        tag(S, name)
    }

    fn mapped(body: &str) -> (Mapped, TagSet) {
        let n = parse(body.as_bytes()).unwrap();
        let mut out = TagSet::new();
        let m = map(&n, S, &mut out);
        (m, out)
    }

    fn has(out: &TagSet, want: &[TagName<'_>]) {
        for w in want {
            assert!(out.contains(&t(*w)), "missing {w:?} in {out:?}");
        }
    }

    #[test]
    fn oran_resource_item_and_lists() {
        let (m, out) = mapped(
            r#"{"notificationId":"n","notificationEventType":1,
            "objectRef":"/o2ims-infrastructureInventory/v2/resourcePools/P1/resources/R1"}"#,
        );
        assert_eq!(m, Mapped::Tags);
        has(
            &out,
            &[
                TagName::Item(Kind::Resources, "R1"),
                TagName::Collection("resourcePools/P1/resources"),
            ],
        );
        // Neither the pool nor other pools' lists.
        assert!(!out.contains(&t(TagName::Item(Kind::ResourcePools, "P1"))));
        assert!(!out.contains(&t(TagName::Collection("resourcePools/P2/resources"))));
        assert!(!out.contains(&t(TagName::Ns)));
    }

    #[test]
    fn versions_share_tags() {
        let v1 = mapped(
            r#"{"notificationEventType":"1",
            "objectRef":"https://o2:8443/o2ims-infrastructureInventory/v1/resourceTypes/T1"}"#,
        );
        let v2 = mapped(
            r#"{"notificationEventType":1,
            "objectRef":"/o2ims-infrastructureInventory/v2/resourceTypes/T1/alarmDictionary"}"#,
        );
        assert_eq!(v1, v2);
        has(
            &v1.1,
            &[
                TagName::Item(Kind::ResourceTypes, "T1"),
                TagName::Collection("resourceTypes"),
                TagName::Collection("alarmDictionaries"),
            ],
        );
    }

    #[test]
    fn pool_dependents() {
        let (m, out) = mapped(
            r#"{"notificationEventType":2,
            "objectRef":"/o2ims-infrastructureInventory/v2/resourcePools/P1",
            "priorObjectState":{"resourcePoolId":"P1","oCloudSiteId":"S1"}}"#,
        );
        assert_eq!(m, Mapped::Tags);
        has(
            &out,
            &[
                TagName::Item(Kind::ResourcePools, "P1"),
                TagName::Collection("resourcePools"),
                TagName::Item(Kind::OCloudSites, "S1"),
                TagName::Collection("oCloudSites"),
                TagName::Collection("resourcePools/P1/resources"),
            ],
        );
        // A modify keeps the pool's resources.
        let (_, out) = mapped(
            r#"{"notificationEventType":1,
            "objectRef":"/o2ims-infrastructureInventory/v2/resourcePools/P1"}"#,
        );
        assert!(!out.contains(&t(TagName::Collection("resourcePools/P1/resources"))));
    }

    #[test]
    fn site_to_location_and_oran_tracking_uuid() {
        let (_, out) = mapped(
            r#"{"notificationEventType":1,
            "objectRef":"/o2ims-infrastructureInventory/v2/oCloudSites/S1",
            "postObjectState":{"oCloudSiteId":"S1","globalLocationId":"LOC-A"}}"#,
        );
        has(
            &out,
            &[
                TagName::Item(Kind::OCloudSites, "S1"),
                TagName::Collection("oCloudSites"),
                TagName::Item(Kind::Locations, "LOC-A"),
            ],
        );
        let (m, out) = mapped(
            r#"{"notificationEventType":1,
            "objectRef":"/o2ims-infrastructureInventory/v2/locations/5f0e3c2a-0000-5000-8000-000000000000",
            "postObjectState":{"globalLocationId":"LOC-A","oCloudSiteIds":["S1"]}}"#,
        );
        assert_eq!(m, Mapped::Tags);
        has(
            &out,
            &[
                TagName::Item(Kind::Locations, "LOC-A"),
                TagName::Collection("locations"),
            ],
        );
        assert!(!out.contains(&t(TagName::Item(
            Kind::Locations,
            "5f0e3c2a-0000-5000-8000-000000000000"
        ))));
    }

    #[test]
    fn pti_delete_by_state() {
        let (m, out) = mapped(
            r#"{"notificationEventType":"2",
            "priorObjectState":"{\"resourceId\": \"R1\", \"resourcePoolId\": \"P1\"}"}"#,
        );
        assert_eq!(m, Mapped::Tags);
        has(
            &out,
            &[
                TagName::Item(Kind::Resources, "R1"),
                TagName::Collection("resourcePools/P1/resources"),
            ],
        );
        let (m, out) = mapped(
            r#"{"notificationEventType":"2",
            "priorObjectState":"{\"resourcePoolId\": \"P1\", \"oCloudId\": \"C\"}"}"#,
        );
        assert_eq!(m, Mapped::Tags);
        has(&out, &[TagName::Item(Kind::ResourcePools, "P1")]);
    }

    #[test]
    fn pti_ocloud() {
        let (m, out) = mapped(
            r#"{"notificationEventType":"1","objectRef":"/o2ims-infrastructureInventory/v1"}"#,
        );
        assert_eq!(m, Mapped::Tags);
        assert_eq!(out.as_slice(), &[t(TagName::Kind(Kind::Ocloud))]);
    }

    #[test]
    fn netweave_resources() {
        let (m, out) = mapped(
            r#"{"subscriptionId":"s1","notificationEventType":"o2ims.Resource.Deleted",
            "objectRef":"/o2ims/v1/resources/node-1","resourceTypeId":"T1","resourcePoolId":"P1",
            "notificationId":"n-1"}"#,
        );
        assert_eq!(m, Mapped::Tags);
        has(
            &out,
            &[
                TagName::Item(Kind::Resources, "node-1"),
                TagName::Collection("resources"),
                TagName::Collection("resourcePools/P1/resources"),
            ],
        );
        // No ref: netweave's named kind and its top-level ids.
        let (m, out) = mapped(
            r#"{"subscriptionId":"s1","notificationEventType":"o2ims.ResourcePool.Updated",
            "resourcePoolId":"P9"}"#,
        );
        assert_eq!(m, Mapped::Tags);
        has(&out, &[TagName::Item(Kind::ResourcePools, "P9")]);
        // A named kind without its id: the kind.
        let (m, out) = mapped(
            r#"{"subscriptionId":"s1","notificationEventType":"o2ims.DeploymentManager.Updated"}"#,
        );
        assert_eq!(m, Mapped::Kind(Kind::DeploymentManagers));
        assert_eq!(
            out.as_slice(),
            &[t(TagName::Kind(Kind::DeploymentManagers))]
        );
    }

    #[test]
    fn netweave_ocloud_and_int_events() {
        let (m, out) = mapped(
            r#"{"subscriptionId":"s1","notificationEventType":"o2ims.OCloud.Updated",
            "objectRef":"/o2ims/v1/oCloudInfrastructure"}"#,
        );
        assert_eq!(m, Mapped::Tags);
        assert_eq!(out.as_slice(), &[t(TagName::Kind(Kind::Ocloud))]);
        // netweave with integer event types and no ref: its subscriptionId names no object.
        let (m, out) = mapped(
            r#"{"subscriptionId":"s1","notificationEventType":1,"callbackUrl":"https://x/cb",
            "resourceTypeId":null,"resourcePoolId":"P3","notificationId":"n"}"#,
        );
        assert_eq!(m, Mapped::Tags);
        has(&out, &[TagName::Item(Kind::ResourcePools, "P3")]);
        let (m, _) = mapped(r#"{"subscriptionId":"s1","notificationEventType":1}"#);
        assert_eq!(m, Mapped::Family(Family::Inventory));
    }

    #[test]
    fn alarms() {
        let (m, out) = mapped(
            r#"{"notificationEventType":0,"alarmEventRecordId":"A1",
            "objectRef":"/o2ims-infrastructureMonitoring/v1/alarms/A1"}"#,
        );
        assert_eq!(m, Mapped::Tags);
        has(
            &out,
            &[
                TagName::Item(Kind::Alarms, "A1"),
                TagName::Collection("alarms"),
            ],
        );
        let (m, out) = mapped(r#"{"notificationEventType":0,"alarmEventRecordId":"A2"}"#);
        assert_eq!(m, Mapped::Tags);
        has(&out, &[TagName::Item(Kind::Alarms, "A2")]);
    }

    #[test]
    fn unknown_path_under_known_kind_purges_the_kind() {
        let (m, out) = mapped(
            r#"{"notificationEventType":1,
            "objectRef":"/o2ims-infrastructureInventory/v2/deploymentManagers/D1/extra/x"}"#,
        );
        assert_eq!(m, Mapped::Kind(Kind::DeploymentManagers));
        assert_eq!(
            out.as_slice(),
            &[t(TagName::Kind(Kind::DeploymentManagers))]
        );
        // A location ref without the real id in a state: its id may be oran's tracking UUID.
        let (m, out) = mapped(
            r#"{"notificationEventType":1,
            "objectRef":"/o2ims-infrastructureInventory/v2/locations/L1"}"#,
        );
        assert_eq!(m, Mapped::Kind(Kind::Locations));
        assert_eq!(out.as_slice(), &[t(TagName::Kind(Kind::Locations))]);
    }

    #[test]
    fn no_ref_no_ids_purges_the_family() {
        let (m, out) = mapped(r#"{"notificationId":"n","notificationEventType":1}"#);
        assert_eq!(m, Mapped::Family(Family::Inventory));
        assert_eq!(out.as_slice(), &[t(TagName::Family(Family::Inventory))]);
    }

    #[test]
    fn outside_every_base_is_unknown() {
        for r in [
            "/somewhere/else",
            "/o2ims-infrastructureInventory/v2/widgets/W1",
            "/o2ims-infrastructureInventory/latest/resourcePools/P1",
            "/o2ims-infrastructureMonitoring/v1/resourcePools/P1",
            "/o2ims-infrastructureCluster/v1/gadgets/1",
            "/",
        ] {
            let body = format!(r#"{{"notificationEventType":1,"objectRef":"{r}"}}"#);
            let (m, out) = mapped(&body);
            assert_eq!(m, Mapped::Unknown, "{r}");
            assert!(out.is_empty(), "{r}");
        }
    }

    #[test]
    fn cluster_singular_is_made_plural() {
        let (m, out) = mapped(
            r#"{"notificationEventType":1,
            "objectRef":"/o2ims-infrastructureCluster/v1/clusterResource/C1"}"#,
        );
        assert_eq!(m, Mapped::Tags);
        has(
            &out,
            &[
                TagName::Uri("/o2ims-infrastructureCluster/v1/clusterResources/C1"),
                TagName::Uri("/o2ims-infrastructureCluster/v1/clusterResources"),
            ],
        );
    }
}
