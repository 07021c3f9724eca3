//! Unit tests of templates: compile checks, the context, every filter, and the bounds.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::LazyLock;

use minijinja::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::super::payload::{self, Limits};
use super::check::{
    line_of, sample_payload, sample_vars, scan_refs, RefKind, SAMPLE, SAMPLE_PAYLOAD,
};
use super::filters::{human_duration, urlencode};
use super::*;

static TEAM_SLACK: LazyLock<DestinationValues> =
    LazyLock::new(|| DestinationValues::new("team-slack", &sample_vars()));

fn ctx(alerts: Range<usize>) -> RenderContext<'static> {
    RenderContext {
        payload: &SAMPLE.values,
        alerts,
        destination: &TEAM_SLACK,
    }
}

fn render_range(src: &str, alerts: Range<usize>) -> String {
    Template::compile("t", src)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
        .render(&ctx(alerts))
        .unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn render(src: &str) -> String {
    render_range(src, 0..2)
}

fn compile_err(src: &str) -> TemplateError {
    match Template::compile("t", src) {
        Ok(_) => panic!("{src:?} compiled"),
        Err(e) => e,
    }
}

#[test]
fn templates_can_be_shared_across_threads() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    shared::<Template>();
}

#[test]
fn sample_payload_parses() {
    let p = sample_payload();
    assert_eq!(p.alerts.len(), 2);
    assert_eq!(p.alerts[1].fingerprint.len(), 16);
}

#[test]
fn context_has_the_payload_and_the_message() {
    assert_eq!(
        render("{{ version }}|{{ status }}|{{ receiver }}|{{ externalURL }}|{{ truncatedAlerts }}"),
        "4|firing|sample|http://alertmanager.example.com:9093|0"
    );
    assert_eq!(render("{{ groupKey }}"), sample_payload().group_key);
    assert_eq!(
            render("{{ groupLabels.alertname }} {{ commonLabels.job }} {{ commonAnnotations.runbook_url }}"),
            "HighErrorRate api https://runbooks.example.com/high-error-rate"
        );
    assert_eq!(
        render("{{ destination }} {{ vars.routing_key }}"),
        "team-slack sample-routing-key"
    );
    assert_eq!(
        render("{{ alerts | length }} {{ firing | length }} {{ resolved | length }}"),
        "2 1 1"
    );
    assert_eq!(
        render_range(
            "{{ alerts | length }} {{ firing | length }} {{ resolved | length }}",
            1..2
        ),
        "1 0 1"
    );
    assert_eq!(
        render_range("{{ alert.labels.instance }}", 1..2),
        "10.0.0.6:8080"
    );
    assert_eq!(
        render_range("[{{ alert }}]{{ alerts | length }}", 1..1),
        "[]0"
    );
}

#[test]
fn alerts_have_fields_and_shortcuts() {
    let a = "{% for a in alerts %}{{ a.status }} {{ a.alertname }} {{ a.severity }} {{ a.fingerprint }} {{ a.startsAt }} {{ a.endsAt }} {{ a.annotations.summary }} {{ a.generatorURL }};{% endfor %}";
    let fp1 = &sample_payload().alerts[1].fingerprint;
    assert_eq!(
            render(a),
            format!(
                "firing HighErrorRate critical c1a2b3d4e5f60718 2024-05-01T10:00:00.123456789Z 0001-01-01T00:00:00Z 5xx ratio above 5% http://prometheus.example.com:9090/graph?g0.expr=rate;\
                 resolved HighErrorRate warning {fp1} 2024-05-01T09:00:00Z 2024-05-01T09:45:30Z 5xx ratio above 5% http://prometheus.example.com:9090/graph?g0.expr=rate;"
            )
        );
    // Labels iterate sorted; the shortcuts are not fields of the serialized alert.
    assert_eq!(
        render_range("{{ alert.labels | join(',') }}", 0..1),
        "alertname,instance,job,namespace,service,severity"
    );
    let json: serde_json::Value =
        serde_json::from_str(&render_range("{{ alert | tojson }}", 0..1)).expect("json");
    let keys: Vec<&str> = json
        .as_object()
        .expect("object")
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "annotations",
            "endsAt",
            "fingerprint",
            "generatorURL",
            "labels",
            "startsAt",
            "status"
        ]
    );
}

#[test]
fn missing_severity_is_undefined_not_none() {
    let body = br#"{"status":"firing","alerts":[{"status":"firing","labels":{"job":"x"},
            "startsAt":"2024-01-01T00:00:00Z"}]}"#;
    let p = payload::parse(body, &Limits { max_alerts: 5 }).expect("parse");
    let vars = BTreeMap::new();
    let t = Template::compile(
            "t",
            "[{{ alert.severity }}][{{ alert.alertname }}][{{ alert.severity | default('unknown') }}][{{ severity(alert) | default('?') }}][{{ alert | alertname }}]",
        )
        .expect("compile");
    let out = t
        .render(&RenderContext {
            payload: &PayloadValues::new(&p),
            alerts: 0..1,
            destination: &DestinationValues::new("d", &vars),
        })
        .expect("render");
    assert_eq!(out, "[][][unknown][?][]");
}

