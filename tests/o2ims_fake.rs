//! The test O2 IMS server checked against the OpenAPI behaviour it stands for, in each dialect:
//! every GET path and its shape, filter/fields/all_fields and pages, 401/403 per role,
//! subscriptions (validation, reachability, duplicates), notifications in each dialect's exact
//! shape with its retry schedule, the control port's faults and counters. The cache tests trust
//! this server; these tests are why they may.

mod common;

use common::o2ims::{Dialect, Headers, O2Ims, Opts, Receiver};
use common::{eventually, free_port};
use serde_json::{json, Value};
use std::time::Duration;

fn fake(d: Dialect) -> O2Ims {
    O2Ims::start(d, Opts::default())
}

fn admin(f: &O2Ims) -> String {
    f.token("admin", &["o2ims-admin"], 300)
}

/// The `id_field` of every element of a JSON array body.
fn ids_of(v: &Value, id_field: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|o| {
            o[id_field]
                .as_str()
                .unwrap_or_else(|| panic!("no {id_field} in {o}"))
                .to_owned()
        })
        .collect()
}

/// Unpadded base64url, as in a JWT.
fn base64_url(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// What one GET must answer.
enum Shape<'a> {
    /// A JSON array whose elements carry `id_field`, exactly `ids` in order.
    List(&'a str, Vec<String>),
    /// A JSON object whose `field` is `value`.
    Item(&'a str, String),
    /// netweave's {"<key>": [...], "total": n}.
    Wrapped(&'a str, &'a str, usize),
}

fn check_get(f: &O2Ims, token: &str, path: &str, shape: Shape<'_>) {
    let r = f.get(path, Some(token));
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
    let v = r.json();
    let generation = f.generation();
    match shape {
        Shape::List(id_field, ids) => {
            assert_eq!(ids_of(&v, id_field), ids, "{path}");
            for o in v.as_array().into_iter().flatten() {
                assert_eq!(o["_generation"], json!(generation), "{path}: {o}");
            }
        }
        Shape::Item(field, value) => {
            assert_eq!(v[field], json!(value), "{path}: {v}");
            assert_eq!(v["_generation"], json!(generation), "{path}: {v}");
        }
        Shape::Wrapped(key, id_field, total) => {
            assert_eq!(v["total"], json!(total), "{path}: {v}");
            let shown = ids_of(&v[key], id_field).len();
            assert_eq!(shown, total.min(20), "{path}: {v}");
            assert_eq!(v["_generation"], json!(generation), "{path}: {v}");
        }
    }
    match f.dialect {
        Dialect::Netweave => assert_eq!(r.header("cache-control"), Some("no-store"), "{path}"),
        _ => assert_eq!(r.header("cache-control"), None, "{path}"),
    }
    assert_eq!(r.header("etag"), None, "{path}");
}

#[test]
fn oran_every_get_path_has_its_shape() {
    let f = fake(Dialect::Oran);
    let t = admin(&f);
    let b = f.base();
    let (pools, res, types, dms) = (
        f.ids("resourcePool"),
        f.ids("resource"),
        f.ids("resourceType"),
        f.ids("deploymentManager"),
    );
    let (dicts, locs, sites, alarms) = (
        f.ids("alarmDictionary"),
        f.ids("location"),
        f.ids("oCloudSite"),
        f.ids("alarm"),
    );
    assert_eq!(
        (
            pools.len(),
            res.len(),
            types.len(),
            dms.len(),
            locs.len(),
            sites.len()
        ),
        (3, 40, 4, 2, 2, 2)
    );
    assert!(pools.iter().chain(&res).chain(&dms).all(|i| is_uuid(i)));
    let cases: Vec<(String, Shape)> = vec![
        (
            "/o2ims-infrastructureInventory/api_versions".into(),
            Shape::Item("uriPrefix", "/o2ims-infrastructureInventory".into()),
        ),
        (
            b.into(),
            Shape::Item("oCloudId", f.ids("ocloud")[0].clone()),
        ),
        (
            format!("{b}/api_versions"),
            Shape::Item("uriPrefix", b.into()),
        ),
        (
            format!("{b}/deploymentManagers"),
            Shape::List("deploymentManagerId", dms.clone()),
        ),
        (
            format!("{b}/deploymentManagers/{}", dms[1]),
            Shape::Item("deploymentManagerId", dms[1].clone()),
        ),
        (
            format!("{b}/subscriptions"),
            Shape::List("subscriptionId", vec![]),
        ),
        (
            format!("{b}/resourceTypes"),
            Shape::List("resourceTypeId", types.clone()),
        ),
        (
            format!("{b}/resourceTypes/{}", types[2]),
            Shape::Item("resourceTypeId", types[2].clone()),
        ),
        (
            format!("{b}/resourceTypes/{}/alarmDictionary", types[2]),
            Shape::Item("alarmDictionaryId", dicts[2].clone()),
        ),
        (
            format!("{b}/resourcePools"),
            Shape::List("resourcePoolId", pools.clone()),
        ),
        (
            format!("{b}/resourcePools/{}", pools[1]),
            Shape::Item("resourcePoolId", pools[1].clone()),
        ),
        (
            format!("{b}/resourcePools/{}/resources", pools[0]),
            Shape::List("resourceId", res[..32].to_vec()),
        ),
        (
            format!("{b}/resourcePools/{}/resources", pools[1]),
            Shape::List(
                "resourceId",
                vec![
                    res[32].clone(),
                    res[34].clone(),
                    res[36].clone(),
                    res[38].clone(),
                ],
            ),
        ),
        (
            format!("{b}/resourcePools/{}/resources/{}", pools[0], res[5]),
            Shape::Item("resourceId", res[5].clone()),
        ),
        (
            format!("{b}/alarmDictionaries"),
            Shape::List("alarmDictionaryId", dicts.clone()),
        ),
        (
            format!("{b}/alarmDictionaries/{}", dicts[0]),
            Shape::Item("alarmDictionaryId", dicts[0].clone()),
        ),
        (
            format!("{b}/locations"),
            Shape::List("globalLocationId", locs.clone()),
        ),
        (
            format!("{b}/locations/{}", locs[1]),
            Shape::Item("globalLocationId", locs[1].clone()),
        ),
        (
            format!("{b}/oCloudSites"),
            Shape::List("oCloudSiteId", sites.clone()),
        ),
        (
            format!("{b}/oCloudSites/{}", sites[0]),
            Shape::Item("oCloudSiteId", sites[0].clone()),
        ),
        // A trailing slash is stripped (TrailingSlashStripper).
        (
            format!("{b}/resourcePools/"),
            Shape::List("resourcePoolId", pools.clone()),
        ),
        (
            "/o2ims-infrastructureCluster/v1/clusterResources".into(),
            Shape::List("clusterResourceId", f.ids("clusterResource")),
        ),
        (
            format!(
                "/o2ims-infrastructureCluster/v1/clusterResources/{}",
                f.ids("clusterResource")[1]
            ),
            Shape::Item("clusterResourceId", f.ids("clusterResource")[1].clone()),
        ),
        (
            "/o2ims-infrastructureMonitoring/api_versions".into(),
            Shape::Item("uriPrefix", "/o2ims-infrastructureMonitoring".into()),
        ),
        (
            "/o2ims-infrastructureMonitoring/v1/api_versions".into(),
            Shape::Item("uriPrefix", "/o2ims-infrastructureMonitoring/v1".into()),
        ),
        (
            "/o2ims-infrastructureMonitoring/v1/alarms".into(),
            Shape::List("alarmEventRecordId", alarms.clone()),
        ),
        (
            format!("/o2ims-infrastructureMonitoring/v1/alarms/{}", alarms[3]),
            Shape::Item("alarmEventRecordId", alarms[3].clone()),
        ),
        (
            "/o2ims-infrastructureMonitoring/v1/alarmSubscriptions".into(),
            Shape::List("alarmSubscriptionId", vec![]),
        ),
    ];
    for (path, shape) in cases {
        check_get(&f, &t, &path, shape);
    }
    let conf = f.get(
        "/o2ims-infrastructureMonitoring/v1/alarmServiceConfiguration",
        Some(&t),
    );
    assert_eq!(conf.json()["retentionPeriod"], json!(14));

    // The v2 models: a pool names its site, not a location; a site lists its pools; a
    // location lists its sites.
    let pool = f
        .get(&format!("{b}/resourcePools/{}", pools[0]), Some(&t))
        .json();
    assert_eq!(pool["oCloudSiteId"], json!(sites[0]));
    assert!(pool.get("globalLocationId").is_none(), "{pool}");
    let site = f
        .get(&format!("{b}/oCloudSites/{}", sites[0]), Some(&t))
        .json();
    assert_eq!(site["resourcePools"], json!([pools[0], pools[1]]));
    assert_eq!(site["globalLocationId"], json!(locs[0]));

    // Every deployment manager carries its own secret marker.
    let markers: Vec<String> = dms
        .iter()
        .map(|d| {
            let v = f
                .get(&format!("{b}/deploymentManagers/{d}"), Some(&t))
                .json();
            v["extensions"]["profileData"]["admin_client_key"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        markers
            .iter()
            .all(|m| m.starts_with("SECRET-") && is_uuid(&m[7..])),
        "{markers:?}"
    );
    assert_ne!(markers[0], markers[1]);
    let list = f.get(&format!("{b}/deploymentManagers"), Some(&t)).text();
    assert!(markers.iter().all(|m| list.contains(m.as_str())));

    // Unknown ids and paths: ProblemDetails with the id named.
    let r = f.get(&format!("{b}/resourcePools/nope"), Some(&t));
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["status"], json!(404));
    assert_eq!(
        r.json()["additionalAttributes"]["resourcePoolId"],
        json!("nope")
    );
    assert_eq!(
        f.get(&format!("{b}/resourcePools/nope/resources"), Some(&t))
            .status,
        404
    );
    assert_eq!(f.get(&format!("{b}/nothing"), Some(&t)).status, 404);
    assert_eq!(
        f.api_request("PUT", &format!("{b}/resourcePools"), Some(&t), b"{}")
            .status,
        405
    );
}

#[test]
fn pti_and_netweave_every_get_path_has_its_shape() {
    let f = fake(Dialect::Pti);
    let t = f.token("anyone", &[], 300);
    let b = f.base();
    let (pools, res, types, dms) = (
        f.ids("resourcePool"),
        f.ids("resource"),
        f.ids("resourceType"),
        f.ids("deploymentManager"),
    );
    let cases: Vec<(String, Shape)> = vec![
        (
            "/o2ims-infrastructureInventory/api_versions".into(),
            Shape::Item("uriPrefix", "/o2ims-infrastructureInventory".into()),
        ),
        (
            b.into(),
            Shape::Item("oCloudId", f.ids("ocloud")[0].clone()),
        ),
        (
            format!("{b}/"),
            Shape::Item("oCloudId", f.ids("ocloud")[0].clone()),
        ),
        (
            format!("{b}/api_versions"),
            Shape::Item("uriPrefix", b.into()),
        ),
        (
            format!("{b}/deploymentManagers"),
            Shape::List("deploymentManagerId", dms.clone()),
        ),
        (
            format!("{b}/deploymentManagers/{}", dms[0]),
            Shape::Item("deploymentManagerId", dms[0].clone()),
        ),
        (
            format!("{b}/subscriptions"),
            Shape::List("subscriptionId", vec![]),
        ),
        (
            format!("{b}/resourceTypes"),
            Shape::List("resourceTypeId", types.clone()),
        ),
        (
            format!("{b}/resourceTypes/{}", types[1]),
            Shape::Item("resourceTypeId", types[1].clone()),
        ),
        (
            format!("{b}/resourcePools"),
            Shape::List("resourcePoolId", pools.clone()),
        ),
        (
            format!("{b}/resourcePools/{}", pools[2]),
            Shape::Item("resourcePoolId", pools[2].clone()),
        ),
        (
            format!("{b}/resourcePools/{}/resources", pools[0]),
            Shape::List("resourceId", res[..30].to_vec()),
        ),
        (
            format!("{b}/resourcePools/{}/resources/{}", pools[0], res[0]),
            Shape::Item("resourceId", res[0].clone()),
        ),
    ];
    for (path, shape) in cases {
        check_get(&f, &t, &path, shape);
    }
    // v1 models: a pool has a location and no site; a type embeds its alarm dictionary.
    let pool = f
        .get(
            &format!("{b}/resourcePools/{}?all_fields", pools[0]),
            Some(&t),
        )
        .json();
    assert!(pool.get("globalLocationId").is_some() && pool.get("oCloudSiteId").is_none());
    let rt = f
        .get(&format!("{b}/resourceTypes/{}", types[0]), Some(&t))
        .json();
    assert!(
        rt["alarmDictionary"]["alarmDictionaryId"].is_string(),
        "{rt}"
    );
    // v2-only paths do not exist in v1.
    assert_eq!(f.get(&format!("{b}/locations"), Some(&t)).status, 404);
    let dm = f
        .get(&format!("{b}/deploymentManagers/{}", dms[0]), Some(&t))
        .json();
    assert!(dm["extensions"]["profileData"]["admin_client_key"]
        .as_str()
        .is_some_and(|k| k.starts_with("SECRET-")));
    let r = f.get(&format!("{b}/resourcePools/nope"), Some(&t));
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let p = r.json();
    assert_eq!(
        (
            p["status"].clone(),
            p["title"].clone(),
            p["instance"].clone()
        ),
        (json!(404), json!("Not Found"), json!([]))
    );
    assert_eq!(p["type"], json!(format!("{b}/resourcePools/nope")));

    let f = fake(Dialect::Netweave);
    let t = f.token("anyone", &[], 300);
    let b = f.base();
    let (pools, res, types, dms) = (
        f.ids("resourcePool"),
        f.ids("resource"),
        f.ids("resourceType"),
        f.ids("deploymentManager"),
    );
    assert_eq!(
        (pools[0].as_str(), res[0].as_str(), dms[1].as_str()),
        ("pool-1", "node-01", "dm-2")
    );
    let cases: Vec<(String, Shape)> = vec![
        (
            format!("{b}/subscriptions"),
            Shape::Wrapped("subscriptions", "subscriptionId", 0),
        ),
        (
            format!("{b}/resourcePools"),
            Shape::Wrapped("resourcePools", "resourcePoolId", 3),
        ),
        (
            format!("{b}/resourcePools/{}", pools[0]),
            Shape::Item("resourcePoolId", pools[0].clone()),
        ),
        (
            format!("{b}/resourcePools/{}/resources", pools[0]),
            Shape::Wrapped("resources", "resourceId", 32),
        ),
        (
            format!("{b}/resources"),
            Shape::Wrapped("resources", "resourceId", 40),
        ),
        (
            format!("{b}/resources?resourcePoolId={}", pools[2]),
            Shape::Wrapped("resources", "resourceId", 4),
        ),
        (
            format!("{b}/resources/{}", res[39]),
            Shape::Item("resourceId", res[39].clone()),
        ),
        (
            format!("{b}/resourceTypes"),
            Shape::Wrapped("resourceTypes", "resourceTypeId", 4),
        ),
        (
            format!("{b}/resourceTypes/{}", types[3]),
            Shape::Item("resourceTypeId", types[3].clone()),
        ),
        (
            format!("{b}/deploymentManagers"),
            Shape::Wrapped("deploymentManagers", "deploymentManagerId", 2),
        ),
        (
            format!("{b}/deploymentManagers/{}", dms[1]),
            Shape::Item("deploymentManagerId", dms[1].clone()),
        ),
        (
            format!("{b}/oCloudInfrastructure"),
            Shape::Item("oCloudId", f.ids("ocloud")[0].clone()),
        ),
    ];
    for (path, shape) in cases {
        check_get(&f, &t, &path, shape);
    }
    let page = f
        .get(&format!("{b}/resources?offset=35&limit=10"), Some(&t))
        .json();
    assert_eq!(ids_of(&page["resources"], "resourceId"), res[35..].to_vec());
    assert_eq!(page["total"], json!(40));
    assert_eq!(
        f.get(&format!("{b}/resources?limit=101"), Some(&t)).status,
        400
    );
    let r = f.get(&format!("{b}/resources/nope"), Some(&t));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], json!("NotFound"));
    assert_eq!(r.json()["code"], json!(404));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // No trailing-slash stripping here.
    assert_eq!(f.get(&format!("{b}/resourcePools/"), Some(&t)).status, 404);
}

#[test]
fn oran_filter_fields_and_all_fields() {
    let f = fake(Dialect::Oran);
    let t = admin(&f);
    let b = f.base();
    let pools = f.ids("resourcePool");
    let res = f.ids("resource");
    let get = |q: &str| f.get(&format!("{b}/resourcePools{q}"), Some(&t));
    let names = |q: &str| {
        let r = get(q);
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names("?filter=(eq,name,pool-2)"), ["pool-2"]);
    assert_eq!(names("?filter=(neq,name,pool-2)"), ["pool-1", "pool-3"]);
    assert_eq!(
        names("?filter=(in,name,pool-1,pool-3)"),
        ["pool-1", "pool-3"]
    );
    assert_eq!(names("?filter=(nin,name,pool-1,pool-3)"), ["pool-2"]);
    assert_eq!(names("?filter=(cont,description,ol%203)"), ["pool-3"]);
    assert_eq!(names("?filter=(ncont,name,2)"), ["pool-1", "pool-3"]);
    // Sub-field paths, AND of criteria, quoted values with commas and spaces.
    assert_eq!(names("?filter=(eq,extensions/tier,silver)"), ["pool-2"]);
    assert_eq!(
        names(
            "?filter=(eq,oCloudSiteId,{})"
                .replace("{}", &f.ids("oCloudSite")[0])
                .as_str()
        ),
        ["pool-1", "pool-2"]
    );
    assert_eq!(
        names(&format!(
            "?filter=(eq,oCloudSiteId,{});(neq,name,pool-1)",
            f.ids("oCloudSite")[0]
        )),
        ["pool-2"]
    );
    assert_eq!(names("?filter=(eq,description,'pool%202')"), ["pool-2"]);
    assert_eq!(
        names("?filter=(eq,description,'pool,%202')"),
        Vec::<String>::new()
    );
    // Comparisons are numeric when both sides are numbers.
    let sev = |q: &str| {
        let r = f.get(
            &format!("/o2ims-infrastructureMonitoring/v1/alarms{q}"),
            Some(&t),
        );
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["perceivedSeverity"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(sev("?filter=(gte,perceivedSeverity,3)"), [3, 4]);
    assert_eq!(sev("?filter=(lt,perceivedSeverity,1)"), [0]);
    // Malformed filters and unknown fields are 400 ProblemDetails.
    for bad in [
        "?filter=(eq,name)",
        "?filter=eq,name,x",
        "?filter=(like,name,x)",
        "?filter=(eq,name,a,b)",
        "?filter=(eq,nope,x)",
        "?fields=nope",
        "?exclude_fields=nope",
    ] {
        let r = get(bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{bad}"
        );
    }
    // fields keeps the named subtrees; exclude_fields drops them; `_generation` stays.
    let v = get("?fields=name,extensions/tier").json();
    assert_eq!(
        v[0].as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["_generation", "extensions", "name"]
    );
    let v = get("?exclude_fields=extensions,description").json();
    assert!(v[0].get("extensions").is_none() && v[0].get("description").is_none());
    assert_eq!(v[0]["resourcePoolId"], json!(pools[0]));
    let v = get("?fields=name,extensions&exclude_fields=extensions").json();
    assert_eq!(
        v[0].as_object().unwrap().len(),
        2,
        "exclusion wins: {}",
        v[0]
    );
    // all_fields parses like strconv.ParseBool: a valueless or bad value is ignored, and with
    // no default exclusions every form answers the full objects.
    let full = get("").json();
    for q in [
        "?all_fields",
        "?all_fields=",
        "?all_fields=true",
        "?all_fields=bogus",
    ] {
        let v = get(q);
        assert_eq!(v.status, 200, "{q}");
        assert_eq!(v.json(), full, "{q}");
    }
    // Resources of a pool filter too.
    let r = f.get(
        &format!(
            "{b}/resourcePools/{}/resources?filter=(eq,tags,rack-0)",
            pools[0]
        ),
        Some(&t),
    );
    let got = ids_of(&r.json(), "resourceId");
    let want: Vec<String> = res[..32].iter().step_by(5).cloned().collect();
    assert_eq!(got, want);
}

#[test]
fn pti_field_mask_and_pages() {
    let f = fake(Dialect::Pti);
    let t = f.token("anyone", &[], 300);
    let b = f.base();
    let pools = f.ids("resourcePool");
    let res = f.ids("resource");
    let pool = |q: &str| f.get(&format!("{b}/resourcePools/{}{q}", pools[0]), Some(&t));
    // The default mask hides extensions; all_fields with any value (or none) shows them.
    assert!(pool("").json().get("extensions").is_none());
    for q in ["?all_fields", "?all_fields=", "?all_fields=false"] {
        assert_eq!(pool(q).json()["extensions"]["tier"], json!("gold"), "{q}");
    }
    // fields adds to the defaults; exclude_fields takes from them; exclude_default leaves ids.
    let v = pool("?fields=extensions").json();
    assert!(v["extensions"].is_object() && v["name"].is_string(), "{v}");
    let v = pool("?exclude_fields=name").json();
    assert!(
        v.get("name").is_none() && v.get("extensions").is_none() && v["description"].is_string()
    );
    let v = pool("?exclude_default=true").json();
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["_generation", "resourcePoolId"]);

    // Pages of 30, 1-based, with X-Total-Count and Link; past the last page is 400.
    let list = |q: &str| {
        f.get(
            &format!("{b}/resourcePools/{}/resources{q}", pools[0]),
            Some(&t),
        )
    };
    let p1 = list("");
    assert_eq!(p1.header("x-total-count"), Some("32"));
    let base = format!("{b}/resourcePools/{}/resources", pools[0]);
    assert_eq!(
        p1.header("link"),
        Some(format!("<{base}?nextpage_opaque_marker=2>; rel=\"next\",<{base}?nextpage_opaque_marker=2>; rel=\"last\"").as_str())
    );
    let p2 = list("?filter=(neq,description,x)&nextpage_opaque_marker=2");
    assert_eq!(p2.status, 200, "{}", p2.text());
    assert_eq!(ids_of(&p2.json(), "resourceId"), res[30..32].to_vec());
    assert_eq!(
        p2.header("link"),
        Some(format!("<{base}?filter=(neq,description,x)&nextpage_opaque_marker=1>; rel=\"first\",<{base}?filter=(neq,description,x)&nextpage_opaque_marker=1>; rel=\"prev\"").as_str())
    );
    let p3 = list("?nextpage_opaque_marker=3");
    assert_eq!(p3.status, 400, "{}", p3.text());
    assert_eq!(p3.header("content-type"), Some("application/json"));
    assert_eq!(list("?nextpage_opaque_marker=x").status, 400);
    // A short list: one page, a total, no Link.
    let r = f.get(
        &format!("{b}/resourcePools/{}/resources", pools[1]),
        Some(&t),
    );
    assert_eq!(r.header("x-total-count"), Some("4"));
    assert_eq!(r.header("link"), None);
    // A filter on an unknown attribute is 400.
    assert_eq!(
        f.get(&format!("{b}/resourcePools?filter=(eq,bogus,1)"), Some(&t))
            .status,
        400
    );
    assert_eq!(
        ids_of(
            &f.get(
                &format!("{b}/resourcePools?filter=(eq,name,pool-3)"),
                Some(&t)
            )
            .json(),
            "resourcePoolId"
        ),
        [pools[2].clone()]
    );
}

#[test]
fn tokens_401_and_roles_403_per_path() {
    let f = fake(Dialect::Oran);
    let b = f.base();
    let pools = format!("{b}/resourcePools");
    let dms = format!("{b}/deploymentManagers");
    // No token, a malformed one, an expired one, one signed by another key: 401.
    let r = f.get(&pools, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Bearer")));
    assert_eq!(r.json()["status"], json!(401));
    assert_eq!(f.get(&pools, Some("not.a.jwt")).status, 401);
    let expired = f.token("late", &["o2ims-admin"], -1);
    assert_eq!(f.get(&pools, Some(&expired)).status, 401);
    let other = fake(Dialect::Oran);
    let foreign = other.token("x", &["o2ims-admin"], 300);
    assert_eq!(f.get(&pools, Some(&foreign)).status, 401);
    let good = f.token("x", &["o2ims-admin"], 300);
    let (h, rest) = good.split_once('.').unwrap();
    let tampered = format!(
        "{h}.{}",
        rest.replacen(|c: char| c.is_ascii_alphanumeric(), "A", 1)
    );
    assert_ne!(tampered, good);
    assert_eq!(f.get(&pools, Some(&tampered)).status, 401);
    // Extra claims ride along; the standard ones stay.
    let aud =
        f.token_with(json!({"sub": "a", "groups": ["o2ims-reader"], "claims": {"aud": "gw"}}));
    assert_eq!(f.get(&pools, Some(&aud)).status, 200);
    let payload = aud.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&base64_url(payload)).unwrap();
    assert_eq!(
        (
            claims["aud"].clone(),
            claims["sub"].clone(),
            claims["iss"].clone()
        ),
        (json!("gw"), json!("a"), json!("o2ims-fake"))
    );
    assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());
    // The JWKS names both keys.
    let jwks: Value = serde_json::from_slice(&std::fs::read(f.jwks_path()).unwrap()).unwrap();
    let kinds: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kty"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["RSA", "EC"]);

    // Roles per operation, as the OpenAPI security table says.
    let reader = f.token("r", &["o2ims-reader"], 300);
    let deployer = f.token_alg("d", &["role:o2ims-deployer"], 300, "ES256");
    let subscriber = f.token("s", &["o2ims-subscriber"], 300);
    let maintainer = f.token("m", &["o2ims-maintainer"], 300);
    let nobody = f.token("n", &[], 300);
    let alarm = format!(
        "/o2ims-infrastructureMonitoring/v1/alarms/{}",
        f.ids("alarm")[0]
    );
    let status = |m: &str, p: &str, t: &str, body: &[u8]| f.api_request(m, p, Some(t), body).status;
    assert_eq!(status("GET", &pools, &reader, b""), 200);
    assert_eq!(status("GET", &pools, &deployer, b""), 403);
    assert_eq!(status("GET", &pools, &nobody, b""), 403);
    assert_eq!(status("GET", &dms, &reader, b""), 403);
    assert_eq!(status("GET", &dms, &deployer, b""), 200);
    assert_eq!(status("GET", &dms, &good, b""), 200);
    assert_eq!(
        status("GET", &format!("{b}/subscriptions"), &subscriber, b""),
        200
    );
    assert_eq!(
        status("GET", &format!("{b}/subscriptions"), &deployer, b""),
        403
    );
    assert_eq!(
        status("POST", &format!("{b}/subscriptions"), &reader, b"{}"),
        403
    );
    assert_eq!(
        status("POST", &format!("{b}/subscriptions"), &subscriber, b"{}"),
        400
    );
    let ack = br#"{"alarmAcknowledged":true}"#;
    assert_eq!(status("PATCH", &alarm, &reader, ack), 403);
    assert_eq!(status("PATCH", &alarm, &maintainer, ack), 200);
    assert_eq!(
        status(
            "GET",
            "/o2ims-infrastructureMonitoring/v1/alarmServiceConfiguration",
            &maintainer,
            b""
        ),
        200
    );
    assert_eq!(
        status(
            "PUT",
            "/o2ims-infrastructureMonitoring/v1/alarmServiceConfiguration",
            &reader,
            b"{}"
        ),
        403
    );
    let r = f.get(&dms, Some(&reader));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains("role:o2ims-deployer"));
    // The counters saw each principal.
    let c = f.counters();
    assert_eq!(c["by_sub"]["r"], json!(6));
    assert_eq!(c["by_status"]["401"], json!(5));

    // pti and netweave authenticate only: any valid token reads every path, none is 401.
    for d in [Dialect::Pti, Dialect::Netweave] {
        let f = fake(d);
        let dms = format!("{}/deploymentManagers", f.base());
        assert_eq!(f.get(&dms, None).status, 401, "{d:?}");
        assert_eq!(
            f.get(&dms, Some(&f.token("n", &[], -5))).status,
            401,
            "{d:?}"
        );
        assert_eq!(
            f.get(&dms, Some(&f.token("n", &[], 300))).status,
            200,
            "{d:?}"
        );
        let e = f.get(&dms, None).json();
        match d {
            Dialect::Pti => assert_eq!(e["title"], json!("Unauthorized")),
            _ => assert_eq!(
                (e["error"].clone(), e["code"].clone()),
                (json!("Unauthorized"), json!(401))
            ),
        }
    }
    // Auth off serves everyone.
    let open = O2Ims::start(
        Dialect::Oran,
        Opts {
            auth: false,
            ..Opts::default()
        },
    );
    assert_eq!(
        open.get(&format!("{}/deploymentManagers", open.base()), None)
            .status,
        200
    );
}

