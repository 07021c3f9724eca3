//! Criterion benchmark of the cache's token check: an RS256 bearer token verified cold (the
//! signature checked against the JWKS key) and again (remembered by the verifier: a SHA-256 of
//! the token, a lookup and the claims checked against the time).
//!
//! The token and key are RFC 7515 Appendix A.2's (RSA 2048), so the figure is that of a real
//! signature without a key generator in the bench.
//!
//! Measured (`cargo bench --bench cache_jwt -- --warm-up-time 1 --measurement-time 3`, the
//! shared 2-core build machine, load about 3): cold 26.7 µs, remembered 0.53 µs (SHA-256 of the
//! 400-byte token, the lookup, the claims checked), about 50 times less.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use zkgate::plugin::cache::jwt::{JwtSection, Verifier};
use zkgate::section::{At, ConfigErrors};

const RSA_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
const RS256: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
/// The token's `exp`, less a minute: the time the bench verifies it at.
const NOW_SECS: u64 = 1_300_819_380 - 60;

fn verifier(jwks: &std::path::Path) -> Verifier {
    let section = JwtSection {
        jwks_file: Some(jwks.display().to_string()),
        key_file: None,
        issuer: None,
        audience: None,
        leeway: None,
        algorithms: None,
    };
    let mut errors = ConfigErrors::default();
    Verifier::build(&section, &At::root(), &mut errors).expect("a valid JWKS")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let jwks = dir.path().join("jwks.json");
    let doc = format!(r#"{{"keys":[{{"kty":"RSA","n":"{RSA_N}","e":"AQAB"}}]}}"#);
    std::fs::write(&jwks, doc).expect("write the JWKS");
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let now: SystemTime = black_box(now);

    // Cold: each verify runs on a verifier that has seen nothing (made outside the timing).
    c.bench_function("cache jwt: RS256 verify, cold (signature checked)", |b| {
        b.iter_batched(
            || verifier(&jwks),
            |v| {
                let ok = v.verify(black_box(RS256), now).is_ok();
                (v, ok)
            },
            BatchSize::PerIteration,
        )
    });
    let warm = verifier(&jwks);
    warm.verify(RS256, now).expect("the RFC token verifies");
    c.bench_function("cache jwt: RS256 verify, remembered", |b| {
        b.iter(|| black_box(warm.verify(black_box(RS256), now).is_ok()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
