//! Path templates (`{base}/resourcePools/{poolId}/resources`): `{version}` as a wildcard,
//! `{name}` captures, compiled once and matched without allocating.
//!
//! A template is a list of segments: literals, `{version}` (`v` then digits), `{name}` (any
//! one non-empty segment, captured) and a final `**` (any rest, none included). `{base}` may
//! only open a template and stands for both O2 IMS inventory bases,
//! `/o2ims-infrastructureInventory/{version}` and netweave's `/o2ims/{version}`, so it compiles
//! to two templates. Matching walks the path's segments once, comparing them in place; one
//! trailing slash is ignored, because the O2 servers strip it (oran's `TrailingSlashStripper`).
//! A route holds a few dozen templates at most, so they are tried in order (first match
//! wins) rather than merged into a tree: the walk stops at the first differing segment.

/// The two O2 IMS inventory bases `{base}` stands for.
pub const BASES: [&str; 2] = ["o2ims-infrastructureInventory", "o2ims"];

/// At most this many captures per template: an O2 path names at most a parent and an item.
pub const MAX_CAPTURES: usize = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Lit(Box<str>),
    Version,
    Capture(Box<str>),
}

/// One compiled template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    segs: Box<[Seg]>,
    /// Ends in `**`: any number of further segments.
    rest: bool,
    /// How many leading segments are the API base (up to and including `{version}`), so the
    /// rest of the path is the collection or item path the tags speak of.
    base_segs: usize,
}

/// What a match found, borrowed from the path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Captures<'p> {
    /// `(name, value)` of each `{name}`, in template order.
    pub ids: [Option<(&'p str, &'p str)>; MAX_CAPTURES],
    /// The path after the base, without its leading or trailing slash (`resourcePools/P1`).
    pub rest: &'p str,
}

impl Template {
    /// Compiles `text`; `{base}` yields two templates, one per O2 base.
    pub fn compile(text: &str) -> Result<Vec<Template>, String> {
        let (with_base, body) = if let Some(after) = text.strip_prefix("{base}") {
            if !after.is_empty() && !after.starts_with('/') {
                return Err(format!("`{text}`: `{{base}}` must be followed by `/`"));
            }
            (true, after.strip_prefix('/').unwrap_or(after))
        } else if let Some(after) = text.strip_prefix('/') {
            (false, after)
        } else {
            return Err(format!("`{text}` must start with `/` or `{{base}}`"));
        };
        let body = if body.len() > 1 {
            body.strip_suffix('/').unwrap_or(body)
        } else {
            body
        };
        let mut segs = Vec::new();
        let mut rest = false;
        let mut captures = 0;
        let parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            if rest {
                return Err(format!("`{text}`: `**` may only end a template"));
            }
            let seg = match *part {
                "" => return Err(format!("`{text}` has an empty segment")),
                "**" => {
                    rest = true;
                    continue;
                }
                "{version}" => Seg::Version,
                "{base}" => return Err(format!("`{text}`: `{{base}}` may only open a template")),
                p if p.starts_with('{') && p.ends_with('}') => {
                    let name = &p[1..p.len() - 1];
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        return Err(format!("`{text}`: `{p}` is not a capture (letters, digits, `_`)"));
                    }
                    captures += 1;
                    if captures > MAX_CAPTURES {
                        return Err(format!("`{text}` has more than {MAX_CAPTURES} captures"));
                    }
                    Seg::Capture(name.into())
                }
                p if p.contains(['{', '}', '*', '?', '#']) => {
                    return Err(format!(
                        "`{text}`: segment {} (`{p}`) mixes text and a pattern; a segment is a literal, `{{name}}`, `{{version}}` or a final `**`",
                        i + 1
                    ))
                }
                p => Seg::Lit(p.into()),
            };
            segs.push(seg);
        }
        if with_base {
            let made = BASES
                .iter()
                .map(|b| {
                    let mut all = vec![Seg::Lit((*b).into()), Seg::Version];
                    all.extend(segs.iter().cloned());
                    Template {
                        segs: all.into(),
                        rest,
                        base_segs: 2,
                    }
                })
                .collect();
            return Ok(made);
        }
        let base_segs = segs
            .iter()
            .position(|s| *s == Seg::Version)
            .map_or(0, |i| i + 1);
        Ok(vec![Template {
            segs: segs.into(),
            rest,
            base_segs,
        }])
    }

    /// Matches `path` (no query), allocating nothing.
    pub fn matches<'p>(&'p self, path: &'p str) -> Option<Captures<'p>> {
        let body = path.strip_prefix('/')?;
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut caps = Captures::default();
        let mut n_caps = 0;
        let mut offset = 0; // byte offset in `body` of the next segment
        let mut rest_at = if self.base_segs == 0 { Some(0) } else { None };
        let mut parts = if body.is_empty() {
            None
        } else {
            Some(body.split('/'))
        };
        for (i, seg) in self.segs.iter().enumerate() {
            let part = parts.as_mut()?.next()?;
            let ok = match seg {
                Seg::Lit(l) => **l == *part,
                Seg::Version => is_version(part),
                Seg::Capture(name) => {
                    if part.is_empty() {
                        false
                    } else {
                        caps.ids[n_caps] = Some((name, part));
                        n_caps += 1;
                        true
                    }
                }
            };
            if !ok {
                return None;
            }
            offset += part.len() + 1;
            if i + 1 == self.base_segs {
                rest_at = Some(offset.min(body.len()));
            }
        }
        if !self.rest {
            if let Some(mut p) = parts {
                if p.next().is_some() {
                    return None;
                }
            }
        }
        caps.rest = &body[rest_at.unwrap_or(body.len())..];
        Some(caps)
    }
}

