//! Request-target normalization: the one form of a path that routes are matched against and that
//! the upstream receives, so that the route that matched and the backend always agree on what
//! the path is. A listener's `path:` section chooses how the ambiguous parts are handled.
//!
//! In order:
//! 1. The target must be origin-form (`/...`) or absolute-form (`http://host/...`, whose
//!    authority then stands for the host). Anything else (`admin`, `*admin`, `\admin`, a target
//!    that reached us as ` /admin`) is refused.
//! 2. Percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every other
//!    escape is kept, with its hex in upper case. A bad escape, or one that stands for a control
//!    character (NUL included), is refused, as is a raw control character.
//! 3. `%2F` is refused, kept as an escape that never separates segments, or decoded to `/`
//!    (`encoded_slashes`); a backslash, raw or `%5C`, is refused or kept as `%5C` (`backslash`).
//! 4. Repeated slashes are merged (`merge_slashes`, as nginx's `merge_slashes on`).
//! 5. `.` and `..` segments are resolved (RFC 3986 §5.2.4), encoded ones included; `..` never
//!    climbs above the root.
//! 6. Bytes a path may not hold raw (space, `"`, `<`, non-ASCII, ...) are percent-encoded.
//!
//! The result is idempotent: normalizing a normalized path changes nothing. A path that needs
//! none of this, which is nearly every path, is borrowed as it is.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// A listener's `path:` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PathSection {
    /// Collapse `//` into `/` (default true).
    pub merge_slashes: Option<bool>,
    /// What `%2F` in a path means (default `reject`).
    pub encoded_slashes: Option<EncodedSlashes>,
    /// What a backslash, raw or `%5C`, means (default `reject`).
    pub backslash: Option<Backslash>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlashes {
    /// 400: a backend that decodes `%2F` would otherwise see segments the routes never did.
    #[default]
    Reject,
    /// Kept as `%2F`, part of its segment: `/a%2Fb` matches neither `/a/` nor `/a/b`.
    Keep,
    /// Decoded to `/` before matching and forwarding: `/a%2Fb` is `/a/b` for both.
    Decode,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Backslash {
    /// 400: some backends take a backslash for a slash.
    #[default]
    Reject,
    /// Forwarded as `%5C`, part of its segment.
    Keep,
}

/// How a listener normalizes paths, built from its `path:` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathPolicy {
    pub merge_slashes: bool,
    pub encoded_slashes: EncodedSlashes,
    pub backslash: Backslash,
}

impl Default for PathPolicy {
    fn default() -> Self {
        PathPolicy {
            merge_slashes: true,
            encoded_slashes: EncodedSlashes::Reject,
            backslash: Backslash::Reject,
        }
    }
}

impl PathPolicy {
    /// Everything kept that can be kept: the policy under which the most paths are normal.
    pub const LENIENT: PathPolicy = PathPolicy {
        merge_slashes: false,
        encoded_slashes: EncodedSlashes::Keep,
        backslash: Backslash::Keep,
    };
}

impl PathSection {
    pub fn build(&self) -> PathPolicy {
        let d = PathPolicy::default();
        PathPolicy {
            merge_slashes: self.merge_slashes.unwrap_or(d.merge_slashes),
            encoded_slashes: self.encoded_slashes.unwrap_or(d.encoded_slashes),
            backslash: self.backslash.unwrap_or(d.backslash),
        }
    }
}

/// Why a request target was refused (always a 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Neither `/path` nor `http(s)://authority/path`.
    NotOriginForm,
    /// A control character, raw or percent-encoded (NUL included).
    ControlCharacter,
    /// `%` not followed by two hex digits.
    BadEscape,
    EncodedSlash,
    Backslash,
    /// An absolute-form target with no host, or with user info.
    BadAuthority,
}

impl Refusal {
    /// The body of the 400 answer.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NotOriginForm => "bad request: the request target must start with /\n",
            Refusal::ControlCharacter => "bad request: control character in the path\n",
            Refusal::BadEscape => "bad request: malformed percent-encoding in the path\n",
            Refusal::EncodedSlash => "bad request: encoded slash (%2F) in the path\n",
            Refusal::Backslash => "bad request: backslash in the path\n",
            Refusal::BadAuthority => "bad request: malformed absolute-form target\n",
        }
    }
}

