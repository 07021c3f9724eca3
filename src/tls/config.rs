//! A listener's `tls:` section: its certificates and keys, read and checked when the config
//! builds (each problem an error at its YAML path), then made into the rustls configuration
//! and Pingora acceptor its connections are handshaken with.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderName;
use pingora::listeners::tls::TlsSettings;
use pingora::tls::TlsAcceptor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore, ServerConfig, SupportedProtocolVersion};
use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::info::{ClientHeaders, OnHandshake};
use super::metrics::HandshakeMetrics;
use super::names::{Name, NameTable, SniResolver};
use super::{Certificate, ListenerTls};
use crate::section::file::read_bounded;
use crate::section::{At, ConfigErrors};

/// A certificate chain, key or CA bundle larger than this is not one.
const MAX_PEM_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Certificate and key pairs; the first is served to clients whose SNI names none.
    pub certificates: Vec<CertificateSection>,
    /// The oldest TLS version accepted: `"1.2"` (the default) or `"1.3"`.
    #[serde(default)]
    pub min_version: MinVersion,
    /// Client certificates (mTLS).
    pub client_auth: Option<ClientAuthSection>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// PEM: the certificate, then its intermediates.
    pub cert: String,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthSection {
    /// PEM: the CA certificates that client certificates must chain to.
    pub ca: String,
    #[serde(default)]
    pub mode: ClientAuthMode,
    #[serde(default)]
    pub headers: ClientHeadersSection,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// A client without a valid certificate is refused in the handshake.
    #[default]
    Required,
    /// A client may send no certificate; one it sends must be valid.
    Optional,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientHeadersSection {
    pub subject: Option<String>,
    pub sans: Option<String>,
    pub fingerprint: Option<String>,
    pub cert: Option<String>,
}

/// `min_version`, written `"1.2"` or `1.2` (YAML reads the bare one as a number).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "VersionText", into = "String")]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum VersionText {
    Text(String),
    Number(f64),
}

impl TryFrom<VersionText> for MinVersion {
    type Error = String;

    fn try_from(v: VersionText) -> Result<MinVersion, String> {
        let text = match v {
            VersionText::Text(t) => t,
            VersionText::Number(n) => n.to_string(),
        };
        match text.as_str() {
            "1.2" => Ok(MinVersion::Tls12),
            "1.3" => Ok(MinVersion::Tls13),
            other => Err(format!(
                "min_version `{other}`: expected \"1.2\" or \"1.3\""
            )),
        }
    }
}

impl From<MinVersion> for String {
    fn from(v: MinVersion) -> String {
        match v {
            MinVersion::Tls12 => "1.2".into(),
            MinVersion::Tls13 => "1.3".into(),
        }
    }
}

