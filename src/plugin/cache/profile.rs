//! The `o2ims` profile: the O2 IMS paths, their default lifetimes and marks, their resource
//! kinds, and the tag vocabulary that both the cache (when storing) and the notifications
//! (when evicting) speak.

use super::store::TagId;

/// A resource kind: a closed set, so metrics labels stay bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    /// Not an O2 path (a generic cached route).
    Generic = 0,
    Ocloud,
    ResourcePools,
    Resources,
    ResourceTypes,
    AlarmDictionaries,
    DeploymentManagers,
    Locations,
    OCloudSites,
    Subscriptions,
    Alarms,
    AlarmSubscriptions,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Generic,
        Kind::Ocloud,
        Kind::ResourcePools,
        Kind::Resources,
        Kind::ResourceTypes,
        Kind::AlarmDictionaries,
        Kind::DeploymentManagers,
        Kind::Locations,
        Kind::OCloudSites,
        Kind::Subscriptions,
        Kind::Alarms,
        Kind::AlarmSubscriptions,
    ];

    /// The metrics label and the tag text: the O2 path segment of the collection.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Generic => "generic",
            Kind::Ocloud => "ocloud",
            Kind::ResourcePools => "resourcePools",
            Kind::Resources => "resources",
            Kind::ResourceTypes => "resourceTypes",
            Kind::AlarmDictionaries => "alarmDictionaries",
            Kind::DeploymentManagers => "deploymentManagers",
            Kind::Locations => "locations",
            Kind::OCloudSites => "oCloudSites",
            Kind::Subscriptions => "subscriptions",
            Kind::Alarms => "alarms",
            Kind::AlarmSubscriptions => "alarmSubscriptions",
        }
    }

    /// The API family the kind belongs to.
    pub fn family(self) -> Family {
        match self {
            Kind::Alarms | Kind::AlarmSubscriptions => Family::Monitoring,
            Kind::Generic => Family::Generic,
            _ => Family::Inventory,
        }
    }
}

/// An O2 API family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Inventory,
    Monitoring,
    Generic,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inventory => "inventory",
            Family::Monitoring => "monitoring",
            Family::Generic => "generic",
        }
    }
}

/// A tag, before hashing (design §4.3).
#[derive(Clone, Copy, Debug)]
pub enum TagName<'a> {
    /// Every entry of the store.
    Ns,
    /// Every entry of an API family.
    Family(Family),
    /// Every entry of a kind.
    Kind(Kind),
    /// One item with all its query variants and sub-paths (`i:<kind>:<id>`).
    Item(Kind, &'a str),
    /// Every page, filter and field set of a list: the collection path without base and
    /// version, e.g. `resourcePools/P1/resources`.
    Collection(&'a str),
    /// A generic target: the normalized path without its query.
    Uri(&'a str),
}

impl std::fmt::Display for TagName<'_> {
    /// The tag's text as hashed (after the store's name), as `zkgate explain` shows it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TagName::Ns => f.write_str("ns"),
            TagName::Family(x) => write!(f, "f:{}", x.as_str()),
            TagName::Kind(k) => write!(f, "k:{}", k.as_str()),
            TagName::Item(k, id) => write!(f, "i:{}:{id}", k.as_str()),
            TagName::Collection(c) => write!(f, "c:{c}"),
            TagName::Uri(u) => write!(f, "u:{u}"),
        }
    }
}

/// The tag `t` of store `store`: xxh3-64 of the store's name, a NUL, and the tag's text, so
/// two stores never share a tag and every replica computes the same id.
pub fn tag(store: &str, t: TagName<'_>) -> TagId {
    use xxhash_rust::xxh3::Xxh3;
    let mut h = Xxh3::new();
    h.update(store.as_bytes());
    h.update(b"\0");
    match t {
        TagName::Ns => h.update(b"ns"),
        TagName::Family(f) => {
            h.update(b"f:");
            h.update(f.as_str().as_bytes());
        }
        TagName::Kind(k) => {
            h.update(b"k:");
            h.update(k.as_str().as_bytes());
        }
        TagName::Item(k, id) => {
            h.update(b"i:");
            h.update(k.as_str().as_bytes());
            h.update(b":");
            h.update(id.as_bytes());
        }
        TagName::Collection(c) => {
            h.update(b"c:");
            h.update(c.as_bytes());
        }
        TagName::Uri(u) => {
            h.update(b"u:");
            h.update(u.as_bytes());
        }
    }
    TagId(h.digest())
}

