//! Which rejected instance nodes were already reported, so that a re-read of a service does not
//! log and count the same junk again: each version of a node's data is reported once, and a node
//! is forgotten when it goes away or becomes valid.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What identifies one version of a node: its `mzxid` (the transaction that last wrote it, which
/// also changes when a node is deleted and created again), or `None` for a node that could not be
/// read at all.
pub(crate) type Version = Option<i64>;

#[derive(Debug, Default)]
pub(crate) struct Rejections {
    by_path: HashMap<Arc<str>, HashMap<String, Version>>,
}

impl Rejections {
    /// Whether `child` of `path`, rejected at `version`, is news: not reported at this version
    /// by the last complete read of `path`.
    pub(crate) fn is_new(&self, path: &str, child: &str, version: Version) -> bool {
        self.by_path
            .get(path)
            .and_then(|children| children.get(child))
            != Some(&version)
    }

    /// A complete read of `path` found exactly `rejected`; every other child is forgotten.
    pub(crate) fn replace(&mut self, path: &Arc<str>, rejected: HashMap<String, Version>) {
        if rejected.is_empty() {
            self.by_path.remove(path);
        } else {
            self.by_path.insert(path.clone(), rejected);
        }
    }

    /// Forgets the paths no longer followed.
    pub(crate) fn retain_paths(&mut self, followed: &HashSet<&str>) {
        self.by_path.retain(|path, _| followed.contains(&**path));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_path.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One complete read of `path` finding `rejected`: the children it reports.
    fn read(r: &mut Rejections, path: &Arc<str>, rejected: &[(&str, Version)]) -> Vec<String> {
        let mut found = HashMap::new();
        let mut reported = Vec::new();
        for (child, version) in rejected {
            if r.is_new(path, child, *version) {
                reported.push(child.to_string());
            }
            found.insert(child.to_string(), *version);
        }
        r.replace(path, found);
        reported
    }

    #[test]
    fn each_version_of_a_rejected_node_is_reported_once() {
        let mut r = Rejections::default();
        let api: Arc<str> = Arc::from("/s/api");
        assert_eq!(
            read(&mut r, &api, &[("junk", Some(10)), ("locked", None)]),
            ["junk", "locked"]
        );
        // Re-reads of the same data report nothing, however many.
        for _ in 0..100 {
            assert!(read(&mut r, &api, &[("junk", Some(10)), ("locked", None)]).is_empty());
        }
        // New data on the node (still junk) is a new version.
        assert_eq!(
            read(&mut r, &api, &[("junk", Some(11)), ("locked", None)]),
            ["junk"]
        );
        // Gone, then back at the very same version: forgotten in between, so reported again.
        assert!(read(&mut r, &api, &[("locked", None)]).is_empty());
        assert_eq!(
            read(&mut r, &api, &[("junk", Some(11)), ("locked", None)]),
            ["junk"]
        );
        // Fixed (valid now), then broken again.
        assert!(read(&mut r, &api, &[("junk", Some(11))]).is_empty());
        assert_eq!(
            read(&mut r, &api, &[("junk", Some(11)), ("locked", None)]),
            ["locked"]
        );
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn paths_are_independent_and_dropped_paths_are_forgotten() {
        let mut r = Rejections::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("/a"), Arc::from("/b"));
        assert_eq!(read(&mut r, &a, &[("x", Some(1))]), ["x"]);
        assert_eq!(read(&mut r, &b, &[("x", Some(1))]), ["x"]);
        assert!(read(&mut r, &a, &[("x", Some(1))]).is_empty());
        r.retain_paths(&HashSet::from(["/a"]));
        assert_eq!(r.len(), 1);
        assert_eq!(read(&mut r, &b, &[("x", Some(1))]), ["x"]);
        // A path whose read found nothing rejected holds no memory.
        read(&mut r, &a, &[]);
        read(&mut r, &b, &[]);
        assert_eq!(r.len(), 0);
    }
}
