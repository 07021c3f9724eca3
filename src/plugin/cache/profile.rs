//! The `o2ims` profile: the O2 IMS paths, their default lifetimes and marks, their resource
//! kinds, and the tag vocabulary that both the cache (when storing) and the notifications
//! (when evicting) speak.
//!
//! CONTRACT (issue 14): owned by T2. `Kind`, `Family`, `TagName` and `tag` are the shared
//! vocabulary (T5 calls them); they are complete here and T2 may only add to them.

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