/// What a template's path names, which decides its item or collection tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One document with no id (`{base}`, `api_versions`): the kind tag covers it.
    Singleton,
    /// A list: tagged `c:<path after the base>`, so every page, filter and field set of it
    /// goes at once.
    Collection,
    /// One object, named by the template's last capture: tagged `i:<kind>:<id>`, with every
    /// query variant and sub-path (`resourceTypes/{typeId}/alarmDictionary`).
    Item,
}

/// One path of a profile and its defaults.
#[derive(Clone, Copy, Debug)]
pub struct ProfileRule {
    pub path: &'static str,
    pub ttl_secs: u64,
    pub kind: Kind,
    pub shape: Shape,
    /// Never shared across credentials (`share: never`).
    pub share_never: bool,
    /// Never written to a shared tier (`store: memory_only`).
    pub memory_only: bool,
    /// The roles that may read it (oran's OpenAPI `security` table), for `role_class`.
    pub roles: &'static [&'static str],
}

const READ: &[&str] = &["o2ims-admin", "o2ims-reader"];
const DEPLOY: &[&str] = &["o2ims-admin", "o2ims-deployer"];
const SUBSCRIBE: &[&str] = &["o2ims-admin", "o2ims-reader", "o2ims-subscriber"];
const ALARMS: &[&str] = &["o2ims-admin", "o2ims-reader", "o2ims-maintainer"];

const fn rule(path: &'static str, ttl_secs: u64, kind: Kind, shape: Shape) -> ProfileRule {
    ProfileRule {
        path,
        ttl_secs,
        kind,
        shape,
        share_never: false,
        memory_only: false,
        roles: READ,
    }
}

