//! What `zkgate explain` prints for a request on a cached route: the rule, the scope, the key
//! and the tags. Nothing secret is shown: the scope's kind and the token's state, never the
//! credential; the key's scope part is already an HMAC.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method};

use super::config::{CacheConfig, Profile};
use super::key::QueryKey;
use super::policy::{Share, HEURISTIC_CAP};
use super::scope::{bypass_without_auth, Scope, ScopeLabel};
use super::store::StoreClass;

/// One request to explain.
pub struct Request<'a> {
    pub method: &'a Method,
    pub host: &'a [u8],
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub now: SystemTime,
}

/// The lines `zkgate explain` adds for a cached route: `(label, text)`, in print order.
pub fn explain(cfg: &CacheConfig, req: &Request<'_>) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let profile = match cfg.profile {
        Profile::None => "none",
        Profile::O2ims => "o2ims",
    };
    out.push((
        "cache",
        format!("store {} profile {profile}", cfg.store.name),
    ));
    let Some(m) = cfg.rules.lookup(req.path) else {
        out.push(("cache", "bypass: no rule matches the path".into()));
        return out;
    };
    let rule = m.rule;
    if !m.caches() {
        out.push(("cache", format!("rule {} ttl 0: bypass", rule.template)));
        return out;
    }
    let mut line = format!("rule {}", rule.template);
    if m.meta.from_origin {
        let _ = write!(
            line,
            " ttl from the origin (else 10% of its Last-Modified age, at most {})",
            humantime::format_duration(HEURISTIC_CAP)
        );
    } else {
        let _ = write!(line, " ttl {}", dur(rule.ttl));
    }
    let _ = write!(
        line,
        " swr {} sie {}",
        dur(rule.stale_while_revalidate),
        dur(rule.stale_if_error)
    );
    if rule.share == Share::Never {
        line.push_str(" share never");
    }
    if rule.class == StoreClass::MemoryOnly {
        line.push_str(" memory_only");
    }
    let _ = write!(line, " kind {}", rule.kind.as_str());
    out.push(("cache", line));
    if let Err(why) = cfg.rules.on_request(req.method, req.headers) {
        out.push(("cache", format!("bypass: {}", why.as_str())));
        return out;
    }
    let scope = match &cfg.scope {
        Some(maker) => maker.scope(rule, req.headers, None, req.now),
        None if bypass_without_auth(req.headers, false) => {
            Scope::Bypass(super::status::BypassReason::Credentials)
        }
        None => Scope::Anonymous,
    };
    let tag = match scope {
        Scope::Anonymous => {
            out.push(("scope", "anonymous (shared by every caller)".into()));
            None
        }
        Scope::Bypass(why) => {
            out.push(("scope", format!("bypass: {}", why.as_str())));
            return out;
        }
        Scope::Keyed {
            tag,
            expires,
            label,
        } => {
            let (kind, verified) = match label {
                ScopeLabel::Credential => (
                    "per_credential".to_owned(),
                    "token verified: no, the credential is hashed",
                ),
                ScopeLabel::Claim => ("per_claim".to_owned(), "token verified: yes"),
                ScopeLabel::Roles => {
                    let roles: Vec<&str> = rule.roles.iter().map(|r| &**r).collect();
                    (
                        format!("role_class [{}]", roles.join(", ")),
                        "token verified: yes",
                    )
                }
            };
            let mut s = format!("{kind} ({verified}");
            if let Some(exp) = expires {
                let left = exp.duration_since(req.now).unwrap_or_default();
                let _ = write!(s, ", exp in {}", dur(left));
            }
            s.push(')');
            out.push(("scope", s));
            Some(tag)
        }
    };
    let mut buf = Vec::new();
    cfg.key
        .primary(req.host, req.path, req.query, tag.as_ref(), &mut buf);
    out.push(("key", hex(&buf)));
    if let QueryKey::Allow(allow) = cfg.key.query() {
        let names: Vec<&str> = allow.iter().map(|a| &**a).collect();
        let mut sent = String::new();
        let upstream = req
            .query
            .and_then(|q| cfg.key.upstream_query(q, &mut sent))
            .map_or_else(|| "as received".to_owned(), |q| format!("?{q}"));
        out.push((
            "query",
            format!("keyed: {} (upstream: {upstream})", names.join(", ")),
        ));
    }
    if !cfg.key.key_headers().is_empty() {
        let names: Vec<&str> = cfg.key.key_headers().iter().map(|h| h.as_str()).collect();
        out.push(("vary", format!("also keyed: {}", names.join(", "))));
    }
    let mut tags = Vec::new();
    cfg.rules
        .tag_names(&m, req.path, |t| tags.push(t.to_string()));
    out.push(("tags", tags.join(" ")));
    out
}