impl MinVersion {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY_13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            MinVersion::Tls12 => &BOTH,
            MinVersion::Tls13 => &ONLY_13,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsSection {
    /// The TLS of listener `listener` at `at`; `None` when an error was pushed.
    pub fn build(
        &self,
        at: &At,
        listener: &str,
        errors: &mut ConfigErrors,
    ) -> Option<Arc<ListenerTls>> {
        let before = errors.len();
        let provider = provider();
        if self.certificates.is_empty() {
            errors.push(at.key("certificates"), "at least one certificate is needed");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut names = NameTable::default();
        let mut keys = Vec::new();
        let mut certificates = Vec::new();
        for (i, c) in self.certificates.iter().enumerate() {
            let at = at.index("certificates", i);
            let Some(loaded) = load_pair(&at, c, &provider, now, errors) else {
                continue;
            };
            for name in &loaded.names {
                if let Err(other) = names.insert(name, i) {
                    errors.push(
                        at.key("cert"),
                        format!(
                            "{}: the name {name} is already claimed by certificates[{other}]; each name may have one certificate on a listener",
                            c.cert
                        ),
                    );
                }
            }
            certificates.push(Certificate {
                name: loaded
                    .names
                    .first()
                    .map_or_else(|| format!("certificates[{i}]"), Name::to_string),
                not_after: loaded.not_after,
            });
            keys.push(Arc::new(loaded.key));
        }
        let (verifier, client_auth) = match &self.client_auth {
            Some(ca) => (
                client_verifier(&at.key("client_auth"), ca, &provider, errors),
                true,
            ),
            None => (None, false),
        };
        let headers = Arc::new(
            self.client_auth
                .as_ref()
                .map(|ca| {
                    client_headers(&at.key("client_auth").key("headers"), &ca.headers, errors)
                })
                .unwrap_or_default(),
        );
        if errors.len() > before {
            return None;
        }
        let resolver = Arc::new(SniResolver { names, certs: keys });
        let builder = match ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(self.min_version.versions())
        {
            Ok(b) => b,
            Err(e) => {
                errors.push(at.key("min_version"), format!("not supported: {e}"));
                return None;
            }
        };
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        // Pingora's build() fixes the versions and panics on file errors, so it is given only
        // the resolver (which cannot fail) for the callback's sake, and our config replaces
        // the acceptor it made.
        let mut settings = match TlsSettings::with_callbacks(Box::new(OnHandshake {
            headers: headers.clone(),
            client_auth,
        })) {
            Ok(s) => s,
            Err(e) => {
                errors.push(at.as_str(), format!("cannot set up TLS: {e}"));
                return None;
            }
        };
        settings.set_cert_resolver(resolver);
        let mut acceptor = settings.build();
        acceptor.acceptor = TlsAcceptor::from(Arc::new(config));
        Some(Arc::new(ListenerTls {
            listener: listener.to_owned(),
            acceptor,
            certificates,
            metrics: HandshakeMetrics::new(listener),
        }))
    }
}

/// A certificate pair read, checked and ready to serve.
struct Loaded {
    key: CertifiedKey,
    names: Vec<Name>,
    not_after: i64,
}

fn read_pem(path: &str) -> Result<String, String> {
    read_bounded(Path::new(path), MAX_PEM_BYTES).map_err(|e| format!("cannot read {path}: {e}"))
}

fn load_pair(
    at: &At,
    c: &CertificateSection,
    provider: &CryptoProvider,
    now: i64,
    errors: &mut ConfigErrors,
) -> Option<Loaded> {
    let chain = read_pem(&c.cert).and_then(|text| {
        let chain = CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: not a PEM certificate chain: {e}", c.cert))?;
        if chain.is_empty() {
            return Err(format!("{}: no certificate in it", c.cert));
        }
        Ok(chain)
    });
    let key = read_pem(&c.key).and_then(|text| {
        PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                format!(
                    "{}: no private key in it (an encrypted key must be decrypted first)",
                    c.key
                )
            }
            e => format!("{}: not a PEM private key: {e}", c.key),
        })
    });
    let (chain, key) = match (chain, key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (chain, key) => {
            if let Err(e) = chain {
                errors.push(at.key("cert"), e);
            }
            if let Err(e) = key {
                errors.push(at.key("key"), e);
            }
            return None;
        }
    };
    let leaf = match X509Certificate::from_der(&chain[0]) {
        Ok((_, leaf)) => leaf,
        Err(e) => {
            errors.push(
                at.key("cert"),
                format!("{}: unreadable certificate: {e}", c.cert),
            );
            return None;
        }
    };
    let validity = leaf.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now > not_after {
        errors.push(
            at.key("cert"),
            format!(
                "{}: the certificate expired on {}",
                c.cert, validity.not_after
            ),
        );
    } else if now < not_before {
        errors.push(
            at.key("cert"),
            format!(
                "{}: the certificate is not valid before {}",
                c.cert, validity.not_before
            ),
        );
    }
    let names = names_of(&leaf);
    drop(leaf);
    match CertifiedKey::from_der(chain, key, provider) {
        Ok(key) => Some(Loaded {
            key,
            names,
            not_after,
        }),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            errors.push(
                at.key("key"),
                format!(
                    "{}: this key does not match the certificate {}",
                    c.key, c.cert
                ),
            );
            None
        }
        Err(rustls::Error::InvalidCertificate(e)) => {
            errors.push(
                at.key("cert"),
                format!("{}: the certificate cannot be served: {e}", c.cert),
            );
            None
        }
        Err(e) => {
            errors.push(at.key("key"), format!("{}: unusable key: {e}", c.key));
            None
        }
    }
}