/// POSTs a subscription with `body` as the subscriber; (status, JSON answer).
fn subscribe(f: &O2Ims, body: Value) -> (u16, Value) {
    let t = f.token("smo", &["o2ims-subscriber"], 300);
    let r = f.api_request(
        "POST",
        &format!("{}/subscriptions", f.base()),
        Some(&t),
        body.to_string().as_bytes(),
    );
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

#[test]
fn oran_subscription_validation_reachability_and_duplicates() {
    let rx = Receiver::start();
    let f = fake(Dialect::Oran);
    let b = f.base();
    let t = admin(&f);
    let cb = rx.url("/smo/v1/o2ims_inventory_observer");
    let consumer = "3f20d850-af4f-a84f-fb5a-0ad585410361";

    // Missing callback.
    assert_eq!(subscribe(&f, json!({"filter": ""})).0, 400);
    // The callback host must be the SMO host: localhost is not 127.0.0.1.
    let (s, v) = subscribe(
        &f,
        json!({"callback": cb.replace("127.0.0.1", "localhost"), "consumerSubscriptionId": consumer}),
    );
    assert_eq!(s, 400);
    assert_eq!(v["detail"], json!("callback URL validation failed"));
    assert_eq!(
        v["additionalAttributes"]["consumerSubscriptionId"],
        json!(consumer)
    );
    // Reachability: the GET must answer 204.
    rx.set_statuses(200, 204);
    assert_eq!(subscribe(&f, json!({"callback": cb})).0, 400);
    rx.set_statuses(204, 204);
    let (s, v) = subscribe(
        &f,
        json!({"callback": cb, "consumerSubscriptionId": consumer, "filter": ""}),
    );
    assert_eq!(s, 201, "{v}");
    let sid = v["subscriptionId"].as_str().unwrap().to_owned();
    assert!(is_uuid(&sid));
    assert_eq!(
        (v["callback"].clone(), v["consumerSubscriptionId"].clone()),
        (json!(cb), json!(consumer))
    );
    let gets: Vec<_> = rx
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 2, "one reachability GET per valid attempt");
    assert_eq!(gets[1].target, "/smo/v1/o2ims_inventory_observer");
    assert!(gets[1]
        .headers
        .get("authorization")
        .is_some_and(|a| a.starts_with("Bearer ")));
    let checks: Vec<_> = f
        .deliveries()
        .into_iter()
        .filter(|d| d["kind"] == "reachability")
        .collect();
    assert_eq!(
        checks
            .iter()
            .map(|d| d["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [200, 204]
    );
    // A duplicate callback is 400 here ("the conformance tests expect a 400").
    let (s, v) = subscribe(&f, json!({"callback": cb}));
    assert_eq!(s, 400);
    assert_eq!(v["detail"], json!("callback value must be unique"));
    // Read back, list, delete.
    let item = f.get(&format!("{b}/subscriptions/{sid}"), Some(&t));
    assert_eq!(item.status, 200);
    assert_eq!(item.json()["callback"], json!(cb));
    assert_eq!(
        ids_of(
            &f.get(&format!("{b}/subscriptions"), Some(&t)).json(),
            "subscriptionId"
        ),
        std::slice::from_ref(&sid)
    );
    assert_eq!(f.subscriptions().len(), 1);
    assert_eq!(
        f.api_request("DELETE", &format!("{b}/subscriptions/{sid}"), Some(&t), b"")
            .status,
        200
    );
    assert_eq!(
        f.get(&format!("{b}/subscriptions/{sid}"), Some(&t)).status,
        404
    );
    assert_eq!(
        f.api_request("DELETE", &format!("{b}/subscriptions/{sid}"), Some(&t), b"")
            .status,
        404
    );
    // After a restart the fake has forgotten its subscriptions.
    let (_, v) = subscribe(&f, json!({"callback": cb}));
    let sid = v["subscriptionId"].as_str().unwrap().to_owned();
    assert_eq!(f.restart(), 1);
    assert_eq!(
        f.get(&format!("{b}/subscriptions/{sid}"), Some(&t)).status,
        404
    );
    assert!(f.subscriptions().is_empty());

    // The real checks: https only, and no loopback even on the SMO host.
    let strict = O2Ims::start(
        Dialect::Oran,
        Opts {
            allow_http: false,
            allow_loopback: false,
            ..Opts::default()
        },
    );
    assert_eq!(subscribe(&strict, json!({"callback": cb})).0, 400);
    assert_eq!(
        subscribe(&strict, json!({"callback": cb.replace("http:", "https:")})).0,
        400
    );
    let no_smo = O2Ims::start(
        Dialect::Oran,
        Opts {
            smo_host: None,
            ..Opts::default()
        },
    );
    assert_eq!(subscribe(&no_smo, json!({"callback": cb})).0, 400);
    // Neither made a reachability GET.
    assert!(strict.deliveries().is_empty() && no_smo.deliveries().is_empty());
}

#[test]
fn pti_and_netweave_subscriptions() {
    let rx = Receiver::start();
    let f = fake(Dialect::Pti);
    let cb = rx.url("/notify");
    // No reachability check; an objectType filter is checked; a duplicate is 409.
    assert_eq!(
        subscribe(&f, json!({"callback": cb, "filter": "(eq,name,x)"})).0,
        400
    );
    assert_eq!(
        subscribe(
            &f,
            json!({"callback": cb, "filter": "(eq,objectType,Bogus)"})
        )
        .0,
        400
    );
    let (s, v) = subscribe(
        &f,
        json!({"callback": cb, "filter": "(eq,objectType,ResourceInfo)", "consumerSubscriptionId": "c1"}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(subscribe(&f, json!({"callback": cb, "filter": "(eq,objectType,ResourceInfo)", "consumerSubscriptionId": "c1"})).0, 409);
    // The same callback with another filter is another subscription.
    assert_eq!(subscribe(&f, json!({"callback": rx.url("/all")})).0, 201);
    assert!(rx.requests().is_empty(), "pti makes no reachability GET");
    // The filter means exclusion: ResourceInfo events skip the first subscription.
    let res = f.ids("resource");
    let pools = f.ids("resourcePool");
    assert_eq!(
        f.mutate(json!({"kind": "resource", "id": res[0], "wait": true}))["notified"],
        json!(1)
    );
    assert_eq!(
        f.mutate(json!({"kind": "resourcePool", "id": pools[0], "wait": true}))["notified"],
        json!(2)
    );
    // One queue per subscriber: the order across subscribers is free.
    let mut targets: Vec<String> = rx.posts().iter().map(|r| r.target.clone()).collect();
    targets.sort();
    assert_eq!(targets, ["/all", "/all", "/notify"]);
    assert_eq!(rx.posts()[0].target, "/all");

    let f = fake(Dialect::Netweave);
    assert_eq!(subscribe(&f, json!({"callback": "not a url"})).0, 400);
    let (s, v) = subscribe(
        &f,
        json!({"callback": rx.url("/nw"), "consumerSubscriptionId": "smo-1",
                                       "filter": {"resourcePoolId": ["pool-2"]}}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        subscribe(
            &f,
            json!({"callback": rx.url("/other"), "consumerSubscriptionId": "smo-1"})
        )
        .0,
        409
    );
    // The filter selects: pool-1's node is not reported, pool-2's is.
    assert_eq!(
        f.mutate(json!({"kind": "resource", "id": "node-01", "wait": true}))["notified"],
        json!(0)
    );
    assert_eq!(
        f.mutate(json!({"kind": "resource", "id": "node-33", "wait": true}))["notified"],
        json!(1)
    );
    let sid = v["subscriptionId"].as_str().unwrap();
    let t = f.token("smo", &[], 300);
    let put = f.api_request(
        "PUT",
        &format!("{}/subscriptions/{sid}", f.base()),
        Some(&t),
        json!({"filter": {}}).to_string().as_bytes(),
    );
    assert_eq!(put.status, 200);
    assert_eq!(
        f.mutate(json!({"kind": "resource", "id": "node-01", "wait": true}))["notified"],
        json!(1)
    );
    assert_eq!(
        f.api_request(
            "DELETE",
            &format!("{}/subscriptions/{sid}", f.base()),
            Some(&t),
            b""
        )
        .status,
        204
    );
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// Waits for the receiver to hold `n` POSTs; returns them.
fn posts(rx: &Receiver, n: usize) -> Vec<common::o2ims::Received> {
    assert!(
        eventually(Duration::from_secs(10), || rx.posts().len() >= n),
        "{} of {n} POSTs",
        rx.posts().len()
    );
    rx.posts()
}

#[test]
fn oran_mutations_notify_in_its_exact_shape() {
    let rx = Receiver::start();
    let f = fake(Dialect::Oran);
    let b = f.base();
    let t = admin(&f);
    let consumer = "0b9c3d1e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";
    assert_eq!(
        subscribe(
            &f,
            json!({"callback": rx.url("/a"), "consumerSubscriptionId": consumer})
        )
        .0,
        201
    );
    let (pools, res) = (f.ids("resourcePool"), f.ids("resource"));
    let item = format!("{b}/resourcePools/{}/resources/{}", pools[0], res[3]);
    let g0 = f.get(&item, Some(&t)).json()["_generation"]
        .as_u64()
        .unwrap();

    let out = f.mutate(json!({"kind": "resource", "id": res[3], "op": "modify", "fields": {"description": "changed"}, "wait": true}));
    assert_eq!(out["generation"], json!(g0 + 1));
    assert_eq!(out["objectRef"], json!(item));
    let now = f.get(&item, Some(&t)).json();
    assert_eq!(
        (now["description"].clone(), now["_generation"].clone()),
        (json!("changed"), json!(g0 + 1))
    );
    let p = &posts(&rx, 1)[0];
    assert_eq!(p.target, "/a");
    assert_eq!(
        p.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert!(p
        .headers
        .get("authorization")
        .is_some_and(|a| a.starts_with("Bearer ey")));
    let n = p.json();
    assert_eq!(
        keys(&n),
        [
            "consumerSubscriptionId",
            "notificationEventType",
            "notificationId",
            "objectRef",
            "postObjectState",
            "priorObjectState"
        ]
    );
    assert_eq!(n["notificationEventType"], json!(1));
    assert!(is_uuid(n["notificationId"].as_str().unwrap()));
    assert_eq!(n["consumerSubscriptionId"], json!(consumer));
    assert_eq!(n["objectRef"], json!(item));
    assert_eq!(n["priorObjectState"]["description"], json!("node 4"));
    assert_eq!(n["postObjectState"]["description"], json!("changed"));
    assert!(n["postObjectState"].get("_generation").is_none());

    // A second subscriber without a consumer id: the key is left out.
    assert_eq!(subscribe(&f, json!({"callback": rx.url("/b")})).0, 201);
    let out = f.mutate(json!({"kind": "resource", "op": "create", "fields": {"resourcePoolId": pools[2]}, "wait": true}));
    assert_eq!(out["notified"], json!(2));
    let new_id = out["id"].as_str().unwrap().to_owned();
    let ps = posts(&rx, 3);
    let created: Vec<Value> = ps[1..].iter().map(|p| p.json()).collect();
    for n in &created {
        assert_eq!(n["notificationEventType"], json!(0));
        assert!(
            n.get("priorObjectState").is_none()
                && n["postObjectState"]["resourceId"] == json!(new_id)
        );
        assert_eq!(
            n["objectRef"],
            json!(format!("{b}/resourcePools/{}/resources/{new_id}", pools[2]))
        );
    }
    let by_target = |t: &str| ps.iter().skip(1).find(|p| p.target == t).unwrap().json();
    assert!(by_target("/b").get("consumerSubscriptionId").is_none());
    assert_eq!(by_target("/a")["consumerSubscriptionId"], json!(consumer));
    assert_ne!(created[0]["notificationId"], created[1]["notificationId"]);
    assert_eq!(
        f.get(
            &format!("{b}/resourcePools/{}/resources/{new_id}", pools[2]),
            Some(&t)
        )
        .status,
        200
    );
    // Delete: objectRef is still there, only the prior state.
    f.mutate(json!({"kind": "resource", "id": new_id, "op": "delete", "wait": true}));
    let n = posts(&rx, 5)[3].json();
    assert_eq!(n["notificationEventType"], json!(2));
    assert!(n["objectRef"].as_str().unwrap().ends_with(&new_id));
    assert!(n.get("postObjectState").is_none() && n["priorObjectState"].is_object());
    assert_eq!(
        f.get(
            &format!("{b}/resourcePools/{}/resources/{new_id}", pools[2]),
            Some(&t)
        )
        .status,
        404
    );

    // A Location's objectRef holds its tracking uuid, not its globalLocationId.
    let loc = &f.ids("location")[0];
    let out = f.mutate(json!({"kind": "location", "id": loc, "wait": true}));
    let r = out["objectRef"].as_str().unwrap();
    let tracking = r.rsplit('/').next().unwrap();
    assert!(
        r.starts_with(&format!("{b}/locations/")) && is_uuid(tracking) && tracking != loc,
        "{r}"
    );
    let n = posts(&rx, 7)[5].json();
    assert_eq!(n["postObjectState"]["globalLocationId"], json!(loc));
    // A deployment manager's states are redacted: the secret never leaves in a notification.
    let dm = &f.ids("deploymentManager")[0];
    let secret = f
        .get(&format!("{b}/deploymentManagers/{dm}"), Some(&t))
        .json()["extensions"]["profileData"]["admin_client_key"]
        .as_str()
        .unwrap()
        .to_owned();
    f.mutate(json!({"kind": "deploymentManager", "id": dm, "wait": true}));
    let p = &posts(&rx, 9)[7];
    assert!(!String::from_utf8_lossy(&p.body).contains(&secret));
    assert_eq!(
        p.json()["objectRef"],
        json!(format!("{b}/deploymentManagers/{dm}"))
    );
    assert!(p.json()["postObjectState"]["extensions"]
        .get("profileData")
        .is_none());

    // A cluster resource's objectRef has the singular /clusterResource/ of constants.go.
    let cr = &f.ids("clusterResource")[0];
    let out = f.mutate(json!({"kind": "clusterResource", "id": cr, "wait": true}));
    assert_eq!(
        out["objectRef"],
        json!(format!(
            "/o2ims-infrastructureCluster/v1/clusterResource/{cr}"
        ))
    );
    let n = posts(&rx, 11)[9].json();
    assert_eq!(n["objectRef"], out["objectRef"]);
    assert_eq!(n["postObjectState"]["clusterResourceId"], json!(cr));

    // Alarms go to alarm subscribers; a filter names the event type NOT to send.
    let t_sub = f.token("smo", &["o2ims-subscriber"], 300);
    let alarm_subs = "/o2ims-infrastructureMonitoring/v1/alarmSubscriptions";
    for (path, filter) in [
        ("/alarms-all", None),
        ("/alarms-no-ack", Some("ACKNOWLEDGE")),
    ] {
        let mut body = json!({"callback": rx.url(path)});
        if let Some(fl) = filter {
            body["filter"] = json!(fl);
        }
        let r = f.api_request(
            "POST",
            alarm_subs,
            Some(&t_sub),
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        assert!(r.json()["alarmSubscriptionId"].is_string());
    }
    let bad = f.api_request(
        "POST",
        alarm_subs,
        Some(&t_sub),
        json!({"callback": rx.url("/x"), "filter": "SOMETIMES"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(bad.status, 400);
    let before = rx.posts().len();
    let alarm = &f.ids("alarm")[1];
    let m = f.token("m", &["o2ims-maintainer"], 300);
    let r = f.api_request(
        "PATCH",
        &format!("/o2ims-infrastructureMonitoring/v1/alarms/{alarm}"),
        Some(&m),
        br#"{"alarmAcknowledged":true}"#,
    );
    assert_eq!(r.status, 200);
    assert!(eventually(Duration::from_secs(5), || rx.posts().len() > before));
    let new: Vec<_> = rx.posts()[before..].to_vec();
    assert_eq!(new.len(), 1, "the filtered subscriber got nothing");
    assert_eq!(new[0].target, "/alarms-all");
    let n = new[0].json();
    assert_eq!(n["notificationEventType"], json!(3));
    assert_eq!(
        n["objectRef"],
        json!(format!("/o2ims-infrastructureMonitoring/v1/alarms/{alarm}"))
    );
    assert_eq!(n["alarmEventRecordId"], json!(alarm));
    assert_eq!(n["alarmAcknowledged"], json!(true));
    assert!(n["globalCloudID"].is_string());
    let a = f
        .get(
            &format!("/o2ims-infrastructureMonitoring/v1/alarms/{alarm}"),
            Some(&t),
        )
        .json();
    assert_eq!(a["alarmAcknowledged"], json!(true));
}

#[test]
fn pti_mutations_notify_in_its_exact_shape() {
    let rx = Receiver::start();
    let f = fake(Dialect::Pti);
    let b = f.base();
    assert_eq!(
        subscribe(
            &f,
            json!({"callback": rx.url("/p"), "consumerSubscriptionId": "c9"})
        )
        .0,
        201
    );
    let (pools, res) = (f.ids("resourcePool"), f.ids("resource"));
    f.mutate(
        json!({"kind": "resource", "id": res[7], "fields": {"description": "moved"}, "wait": true}),
    );
    let n = posts(&rx, 1)[0].json();
    assert_eq!(
        keys(&n),
        [
            "consumerSubscriptionId",
            "notificationEventType",
            "objectRef",
            "postObjectState",
            "priorObjectState",
            "updateTime"
        ]
    );
    assert_eq!(n["notificationEventType"], json!("1"));
    assert_eq!(n["consumerSubscriptionId"], json!("c9"));
    assert_eq!(
        n["objectRef"],
        json!(format!(
            "{b}/resourcePools/{}/resources/{}",
            pools[0], res[7]
        ))
    );
    // The states are JSON strings, partial, and the same object on modify.
    let prior = n["priorObjectState"].as_str().expect("a JSON string");
    assert_eq!(Some(prior), n["postObjectState"].as_str());
    let state: Value = serde_json::from_str(prior).unwrap();
    assert_eq!(
        keys(&state),
        [
            "description",
            "globalAssetId",
            "resourceId",
            "resourcePoolId",
            "resourceTypeId"
        ]
    );
    assert_eq!(state["description"], json!("moved"));
    // A mutation that deletes notifies nobody (pti never sends deletes) ...
    assert_eq!(
        f.mutate(json!({"kind": "resource", "id": res[8], "op": "delete", "wait": true}))
            ["notified"],
        json!(0)
    );
    // ... but a forced one has no objectRef and only the prior state.
    let gone = json!({"resourceId": res[8], "resourcePoolId": pools[0], "resourceTypeId": "t", "globalAssetId": "a", "description": "d"});
    f.notify(
        json!({"kind": "resource", "id": res[8], "op": "delete", "object": gone, "wait": true}),
    );
    let n = posts(&rx, 2)[1].json();
    assert_eq!(n["notificationEventType"], json!("2"));
    assert!(n.get("objectRef").is_none() && n.get("postObjectState").is_none());
    let prior: Value = serde_json::from_str(n["priorObjectState"].as_str().unwrap()).unwrap();
    assert_eq!(prior["resourceId"], json!(res[8]));
    // Create: "0", only the post state; the O-Cloud itself is the base path.
    f.mutate(json!({"kind": "resourcePool", "op": "create", "id": "p-new", "wait": true}));
    let n = posts(&rx, 3)[2].json();
    assert_eq!(
        (n["notificationEventType"].clone(), n["objectRef"].clone()),
        (json!("0"), json!(format!("{b}/resourcePools/p-new")))
    );
    assert!(n.get("priorObjectState").is_none());
    f.mutate(json!({"kind": "ocloud", "id": f.ids("ocloud")[0], "wait": true}));
    assert_eq!(posts(&rx, 4)[3].json()["objectRef"], json!(b));
    // int_type sends the number instead.
    f.notify(
        json!({"kind": "resource", "id": res[1], "op": "modify", "int_type": true, "wait": true}),
    );
    assert_eq!(posts(&rx, 5)[4].json()["notificationEventType"], json!(1));
}

#[test]
fn netweave_mutations_notify_in_its_exact_shape() {
    let rx = Receiver::start();
    let f = fake(Dialect::Netweave);
    let (s, v) = subscribe(&f, json!({"callback": rx.url("/n")}));
    assert_eq!(s, 201);
    let sid = v["subscriptionId"].as_str().unwrap().to_owned();
    f.mutate(json!({"kind": "resource", "id": "node-05", "wait": true}));
    let n = posts(&rx, 1)[0].json();
    assert_eq!(
        keys(&n),
        [
            "callbackUrl",
            "globalResourceId",
            "notificationEventType",
            "notificationId",
            "objectRef",
            "resourcePoolId",
            "resourceTypeId",
            "subscriptionId",
            "timestamp"
        ]
    );
    assert_eq!(n["notificationEventType"], json!("o2ims.Resource.Updated"));
    assert_eq!(n["objectRef"], json!("/o2ims/v1/resources/node-05"));
    assert_eq!(
        (n["resourcePoolId"].clone(), n["globalResourceId"].clone()),
        (json!("pool-1"), json!("asset-5"))
    );
    assert_eq!(
        (n["subscriptionId"].clone(), n["callbackUrl"].clone()),
        (json!(sid), json!(rx.url("/n")))
    );
    assert!(is_uuid(n["notificationId"].as_str().unwrap()));
    f.mutate(json!({"kind": "resourcePool", "op": "create", "id": "pool-9", "wait": true}));
    let n = posts(&rx, 2)[1].json();
    assert_eq!(
        n["notificationEventType"],
        json!("o2ims.ResourcePool.Created")
    );
    assert_eq!(n["objectRef"], json!("/o2ims/v1/resourcePools/pool-9"));
    f.mutate(json!({"kind": "resourceType", "id": "rt-2", "op": "delete", "wait": true}));
    assert_eq!(
        posts(&rx, 3)[2].json()["notificationEventType"],
        json!("o2ims.ResourceType.Deleted")
    );
    let t = f.token("x", &[], 300);
    assert_eq!(f.get("/o2ims/v1/resourceTypes/rt-2", Some(&t)).status, 404);
    assert_eq!(
        f.get("/o2ims/v1/resourcePools/pool-9", Some(&t)).status,
        200
    );
}

/// The statuses of each attempt the fake made, in order.
fn attempts(f: &O2Ims) -> Vec<(u64, Option<u64>)> {
    f.deliveries()
        .iter()
        .filter(|d| d["kind"] == "notification")
        .map(|d| {
            (
                d["attempt"].as_u64().expect("attempt"),
                d["status"].as_u64(),
            )
        })
        .collect()
}

#[test]
fn delivery_retries_follow_each_dialect() {
    for (d, failing, tries) in [
        (Dialect::Oran, 503, 5),
        // oran counts anything above 204 as a failure.
        (Dialect::Oran, 206, 5),
        (Dialect::Pti, 503, 4),
        (Dialect::Pti, 429, 4),
        // pti retries only 429 and 5xx.
        (Dialect::Pti, 404, 1),
        (Dialect::Netweave, 500, 4),
    ] {
        let rx = Receiver::start();
        let f = fake(d);
        assert_eq!(subscribe(&f, json!({"callback": rx.url("/r")})).0, 201);
        rx.set_statuses(204, failing);
        let id = f.ids("resourcePool")[0].clone();
        f.mutate(json!({"kind": "resourcePool", "id": id, "wait": true}));
        let want: Vec<(u64, Option<u64>)> =
            (1..=tries).map(|a| (a, Some(failing as u64))).collect();
        assert_eq!(attempts(&f), want, "{d:?} {failing}");
        assert_eq!(rx.posts().len(), tries as usize, "{d:?} {failing}");
        // A success ends it at once: 200 counts too.
        rx.set_statuses(204, 200);
        f.mutate(json!({"kind": "resourcePool", "id": id, "wait": true}));
        assert_eq!(attempts(&f).len(), tries as usize + 1, "{d:?}");
    }
    // oran does not retry a refused connection.
    let f = fake(Dialect::Oran);
    let rx = Receiver::start();
    assert_eq!(subscribe(&f, json!({"callback": rx.url("/gone")})).0, 201);
    let port = rx.addr.port();
    drop(rx);
    assert!(eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    }));
    f.mutate(json!({"kind": "resource", "id": f.ids("resource")[0], "wait": true}));
    let d: Vec<Value> = f
        .deliveries()
        .into_iter()
        .filter(|d| d["kind"] == "notification")
        .collect();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0]["status"].clone(), d[0]["error"].clone()),
        (Value::Null, json!("refused"))
    );
}

#[test]
fn notify_faults_and_raw_bodies() {
    let rx = Receiver::start();
    let f = fake(Dialect::Oran);
    assert_eq!(subscribe(&f, json!({"callback": rx.url("/f")})).0, 201);
    let res = f.ids("resource")[0].clone();
    let g = f.generation();
    // notify changes nothing; duplicate sends one notificationId twice.
    f.notify(
        json!({"kind": "resource", "id": res, "op": "modify", "duplicate": true, "wait": true}),
    );
    assert_eq!(f.generation(), g);
    let ps = posts(&rx, 2);
    assert_eq!(
        ps[0].json()["notificationId"],
        ps[1].json()["notificationId"]
    );
    // drop: recorded, never sent.
    f.notify(json!({"kind": "resource", "id": res, "op": "modify", "drop": true, "wait": true}));
    assert_eq!(
        f.deliveries()
            .iter()
            .filter(|d| d["kind"] == "dropped")
            .count(),
        1
    );
    // omit_object_ref, a string event type, no token, a bad token.
    f.notify(json!({"kind": "resource", "id": res, "op": "modify", "omit_object_ref": true, "int_type": false, "token": null, "wait": true}));
    f.notify(json!({"kind": "resource", "id": res, "op": "modify", "token": "bad", "wait": true}));
    let ps = posts(&rx, 4);
    assert_eq!(ps.len(), 4, "the dropped one was not sent");
    let n = ps[2].json();
    assert!(n.get("objectRef").is_none());
    assert_eq!(n["notificationEventType"], json!("1"));
    assert!(!ps[2].headers.contains_key("authorization"));
    assert_eq!(
        ps[3].headers.get("authorization").map(String::as_str),
        Some("Bearer bad")
    );
    // raw: any body, as it is.
    f.notify(json!({"raw": "{not json", "wait": true}));
    f.notify(json!({"raw": {"objectRef": "/elsewhere", "notificationEventType": 7}, "wait": true}));
    let ps = posts(&rx, 6);
    assert_eq!(ps[4].body, b"{not json");
    assert_eq!(
        ps[5].json(),
        json!({"objectRef": "/elsewhere", "notificationEventType": 7})
    );
    // delay_ms still delivers (its timing is not asserted).
    f.notify(json!({"kind": "resource", "id": res, "op": "modify", "delay_ms": 20, "wait": true}));
    assert_eq!(posts(&rx, 7).len(), 7);
    // Unknown kinds and ids are refused by the control port.
    let r = common::request(
        f.control,
        "POST",
        "/__fake/mutate",
        &[],
        br#"{"kind":"planet","id":"x"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 400);
    let r = common::request(
        f.control,
        "POST",
        "/__fake/mutate",
        &[],
        br#"{"kind":"resource","id":"x"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn counters_faults_and_header_modes() {
    let f = fake(Dialect::Oran);
    let t = f.token("counted", &["o2ims-admin"], 300);
    let b = f.base();
    let pools = format!("{b}/resourcePools");
    let q = format!("{pools}?filter=(eq,name,pool-1)");
    assert_eq!(f.count(&pools), 0);
    for _ in 0..3 {
        f.get(&pools, Some(&t));
    }
    f.get(&q, Some(&t));
    f.get(&pools, None);
    assert_eq!(f.count(&pools), 4, "every request counts, a 401 too");
    assert_eq!(f.count(&q), 1);
    assert_eq!(f.count_method("GET", &pools), 4);
    assert_eq!(f.count_method("POST", &pools), 0);
    let c = f.counters();
    assert_eq!(
        (
            c["total"].clone(),
            c["by_sub"]["counted"].clone(),
            c["by_sub"]["-"].clone()
        ),
        (json!(5), json!(4), json!(1))
    );
    f.reset_counters();
    assert_eq!(f.count(&pools), 0);
    assert_eq!(f.counters()["total"], json!(0));

    // Injected status on matching paths only, in the dialect's error shape; then cleared.
    f.behave(json!({"status": 503, "path_regex": "resourceTypes"}));
    let r = f.get(&format!("{b}/resourceTypes"), Some(&t));
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(f.get(&pools, Some(&t)).status, 200);
    // A hang-up with no answer.
    f.behave(
        json!({"close": true, "path_regex": "^/o2ims-infrastructureInventory/v2/resourcePools$"}),
    );
    assert!(common::request(f.api, "GET", &pools, &[], b"").is_err());
    assert_eq!(
        f.get(&format!("{pools}/"), Some(&t)).status,
        200,
        "the regex sees the raw target"
    );
    // Latency still answers (no timing asserted).
    f.behave(json!({"latency_ms": 10}));
    assert_eq!(f.get(&pools, Some(&t)).status, 200);
    f.behave(json!({}));
    assert_eq!(f.get(&format!("{b}/resourceTypes"), Some(&t)).status, 200);
    assert_eq!(f.count(&pools), 3, "the hang-up is counted");

    // rfc: ETag and max-age; a matching If-None-Match is 304; a change makes a new ETag.
    let f = O2Ims::start(
        Dialect::Pti,
        Opts {
            headers: Headers::Rfc { max_age: 30 },
            ..Opts::default()
        },
    );
    let t = f.token("x", &[], 300);
    let pools = format!("{}/resourcePools", f.base());
    let r = f.get(&pools, Some(&t));
    let etag = r.header("etag").expect("an ETag").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'));
    assert_eq!(r.header("cache-control"), Some("max-age=30"));
    let auth = format!("Bearer {t}");
    let cond = |tag: &str| {
        common::request(
            f.api,
            "GET",
            &pools,
            &[("authorization", &auth), ("if-none-match", tag)],
            b"",
        )
        .unwrap()
    };
    let r304 = cond(&etag);
    assert_eq!(r304.status, 304);
    assert!(r304.body.is_empty());
    assert_eq!(cond("\"other\"").status, 200);
    f.mutate(json!({"kind": "resourcePool", "id": f.ids("resourcePool")[0]}));
    assert_eq!(cond(&etag).status, 200);
    assert_ne!(f.get(&pools, Some(&t)).header("etag"), Some(etag.as_str()));
    assert_eq!(
        f.get(&format!("{pools}/nope"), Some(&t)).header("etag"),
        None
    );
    // no-store on an oran fake covers errors too; netweave can be told to send nothing.
    let f = O2Ims::start(
        Dialect::Oran,
        Opts {
            headers: Headers::NoStore,
            ..Opts::default()
        },
    );
    assert_eq!(
        f.get(f.base(), None).header("cache-control"),
        Some("no-store")
    );
    let f = O2Ims::start(
        Dialect::Netweave,
        Opts {
            headers: Headers::None,
            api_port: Some(free_port()),
            ..Opts::default()
        },
    );
    let r = f.get("/o2ims/v1/resourcePools", Some(&f.token("x", &[], 300)));
    assert_eq!((r.status, r.header("cache-control")), (200, None));
}

/// Runs `openssl` in `dir`; panics with its stderr.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn oran_https_callback_through_a_tls_listener() {
    // A CA and a leaf for IP 127.0.0.1, as tests/tls.rs makes them.
    let pki = tempfile::tempdir().unwrap();
    let d = pki.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "2",
                "-subj",
                "/CN=smo-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        d,
        &[
            &["req"][..],
            &ec,
            &["-subj", "/CN=smo", "-keyout", "smo.key", "-out", "smo.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        d.join("smo.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "smo.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "smo.ext",
            "-out",
            "smo.pem",
        ],
    );

    // The SMO side: zkgate terminating TLS in front of the receiver.
    let rx = Receiver::start();
    let gw = common::Gateway::start(&format!(
        "listeners:\n  - name: web\n    listen: {{HTTP}}\n    tls: {{ certificates: [{{ cert: {0}/smo.pem, key: {0}/smo.key }}] }}\n\
         upstreams:\n  - name: smo\n    backends: [\"{1}\"]\n\
         routes:\n  - name: smo\n    upstream: smo\n",
        d.display(),
        rx.addr
    ));
    let cb = format!("https://127.0.0.1:{}/smo/v1/observer", gw.http.port());

    // The real oran check, https only; loopback is allowed as the SMO host is 127.0.0.1 here.
    let strict = |ca: Option<std::path::PathBuf>| {
        O2Ims::start(
            Dialect::Oran,
            Opts {
                allow_http: false,
                callback_ca: ca,
                ..Opts::default()
            },
        )
    };
    let untrusting = strict(None);
    assert_eq!(
        subscribe(&untrusting, json!({"callback": cb})).0,
        400,
        "an unknown CA fails the reachability check"
    );
    let reach = untrusting.deliveries();
    assert_eq!(reach.len(), 1);
    assert!(
        reach[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("CERTIFICATE_VERIFY_FAILED")),
        "{reach:?}"
    );
    assert!(rx.requests().is_empty());

    let f = strict(Some(d.join("ca.pem")));
    assert_eq!(
        subscribe(&f, json!({"callback": cb.replace("https:", "http:")})).0,
        400
    );
    let (s, v) = subscribe(&f, json!({"callback": cb}));
    assert_eq!(s, 201, "{v}");
    let got = rx.requests();
    assert_eq!(
        (got.len(), got[0].method.as_str(), got[0].target.as_str()),
        (1, "GET", "/smo/v1/observer")
    );
    f.mutate(json!({"kind": "resourcePool", "id": f.ids("resourcePool")[0], "wait": true}));
    let p = &posts(&rx, 1)[0];
    assert_eq!(p.json()["notificationEventType"], json!(1));
    let d: Vec<Value> = f
        .deliveries()
        .into_iter()
        .filter(|d| d["kind"] == "notification")
        .collect();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["status"], json!(204));
}