#[test]
fn alert_range_is_checked() {
    let t = Template::compile("t", "x").expect("compile");
    assert_eq!(
        t.render(&ctx(1..3)),
        Err(RenderError::AlertRange {
            range: 1..3,
            len: 2
        })
    );
}

#[test]
fn syntax_errors_carry_the_line() {
    let e = compile_err("line one\n{% if status %}\nfiring\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.message.contains("unexpected end of input"), "{e}");
    assert!(e.to_string().starts_with("line 3: "), "{e}");

    let e = compile_err("a\nb {{ status | }}");
    assert_eq!(e.line, Some(2), "{e}");
}

#[test]
fn unknown_filters_and_tests_fail_even_in_branches_not_taken() {
    let e = compile_err("{% if status == 'nope' %}\n\n{{ receiver | shout }}\n{% endif %}");
    assert_eq!(e.line, Some(3));
    assert_eq!(e.message, "unknown filter `shout`");

    let e = compile_err("{% if false %}{% for a in alerts | sortt %}{% endfor %}{% endif %}");
    assert_eq!(e.message, "unknown filter `sortt`");

    let e = compile_err("{% if false %}\n{% filter loud %}x{% endfilter %}{% endif %}");
    assert_eq!(
        (e.line, e.message.as_str()),
        (Some(2), "unknown filter `loud`")
    );

    let e = compile_err("{% if false %}{{ 1 if status is not firingish }}{% endif %}");
    assert_eq!(e.message, "unknown test `firingish`");

    // Pipes in strings and comments are not filters; names after `.` are attributes.
    render("{# x | nofilter #}{{ 'a | b' }}{{ \"c|d\" | upper }}{{ alert.labels.upper }}");
    render(
        "{% raw %}{{ x | nofilter }}{% endraw %}{{ status is defined }}{{ status is not none }}",
    );
}

#[test]
fn unknown_names_fail() {
    let e = compile_err("{{ status }}\n{% if false %}{{ shout(status) }}{% endif %}");
    assert_eq!(e.line, Some(2));
    assert!(
        e.message
            .starts_with("unknown variable or function `shout`"),
        "{e}"
    );

    let e = compile_err("{{ alert_name }}");
    assert!(
        e.message
            .starts_with("unknown variable or function `alert_name`"),
        "{e}"
    );

    // Loop variables, `loop`, `set` names and globals are known.
    render("{% set n = alerts | length %}{% for a in alerts %}{{ loop.index }}{{ a.status }}{{ n }}{% endfor %}{{ range(2) | list }}{{ now() }}");
}

#[test]
fn errors_only_the_template_causes_fail_at_compile() {
    let e = compile_err("x\n{{ alert.startsAt | regex_replace('(', 'y') }}");
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("invalid regex \"(\""), "{e}");
    assert!(!e.message.contains('\n'), "{e}");

    let e = compile_err("{{ alert.labels.missing | timeformat('%Q') }}");
    assert!(e.message.contains("invalid time format"), "{e}");
    let e = compile_err("{{ alert.startsAt | timeformat('%H', 'Mars/Base') }}");
    assert!(e.message.contains("invalid time zone"), "{e}");
    let e = compile_err("{{ alert.labels.items() }}");
    assert!(e.line == Some(1), "{e}");
    let e = compile_err("{{ receiver | trim_prefix }}");
    assert!(e.message.contains("missing argument"), "{e}");

    // Lenient where payloads differ: a missing label is not an error.
    assert_eq!(render("[{{ alert.labels.nothere }}]"), "[]");
}

