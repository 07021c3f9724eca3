//! Authenticated caching in front of the test O2 IMS server (oran dialect, real RS256 tokens and
//! per-path roles): a reader never gets an admin's cached deploymentManagers, per_claim keeps
//! principals apart while role_class shares a role, a bad or expired token is passed to the
//! origin (its 401 comes through) and never served, no entry outlives its token's `exp`, two
//! principals never coalesce into one origin call, and a route without `auth:` bypasses every
//! request with credentials. The fake's request counters are the truth: a hit never reaches it.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::o2ims::{Dialect, O2Ims, Opts};
use common::{request, Gateway, Response};

const SECURED: &str = "o2.local";
const PLAIN: &str = "plain.local";

struct Setup {
    fake: O2Ims,
    gw: Gateway,
}

fn start() -> Setup {
    let fake = O2Ims::start(Dialect::Oran, Opts::default());
    let yaml = format!(
        r#"
upstreams:
  - name: o2
    backends: ["{api}"]
routes:
  - name: o2ims
    match: {{ host: {SECURED}, path_prefix: / }}
    upstream: o2
    plugin:
      cache:
        profile: o2ims
        auth:
          scope: per_claim
          claim: sub
          roles_claim: groups
          jwt: {{ jwks_file: "{jwks}", issuer: o2ims-fake, algorithms: [RS256, ES256] }}
          hash_key: "0123456789abcdef0123456789abcdef"
        rules:
          - {{ path: "{{base}}/resourceTypes", ttl: 10m, scope: role_class, roles: [o2ims-admin, o2ims-reader] }}
  - name: plain
    match: {{ host: {PLAIN}, path_prefix: / }}
    upstream: o2
    plugin:
      cache:
        profile: o2ims
"#,
        api = fake.api,
        jwks = fake.jwks_path().display(),
    );
    let gw = Gateway::start(&yaml);
    Setup { fake, gw }
}

fn get(addr: SocketAddr, host: &str, path: &str, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("host", host)];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    request(addr, "GET", path, &headers, b"").expect("request through the gateway")
}

impl Setup {
    fn get(&self, path: &str, token: Option<&str>) -> Response {
        get(self.gw.http, SECURED, path, token)
    }

    fn path(&self, tail: &str) -> String {
        format!("{}{tail}", self.fake.base())
    }

    fn count(&self, path: &str) -> u64 {
        self.fake.count(path)
    }
}

/// The `exp` claim of a token the fake minted.
fn exp_of(token: &str) -> u64 {
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
            .expect("JSON claims");
    claims["exp"].as_u64().expect("exp")
}

/// Waits (polling, bounded) until the wall clock is past `exp`, where the fake refuses the token.
fn wait_past(exp: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        <= exp
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock did not pass exp"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_reader_never_gets_an_admins_deployment_managers() {
    let s = start();
    let admin = s.fake.token("root", &["o2ims-admin"], 300);
    let reader = s.fake.token("alice", &["o2ims-reader"], 300);
    let dms = s.path("/deploymentManagers");

    let r = s.get(&dms, Some(&admin));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("SECRET-"),
        "the admin sees the profile data"
    );
    // The admin's own token again: served from the cache (share: never keys by credential).
    let r = s.get(&dms, Some(&admin));
    assert_eq!(r.status, 200);
    assert_eq!(s.count(&dms), 1, "the admin's second read is a hit");

    for round in 1..=2 {
        let r = s.get(&dms, Some(&reader));
        assert_eq!(r.status, 403, "the origin's 403 is passed on: {}", r.text());
        assert!(!r.text().contains("SECRET-"));
        assert_eq!(
            s.count(&dms),
            1 + round,
            "every reader request reaches the origin"
        );
    }
    // Another admin principal with the same role does not get root's entry either.
    let admin2 = s.fake.token("ops", &["o2ims-admin"], 300);
    assert_eq!(s.get(&dms, Some(&admin2)).status, 200);
    assert_eq!(s.count(&dms), 4);
}

#[test]
fn per_claim_keeps_principals_apart_and_role_class_shares_a_role() {
    let s = start();
    let alice = s.fake.token("alice", &["o2ims-reader"], 300);
    let bob = s.fake.token("bob", &["o2ims-reader"], 300);
    let admin = s.fake.token("root", &["o2ims-admin"], 300);

    // per_claim (the route's scope): two principals, two origin calls; alice again is a hit,
    // also with another token of hers.
    let pools = s.path("/resourcePools");
    assert_eq!(s.get(&pools, Some(&alice)).status, 200);
    assert_eq!(s.get(&pools, Some(&bob)).status, 200);
    assert_eq!(s.count(&pools), 2);
    let alice2 = s.fake.token("alice", &["o2ims-reader"], 600);
    assert_eq!(s.get(&pools, Some(&alice2)).status, 200);
    assert_eq!(
        s.count(&pools),
        2,
        "alice's second token shares her entries"
    );

    // role_class on resourceTypes: alice fills, bob (same role) hits, the admin is another class.
    let types = s.path("/resourceTypes");
    let a = s.get(&types, Some(&alice));
    assert_eq!(a.status, 200);
    let b = s.get(&types, Some(&bob));
    assert_eq!(b.status, 200);
    assert_eq!(a.body, b.body);
    assert_eq!(s.count(&types), 1, "two readers share one entry");
    assert_eq!(s.get(&types, Some(&admin)).status, 200);
    assert_eq!(s.count(&types), 2, "an admin is another role class");
    // A token with none of the rule's roles bypasses: the origin answers (403) every time.
    let nobody = s.fake.token("eve", &["o2ims-subscriber"], 300);
    assert_eq!(s.get(&types, Some(&nobody)).status, 403);
    assert_eq!(s.get(&types, Some(&nobody)).status, 403);
    assert_eq!(s.count(&types), 4);
}