/// A request target, taken apart and normalized.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// The normalized path: what routes match and the upstream receives.
    pub path: Cow<'a, str>,
    /// The query as received, without its `?`.
    pub query: Option<&'a str>,
    /// The authority of an absolute-form target; it stands for the host.
    pub authority: Option<&'a str>,
}

impl Target<'_> {
    /// Whether the target the upstream gets differs from the one the client sent.
    pub fn changed(&self) -> bool {
        matches!(self.path, Cow::Owned(_)) || self.authority.is_some()
    }

    /// The origin-form target for the upstream: the normalized path and the query.
    pub fn origin_form(&self) -> String {
        match self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.to_string(),
        }
    }
}

/// Normalizes a raw request target (`RequestHeader::raw_path`): see the module docs.
pub fn normalize<'a>(raw: &'a [u8], policy: &PathPolicy) -> Result<Target<'a>, Refusal> {
    // Raw bytes are checked before anything is taken apart: a control character anywhere in
    // the target (query included) is refused, and `#` never belongs in a request target.
    if raw.iter().any(|&b| b.is_ascii_control() || b == b'#') {
        return Err(Refusal::ControlCharacter);
    }
    let (authority, rest) = split_absolute_form(raw)?;
    if rest.first() != Some(&b'/') {
        return Err(Refusal::NotOriginForm);
    }
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    // Only bytes a path may hold raw, checked above for controls, are left: the target came
    // through Pingora's request-line parser, which refuses or escapes the rest, but the query
    // is forwarded as it came, so it must be text.
    let query = match query {
        Some(q) => Some(std::str::from_utf8(q).map_err(|_| Refusal::ControlCharacter)?),
        None => None,
    };
    let path = if needs_work(path, policy) {
        Cow::Owned(rewrite(path, policy)?)
    } else {
        // `needs_work` found only bytes that are ASCII and allowed raw.
        Cow::Borrowed(std::str::from_utf8(path).map_err(|_| Refusal::ControlCharacter)?)
    };
    Ok(Target {
        path,
        query,
        authority,
    })
}

/// Splits `http://authority/path` into its authority and the rest; any other target is all
/// rest.
fn split_absolute_form(raw: &[u8]) -> Result<(Option<&str>, &[u8]), Refusal> {
    let after = [&b"http://"[..], b"https://"].iter().find_map(|scheme| {
        (raw.len() >= scheme.len() && raw[..scheme.len()].eq_ignore_ascii_case(scheme))
            .then(|| &raw[scheme.len()..])
    });
    let Some(after) = after else {
        return Ok((None, raw));
    };
    let end = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if authority.is_empty() || authority.contains(&b'@') {
        return Err(Refusal::BadAuthority);
    }
    let authority = std::str::from_utf8(authority).map_err(|_| Refusal::BadAuthority)?;
    // `http://host` has the root path. `http://host?q` is rare enough to be refused as not
    // origin-form rather than given a rooted copy.
    Ok((Some(authority), if rest.is_empty() { b"/" } else { rest }))
}

/// Whether a path byte may stand raw in a normalized path: pchar less `%`, plus `/`. A table,
/// since every byte of every request's path is looked up.
fn allowed_raw(b: u8) -> bool {
    ALLOWED_RAW[b as usize]
}

const ALLOWED_RAW: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        b += 1;
    }
    t
};

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `path` differs from its normal form, or must be refused: one pass, no allocation.
fn needs_work(path: &[u8], policy: &PathPolicy) -> bool {
    let mut prev = 0u8;
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            if !escape_in_normal_form(path.get(i + 1..i + 3), policy) {
                return true;
            }
            prev = b'%';
            i += 3;
            continue;
        }
        if !allowed_raw(b) {
            // A backslash, non-ASCII, or a character that must be escaped.
            return true;
        }
        if prev == b'/' {
            if b == b'/' && policy.merge_slashes {
                return true;
            }
            if b == b'.' {
                // `/.` or `/..` ending a segment.
                let dots = if path.get(i + 1) == Some(&b'.') { 2 } else { 1 };
                if matches!(path.get(i + dots), None | Some(b'/')) {
                    return true;
                }
            }
        }
        prev = b;
        i += 1;
    }
    false
}