#[test]
fn string_filters() {
    assert_eq!(
        render("{{ 'HighErrorRate' | trim_prefix('High') | trim_suffix('Rate') }}"),
        "Error"
    );
    assert_eq!(render("{{ 'abc' | trim_prefix('x') }}"), "abc");
    assert_eq!(
        render("{{ 'abcdef' | truncate(4) }}|{{ 'abc' | truncate(4) }}"),
        "a...|abc"
    );
    assert_eq!(render("{{ 'ééééé' | truncate(3, '…') }}"), "éé…");
    assert_eq!(
        render("{{ 'x' | truncate(1, '...') }}{{ 'xyz' | truncate(1, '...') }}"),
        "x..."
    );
    assert_eq!(
        render(r#"{{ 'say "hi"\n\tnow\\' | json_escape }}"#),
        r#"say \"hi\"\n\tnow\\"#
    );
    assert_eq!(
        render("[{{ alert.labels.nothere | json_escape }}]{{ 5 | json_escape }}"),
        "[]5"
    );
    assert_eq!(render("{{ 'a-b-c' | split('-') | join('+') }}"), "a+b+c");
    assert_eq!(render("{{ 'abcdef' | json_escape(4) }}"), "a...");
    assert_eq!(
        render(r#"{{ 'a"bcdef' | json_escape(6) }}|{{ 'a"b' | json_escape(6) }}"#),
        r#"a\"b...|a\"b"#
    );
    assert_eq!(render("{{ 'ééééé' | json_escape(4) }}"), "é...");
    assert_eq!(render("{{ 'a b' | urlencode }}"), "a%20b");
    // The string fast path writes what minijinja's own filter does.
    for s in [
        "a b",
        "{alertname=\"X\",job=~\"a|b\"}",
        "ü/ß?x=1&y=~2#",
        "-_./~!*()'",
        "",
    ] {
        let v = Value::from(s);
        assert_eq!(
            urlencode(&v).expect("encode").as_str(),
            Some(minijinja::filters::urlencode(&v).expect("builtin").as_str()),
            "{s}"
        );
    }
    assert_eq!(
        render("{{ {'q': 'a b', 'n': 1} | urlencode }}|{{ 5 | urlencode }}|{{ none | urlencode }}"),
        "n=1&q=a%20b|5|"
    );
    // Values other than strings are written as minijinja writes them.
    assert_eq!(
        render("{{ 1 }}|{{ true }}|{{ none }}|{{ [1, 'a'] }}|{{ 1.5 }}"),
        r#"1|True|None|[1, "a"]|1.5"#
    );
    assert_eq!(render("{{ {'k': 'v'} | tojson }}"), r#"{"k":"v"}"#);
    assert_eq!(
        render("{{ \"it's <b> & \\\"q\\\"\" | tojson }}"),
        r#""it's <b> & \"q\"""#
    );
    assert_eq!(
        render("{{ [1] | tojson(indent=2) }}|{{ [1] | tojson(true) }}"),
        "[\n  1\n]|[\n  1\n]"
    );
    assert_eq!(
        render("{{ alert.labels.job | tojson }}{{ alert.nothing | tojson }}"),
        "\"api\"null"
    );
}

#[test]
fn markup_and_matchers() {
    assert_eq!(
        render("{{ 'a < b && \"c\" > d/e' | escape_markup }}"),
        "a &lt; b &amp;&amp; \"c\" &gt; d/e"
    );
    assert_eq!(
        render("{{ 'plain' | escape_markup }}[{{ alert.labels.no | escape_markup }}]"),
        "plain[]"
    );
    assert_eq!(
        render_range("{{ alert | matchers }}", 1..2),
        r#"{alertname="HighErrorRate",instance="10.0.0.6:8080",job="api",namespace="prod",service="checkout",severity="warning"}"#
    );
    assert_eq!(
        render(r#"{{ {'a': 'say "hi"\\', 'b.c': 'x\ny'} | matchers }}"#),
        r#"{a="say \"hi\"\\","b.c"="x\ny"}"#
    );
    assert_eq!(
        render("{{ groupLabels | matchers }}|{{ alert.nothing | matchers }}"),
        r#"{alertname="HighErrorRate"}|{}"#
    );
}

#[test]
fn regex_filters() {
    assert_eq!(
        render(r#"{{ alert.labels.instance | regex_replace(':\d+$', '') }}"#),
        "10.0.0.5"
    );
    assert_eq!(
        render(r#"{{ 'api-7f9c' | regex_replace('^(\w+)-(?P<id>\w+)$', '${id}/$1') }}"#),
        "7f9c/api"
    );
    // regex_match is anchored on both ends.
    assert_eq!(
            render("{{ 'checkout' | regex_match('check') }} {{ 'checkout' | regex_match('check.*') }} {{ 'a|b' | regex_match('a|b') }}"),
            "False True False"
        );
    assert_eq!(render("{{ 'b' | regex_match('a|b') | tojson }}"), "true");
    assert_eq!(
        render(r#"{{ 'took 250ms' | regex_search('\d+ms') }}"#),
        "250ms"
    );
    assert_eq!(render(r#"[{{ 'nothing' | regex_search('\d+') }}]"#), "[]");
    assert_eq!(
        render(r#"{{ 'x' | regex_search('\d') | default('none found') }}"#),
        "none found"
    );
}

#[test]
fn time_filters() {
    assert_eq!(
        render("{{ alert.startsAt | timeformat('%Y-%m-%d %H:%M:%S') }}"),
        "2024-05-01 10:00:00"
    );
    assert_eq!(
        render("{{ '2024-05-01T10:00:00+02:00' | timeformat('%H:%M %z', 'UTC') }}"),
        "08:00 +0000"
    );
    assert_eq!(
        render("{{ '2024-05-01T10:00:00Z' | timeformat('%H:%M', '+05:30') }}"),
        "15:30"
    );
    assert_eq!(
            render("{{ '2024-05-01T10:00:00.5Z' | timeformat('rfc3339') }}|{{ 0 | timeformat('rfc2822') }}"),
            "2024-05-01T10:00:00.5Z|Thu, 01 Jan 1970 00:00:00 +0000"
        );
    assert_eq!(
        render("{{ 'not a time' | timeformat('%H') }}"),
        "not a time"
    );
    assert_eq!(render("{{ alert.startsAt | unixtime }}"), "1714557600");
    assert_eq!(render("{{ 'soon' | unixtime }}"), "soon");

    // Resolved: endsAt - startsAt. Firing: until now, so only its shape is known.
    assert_eq!(render_range("{{ alert | duration }}", 1..2), "45m30s");
    assert_eq!(
        render("{{ '2024-05-01T09:00:00Z' | duration('2024-05-02T10:30:00Z') }}"),
        "1d1h"
    );
    let firing = render_range("{{ alert | duration }}", 0..1);
    assert!(firing.ends_with('h') || firing.contains('d'), "{firing}");

    let an_hour_ago = (OffsetDateTime::now_utc() - time::Duration::minutes(61))
        .format(&Rfc3339)
        .expect("format");
    let since = render(&format!("{{{{ '{an_hour_ago}' | since }}}}"));
    assert!(since == "1h1m" || since == "1h2m", "{since}");
    assert_eq!(render("{{ 'never' | since }}"), "never");
    let now = render("{{ now() }}");
    assert!(OffsetDateTime::parse(&now, &Rfc3339).is_ok(), "{now}");
}

#[test]
fn human_durations() {
    let d = |s: i64| human_duration(time::Duration::seconds(s));
    assert_eq!(d(0), "0s");
    assert_eq!(d(45), "45s");
    assert_eq!(d(330), "5m30s");
    assert_eq!(d(300), "5m");
    assert_eq!(d(3_600), "1h");
    assert_eq!(d(3_605), "1h");
    assert_eq!(d(3_660 + 59), "1h1m");
    assert_eq!(d(90_061), "1d1h");
    assert_eq!(d(-330), "-5m30s");
}

#[test]
fn alert_helpers() {
    assert_eq!(
            render("{% for a in alerts %}{{ severity(a) }}/{{ a | severity }}/{{ alertname(a) }}/{{ a | alertname }} {% endfor %}"),
            "critical/critical/HighErrorRate/HighErrorRate warning/warning/HighErrorRate/HighErrorRate "
        );
    // On a label map too.
    assert_eq!(
        render("{{ severity(alert.labels) }} {{ commonLabels | alertname }}"),
        "critical HighErrorRate"
    );
}

#[test]
fn render_json_names_where_the_output_breaks() {
    let t = Template::compile("t", "{\n  \"a\": \"{{ receiver }}\",\n}").expect("compile");
    match t.render_json(&ctx(0..2)) {
        Err(RenderError::Json {
            line,
            column,
            message,
            excerpt,
        }) => {
            assert_eq!((line, column), (3, 1), "{message}");
            assert_eq!(message, "key must be a string");
            assert_eq!(excerpt, "}");
        }
        other => panic!("{other:?}"),
    }
    let t = Template::compile("t", "{\"a\": {{ receiver }}}").expect("compile");
    let e = t.render_json(&ctx(0..2)).expect_err("bare word");
    assert!(e.to_string().contains("near `{\"a\": sample}`"), "{e}");
    assert!(t.check_json().is_err());

    let t = Template::compile("t", "{\"a\": {{ receiver | tojson }}}").expect("compile");
    assert_eq!(
        t.render_json(&ctx(0..2)).expect("json"),
        r#"{"a": "sample"}"#
    );
    assert!(t.check_json().is_ok());
}

#[test]
fn excerpts_stay_on_char_boundaries() {
    let line = format!("{}x{}", "é".repeat(40), "ü".repeat(40));
    let ex = excerpt(&line, 1, 82);
    assert!(ex.contains('x') && ex.len() <= 64, "{ex}");
    assert_eq!(excerpt("a", 5, 1), "");
}

#[test]
fn no_auto_escaping_whatever_the_name() {
    let t = Template::compile("x.json", "{{ '<a \"b\">' }}").expect("compile");
    assert_eq!(t.render(&ctx(0..1)).expect("render"), "<a \"b\">");
}

#[test]
fn scan_finds_filters_tests_and_names() {
    let refs = scan_refs("{{ a | f1(x | f2) }}\n{% if b is not t1 and c is t2(1) %}{% filter f3 | f4 %}{% endfilter %}{% endif %}{{ d.e }}{% set s1, s2 = y %}{% for k1, k2 in z | f5 %}{% endfor %}{% set s3 | f6 %}{% endset %}");
    let of = |k: RefKind| {
        refs.iter()
            .filter(|r| r.kind == k)
            .map(|r| r.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(of(RefKind::Filter), ["f1", "f2", "f3", "f4", "f5", "f6"]);
    assert_eq!(of(RefKind::Assigned), ["s1", "s2", "k1", "k2", "s3"]);
    assert_eq!(of(RefKind::Test), ["t1", "t2"]);
    let names = of(RefKind::Name);
    assert!(
        names.contains(&"a") && names.contains(&"d") && !names.contains(&"e"),
        "{names:?}"
    );
    assert!(
        names.contains(&"y") && names.contains(&"z") && !names.contains(&"s1"),
        "{names:?}"
    );
    let t1 = refs.iter().find(|r| r.name == "t1").expect("t1");
    assert_eq!(
        line_of("{{ a | f1(x | f2) }}\n{% if b is not t1", t1.offset),
        2
    );
}

// -----------------------------------------------------------------------------------------
// Hostile input: extreme instants, loops without end, panics

/// Every ready-made template, compiled.
fn ready_made_all() -> Vec<Template> {
    super::super::config::BUILTIN_TEMPLATES
        .iter()
        .map(|(n, t)| Template::compile(n, t).unwrap_or_else(|e| panic!("{n}: {e}")))
        .collect()
}

fn payload_with_times(starts: &str, ends: &str, status: &str) -> Vec<u8> {
    let mut body: serde_json::Value = serde_json::from_str(SAMPLE_PAYLOAD).expect("sample");
    for a in body["alerts"].as_array_mut().expect("alerts") {
        a["startsAt"] = starts.into();
        a["endsAt"] = ends.into();
        a["status"] = status.into();
    }
    body.to_string().into_bytes()
}

#[test]
fn instants_at_the_ends_of_the_calendar_render() {
    // `to_offset` panicked on these: 9999-12-31 at -23:59 is in year 10000 in UTC.
    for (starts, ends) in [
        ("9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59-23:59"),
        (
            "9999-12-31T23:59:59.999999999-23:59",
            "0001-01-01T00:00:00Z",
        ),
        ("0000-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"),
        ("0000-01-01T00:00:00+23:59", "0000-01-01T00:00:00+23:59"),
    ] {
        for status in ["firing", "resolved"] {
            let body = payload_with_times(starts, ends, status);
            let n = super::super::exercise::parse_and_render_all(&body);
            assert_eq!(n, 5 * 3, "{starts} {ends} {status}");
        }
    }
    // Shown as sent where the zone cannot show it, converted where it can.
    let t = |v: &str, tz: &str| {
        render(&format!(
            "{{{{ '{v}' | timeformat('%Y-%m-%d %H:%M', '{tz}') }}}}"
        ))
    };
    assert_eq!(
        t("9999-12-31T23:59:59-23:59", "UTC"),
        "9999-12-31T23:59:59-23:59"
    );
    assert_eq!(t("9999-12-31T23:59:59-23:59", "-23:59"), "9999-12-31 23:59");
    assert_eq!(
        t("0000-01-01T00:00:00+23:59", "-01:00"),
        "-0001-12-30 23:01"
    );
    assert_eq!(t("9999-12-31T00:00:00Z", "+05:30"), "9999-12-31 05:30");
    assert_eq!(
            render("{{ '9999-12-31T23:59:59-23:59' | since }} {{ '0000-01-01T00:00:00+23:59' | unixtime }} {{ '0000-01-01T00:00:00+23:59' | duration('9999-12-31T23:59:59-23:59') }}").split(' ').count(),
            3
        );
    assert_eq!(
        render("{{ 253402300799 | timeformat('rfc3339', '+01:00') }}"),
        "253402300799"
    );
    assert_eq!(
        render("{{ -377705116800 | timeformat('rfc2822', 'UTC') }}"),
        "-377705116800"
    );
}

#[test]
fn a_loop_without_end_runs_out_of_fuel() {
    // At compile time, when the sample payload runs it: `zkgate check` ran it for hours.
    let e = compile_err(
        "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
    );
    assert!(e.message.contains("ran more than 5000000 steps"), "{e}");
    // At run time, when only some payloads run it: an error, not a thread held for minutes.
    let t = Template::compile(
            "t",
            "{% for i in range((alerts | length - 2) * 10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
        )
        .expect("the sample payload does not loop");
    let mut body: serde_json::Value = serde_json::from_str(SAMPLE_PAYLOAD).expect("sample");
    let first = body["alerts"][0].clone();
    body["alerts"].as_array_mut().expect("alerts").push(first);
    let p = payload::parse(body.to_string().as_bytes(), &Limits { max_alerts: 10 }).expect("parse");
    let values = PayloadValues::new(&p);
    let e = t
        .render(&RenderContext {
            payload: &values,
            alerts: 0..3,
            destination: &TEAM_SLACK,
        })
        .expect_err("out of fuel");
    assert_eq!(e, RenderError::OutOfFuel);
    assert_eq!(e.kind(), "out_of_fuel");
}

#[test]
fn costly_calls_in_a_loop_run_out_of_work() {
    // Within the fuel, but each pass calls a filter or builds a list: found by the fuzzer
    // (half a million `timeformat` calls kept a trial render busy for minutes).
    for src in [
            "{% for i in range(500) %}{% for j in range(1000) %}{{ alert.startsAt | timeformat('%Y') }}{% endfor %}{% endfor %}",
            "{% for i in range(100000) %}{% set x = range(100000) %}{% endfor %}",
            "{% for i in range(1000) %}{% set x = range(100000) | join %}{% endfor %}",
            "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
        ] {
            let e = compile_err(src);
            assert!(e.message.contains("ran more than"), "{src}: {e}");
        }
    // The same calls, fewer times, are fine.
    assert_eq!(
        render("{{ range(3) | join(',') }}|{{ range(1, 7, 2) | list }}"),
        "0,1,2|[1, 3, 5]"
    );
}

#[test]
fn ready_made_templates_fit_in_the_fuel() {
    // The most a payload may hold by default, each alert with 20 labels and 5 annotations.
    let mut body: serde_json::Value = serde_json::from_str(SAMPLE_PAYLOAD).expect("sample");
    let first = body["alerts"][1].clone();
    body["alerts"] = (0..super::super::config::DEFAULT_MAX_ALERTS)
        .map(|i| {
            let mut a = first.clone();
            for l in 0..20 {
                a["labels"][format!("label_{l}")] = format!("value {i} {l}").into();
            }
            for n in 0..5 {
                a["annotations"][format!("note_{n}")] = "x".repeat(100).into();
            }
            a
        })
        .collect();
    let p =
        payload::parse(body.to_string().as_bytes(), &Limits { max_alerts: 1000 }).expect("parse");
    let values = PayloadValues::new(&p);
    for t in ready_made_all() {
        // A tenth of the fuel: the rest is margin for templates written by users.
        let mut env = t.inner.env.clone();
        env.set_fuel(Some(RENDER_FUEL / 10));
        let ctx = RenderContext {
            payload: &values,
            alerts: 0..p.alerts.len(),
            destination: &TEAM_SLACK,
        };
        let root = context_value(&ctx).expect("context");
        let template = env.get_template(t.name()).expect("template");
        let out = with_work_budget(|| {
            WORK_LEFT.with(|w| w.set(RENDER_WORK / 10));
            template.render(root)
        })
        .unwrap_or_else(|e| panic!("{}: {e}", t.name()));
        assert!(!out.is_empty());
    }
}

#[test]
fn a_panic_in_a_render_is_an_error() {
    let mut t = Template::compile("t", "{{ receiver }}").expect("compile");
    let inner = Arc::get_mut(&mut t.inner).expect("sole owner");
    inner
        .env
        .add_filter("boom", |_: &Value| -> Value { panic!("a filter bug") });
    inner
        .env
        .add_template_owned("t", "{{ receiver | boom }}")
        .expect("add");
    let e = t.render(&ctx(0..2)).expect_err("panicked");
    assert_eq!(e, RenderError::Panic("a filter bug".to_owned()));
    assert_eq!(e.kind(), "panic");
    assert!(
        e.to_string().contains("failed unexpectedly: a filter bug"),
        "{e}"
    );
    // And the template still renders afterwards.
    assert!(t.render(&ctx(0..2)).is_err());
}

const HOSTILE_STRINGS: &[&str] = &[
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59+23:59",
    "0000-01-01T00:00:00+23:59",
    "0000-01-01T00:00:00-23:59",
    "9999-12-31T23:59:59.999999999Z",
    "0001-01-01T00:00:00Z",
    "2024-02-30T00:00:00Z",
    "2024-05-01T10:00:00.1234567891Z",
    "2024-05-01T24:00:00Z",
    "1970-01-01T00:00:60Z",
    "",
    "\u{0}",
    "\"\\",
    "{{ receiver }}{% raw %}",
    "<&>",
    "\n\t\r\u{7}",
    "%Y%n%",
    "résolu ✓ 🚨",
    "\u{202e}",
    "firing",
    "resolved",
    "4",
];

fn hostile_value(rng: &mut fastrand::Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.usize(0..10) {
        0 => json!(i64::MAX),
        1 => json!(i64::MIN),
        2 => json!(u64::MAX),
        3 => json!(1e308),
        4 => json!(null),
        5 => json!([]),
        6 => json!({}),
        7 => json!(true),
        8 => json!("x".repeat(rng.usize(0..3000))),
        _ => json!(HOSTILE_STRINGS[rng.usize(..HOSTILE_STRINGS.len())]),
    }
}

/// JSON pointers of every value under `v`.
fn pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// One random change to a payload: a value replaced by a hostile one (a string more often
/// than not), a key removed or added, an alert copied, or bytes of its text changed.
fn mutate(rng: &mut fastrand::Rng, v: &serde_json::Value) -> Vec<u8> {
    let mut v = v.clone();
    for _ in 0..rng.usize(1..4) {
        let mut ptrs = Vec::new();
        pointers(&v, String::new(), &mut ptrs);
        let at = ptrs[rng.usize(..ptrs.len())].clone();
        match rng.usize(0..10) {
            0..=5 => {
                let new = if rng.bool() {
                    serde_json::Value::from(HOSTILE_STRINGS[rng.usize(..HOSTILE_STRINGS.len())])
                } else {
                    hostile_value(rng)
                };
                if let Some(x) = v.pointer_mut(&at) {
                    *x = new;
                }
            }
            6 => {
                if let Some((parent, key)) = at.rsplit_once('/') {
                    if let Some(serde_json::Value::Object(m)) = v.pointer_mut(parent) {
                        m.remove(&key.replace("~1", "/").replace("~0", "~"));
                    }
                }
            }
            7 => {
                if let Some(serde_json::Value::Object(m)) = v.pointer_mut(&at) {
                    let key = HOSTILE_STRINGS[rng.usize(..HOSTILE_STRINGS.len())];
                    m.insert(key.to_owned(), hostile_value(rng));
                }
            }
            8 => {
                if let Some(serde_json::Value::Array(a)) = v.pointer_mut("/alerts") {
                    if let Some(first) = a.first().cloned() {
                        for _ in 0..rng.usize(1..20) {
                            a.push(first.clone());
                        }
                    }
                }
            }
            _ => {
                let mut text = v.to_string().into_bytes();
                for _ in 0..rng.usize(1..4) {
                    let i = rng.usize(..text.len());
                    text[i] = rng.u8(..);
                }
                return text;
            }
        }
    }
    v.to_string().into_bytes()
}

#[test]
fn random_mutations_of_payloads_never_panic() {
    let seeds: Vec<serde_json::Value> = [
        SAMPLE_PAYLOAD.as_bytes(),
        &payload_with_times("2024-05-01T09:00:00Z", "2024-05-01T09:45:30Z", "resolved"),
    ]
    .iter()
    .map(|b| serde_json::from_slice(b).expect("seed"))
    .collect();
    let mut rng = fastrand::Rng::with_seed(11);
    let (mut parsed, mut messages) = (0, 0);
    for case in 0..2_000 {
        let body = mutate(&mut rng, &seeds[case % seeds.len()]);
        let n = super::super::exercise::parse_and_render_all(&body);
        parsed += usize::from(n > 0);
        messages += n;
    }
    // Enough of them are payloads to reach the templates.
    assert!(parsed > 500, "{parsed} of 2000 parsed");
    assert!(messages > 5_000, "{messages} messages");
}

// -----------------------------------------------------------------------------------------
// The ready-made templates under conf/templates

fn ready_made(file: &str, source: &str, alerts: Range<usize>) -> serde_json::Value {
    let t = Template::compile(file, source).unwrap_or_else(|e| panic!("{file}: {e}"));
    t.check_json().unwrap_or_else(|e| panic!("{file}: {e}"));
    let out = t
        .render_json(&ctx(alerts))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_json::from_str(&out).expect("render_json checked it")
}

#[test]
fn slack_template() {
    let v = ready_made(
        "slack.json.j2",
        include_str!("../../../../conf/templates/slack.json.j2"),
        0..2,
    );
    assert_eq!(v["text"], "[FIRING:1, RESOLVED:1] HighErrorRate");
    let att = v["attachments"].as_array().expect("attachments");
    assert_eq!(att.len(), 2);
    assert_eq!(att[0]["color"], "#d00000");
    assert_eq!(att[1]["color"], "#2eb886");
    let blocks = att[0]["blocks"].as_array().expect("blocks");
    let head = blocks[0]["text"]["text"].as_str().expect("text");
    assert!(
        head.starts_with("*[FIRING] HighErrorRate* · critical\n5xx ratio above 5%"),
        "{head}"
    );
    assert_eq!(
        blocks[2]["text"]["text"],
        "*alertname*: HighErrorRate\n*instance*: 10.0.0.5:8080\n*job*: api\n\
             *namespace*: prod\n*service*: checkout\n*severity*: critical"
    );
    let actions = blocks.last().expect("actions");
    assert_eq!(actions["type"], "actions");
    let urls: Vec<&str> = actions["elements"]
        .as_array()
        .expect("elements")
        .iter()
        .map(|b| b["url"].as_str().expect("url"))
        .collect();
    assert_eq!(
        urls[0],
        "http://prometheus.example.com:9090/graph?g0.expr=rate"
    );
    assert_eq!(urls[1], "https://runbooks.example.com/high-error-rate");
    assert!(urls[2].starts_with("http://alertmanager.example.com:9093/#/silences/new?filter=%7Balertname%3D%22HighErrorRate%22%2Cinstance"), "{}", urls[2]);
    let ctx_line = att[1]["blocks"][3]["elements"][0]["text"]
        .as_str()
        .expect("context");
    assert_eq!(
        ctx_line,
        "Started 2024-05-01 09:00:00 UTC · resolved after 45m30s"
    );

    let one = ready_made(
        "slack.json.j2",
        include_str!("../../../../conf/templates/slack.json.j2"),
        1..2,
    );
    assert_eq!(one["text"], "[RESOLVED:1] HighErrorRate");
}

#[test]
fn teams_template() {
    let v = ready_made(
        "teams.json.j2",
        include_str!("../../../../conf/templates/teams.json.j2"),
        0..2,
    );
    assert_eq!(v["type"], "message");
    let att = &v["attachments"][0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let card = &att["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4");
    let body = card["body"].as_array().expect("body");
    assert_eq!(body[0]["text"], "[FIRING:1, RESOLVED:1] HighErrorRate");
    assert_eq!(body.len(), 3);
    assert_eq!(body[1]["style"], "attention");
    assert_eq!(body[2]["style"], "good");
    let facts = body[1]["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["type"] == "FactSet")
        .expect("facts");
    assert_eq!(facts["facts"].as_array().expect("facts").len(), 2 + 6);
    assert_eq!(
        card["actions"][0]["url"],
        "http://alertmanager.example.com:9093"
    );
}

#[test]
fn teams_template_caps_the_card_at_ten_alerts() {
    let mut body: serde_json::Value = serde_json::from_str(SAMPLE_PAYLOAD).expect("sample");
    let first = body["alerts"][0].clone();
    body["alerts"] = serde_json::Value::Array(
        (0..12)
            .map(|i| {
                let mut a = first.clone();
                a["labels"]["instance"] = format!("10.0.0.{i}:8080").into();
                a
            })
            .collect(),
    );
    let p = payload::parse(body.to_string().as_bytes(), &Limits { max_alerts: 20 }).expect("parse");
    let vars = BTreeMap::new();
    let t = Template::compile(
        "teams",
        include_str!("../../../../conf/templates/teams.json.j2"),
    )
    .expect("compile");
    let out = t
        .render_json(&RenderContext {
            payload: &PayloadValues::new(&p),
            alerts: 0..12,
            destination: &DestinationValues::new("d", &vars),
        })
        .expect("render");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let body = v["attachments"][0]["content"]["body"]
        .as_array()
        .expect("body");
    assert_eq!(body.len(), 1 + 10 + 1);
    assert_eq!(body[11]["text"], "2 more alerts not shown");
}

#[test]
fn googlechat_template() {
    let v = ready_made(
        "googlechat.json.j2",
        include_str!("../../../../conf/templates/googlechat.json.j2"),
        0..2,
    );
    assert_eq!(v["text"], "[FIRING:1, RESOLVED:1] HighErrorRate");
    assert_eq!(v["thread"]["threadKey"], sample_payload().group_key);
    let card = &v["cardsV2"][0];
    assert_eq!(card["cardId"], "alertmanager");
    assert_eq!(
        card["card"]["header"]["title"],
        "[FIRING:1, RESOLVED:1] HighErrorRate"
    );
    let sections = card["card"]["sections"].as_array().expect("sections");
    assert_eq!(sections.len(), 2);
    assert_eq!(sections[1]["header"], "RESOLVED · HighErrorRate · warning");
    let widgets = sections[0]["widgets"].as_array().expect("widgets");
    assert!(widgets[0]["textParagraph"]["text"]
        .as_str()
        .expect("text")
        .contains("<b>FIRING</b>"));
    assert!(widgets[2]["decoratedText"]["text"]
        .as_str()
        .expect("text")
        .contains("instance=10.0.0.5:8080"));
    assert_eq!(
        widgets[3]["buttonList"]["buttons"][0]["onClick"]["openLink"]["url"],
        "http://prometheus.example.com:9090/graph?g0.expr=rate"
    );
}

#[test]
fn googlechat_threads_by_group_alert_or_not_at_all() {
    let t = Template::compile(
        "googlechat",
        include_str!("../../../../conf/templates/googlechat.json.j2"),
    )
    .expect("compile");
    let values = PayloadValues::new(&sample_payload());
    let thread = |by: &str| {
        let vars = BTreeMap::from([("thread_by".to_owned(), by.to_owned())]);
        let out = t
            .render_json(&RenderContext {
                payload: &values,
                alerts: 1..2,
                destination: &DestinationValues::new("d", &vars),
            })
            .expect("render");
        serde_json::from_str::<serde_json::Value>(&out).expect("json")["thread"].clone()
    };
    assert_eq!(thread("group")["threadKey"], sample_payload().group_key);
    assert_eq!(
        thread("alert")["threadKey"],
        sample_payload().alerts[1].fingerprint
    );
    assert!(thread("none").is_null());
}

#[test]
fn pagerduty_template() {
    let src = include_str!("../../../../conf/templates/pagerduty.json.j2");
    let trigger = ready_made("pagerduty.json.j2", src, 0..1);
    assert_eq!(trigger["routing_key"], "sample-routing-key");
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], "c1a2b3d4e5f60718");
    let p = &trigger["payload"];
    assert_eq!(p["summary"], "[HighErrorRate] 5xx ratio above 5%");
    assert_eq!(p["source"], "10.0.0.5:8080");
    assert_eq!(p["severity"], "critical");
    assert_eq!(p["timestamp"], "2024-05-01T10:00:00.123456789Z");
    assert_eq!(p["custom_details"]["labels"]["service"], "checkout");
    assert_eq!(
        trigger["links"][1]["href"],
        "https://runbooks.example.com/high-error-rate"
    );
    assert_eq!(
        trigger["client_url"],
        "http://alertmanager.example.com:9093"
    );

    let resolve = ready_made("pagerduty.json.j2", src, 1..2);
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(
        resolve["dedup_key"],
        sample_payload().alerts[1].fingerprint.as_str()
    );
    assert!(resolve.get("payload").is_none());
}

#[test]
fn generic_template() {
    let src = include_str!("../../../../conf/templates/generic.json.j2");
    let v = ready_made("generic.json.j2", src, 0..2);
    let payload = sample_payload();
    // The whole group comes out as Alertmanager sent it.
    assert_eq!(v, serde_json::to_value(payload).expect("serialize"));
    // One resolved alert of a firing group: only it, with the status it has.
    let one = ready_made("generic.json.j2", src, 1..2);
    assert_eq!(one["status"], "resolved");
    assert_eq!(one["alerts"].as_array().expect("alerts").len(), 1);
    assert_eq!(one["alerts"][0]["labels"]["instance"], "10.0.0.6:8080");
}