/// The host names a certificate serves: its DNS subject alternative names, or its common
/// name when it has none (as browsers did before RFC 6125 ruled CN out).
fn names_of(cert: &X509Certificate<'_>) -> Vec<Name> {
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.extend(Name::parse(d));
            }
        }
        if !san.value.general_names.is_empty() {
            return names;
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.extend(Name::parse(cn));
        }
    }
    names
}

fn client_verifier(
    at: &At,
    s: &ClientAuthSection,
    provider: &Arc<CryptoProvider>,
    errors: &mut ConfigErrors,
) -> Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let certs = read_pem(&s.ca).and_then(|text| {
        CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: not PEM certificates: {e}", s.ca))
    });
    let certs = match certs {
        Ok(c) => c,
        Err(e) => {
            errors.push(at.key("ca"), e);
            return None;
        }
    };
    let mut roots = RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        errors.push(
            at.key("ca"),
            format!(
                "{}: no usable CA certificate in it ({bad} unreadable)",
                s.ca
            ),
        );
        return None;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if s.mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    match builder.build() {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(at.key("ca"), format!("{}: {e}", s.ca));
            None
        }
    }
}

fn client_headers(at: &At, s: &ClientHeadersSection, errors: &mut ConfigErrors) -> ClientHeaders {
    let mut name = |key: &str, v: &Option<String>| {
        let v = v.as_deref()?;
        match HeaderName::from_bytes(v.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                errors.push(at.key(key), format!("`{v}` is not a header name"));
                None
            }
        }
    };
    ClientHeaders {
        subject: name("subject", &s.subject),
        sans: name("sans", &s.sans),
        fingerprint: name("fingerprint", &s.fingerprint),
        cert: name("cert", &s.cert),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(yaml: &str) -> Result<TlsSection, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn min_version_is_read_quoted_or_bare_and_nothing_else() {
        let s = |v: &str| section(&format!("{{ certificates: [], min_version: {v} }}"));
        assert_eq!(s("\"1.3\"").unwrap().min_version, MinVersion::Tls13);
        assert_eq!(s("1.3").unwrap().min_version, MinVersion::Tls13);
        assert_eq!(s("1.2").unwrap().min_version, MinVersion::Tls12);
        assert!(s("1.1")
            .unwrap_err()
            .contains("expected \"1.2\" or \"1.3\""));
        assert_eq!(
            section("{ certificates: [] }").unwrap().min_version,
            MinVersion::Tls12
        );
    }

    #[test]
    fn every_file_problem_is_an_error_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let empty = empty.display().to_string();
        let s = section(&format!(
            "{{ certificates: [{{ cert: /nonexistent/c.pem, key: {empty} }}], client_auth: {{ ca: {empty}, headers: {{ subject: \"bad name\" }} }} }}"
        ))
        .unwrap();
        let mut errors = ConfigErrors::default();
        assert!(s
            .build(
                &At::root().index("listeners", 0).key("tls"),
                "web",
                &mut errors
            )
            .is_none());
        let text = errors.to_string();
        for want in [
            "listeners[0].tls.certificates[0].cert: cannot read /nonexistent/c.pem",
            "listeners[0].tls.certificates[0].key: ",
            "no private key in it",
            "listeners[0].tls.client_auth.ca: ",
            "no usable CA certificate",
            "listeners[0].tls.client_auth.headers.subject: `bad name` is not a header name",
        ] {
            assert!(text.contains(want), "{want} not in {text}");
        }
        let mut errors = ConfigErrors::default();
        let none = section("{ certificates: [] }").unwrap();
        assert!(none
            .build(&At::root().key("tls"), "web", &mut errors)
            .is_none());
        assert!(errors
            .to_string()
            .contains("tls.certificates: at least one"));
    }
}
