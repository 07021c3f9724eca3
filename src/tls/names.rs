//! Which certificate answers a client: the names the certificates claim (exact and `*.`
//! wildcard), looked up by the SNI the client sent, with the first certificate as the default.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate name as browsers match it (RFC 6125 §6.4.3): an exact DNS name, or `*.` and
/// a parent domain, matching one more label and only one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Name {
    Exact(String),
    /// The parent domain of a `*.` name: `example.com` for `*.example.com`.
    Wildcard(String),
}

impl Name {
    /// The name a certificate states, lowercased; `None` for what can never match a host name
    /// (an empty name, or a `*` that is not a whole leftmost label, as `f*.example.com`).
    pub fn parse(stated: &str) -> Option<Name> {
        let lower = stated.trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() || lower.contains(char::is_whitespace) {
            return None;
        }
        match lower.strip_prefix("*.") {
            Some(parent) if !parent.is_empty() && !parent.contains('*') => {
                Some(Name::Wildcard(parent.to_owned()))
            }
            Some(_) => None,
            None if lower.contains('*') => None,
            None => Some(Name::Exact(lower)),
        }
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Name::Exact(n) => f.write_str(n),
            Name::Wildcard(p) => write!(f, "*.{p}"),
        }
    }
}

/// The names of a listener's certificates, each pointing to the index of its certificate.
#[derive(Debug, Default)]
pub struct NameTable {
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl NameTable {
    /// Adds `name` for certificate `index`; `Err` with the index of the certificate that
    /// claims it already.
    pub fn insert(&mut self, name: &Name, index: usize) -> Result<(), usize> {
        let map = match name {
            Name::Exact(_) => &mut self.exact,
            Name::Wildcard(_) => &mut self.wildcard,
        };
        let key = match name {
            Name::Exact(n) | Name::Wildcard(n) => n,
        };
        match map.get(key) {
            Some(&other) if other != index => Err(other),
            Some(_) => Ok(()),
            None => {
                map.insert(key.clone(), index);
                Ok(())
            }
        }
    }

    /// The certificate for a client that asked for `sni` (a DNS name, as rustls hands it over):
    /// the exact name first, then the wildcard of its parent; `None` when neither is there.
    pub fn lookup(&self, sni: &str) -> Option<usize> {
        // rustls lowercases nothing: a client may send `Example.COM`. Host names are short, so
        // the lowercased copy lives on the stack.
        let mut buf = [0u8; 253];
        let sni = sni.trim_end_matches('.');
        let bytes = sni.as_bytes();
        let lower = if bytes.len() <= buf.len() {
            let b = &mut buf[..bytes.len()];
            b.copy_from_slice(bytes);
            b.make_ascii_lowercase();
            std::str::from_utf8(b).ok()?
        } else {
            return None;
        };
        if let Some(&i) = self.exact.get(lower) {
            return Some(i);
        }
        let (first, parent) = lower.split_once('.')?;
        if first.is_empty() {
            return None;
        }
        self.wildcard.get(parent).copied()
    }
}

/// rustls' certificate choice for one listener: by SNI through the [`NameTable`], else the
/// first certificate.
#[derive(Debug)]
pub struct SniResolver {
    pub names: NameTable,
    /// In config order; the first is the default.
    pub certs: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn choose(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let i = sni.and_then(|s| self.names.lookup(s)).unwrap_or(0);
        self.certs.get(i)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(names: &[(&str, usize)]) -> NameTable {
        let mut t = NameTable::default();
        for (n, i) in names {
            t.insert(&Name::parse(n).unwrap(), *i).unwrap();
        }
        t
    }

    #[test]
    fn names_parse_as_browsers_read_them() {
        assert_eq!(
            Name::parse("API.Example.com."),
            Some(Name::Exact("api.example.com".into()))
        );
        assert_eq!(
            Name::parse("*.example.com"),
            Some(Name::Wildcard("example.com".into()))
        );
        for bad in [
            "",
            "*",
            "*.",
            "f*.example.com",
            "a.*.example.com",
            "*.*.example.com",
            "a b",
        ] {
            assert_eq!(Name::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Name::parse("*.example.com").unwrap().to_string(),
            "*.example.com"
        );
    }

    #[test]
    fn exact_wins_over_wildcard_and_a_wildcard_covers_one_label() {
        let t = table(&[
            ("*.example.com", 0),
            ("api.example.com", 1),
            ("other.org", 2),
        ]);
        assert_eq!(t.lookup("api.example.com"), Some(1));
        assert_eq!(t.lookup("API.EXAMPLE.COM."), Some(1));
        assert_eq!(t.lookup("www.example.com"), Some(0));
        assert_eq!(t.lookup("a.b.example.com"), None);
        assert_eq!(t.lookup("example.com"), None);
        assert_eq!(t.lookup(".example.com"), None);
        assert_eq!(t.lookup("other.org"), Some(2));
        assert_eq!(t.lookup("x.other.org"), None);
        assert_eq!(t.lookup(&"a".repeat(300)), None);
    }

    #[test]
    fn a_name_claimed_twice_names_the_first_claimant() {
        let mut t = table(&[("a.example.com", 0), ("*.example.com", 0)]);
        let exact = Name::parse("A.example.com").unwrap();
        assert_eq!(t.insert(&exact, 2), Err(0));
        assert_eq!(t.insert(&Name::parse("*.example.com").unwrap(), 1), Err(0));
        // A certificate naming itself twice is no clash.
        assert_eq!(t.insert(&exact, 0), Ok(()));
        // An exact name under another certificate's wildcard is allowed: it is more specific.
        assert_eq!(t.insert(&Name::parse("b.example.com").unwrap(), 1), Ok(()));
    }

    #[test]
    fn the_resolver_falls_back_to_the_first_certificate() {
        use rustls::pki_types::CertificateDer;
        use rustls::sign::{Signer, SigningKey};
        use rustls::{SignatureAlgorithm, SignatureScheme};

        #[derive(Debug)]
        struct NoKey;
        impl SigningKey for NoKey {
            fn choose_scheme(&self, _: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
                None
            }
            fn algorithm(&self) -> SignatureAlgorithm {
                SignatureAlgorithm::ECDSA
            }
        }
        let key = |tag: u8| {
            Arc::new(CertifiedKey::new(
                vec![CertificateDer::from(vec![tag])],
                Arc::new(NoKey),
            ))
        };
        let r = SniResolver {
            names: table(&[("a.test", 0), ("b.test", 1), ("*.c.test", 2)]),
            certs: vec![key(0), key(1), key(2)],
        };
        let tag = |sni: Option<&str>| r.choose(sni).map(|k| k.cert[0].as_ref()[0]);
        assert_eq!(tag(Some("b.test")), Some(1));
        assert_eq!(tag(Some("x.c.test")), Some(2));
        assert_eq!(tag(Some("unknown.test")), Some(0));
        assert_eq!(tag(None), Some(0));
    }
}