fn dur(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::cache::config::CacheSection;
    use crate::section::{At, ConfigErrors};

    fn cfg(yaml: &str) -> CacheConfig {
        let s: CacheSection = serde_yaml::from_str(yaml).unwrap();
        let mut e = ConfigErrors::default();
        s.build("o2", &At::root(), &mut e).unwrap()
    }

    fn lines(
        c: &CacheConfig,
        method: Method,
        target: &str,
        headers: &HeaderMap,
    ) -> Vec<(&'static str, String)> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        explain(
            c,
            &Request {
                method: &method,
                host: b"o2.example.com",
                path,
                query,
                headers,
                now: SystemTime::UNIX_EPOCH,
            },
        )
    }

    fn text(l: &[(&str, String)]) -> String {
        l.iter().map(|(a, b)| format!("{a}: {b}\n")).collect()
    }

    #[test]
    fn an_o2_list_shows_its_rule_key_and_tags() {
        let c =
            cfg("{ profile: o2ims, store: o2, stale_while_revalidate: 10s, stale_if_error: 5m }");
        let l = lines(
            &c,
            Method::GET,
            "/o2ims-infrastructureInventory/v2/resourcePools?filter=(eq,name,a)",
            &HeaderMap::new(),
        );
        let t = text(&l);
        assert!(
            t.contains(
                "cache: rule {base}/resourcePools ttl 5m swr 10s sie 5m kind resourcePools\n"
            ),
            "{t}"
        );
        assert!(t.contains("scope: anonymous"), "{t}");
        assert!(
            t.contains("tags: ns f:inventory k:resourcePools c:resourcePools u:/o2ims-infrastructureInventory/v2/resourcePools\n"),
            "{t}"
        );
        let key = &l.iter().find(|(k, _)| *k == "key").unwrap().1;
        let mut want = Vec::new();
        c.key.primary(
            b"o2.example.com",
            "/o2ims-infrastructureInventory/v2/resourcePools",
            Some("filter=(eq,name,a)"),
            None,
            &mut want,
        );
        assert_eq!(*key, hex(&want));
    }

    #[test]
    fn bypasses_say_why() {
        let c = cfg("{ profile: o2ims }");
        let mut auth = HeaderMap::new();
        auth.insert("authorization", "Bearer x".parse().unwrap());
        let t = text(&lines(&c, Method::GET, "/o2ims/v1/resources", &auth));
        assert!(t.contains("scope: bypass: credentials"), "{t}");
        assert!(!t.contains("key:"), "{t}");
        let t = text(&lines(
            &c,
            Method::POST,
            "/o2ims/v1/resources",
            &HeaderMap::new(),
        ));
        assert!(t.contains("cache: bypass: method"), "{t}");
        let t = text(&lines(&c, Method::GET, "/elsewhere", &HeaderMap::new()));
        assert!(t.contains("cache: bypass: no rule matches the path"), "{t}");
        let g =
            cfg("{ rules: [{ path: /a, ttl: 0 }], query: { allow: [x] }, key_headers: [accept] }");
        let t = text(&lines(&g, Method::GET, "/a", &HeaderMap::new()));
        assert!(t.contains("cache: rule /a ttl 0: bypass"), "{t}");
        let t = text(&lines(&g, Method::GET, "/b?x=1&y=2", &HeaderMap::new()));
        assert!(t.contains("rule /** ttl from the origin"), "{t}");
        assert!(t.contains("query: keyed: x (upstream: ?x=1)"), "{t}");
        assert!(t.contains("vary: also keyed: accept"), "{t}");
    }
}
