//! Request rewrites prepared at config time: the path (regex with captures, or strip and add a
//! prefix) and header edits for the upstream request and the downstream response.

use http::header::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use regex::Regex;

#[derive(Debug)]
pub enum PathRewrite {
    /// `replace` uses the regex crate's syntax (`$1`, `${name}`). A `?` in the replacement
    /// sets the query string and drops the client's.
    Regex { pattern: Regex, replace: Box<str> },
    Prefix {
        strip: Option<Box<str>>,
        add: Option<Box<str>>,
    },
}

impl PathRewrite {
    /// The new path and query, or `None` when the rewrite leaves the request as it is.
    pub fn apply(&self, path: &str, query: Option<&str>) -> Option<String> {
        let new_path = match self {
            PathRewrite::Regex { pattern, replace } => {
                if !pattern.is_match(path) {
                    return None;
                }
                let out = pattern.replacen(path, 1, replace.as_ref());
                if out.contains('?') {
                    return Some(out.into_owned());
                }
                out
            }
            PathRewrite::Prefix { strip, add } => {
                let mut rest = path;
                if let Some(strip) = strip {
                    match path.strip_prefix(strip.as_ref()) {
                        Some(r) => rest = r,
                        None if add.is_none() => return None,
                        None => {}
                    }
                }
                let add = add.as_deref().unwrap_or("");
                let mut out = String::with_capacity(add.len() + rest.len() + 1);
                out.push_str(add.trim_end_matches('/'));
                if !rest.starts_with('/') {
                    out.push('/');
                }
                out.push_str(rest);
                out.into()
            }
        };
        let mut out = new_path.into_owned();
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

/// Checks that every `$group` reference in `replace` names a group of `pattern`, catching the
/// regex crate's trap where `$1a` means a group named `1a` and expands to nothing.
pub fn check_replacement(pattern: &Regex, replace: &str) -> Result<(), String> {
    let names: Vec<&str> = pattern.capture_names().flatten().collect();
    let groups = pattern.captures_len();
    let bytes = replace.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let (name, next) = if bytes.get(i + 1) == Some(&b'{') {
            match replace[i + 2..].find('}') {
                Some(end) => (&replace[i + 2..i + 2 + end], i + 3 + end),
                None => return Err(format!("unclosed `${{` at byte {i}")),
            }
        } else {
            let len = replace[i + 1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(replace.len() - i - 1);
            (&replace[i + 1..i + 1 + len], i + 1 + len)
        };
        if name.is_empty() {
            return Err(format!(
                "`$` at byte {i} names no group (write `$$` for a literal `$`)"
            ));
        }
        let known = match name.parse::<usize>() {
            Ok(n) => n < groups,
            Err(_) => names.contains(&name),
        };
        if !known {
            return Err(format!(
                "`{}` names no capture group of the pattern (it has {} numbered group(s){}); write `${{1}}x` to follow a group with text",
                &replace[i..next],
                groups - 1,
                if names.is_empty() { String::new() } else { format!(" and named {}", names.join(", ")) }
            ));
        }
        i = next;
    }
    Ok(())
}

/// Header edits applied in the order remove, set, add.
#[derive(Debug, Default)]
pub struct HeaderOps {
    pub remove: Box<[HeaderName]>,
    pub set: Box<[(HeaderName, HeaderValue)]>,
    pub add: Box<[(HeaderName, HeaderValue)]>,
}

impl HeaderOps {
    /// No header is removed, set or added.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply_request(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        self.apply(req)
    }

    pub fn apply_response(&self, resp: &mut ResponseHeader) -> pingora::Result<()> {
        self.apply(resp)
    }

    fn apply(&self, h: &mut impl EditHeaders) -> pingora::Result<()> {
        for name in self.remove.iter() {
            h.remove(name);
        }
        for (name, value) in self.set.iter() {
            h.insert(name, value)?;
        }
        for (name, value) in self.add.iter() {
            h.append(name, value)?;
        }
        Ok(())
    }
}

/// Pingora's request and response headers edit alike but share no trait.
trait EditHeaders {
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora::Result<()>;
    fn append(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora::Result<()>;
}

macro_rules! edit_headers {
    ($t:ty) => {
        impl EditHeaders for $t {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn insert(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora::Result<()> {
                self.insert_header(name.clone(), value.clone())
            }
            fn append(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora::Result<()> {
                self.append_header(name.clone(), value.clone()).map(|_| ())
            }
        }
    };
}
edit_headers!(RequestHeader);
edit_headers!(ResponseHeader);

#[cfg(test)]
mod tests {
    use super::*;

    fn re(p: &str, r: &str) -> PathRewrite {
        PathRewrite::Regex {
            pattern: Regex::new(p).unwrap(),
            replace: r.into(),
        }
    }

    #[test]
    fn regex_with_captures_keeps_query() {
        let rw = re("^/api/(?P<rest>.*)$", "/v1/${rest}");
        assert_eq!(
            rw.apply("/api/users/7", Some("a=1&b=2")).as_deref(),
            Some("/v1/users/7?a=1&b=2")
        );
        assert_eq!(rw.apply("/other", Some("a=1")), None);
        let rw = re("^/u/([0-9]+)$", "/users?id=$1");
        assert_eq!(
            rw.apply("/u/42", Some("x=1")).as_deref(),
            Some("/users?id=42")
        );
    }

    #[test]
    fn prefixes() {
        let rw = PathRewrite::Prefix {
            strip: Some("/api".into()),
            add: None,
        };
        assert_eq!(rw.apply("/api/x", None).as_deref(), Some("/x"));
        assert_eq!(rw.apply("/api", Some("q")).as_deref(), Some("/?q"));
        assert_eq!(rw.apply("/web/x", None), None);
        let rw = PathRewrite::Prefix {
            strip: Some("/api".into()),
            add: Some("/v2/".into()),
        };
        assert_eq!(rw.apply("/api/x", None).as_deref(), Some("/v2/x"));
        assert_eq!(rw.apply("/web/x", None).as_deref(), Some("/v2/web/x"));
    }

    #[test]
    fn replacement_references_are_checked() {
        let p = Regex::new("^/(?P<a>x)/(y)$").unwrap();
        assert!(check_replacement(&p, "/$1/${a}/$2/$a/$$").is_ok());
        assert!(check_replacement(&p, "/$3").is_err());
        let err = check_replacement(&p, "/$2z").unwrap_err();
        assert!(err.contains("$2z"), "{err}");
        assert!(check_replacement(&p, "/${b}").is_err());
        assert!(check_replacement(&p, "/${1").is_err());
        assert!(check_replacement(&p, "/$").is_err());
    }
}