/// Whether the two hex digits after a `%` are what normalizing would leave: upper case, for a
/// byte that is neither unreserved nor a control, and a slash or backslash only where kept.
fn escape_in_normal_form(digits: Option<&[u8]>, policy: &PathPolicy) -> bool {
    let Some(&[hi, lo]) = digits else {
        return false;
    };
    let (Some(h), Some(l)) = (hex(hi), hex(lo)) else {
        return false;
    };
    let c = h << 4 | l;
    !hi.is_ascii_lowercase()
        && !lo.is_ascii_lowercase()
        && !unreserved(c)
        && !c.is_ascii_control()
        && match c {
            b'/' => policy.encoded_slashes == EncodedSlashes::Keep,
            b'\\' => policy.backslash == Backslash::Keep,
            _ => true,
        }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 15) as usize] as char);
}

/// The slow path: decodes, checks and escapes into segments, then resolves them.
fn rewrite(path: &[u8], policy: &PathPolicy) -> Result<String, Refusal> {
    // First the bytes, one segment per `/` (a decoded `%2F` included when it is decoded).
    let mut decoded = String::with_capacity(path.len() + 8);
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        i += 1;
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                path.get(i).copied().and_then(hex),
                path.get(i + 1).copied().and_then(hex),
            ) else {
                return Err(Refusal::BadEscape);
            };
            i += 2;
            let c = hi << 4 | lo;
            match c {
                _ if c.is_ascii_control() => return Err(Refusal::ControlCharacter),
                _ if unreserved(c) => decoded.push(c as char),
                b'/' => match policy.encoded_slashes {
                    EncodedSlashes::Reject => return Err(Refusal::EncodedSlash),
                    EncodedSlashes::Keep => decoded.push_str("%2F"),
                    EncodedSlashes::Decode => decoded.push('/'),
                },
                b'\\' => match policy.backslash {
                    Backslash::Reject => return Err(Refusal::Backslash),
                    Backslash::Keep => decoded.push_str("%5C"),
                },
                _ => push_escaped(&mut decoded, c),
            }
        } else if b == b'\\' {
            match policy.backslash {
                Backslash::Reject => return Err(Refusal::Backslash),
                Backslash::Keep => decoded.push_str("%5C"),
            }
        } else if allowed_raw(b) {
            decoded.push(b as char);
        } else {
            push_escaped(&mut decoded, b);
        }
    }
    Ok(resolve_segments(&decoded, policy.merge_slashes))
}