/// `v` then at least one digit.
fn is_version(s: &str) -> bool {
    s.len() > 1 && s.starts_with('v') && s.bytes().skip(1).all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Template {
        let mut t = Template::compile(text).unwrap();
        assert_eq!(t.len(), 1);
        t.remove(0)
    }

    #[test]
    fn base_compiles_to_both_bases() {
        let t = Template::compile("{base}/resourcePools/{poolId}").unwrap();
        assert_eq!(t.len(), 2);
        let c = t[0]
            .matches("/o2ims-infrastructureInventory/v2/resourcePools/P1")
            .unwrap();
        assert_eq!(c.ids[0], Some(("poolId", "P1")));
        assert_eq!(c.rest, "resourcePools/P1");
        assert!(t[0].matches("/o2ims/v1/resourcePools/P1").is_none());
        let c = t[1].matches("/o2ims/v1/resourcePools/P1/").unwrap();
        assert_eq!(c.rest, "resourcePools/P1");
    }

    #[test]
    fn version_is_v_and_digits() {
        let t = one("/o2ims-infrastructureMonitoring/{version}/alarms");
        assert!(t
            .matches("/o2ims-infrastructureMonitoring/v1/alarms")
            .is_some());
        assert!(t
            .matches("/o2ims-infrastructureMonitoring/v12/alarms")
            .is_some());
        for bad in ["v", "V1", "v1a", "1", "x"] {
            let p = format!("/o2ims-infrastructureMonitoring/{bad}/alarms");
            assert!(t.matches(&p).is_none(), "{p}");
        }
        assert_eq!(
            t.matches("/o2ims-infrastructureMonitoring/v1/alarms")
                .unwrap()
                .rest,
            "alarms"
        );
    }

    #[test]
    fn the_base_alone_and_trailing_slashes() {
        let t = Template::compile("{base}").unwrap();
        let c = t[0].matches("/o2ims-infrastructureInventory/v1").unwrap();
        assert_eq!(c.rest, "");
        assert!(t[0].matches("/o2ims-infrastructureInventory/v1/").is_some());
        assert!(t[0]
            .matches("/o2ims-infrastructureInventory/v1/x")
            .is_none());
        assert!(t[0].matches("/o2ims-infrastructureInventory").is_none());
    }

    #[test]
    fn lengths_must_agree_and_captures_are_not_empty() {
        let t = one("/a/{id}");
        assert!(t.matches("/a").is_none());
        assert!(t.matches("/a/").is_none());
        assert!(t.matches("/a//").is_none());
        assert!(t.matches("/a/b/c").is_none());
        assert_eq!(t.matches("/a/b").unwrap().ids[0], Some(("id", "b")));
        assert_eq!(t.matches("/a/b").unwrap().rest, "a/b");
        assert!(t.matches("a/b").is_none());
    }

    #[test]
    fn double_star_takes_any_rest() {
        let t = one("/**");
        for p in ["/", "/a", "/a/b/c", "/a/"] {
            assert!(t.matches(p).is_some(), "{p}");
        }
        let t = one("/static/**");
        assert!(t.matches("/static").is_some());
        assert!(t.matches("/static/x/y").is_some());
        assert!(t.matches("/other").is_none());
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for bad in [
            "resourcePools",
            "/a//b",
            "/a/**/b",
            "/a/{base}",
            "/a/x{id}",
            "/a/{}",
            "/a/{b-c}",
            "{base}x",
            "/{a}/{b}/{c}",
        ] {
            assert!(Template::compile(bad).is_err(), "{bad}");
        }
    }
}
