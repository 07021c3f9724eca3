//! What the admin API does with the caches: stats, listings and purges, on this replica or on
//! all of them through the replica bus.

use serde::Deserialize;
use serde_json::{json, Value};

use super::bus::Ban;
use super::profile::{self, Family, Kind, TagName};
use super::store::{wall_ms, EvictReason, TagId};
use super::{stores, Shared};

/// The most entries one listing returns.
pub const MAX_LIMIT: usize = 10_000;
const DEFAULT_LIMIT: usize = 100;

/// An answer: the HTTP status and its JSON body.
pub type Reply = (u16, Value);

fn error(status: u16, message: impl Into<String>) -> Reply {
    (status, json!({ "error": message.into() }))
}

/// `GET /cache`: every store's counters and state.
pub fn overview() -> Reply {
    let now = wall_ms();
    let list: Vec<Value> = stores()
        .iter()
        .map(|s| {
            let st = s.store.stats();
            let lookups = st.hits + st.l2_hits + st.misses;
            let ratio = |n: u64| (lookups > 0).then(|| n as f64 / lookups as f64);
            let last = s.channel.last_notification_ms();
            json!({
                "store": &*s.name,
                "entries": st.entries,
                "bytes": st.bytes,
                "capacity": s.store.capacity(),
                "hits": st.hits,
                "l2_hits": st.l2_hits,
                "misses": st.misses,
                "hit_ratio": ratio(st.hits),
                "l2_hit_ratio": ratio(st.l2_hits),
                "redis_up": st.redis_up,
                "evictions": st.evictions.iter().map(|(r, n)| (r.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "degraded": s.channel.degraded(),
                "last_notification_age_ms": (last > 0).then(|| now.saturating_sub(last)),
                "bus": s.bus.get().map(|b| json!({ "healthy": b.healthy() })),
                "subscription": s.subscription.view(),
            })
        })
        .collect();
    (200, json!({ "stores": list }))
}

fn find(name: Option<&str>) -> Result<&'static Shared, Reply> {
    let all = stores();
    match name {
        Some(n) => all
            .into_iter()
            .find(|s| &*s.name == n)
            .ok_or_else(|| error(404, format!("no cache store named `{n}`"))),
        None if all.len() == 1 => Ok(all[0]),
        None if all.is_empty() => Err(error(404, "no cache store is configured")),
        None => Err(error(
            400,
            format!(
                "name the store (`store`): there are {}: {}",
                all.len(),
                all.iter().map(|s| &*s.name).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// `GET /cache/entries?store=&prefix=&limit=`: the entries in memory, oldest first.
pub fn entries(query: Option<&str>) -> Reply {
    let (mut store, mut prefix, mut limit) = (None, String::new(), DEFAULT_LIMIT);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = match percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8() {
            Ok(v) => v.into_owned(),
            Err(_) => return error(400, format!("`{k}` is not UTF-8 once decoded")),
        };
        match k {
            "store" => store = Some(v),
            "prefix" => prefix = v,
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => return error(400, format!("limit: a number from 1 to {MAX_LIMIT}")),
            },
            other => {
                return error(
                    400,
                    format!("unknown parameter `{other}`: store, prefix, limit"),
                )
            }
        }
    }
    let shared = match find(store.as_deref()) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let list = shared.store.entries(&prefix, limit, wall_ms());
    (
        200,
        json!({ "store": &*shared.name, "count": list.len(), "entries": list }),
    )
}

/// A tag as the admin names it: `ns`, `f:<family>`, `k:<kind>`, `i:<kind>:<id>`,
/// `c:<collection>`, `u:<path>`, or the number `GET /cache/entries` shows.
#[derive(Deserialize)]
#[serde(untagged)]
enum TagText {
    Id(u64),
    Text(String),
}

fn kind(text: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| k.as_str() == text)
}

fn parse_tag(store: &str, t: &TagText) -> Result<TagId, String> {
    let text = match t {
        TagText::Id(n) => return Ok(TagId(*n)),
        TagText::Text(s) => s.as_str(),
    };
    let name = match text.split_once(':') {
        None if text == "ns" => TagName::Ns,
        Some(("f", f)) => TagName::Family(
            [Family::Inventory, Family::Monitoring, Family::Generic]
                .into_iter()
                .find(|x| x.as_str() == f)
                .ok_or_else(|| format!("unknown family `{f}`"))?,
        ),
        Some(("k", k)) => TagName::Kind(kind(k).ok_or_else(|| format!("unknown kind `{k}`"))?),
        Some(("i", rest)) => {
            let (k, id) = rest
                .split_once(':')
                .ok_or("an item tag is i:<kind>:<id>")?;
            TagName::Item(kind(k).ok_or_else(|| format!("unknown kind `{k}`"))?, id)
        }
        Some(("c", c)) if !c.is_empty() => TagName::Collection(c),
        Some(("u", u)) if !u.is_empty() => TagName::Uri(u),
        _ => {
            return Err(format!(
                "`{text}` is not a tag: ns, f:<family>, k:<kind>, i:<kind>:<id>, c:<collection>, u:<path>, or a tag number"
            ))
        }
    };
    Ok(profile::tag(store, name))
}

/// The body of `POST /cache/purge`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    #[serde(default)]
    store: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    tag: Option<TagText>,
    #[serde(default)]
    all: Option<bool>,
    /// `local` or `all`; by default `all` when the store has a replica bus.
    #[serde(default)]
    replicas: Option<String>,
}

/// `POST /cache/purge` with `{"store", one of "key"|"prefix"|"tag"|"all": true, "replicas"}`.
pub fn purge(body: &[u8]) -> Reply {
    let p: Purge = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                400,
                format!(
                    "{e}: send {{\"store\": NAME, \"key\"|\"prefix\"|\"tag\": TEXT or \"all\": true, \"replicas\": \"local\"|\"all\"}}"
                ),
            )
        }
    };
    let shared = match find(p.store.as_deref()) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let what = [
        p.key.is_some(),
        p.prefix.is_some(),
        p.tag.is_some(),
        p.all == Some(true),
    ];
    if what.iter().filter(|x| **x).count() != 1 {
        return error(400, "name exactly one of key, prefix, tag, or all: true");
    }
    let bus = shared.bus.get();
    let everywhere = match p.replicas.as_deref() {
        None => bus.is_some(),
        Some("local") => false,
        Some("all") if bus.is_some() => true,
        Some("all") => {
            return error(
                409,
                format!(
                    "store `{}` has no replica bus (replicas: zookeeper): purge with \"replicas\": \"local\" on each replica",
                    shared.name
                ),
            )
        }
        Some(other) => return error(400, format!("replicas: `{other}` is not local or all")),
    };
    let now = wall_ms();
    let store = &shared.store;
    let why = EvictReason::Purge;
    let purged = if let Some(key) = &p.key {
        if everywhere {
            if let Some(b) = bus {
                b.publish_ban(Ban::Key(key), now);
            }
        }
        store.purge_target(key, now.saturating_add(1), why)
    } else if let Some(prefix) = &p.prefix {
        if everywhere {
            if let Some(b) = bus {
                b.publish_ban(Ban::Prefix(prefix), now);
            }
        }
        store.purge_prefix(prefix, now.saturating_add(1), why)
    } else if let Some(t) = &p.tag {
        let tag = match parse_tag(&shared.name, t) {
            Ok(t) => t,
            Err(e) => return error(400, e),
        };
        if everywhere {
            if let Some(b) = bus {
                b.publish(&[tag], now);
            }
        }
        store.purge_tags_at(&[tag], why, now)
    } else {
        if everywhere {
            if let Some(b) = bus {
                b.publish(&[profile::tag(&shared.name, TagName::Ns)], now);
            }
        }
        store.purge_all_at(why, now)
    };
    log::info!(
        "admin: purged {purged} entries of cache store {} ({})",
        shared.name,
        if everywhere {
            "all replicas"
        } else {
            "this replica"
        }
    );
    (
        200,
        json!({
            "store": &*shared.name,
            "purged": purged,
            "replicas": if everywhere { "all" } else { "local" },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_from_the_vocabulary_or_a_number() {
        let s = "o2";
        assert_eq!(
            parse_tag(s, &TagText::Text("c:resourcePools".into())),
            Ok(profile::tag(s, TagName::Collection("resourcePools")))
        );
        assert_eq!(
            parse_tag(s, &TagText::Text("i:resources:r1".into())),
            Ok(profile::tag(s, TagName::Item(Kind::Resources, "r1")))
        );
        assert_eq!(
            parse_tag(s, &TagText::Text("ns".into())),
            Ok(profile::tag(s, TagName::Ns))
        );
        assert_eq!(parse_tag(s, &TagText::Id(42)), Ok(TagId(42)));
        for bad in ["k:nope", "x:y", "c:", "i:resources", "nsx"] {
            assert!(parse_tag(s, &TagText::Text(bad.into())).is_err(), "{bad}");
        }
    }

    #[test]
    fn purge_bodies_are_checked_before_anything_is_done() {
        for (body, status) in [
            (&b"not json"[..], 400),
            (br#"{"store":"none-such-store","all":true}"#, 404),
            (br#"{"store":"x","bogus":1}"#, 400),
        ] {
            assert_eq!(purge(body).0, status, "{}", String::from_utf8_lossy(body));
        }
        assert_eq!(entries(Some("limit=0")).0, 400);
        assert_eq!(entries(Some("what=1")).0, 400);
    }
}