#[test]
fn bad_and_expired_tokens_reach_the_origin_and_are_never_served() {
    let s = start();
    let alice = s.fake.token("alice", &["o2ims-reader"], 300);
    let pools = s.path("/resourcePools");
    assert_eq!(s.get(&pools, Some(&alice)).status, 200);
    assert_eq!(s.count(&pools), 1);

    // A forged token naming alice, with her signature: not her entry, the origin's 401.
    let mut parts: Vec<String> = alice.split('.').map(str::to_owned).collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["groups"] = serde_json::json!(["o2ims-admin"]);
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    let forged = parts.join(".");
    // And one with a changed signature.
    let mut sig = alice.clone().into_bytes();
    let last = sig.len() - 2;
    sig[last] = if sig[last] == b'A' { b'B' } else { b'A' };
    let bad_sig = String::from_utf8(sig).unwrap();
    // And one that expired a minute ago (past the gateway's 30s leeway).
    let expired = s.fake.token("alice", &["o2ims-reader"], -60);
    let mut calls = 1;
    for token in [&forged, &bad_sig, &expired] {
        for _ in 0..2 {
            let r = s.get(&pools, Some(token));
            assert_eq!(
                r.status,
                401,
                "the origin's 401 comes through: {}",
                r.text()
            );
            calls += 1;
            assert_eq!(s.count(&pools), calls, "never served from the cache");
        }
    }
    // Not a token at all.
    let r = s.get(&pools, Some("not-a-jwt"));
    assert_eq!(r.status, 401);
    assert_eq!(s.count(&pools), calls + 1);
}

#[test]
fn no_entry_outlives_its_tokens_exp() {
    let s = start();
    let short = s.fake.token("alice", &["o2ims-reader"], 2);
    let long = s.fake.token("alice", &["o2ims-reader"], 600);
    let locations = s.path("/locations");
    assert_eq!(s.get(&locations, Some(&short)).status, 200);
    assert_eq!(s.get(&locations, Some(&short)).status, 200);
    assert_eq!(s.count(&locations), 1, "a hit while the token is valid");

    wait_past(exp_of(&short));
    // Within the gateway's leeway the token still verifies, but the entry ended at its exp:
    // the request goes to the origin, which refuses the expired token.
    let r = s.get(&locations, Some(&short));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(s.count(&locations), 2);
    // Alice's long-lived token does not find the entry of the expired one either.
    assert_eq!(s.get(&locations, Some(&long)).status, 200);
    assert_eq!(s.count(&locations), 3);
    assert_eq!(s.get(&locations, Some(&long)).status, 200);
    assert_eq!(s.count(&locations), 3, "the new entry is served");
}

#[test]
fn two_principals_never_coalesce_into_one_origin_call() {
    let s = start();
    let alice = s.fake.token("alice", &["o2ims-reader"], 300);
    let bob = s.fake.token("bob", &["o2ims-reader"], 300);
    let sites = s.path("/oCloudSites");
    s.fake
        .behave(serde_json::json!({"path_regex": "oCloudSites", "latency_ms": 400}));
    let addr = s.gw.http;
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let token = if i % 2 == 0 {
                alice.clone()
            } else {
                bob.clone()
            };
            let sites = sites.clone();
            thread::spawn(move || get(addr, SECURED, &sites, Some(&token)).status)
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    s.fake.behave(serde_json::json!({}));
    assert_eq!(s.count(&sites), 2, "one origin call per principal");
}

#[test]
fn without_auth_every_request_with_credentials_bypasses() {
    let s = start();
    let alice = s.fake.token("alice", &["o2ims-reader"], 300);
    let pools = s.path("/resourcePools");
    for n in 1..=3 {
        let r = get(s.gw.http, PLAIN, &pools, Some(&alice));
        assert_eq!(r.status, 200);
        assert_eq!(
            s.count(&pools),
            n,
            "a request with Authorization is never a hit"
        );
    }
    let r = request(
        s.gw.http,
        "GET",
        &pools,
        &[("host", PLAIN), ("cookie", "session=1")],
        b"",
    )
    .unwrap();
    // The fake wants a token: its 401 comes through, and is not stored either.
    assert_eq!(r.status, 401);
    assert_eq!(s.count(&pools), 4);
}
