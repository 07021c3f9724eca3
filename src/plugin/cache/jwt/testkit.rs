//! Keys made by the `openssl` CLI in a temp dir, and tokens signed by it, for the unit tests of
//! the verifier and the scopes: signatures that do not come from *ring*, which verifies them.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

/// A temp dir holding `rsa`, `rsa2`, `ec`, `ec384` and `ed` private keys (PKCS#8 PEM).
pub struct Keys {
    pub dir: tempfile::TempDir,
}

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Keys {
    pub fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, args) in [
            (
                "rsa",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            ),
            (
                "rsa2",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            ),
            (
                "ec",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
            ),
            (
                "ec384",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"][..],
            ),
            ("ed", &["-algorithm", "ED25519"][..]),
        ] {
            let mut a = vec!["genpkey"];
            a.extend_from_slice(args);
            let out = format!("{name}.pem");
            a.extend_from_slice(&["-out", &out]);
            openssl(&a, d);
            openssl(
                &[
                    "pkey",
                    "-in",
                    &out,
                    "-pubout",
                    "-out",
                    &format!("{name}.pub.pem"),
                ],
                d,
            );
        }
        Keys { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The public key `name` as a PEM file path (for `key_file`).
    pub fn pub_pem(&self, name: &str) -> String {
        self.path(&format!("{name}.pub.pem")).display().to_string()
    }

    /// The public key `name` as a JWK with `kid`, its numbers read from openssl's own output.
    pub fn jwk(&self, name: &str, kid: &str) -> Value {
        let d = self.dir.path();
        let der = openssl(
            &[
                "pkey",
                "-in",
                &format!("{name}.pem"),
                "-pubout",
                "-outform",
                "DER",
            ],
            d,
        );
        let b = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match name {
            "rsa" | "rsa2" => {
                let text = openssl(
                    &["rsa", "-in", &format!("{name}.pem"), "-noout", "-modulus"],
                    d,
                );
                let text = String::from_utf8(text).unwrap();
                let hex = text.trim().strip_prefix("Modulus=").unwrap();
                let n: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                json!({"kty": "RSA", "kid": kid, "n": b(&n), "e": "AQAB"})
            }
            "ec" => {
                let p = &der[der.len() - 65..];
                assert_eq!(p[0], 4);
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b(&p[1..33]), "y": b(&p[33..])})
            }
            "ec384" => {
                let p = &der[der.len() - 97..];
                assert_eq!(p[0], 4);
                json!({"kty": "EC", "crv": "P-384", "kid": kid, "x": b(&p[1..49]), "y": b(&p[49..])})
            }
            "ed" => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b(&der[der.len() - 32..])})
            }
            other => panic!("no key {other}"),
        }
    }

    /// A JWKS file of `keys`.
    pub fn jwks_file(&self, file: &str, keys: &[Value]) -> String {
        let path = self.path(file);
        std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
        path.display().to_string()
    }

    /// A compact JWS of `claims` with `header`, signed by openssl with key `name` under the
    /// header's `alg`.
    pub fn sign(&self, name: &str, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let alg = header["alg"].as_str().unwrap_or("RS256");
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(self.sign_raw(name, alg, input.as_bytes()))
        )
    }

    /// The signature of `input` by key `name` for `alg`.
    pub fn sign_raw(&self, name: &str, alg: &str, input: &[u8]) -> Vec<u8> {
        let d = self.dir.path();
        std::fs::write(d.join("input"), input).unwrap();
        let key = format!("{name}.pem");
        let sha = |a: &str| format!("-sha{}", &a[2..]);
        match alg {
            "RS256" | "RS384" | "RS512" => openssl(
                &["dgst", &sha(alg), "-sign", &key, "-out", "sig", "input"],
                d,
            ),
            "PS256" | "PS384" | "PS512" => openssl(
                &[
                    "dgst",
                    &sha(alg),
                    "-sign",
                    &key,
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:digest",
                    "-out",
                    "sig",
                    "input",
                ],
                d,
            ),
            "ES256" | "ES384" => openssl(
                &["dgst", &sha(alg), "-sign", &key, "-out", "sig", "input"],
                d,
            ),
            "EdDSA" => openssl(
                &[
                    "pkeyutl", "-sign", "-inkey", &key, "-rawin", "-in", "input", "-out", "sig",
                ],
                d,
            ),
            other => panic!("cannot sign {other}"),
        };
        let sig = std::fs::read(d.join("sig")).unwrap();
        match alg {
            "ES256" => der_to_fixed(&sig, 32),
            "ES384" => der_to_fixed(&sig, 48),
            _ => sig,
        }
    }
}

/// openssl's ECDSA signature (DER `SEQUENCE { r INTEGER, s INTEGER }`) as JWS wants it: `r ‖ s`,
/// each left-padded to the curve's size (RFC 7518 §3.4).
fn der_to_fixed(der: &[u8], size: usize) -> Vec<u8> {
    assert_eq!(der[0], 0x30);
    let mut i = if der[1] & 0x80 != 0 {
        2 + (der[1] & 0x7f) as usize
    } else {
        2
    };
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[i], 0x02);
        let len = der[i + 1] as usize;
        let int = &der[i + 2..i + 2 + len];
        let int = &int[int.iter().position(|&b| b != 0).unwrap_or(int.len())..];
        out.extend(std::iter::repeat_n(0u8, size - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}
