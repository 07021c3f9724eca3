//! What a TLS connection says about itself (SNI, version, cipher, the verified client
//! certificate), worked out once when its handshake completes, and the client-certificate
//! headers the proxy sends upstream from it.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pingora::http::RequestHeader;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::Digest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The headers of `client_auth.headers`, each optional: which facts of the client
/// certificate go upstream, and under what names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientHeaders {
    pub subject: Option<HeaderName>,
    pub sans: Option<HeaderName>,
    pub fingerprint: Option<HeaderName>,
    pub cert: Option<HeaderName>,
}

impl ClientHeaders {
    fn names(&self) -> [Option<&HeaderName>; 4] {
        [
            self.subject.as_ref(),
            self.sans.as_ref(),
            self.fingerprint.as_ref(),
            self.cert.as_ref(),
        ]
    }

    fn is_empty(&self) -> bool {
        self.names().iter().all(Option::is_none)
    }
}

/// A verified client certificate, as much of it as the listener's headers need.
#[derive(Debug, Default)]
pub struct ClientCert {
    /// The subject's distinguished name, `CN=client, O=Example` (RFC 4514 order as stated).
    pub subject: String,
    /// DNS and IP subject alternative names, `DNS:a.example.com, IP:10.0.0.1`.
    pub sans: String,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint: String,
    /// The PEM, URL-encoded as nginx's `$ssl_client_escaped_cert`; only when a header wants it.
    pub escaped_pem: Option<String>,
}

/// One TLS connection's facts, left in `SslDigest.extension` by the handshake and read by
/// the proxy (headers upstream) and the access log.
#[derive(Debug)]
pub struct TlsInfo {
    /// The server name the client asked for, if it sent one.
    pub sni: Option<String>,
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The IANA name of the cipher suite.
    pub cipher: &'static str,
    /// The client certificate, when the listener asks for one and the client gave one (it
    /// was verified against `client_auth.ca`, or the handshake would have failed).
    pub client: Option<ClientCert>,
    /// The listener's header names, and the values for this connection, in the same order.
    headers: Arc<ClientHeaders>,
    values: [Option<HeaderValue>; 4],
}

impl TlsInfo {
    /// The facts of a connection whose handshake just completed on a listener with these
    /// client headers (`client_auth` set or not).
    pub fn new(tls: &TlsRef, headers: &Arc<ClientHeaders>, client_auth: bool) -> TlsInfo {
        let client = if client_auth {
            tls.peer_certificate_der()
                .map(|der| client_cert(der, headers.cert.is_some()))
        } else {
            None
        };
        let values = match &client {
            Some(c) if !headers.is_empty() => [
                value(headers.subject.is_some(), &c.subject),
                value(headers.sans.is_some(), &c.sans),
                value(headers.fingerprint.is_some(), &c.fingerprint),
                c.escaped_pem
                    .as_deref()
                    .and_then(|p| value(headers.cert.is_some(), p)),
            ],
            _ => Default::default(),
        };
        TlsInfo {
            sni: tls.server_name().map(str::to_owned),
            version: version_name(tls.version()),
            cipher: tls.current_cipher_name().unwrap_or(""),
            client,
            headers: headers.clone(),
            values,
        }
    }

    /// The facts of the connection a request came on, if it came over TLS.
    pub fn of(digest: Option<&Digest>) -> Option<&TlsInfo> {
        digest?.ssl_digest.as_ref()?.extension.get::<TlsInfo>()
    }
}

/// Toward the upstream: the client-certificate headers of the listener, set from the
/// connection's certificate, and removed whatever the client sent under those names (a
/// forged header never passes, with or without a certificate).
pub fn client_cert_headers(
    digest: Option<&Digest>,
    upstream: &mut RequestHeader,
) -> pingora::Result<()> {
    let Some(info) = TlsInfo::of(digest) else {
        return Ok(());
    };
    for (name, value) in info.headers.names().into_iter().zip(&info.values) {
        let Some(name) = name else { continue };
        upstream.remove_header(name);
        if let Some(v) = value {
            upstream.insert_header(name.clone(), v.clone())?;
        }
    }
    Ok(())
}

fn value(wanted: bool, text: &str) -> Option<HeaderValue> {
    if !wanted || text.is_empty() {
        return None;
    }
    HeaderValue::from_str(text).ok()
}

fn version_name(v: Option<&str>) -> &'static str {
    match v {
        Some("TLSv1_3") => "TLSv1.3",
        Some("TLSv1_2") => "TLSv1.2",
        _ => "",
    }
}

/// What nginx leaves unescaped in `$ssl_client_escaped_cert` (its URI-component escaping).
const PEM_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn client_cert(der: &[u8], with_pem: bool) -> ClientCert {
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let escaped_pem = with_pem.then(|| utf8_percent_encode(&pem(der), PEM_KEEP).to_string());
    // The chain was verified by rustls with webpki; a certificate x509-parser cannot read
    // still has its fingerprint and PEM.
    let (subject, sans) = match X509Certificate::from_der(der) {
        Ok((_, cert)) => (cert.subject().to_string(), sans_of(&cert)),
        Err(_) => Default::default(),
    };
    ClientCert {
        subject,
        sans,
        fingerprint,
        escaped_pem,
    }
}

fn sans_of(cert: &X509Certificate<'_>) -> String {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return String::new();
    };
    let mut out = Vec::new();
    for name in &ext.value.general_names {
        match name {
            GeneralName::DNSName(d) => out.push(format!("DNS:{d}")),
            GeneralName::IPAddress(b) => {
                let ip = match b.len() {
                    4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                    16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                    _ => None,
                };
                if let Some(ip) = ip {
                    out.push(format!("IP:{ip}"));
                }
            }
            _ => {}
        }
    }
    out.join(", ")
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The handshake-complete callback of a listener's acceptor: it leaves a [`TlsInfo`] in the
/// connection's `SslDigest.extension`.
pub struct OnHandshake {
    pub headers: Arc<ClientHeaders>,
    pub client_auth: bool,
}

#[async_trait]
impl TlsAccept for OnHandshake {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(Arc::new(TlsInfo::new(tls, &self.headers, self.client_auth)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pem_is_escaped_as_nginx_does() {
        let der = [0x30u8, 0x03, 0x02, 0x01, 0x05];
        let p = pem(&der);
        assert_eq!(
            p,
            "-----BEGIN CERTIFICATE-----\nMAMCAQU=\n-----END CERTIFICATE-----\n"
        );
        let escaped = utf8_percent_encode(&p, PEM_KEEP).to_string();
        assert_eq!(
            escaped,
            "-----BEGIN%20CERTIFICATE-----%0AMAMCAQU%3D%0A-----END%20CERTIFICATE-----%0A"
        );
        assert!(HeaderValue::from_str(&escaped).is_ok());
    }

    #[test]
    fn versions_are_named_as_nginx_names_them() {
        assert_eq!(version_name(Some("TLSv1_3")), "TLSv1.3");
        assert_eq!(version_name(Some("TLSv1_2")), "TLSv1.2");
        assert_eq!(version_name(None), "");
    }
}