/// RFC 3986 §5.2.4 on a path that starts with `/`, with empty segments dropped (but a trailing
/// one) when merging slashes.
fn resolve_segments(path: &str, merge_slashes: bool) -> String {
    let mut out = String::with_capacity(path.len());
    let segments = path.strip_prefix('/').unwrap_or(path).split('/');
    let mut segments = segments.peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." | ".." => {
                if seg == ".." {
                    // Drop the last output segment, `/` included; at the root, nothing.
                    let cut = out.rfind('/').unwrap_or(0);
                    out.truncate(cut);
                }
                if last {
                    out.push('/');
                }
            }
            "" if merge_slashes && !last => {}
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The properties a fuzzer checks on any input (`fuzz/fuzz_targets/path.rs`, and the unit tests
/// on generated inputs): under every policy, a normalized path is in normal form, normalizing it
/// again changes nothing, and unless escaped slashes are kept, a backend that decodes it sees the
/// same segments the route table matched, so `/admin` in any spelling is matched as `/admin`.
#[doc(hidden)]
pub fn check_invariants(raw: &[u8]) -> Result<(), String> {
    let policies = [
        PathPolicy::default(),
        PathPolicy::LENIENT,
        PathPolicy {
            merge_slashes: true,
            encoded_slashes: EncodedSlashes::Decode,
            backslash: Backslash::Keep,
        },
    ];
    for policy in policies {
        let Ok(t) = normalize(raw, &policy) else {
            continue;
        };
        let path = t.path.as_ref();
        let fail = |why: &str| Err(format!("{why}: {raw:?} -> {path:?} under {policy:?}"));
        let bytes = path.as_bytes();
        if bytes.first() != Some(&b'/') {
            return fail("no leading /");
        }
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'%' {
                let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return fail("cut escape");
                };
                let (Some(h), Some(l)) = (hex(hi), hex(lo)) else {
                    return fail("bad escape");
                };
                if hi.is_ascii_lowercase() || lo.is_ascii_lowercase() || unreserved(h << 4 | l) {
                    return fail("escape not in normal form");
                }
            } else if !allowed_raw(b) {
                return fail("raw byte that must be escaped");
            }
        }
        if policy.merge_slashes && path.contains("//") {
            return fail("repeated slashes");
        }
        if path.split('/').any(|s| s == "." || s == "..") {
            return fail("dot segment");
        }
        match normalize(path.as_bytes(), &policy) {
            Ok(again) if again.path == path && !again.changed() => {}
            other => return fail(&format!("not idempotent: {other:?}")),
        }
        if policy.encoded_slashes != EncodedSlashes::Keep {
            // A backend that decodes every escape: no new separator, no new dot segment.
            let mut decoded = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    decoded
                        .push(hex(bytes[i + 1]).unwrap_or(0) << 4 | hex(bytes[i + 2]).unwrap_or(0));
                    i += 3;
                } else {
                    decoded.push(bytes[i]);
                    i += 1;
                }
            }
            let segments = |p: &[u8]| p.iter().filter(|&&b| b == b'/').count();
            if segments(&decoded) != segments(bytes) {
                return fail("decoding makes new segments");
            }
            if decoded
                .split(|&b| b == b'/')
                .any(|s| s == b"." || s == b"..")
            {
                return fail("decoding makes a dot segment");
            }
            if decoded == b"/admin" && path != "/admin" {
                return fail("a backend serves /admin for a path not matched as /admin");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, Refusal> {
        normalize(raw.as_bytes(), &PathPolicy::default()).map(|t| t.origin_form())
    }

    fn with(raw: &str, policy: PathPolicy) -> Result<String, Refusal> {
        normalize(raw.as_bytes(), &policy).map(|t| t.origin_form())
    }

    #[test]
    fn the_probe_list_all_becomes_admin_or_is_refused() {
        for raw in [
            "/%61dmin",
            "/adm%69n",
            "/ADM%69n/../admin",
            "//admin",
            "///admin",
            "/%2e%2e/admin",
            "/x/%2e%2e/admin",
            "/x/%2E%2E/admin",
            "/x/.%2e/admin",
            "/./admin",
            "http://a/%61dmin",
            "HTTP://a//admin",
        ] {
            assert_eq!(norm(raw).as_deref(), Ok("/admin"), "{raw}");
        }
        for (raw, why) in [
            ("/x/..%2fadmin", Refusal::EncodedSlash),
            ("/x%2f..%2fadmin", Refusal::EncodedSlash),
            ("/%2fadmin", Refusal::EncodedSlash),
            ("admin", Refusal::NotOriginForm),
            ("\\admin", Refusal::NotOriginForm),
            ("/\\admin", Refusal::Backslash),
            ("/%5cadmin", Refusal::Backslash),
            ("/admin%00", Refusal::ControlCharacter),
            ("/admin%00.html", Refusal::ControlCharacter),
            ("/admin%0a", Refusal::ControlCharacter),
            ("/admin\x7f", Refusal::ControlCharacter),
            ("/admin\0", Refusal::ControlCharacter),
            ("*admin", Refusal::NotOriginForm),
            ("*", Refusal::NotOriginForm),
            ("%20/admin", Refusal::NotOriginForm),
            ("/admin%", Refusal::BadEscape),
            ("/admin%4", Refusal::BadEscape),
            ("/admin%zz", Refusal::BadEscape),
            ("/a#frag", Refusal::ControlCharacter),
            ("http:///admin", Refusal::BadAuthority),
            ("http://u@a/admin", Refusal::BadAuthority),
        ] {
            assert_eq!(norm(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn encoded_slashes_and_backslashes_follow_the_policy() {
        let keep = PathPolicy {
            encoded_slashes: EncodedSlashes::Keep,
            backslash: Backslash::Keep,
            ..PathPolicy::default()
        };
        // Kept escapes are part of their segment: `..%2F` is no dot segment.
        assert_eq!(with("/x/..%2fadmin", keep).unwrap(), "/x/..%2Fadmin");
        assert_eq!(with("/x%2f..%2fadmin", keep).unwrap(), "/x%2F..%2Fadmin");
        assert_eq!(with("/a\\b", keep).unwrap(), "/a%5Cb");
        assert_eq!(with("/a%5cb", keep).unwrap(), "/a%5Cb");
        let decode = PathPolicy {
            encoded_slashes: EncodedSlashes::Decode,
            ..PathPolicy::default()
        };
        assert_eq!(with("/x/..%2fadmin", decode).unwrap(), "/admin");
        assert_eq!(with("/x%2f..%2fadmin", decode).unwrap(), "/admin");
        assert_eq!(with("/%2fadmin", decode).unwrap(), "/admin");
    }

    #[test]
    fn merging_slashes_is_an_option() {
        let keep = PathPolicy {
            merge_slashes: false,
            ..PathPolicy::default()
        };
        assert_eq!(with("//admin", keep).unwrap(), "//admin");
        assert_eq!(with("/a//b/", keep).unwrap(), "/a//b/");
        assert_eq!(with("/a//../b", keep).unwrap(), "/a/b");
        assert_eq!(norm("/a//b//").unwrap(), "/a/b/");
    }

    #[test]
    fn dot_segments_resolve_as_rfc_3986_says() {
        for (raw, want) in [
            ("/a/b", "/a/b"),
            ("/public/../admin", "/admin"),
            ("/a/./b/", "/a/b/"),
            ("/../../etc", "/etc"),
            ("/a/..", "/"),
            ("/a/b/.", "/a/b/"),
            ("/a..b/c", "/a..b/c"),
            ("/.hidden/..x", "/.hidden/..x"),
            ("/", "/"),
            ("/..", "/"),
            ("/a/b/../../..", "/"),
        ] {
            assert_eq!(norm(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn escapes_are_upper_cased_and_raw_specials_escaped() {
        assert_eq!(norm("/a%c3%a9").unwrap(), "/a%C3%A9");
        assert_eq!(norm("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(norm("/a b").unwrap(), "/a%20b");
        assert_eq!(norm("/a\"<>").unwrap(), "/a%22%3C%3E");
        assert_eq!(
            normalize("/caf\u{e9}".as_bytes(), &PathPolicy::default())
                .unwrap()
                .path,
            "/caf%C3%A9"
        );
    }

    #[test]
    fn queries_are_kept_and_absolute_form_gives_the_authority() {
        let t = normalize(b"/a/../b?x=%2F&y=..", &PathPolicy::default()).unwrap();
        assert_eq!((t.path.as_ref(), t.query), ("/b", Some("x=%2F&y=..")));
        let t = normalize(b"http://example.com:8080/a?q", &PathPolicy::default()).unwrap();
        assert_eq!(t.authority, Some("example.com:8080"));
        assert_eq!(t.origin_form(), "/a?q");
        assert!(t.changed());
        let t = normalize(b"http://example.com", &PathPolicy::default()).unwrap();
        assert_eq!(t.origin_form(), "/");
    }

    #[test]
    fn common_paths_are_borrowed() {
        for raw in [
            "/",
            "/api/v1/users/42",
            "/a-b_c~d.e/f;g=h",
            "/x/..y/.z",
            "/caf%C3%A9/%20x",
        ] {
            let t = normalize(raw.as_bytes(), &PathPolicy::default()).unwrap();
            assert!(matches!(t.path, Cow::Borrowed(_)), "{raw}");
            assert!(!t.changed());
        }
    }

    #[test]
    fn invariants_hold_on_generated_paths() {
        // A deterministic stream of short targets over the bytes that matter.
        const ALPHABET: &[u8] = b"/.%2eEfF5cCaA0d\\ ?#\x00\x7f~-_admin";
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200_000 {
            let len = (next() % 16) as usize;
            let mut raw = vec![b'/'];
            raw.extend((0..len).map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize]));
            if let Err(e) = check_invariants(&raw) {
                panic!("{e}");
            }
        }
        for raw in [
            "/%2e%2e/admin",
            "/x/.%2e/admin",
            "//admin",
            "/%61dmin",
            "/a%2F..%2F",
            "/a/%2e%2E/b//c/./%7e%41%2f%5c\\x y%zz",
            "/x/..%2f..%2fadmin",
            "/%2e%2e%2f%2e%2e/",
            "//..//.//",
            "/a%25b",
        ] {
            check_invariants(raw.as_bytes()).unwrap();
        }
    }
}