/// The `o2ims` profile (design §1.2). Lifetimes are short where objects change often
/// (resources, alarms) and long where they are near static (types, dictionaries). The
/// deployment managers carry cluster credentials (notes §0.3), so they are never shared
/// across credentials and never leave the memory tier.
pub const O2IMS: &[ProfileRule] = &[
    rule("{base}", 1800, Kind::Ocloud, Shape::Singleton),
    rule("{base}/api_versions", 1800, Kind::Ocloud, Shape::Singleton),
    rule(
        "/o2ims-infrastructureInventory/api_versions",
        1800,
        Kind::Ocloud,
        Shape::Singleton,
    ),
    rule("/o2ims/api_versions", 1800, Kind::Ocloud, Shape::Singleton),
    rule(
        "{base}/resourcePools",
        300,
        Kind::ResourcePools,
        Shape::Collection,
    ),
    rule(
        "{base}/resourcePools/{poolId}",
        300,
        Kind::ResourcePools,
        Shape::Item,
    ),
    rule(
        "{base}/resourcePools/{poolId}/resources",
        60,
        Kind::Resources,
        Shape::Collection,
    ),
    rule(
        "{base}/resourcePools/{poolId}/resources/{resourceId}",
        60,
        Kind::Resources,
        Shape::Item,
    ),
    rule("{base}/resources", 60, Kind::Resources, Shape::Collection),
    rule(
        "{base}/resources/{resourceId}",
        60,
        Kind::Resources,
        Shape::Item,
    ),
    rule(
        "{base}/resourceTypes",
        1800,
        Kind::ResourceTypes,
        Shape::Collection,
    ),
    rule(
        "{base}/resourceTypes/{typeId}",
        1800,
        Kind::ResourceTypes,
        Shape::Item,
    ),
    rule(
        "{base}/resourceTypes/{typeId}/alarmDictionary",
        1800,
        Kind::ResourceTypes,
        Shape::Item,
    ),
    rule(
        "{base}/alarmDictionaries",
        1800,
        Kind::AlarmDictionaries,
        Shape::Collection,
    ),
    rule(
        "{base}/alarmDictionaries/{alarmDictionaryId}",
        1800,
        Kind::AlarmDictionaries,
        Shape::Item,
    ),
    ProfileRule {
        share_never: true,
        memory_only: true,
        roles: DEPLOY,
        ..rule(
            "{base}/deploymentManagers",
            600,
            Kind::DeploymentManagers,
            Shape::Collection,
        )
    },
    ProfileRule {
        share_never: true,
        memory_only: true,
        roles: DEPLOY,
        ..rule(
            "{base}/deploymentManagers/{dmId}",
            600,
            Kind::DeploymentManagers,
            Shape::Item,
        )
    },
    rule("{base}/locations", 300, Kind::Locations, Shape::Collection),
    rule(
        "{base}/locations/{globalLocationId}",
        300,
        Kind::Locations,
        Shape::Item,
    ),
    rule(
        "{base}/oCloudSites",
        300,
        Kind::OCloudSites,
        Shape::Collection,
    ),
    rule(
        "{base}/oCloudSites/{oCloudSiteId}",
        300,
        Kind::OCloudSites,
        Shape::Item,
    ),
    ProfileRule {
        share_never: true,
        roles: SUBSCRIBE,
        ..rule(
            "{base}/subscriptions",
            30,
            Kind::Subscriptions,
            Shape::Collection,
        )
    },
    ProfileRule {
        share_never: true,
        roles: SUBSCRIBE,
        ..rule(
            "{base}/subscriptions/{subscriptionId}",
            30,
            Kind::Subscriptions,
            Shape::Item,
        )
    },
    ProfileRule {
        roles: ALARMS,
        ..rule(
            "/o2ims-infrastructureMonitoring/{version}/alarms",
            30,
            Kind::Alarms,
            Shape::Collection,
        )
    },
    ProfileRule {
        roles: ALARMS,
        ..rule(
            "/o2ims-infrastructureMonitoring/{version}/alarms/{alarmEventRecordId}",
            30,
            Kind::Alarms,
            Shape::Item,
        )
    },
    ProfileRule {
        share_never: true,
        roles: ALARMS,
        ..rule(
            "/o2ims-infrastructureMonitoring/{version}/alarmSubscriptions",
            30,
            Kind::AlarmSubscriptions,
            Shape::Collection,
        )
    },
    ProfileRule {
        share_never: true,
        roles: ALARMS,
        ..rule(
            "/o2ims-infrastructureMonitoring/{version}/alarmSubscriptions/{alarmSubscriptionId}",
            30,
            Kind::AlarmSubscriptions,
            Shape::Item,
        )
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::cache::template::Template;

    #[test]
    fn every_profile_template_compiles_and_items_capture_their_id() {
        for r in O2IMS {
            let t = Template::compile(r.path).unwrap_or_else(|e| panic!("{}: {e}", r.path));
            assert!(!t.is_empty());
            if r.shape == Shape::Item {
                assert!(r.path.contains("}/") || r.path.ends_with('}'), "{}", r.path);
            }
        }
    }

    #[test]
    fn tags_differ_by_store_and_by_text() {
        let a = tag("o2", TagName::Item(Kind::Resources, "R1"));
        assert_eq!(a, tag("o2", TagName::Item(Kind::Resources, "R1")));
        assert_ne!(a, tag("o3", TagName::Item(Kind::Resources, "R1")));
        assert_ne!(a, tag("o2", TagName::Item(Kind::Resources, "R2")));
        assert_ne!(a, tag("o2", TagName::Item(Kind::ResourcePools, "R1")));
        assert_ne!(
            tag("o2", TagName::Collection("resources")),
            tag("o2", TagName::Uri("resources"))
        );
    }

    #[test]
    fn the_text_shown_is_the_text_hashed() {
        use xxhash_rust::xxh3::xxh3_64;
        for t in [
            TagName::Ns,
            TagName::Family(Family::Monitoring),
            TagName::Kind(Kind::OCloudSites),
            TagName::Item(Kind::Resources, "R1"),
            TagName::Collection("resourcePools/P1/resources"),
            TagName::Uri("/a/b"),
        ] {
            assert_eq!(
                tag("o2", t).0,
                xxh3_64(format!("o2\0{t}").as_bytes()),
                "{t}"
            );
        }
    }
}
