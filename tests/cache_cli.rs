//! `zkgate check` and `zkgate explain` on cache configs, as an operator runs them: the shipped
//! `conf/o2ims.yaml` checks ok; a bad cache section is refused with every error located by its
//! YAML path; `explain` of a request carrying a bearer token shows the rule, lifetime, scope
//! label, key and tags, and never the token (nor the principal it names).
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::o2ims::{Dialect, O2Ims, Opts};
use common::{bin, check_with_stdout as check};

const O2IMS_YAML: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/o2ims.yaml");

/// Runs the binary with `args`: its exit code, stdout and stderr.
fn zkgate(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin()).args(args).output().expect("zkgate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_passes_the_shipped_o2ims_config_and_locates_a_bad_cache_section() {
    let (code, out, err) = check(Path::new(O2IMS_YAML));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("o2ims.yaml: ok (1 listener(s), 1 upstream(s), 1 route(s))"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        r#"
listeners: [{ name: web, listen: "127.0.0.1:1" }]
upstreams: [{ name: o2, backends: ["127.0.0.1:1"] }]
routes:
  - name: health
    respond: { body: ok }
    match: { path: /healthz }
  - name: o2ims
    upstream: o2
    plugin:
      cache:
        profile: o2ims
        statuses: [200, 401]
        rules:
          - { path: "{base}/resourcePools", ttl: 1m }
          - { path: "{base}/resourcePools/{poolId", ttl: 1m }
          - { path: "{base}/deploymentManagers", ttl: 1m, store: memory_only, scope: role_class }
"#,
    )
    .unwrap();
    let (code, out, err) = check(&bad);
    assert_eq!(code, Some(1), "{out}{err}");
    for path in [
        "routes[1].plugin.cache.statuses[1]: ",
        "routes[1].plugin.cache.rules[1].path: ",
        "routes[1].plugin.cache.rules[2]",
    ] {
        assert!(err.contains(path), "no error at {path} in:\n{err}");
    }
    assert!(!err.contains("statuses[0]"), "{err}");
    assert!(!err.contains("rules[0]"), "{err}");
    assert!(err.contains("bad.yaml: "), "{err}");
    assert!(!out.contains("ok ("), "{out}");

    // Fixed, it passes.
    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace("[200, 401]", "[200]")
        .replace("{poolId\"", "{poolId}\"")
        .replace(", store: memory_only, scope: role_class", "");
    std::fs::write(&bad, text).unwrap();
    let (code, out, err) = check(&bad);
    assert_eq!(code, Some(0), "{out}{err}");
}

#[test]
fn explain_shows_rule_scope_key_and_tags_and_never_the_token() {
    let fake = O2Ims::start(Dialect::Oran, Opts::default());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zkgate.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
listeners: [{{ name: web, listen: "127.0.0.1:1" }}]
upstreams: [{{ name: o2, backends: ["127.0.0.1:1"] }}]
routes:
  - name: o2ims
    upstream: o2
    plugin:
      cache:
        profile: o2ims
        store: o2
        auth:
          scope: per_claim
          claim: sub
          roles_claim: groups
          jwt: {{ jwks_file: "{}", issuer: o2ims-fake }}
        rules:
          - {{ path: "{{base}}/resourcePools/{{poolId}}", ttl: 42s }}
          - {{ path: "{{base}}/resourceTypes", ttl: 5m, scope: role_class, roles: [o2ims-admin] }}
"#,
            fake.jwks_path().display()
        ),
    )
    .unwrap();
    let principal = "principal-7f3e9b1d";
    let token = fake.token(principal, &["o2ims-reader"], 600);
    let base = Dialect::Oran.base();
    let explain = |target: &str, token: &str| {
        zkgate(&[
            "explain",
            "-c",
            config.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {token}"),
            "GET",
            &format!("http://127.0.0.1:1{target}"),
        ])
    };

    let (code, out, err) = explain(&format!("{base}/resourcePools/P1?fields=name"), &token);
    assert_eq!(code, Some(0), "{out}{err}");
    let line = |label: &str| {
        out.lines()
            .filter(|l| l.starts_with(&format!("{label}:")))
            .map(|l| l[label.len() + 1..].trim().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        line("cache").contains(&"store o2 profile o2ims".to_owned()),
        "{out}"
    );
    let rule = line("cache")
        .into_iter()
        .find(|l| l.starts_with("rule "))
        .unwrap_or_else(|| panic!("no rule line in:\n{out}"));
    assert!(
        rule.starts_with("rule {base}/resourcePools/{poolId} ttl 42s"),
        "{rule}"
    );
    assert!(rule.contains("kind resourcePools"), "{rule}");
    let scope = line("scope");
    assert_eq!(scope.len(), 1, "{out}");
    assert!(
        scope[0].starts_with("per_claim (token verified: yes, exp in "),
        "{out}"
    );
    let key = line("key");
    assert_eq!(key.len(), 1, "{out}");
    assert!(
        key[0].len() >= 32 && key[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "{out}"
    );
    let tags = line("tags");
    assert_eq!(tags.len(), 1, "{out}");
    assert!(
        tags[0].contains("P1"),
        "the item's tag names the pool: {out}"
    );

    // Nothing of the credential: not the token, none of its three parts, not the principal
    // it names (the key's scope part is an HMAC).
    let all = format!("{out}{err}");
    assert!(!all.contains(&token));
    for part in token.split('.') {
        assert!(
            !all.contains(part),
            "a part of the token is printed:\n{all}"
        );
    }
    assert!(!all.contains(principal), "the principal is printed:\n{all}");

    // The profile's marks on deployment managers, and a role_class rule the token's roles do
    // not reach: bypass, the origin decides.
    let (code, out, err) = explain(&format!("{base}/deploymentManagers"), &token);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(" share never memory_only "), "{out}");
    assert!(out.contains("scope:     per_credential"), "{out}");
    let (code, out, err) = explain(&format!("{base}/resourceTypes"), &token);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("scope:     bypass"), "{out}");
    assert!(!out.contains("key:"), "{out}");
    let admin = fake.token(principal, &["o2ims-admin"], 600);
    let (_, out, _) = explain(&format!("{base}/resourceTypes"), &admin);
    assert!(out.contains("scope:     role_class [o2ims-admin]"), "{out}");
    for part in admin.split('.') {
        assert!(
            !out.contains(part),
            "a part of the token is printed:\n{out}"
        );
    }

    // Another principal: another key, and a bad token says bypass, not which token.
    let (_, other, _) = explain(
        &format!("{base}/resourcePools/P1?fields=name"),
        &fake.token("someone-else", &["o2ims-reader"], 600),
    );
    assert!(other.contains("key:"), "{other}");
    assert!(
        !other.contains(&key[0]),
        "two principals share a key:\n{other}"
    );
    let forged = format!(
        "{}.{}.AAAA",
        token.split('.').next().unwrap(),
        token.split('.').nth(1).unwrap()
    );
    let (code, out, err) = explain(&format!("{base}/resourcePools/P1"), &forged);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("scope:     bypass"), "{out}");
    assert!(!format!("{out}{err}").contains(token.split('.').nth(1).unwrap()));
}
