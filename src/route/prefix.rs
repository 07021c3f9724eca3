//! A compressed radix tree over path prefixes, walked longest prefix first without allocating.

/// Route ids stored under each prefix, in declaration order.
#[derive(Debug, Default)]
pub struct PrefixTree {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    label: Box<[u8]>,
    ids: Vec<u32>,
    children: Vec<Node>,
}

impl PrefixTree {
    pub fn insert(&mut self, prefix: &str, id: u32) {
        self.root.insert(prefix.as_bytes(), id);
    }

    /// The first id, longest prefix first and declaration order within one prefix, that
    /// `accept` takes.
    #[inline]
    pub fn find(&self, path: &[u8], accept: &mut impl FnMut(u32) -> bool) -> Option<u32> {
        self.root.find(path, accept)
    }
}

impl Node {
    fn insert(&mut self, key: &[u8], id: u32) {
        if key.is_empty() {
            self.ids.push(id);
            return;
        }
        if let Some(child) = self.children.iter_mut().find(|c| c.label[0] == key[0]) {
            let common = child
                .label
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count();
            if common < child.label.len() {
                // Split the child: it keeps the shared part and hangs its old self below it.
                let tail = Node {
                    label: child.label[common..].into(),
                    ids: std::mem::take(&mut child.ids),
                    children: std::mem::take(&mut child.children),
                };
                child.label = key[..common].into();
                child.children.push(tail);
            }
            child.insert(&key[common..], id);
        } else {
            self.children.push(Node {
                label: key.into(),
                ids: vec![id],
                children: Vec::new(),
            });
        }
    }

    fn find(&self, rest: &[u8], accept: &mut impl FnMut(u32) -> bool) -> Option<u32> {
        if let Some(&first) = rest.first() {
            if let Some(child) = self.children.iter().find(|c| c.label[0] == first) {
                if rest.starts_with(&child.label) {
                    if let Some(id) = child.find(&rest[child.label.len()..], accept) {
                        return Some(id);
                    }
                }
            }
        }
        self.ids.iter().copied().find(|&id| accept(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(prefixes: &[&str]) -> PrefixTree {
        let mut t = PrefixTree::default();
        for (i, p) in prefixes.iter().enumerate() {
            t.insert(p, i as u32);
        }
        t
    }

    #[test]
    fn longest_prefix_wins() {
        let t = tree(&["/", "/api/", "/api/v1/", "/apix", "/b"]);
        let all = &mut |_| true;
        assert_eq!(t.find(b"/api/v1/users", all), Some(2));
        assert_eq!(t.find(b"/api/v2", all), Some(1));
        assert_eq!(t.find(b"/apix/1", all), Some(3));
        assert_eq!(t.find(b"/api", all), Some(0));
        assert_eq!(t.find(b"/other", all), Some(0));
        assert_eq!(t.find(b"nope", all), None);
    }

    #[test]
    fn falls_back_to_shorter_prefix_when_rejected() {
        let t = tree(&["/", "/api/", "/api/v1/"]);
        assert_eq!(t.find(b"/api/v1/x", &mut |id| id != 2), Some(1));
        assert_eq!(t.find(b"/api/v1/x", &mut |id| id == 0), Some(0));
    }

    #[test]
    fn same_prefix_keeps_declaration_order() {
        let t = tree(&["/a", "/a", "/a"]);
        assert_eq!(t.find(b"/a/b", &mut |id| id > 0), Some(1));
    }

    #[test]
    fn matches_a_linear_scan() {
        // Compare against the obvious implementation over many generated prefixes.
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"/ab";
        let prefixes: Vec<String> = (0..200)
            .map(|_| {
                let len = rng.usize(1..8);
                (0..len).map(|_| alphabet[rng.usize(..3)] as char).collect()
            })
            .collect();
        let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let t = tree(&refs);
        for _ in 0..2000 {
            let len = rng.usize(0..10);
            let path: String = (0..len).map(|_| alphabet[rng.usize(..3)] as char).collect();
            let expected = prefixes
                .iter()
                .enumerate()
                .filter(|(_, p)| path.starts_with(p.as_str()))
                .max_by_key(|(i, p)| (p.len(), std::cmp::Reverse(*i)))
                .map(|(i, _)| i as u32);
            assert_eq!(t.find(path.as_bytes(), &mut |_| true), expected, "{path}");
        }
    }
}
