//! What one login costs the server: an argon2id password check against a
//! JWT access token checked locally (RS256 with a 2048-bit key, what most
//! providers sign with, and ES256), both on one thread. The ratio is the
//! figure: how much cheaper a token login is than a password login.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use submitd_auth::{hash_password, CheckOutcome, PasswordChecker, Users};
use submitd_oauth2::{Algorithm, IssuerPolicy, KeyPolicy, TokenVerifier};

fn enc(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// n and e of a PKCS#1 RSAPublicKey (SEQUENCE of two INTEGERs).
fn rsa_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn read(der: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = der[0];
        let (len, skip) = match der[1] {
            l if l < 0x80 => (usize::from(l), 2),
            0x81 => (usize::from(der[2]), 3),
            _ => ((usize::from(der[2]) << 8) | usize::from(der[3]), 4),
        };
        (tag, &der[skip..skip + len], &der[skip + len..])
    }
    let (_, body, _) = read(der);
    let (_, n, rest) = read(body);
    let (_, e, _) = read(rest);
    let strip = |v: &[u8]| v.iter().skip_while(|&&b| b == 0).copied().collect();
    (strip(n), strip(e))
}

fn claims() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        r#"{{"iss":"https://idp.test","aud":"urn:smtp","exp":{},"iat":{now},"email":"alice@example.org","sub":"alice","scope":"smtp","jti":"abcdefghijklmnop"}}"#,
        now + 3600
    )
}

fn policy() -> IssuerPolicy {
    IssuerPolicy {
        issuer: "https://idp.test".into(),
        audience: "urn:smtp".into(),
        login_claim: "email".into(),
        algorithms: Algorithm::ALL.to_vec(),
        leeway: Duration::from_secs(60),
    }
}

fn verifier(jwks: &str) -> TokenVerifier {
    let http = submitd_oauth2::Http::new(None, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("http: {e}"));
    TokenVerifier::new(policy(), KeyPolicy::default(), http)
        .with_keys(jwks)
        .unwrap_or_else(|e| panic!("keys: {e}"))
}

/// An RS256 token and the JWK set that verifies it.
fn rs256() -> (String, String) {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap_or_else(|e| panic!("{e}"));
    let (n, e) = rsa_components(pair.public_key().as_ref());
    let input = format!(
        "{}.{}",
        enc(br#"{"alg":"RS256","typ":"at+jwt","kid":"r1"}"#),
        enc(claims().as_bytes())
    );
    let mut sig = vec![0; pair.public_modulus_len()];
    pair.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let jwks = format!(
        r#"{{"keys":[{{"kty":"RSA","kid":"r1","n":"{}","e":"{}"}}]}}"#,
        enc(&n),
        enc(&e)
    );
    (format!("{input}.{}", enc(&sig)), jwks)
}

/// An ES256 token and its JWK set.
fn es256() -> (String, String) {
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let doc =
        EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new()).unwrap_or_else(|e| panic!("{e}"));
    let pair = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let point = pair.public_key().as_ref();
    let input = format!(
        "{}.{}",
        enc(br#"{"alg":"ES256","kid":"e1"}"#),
        enc(claims().as_bytes())
    );
    let sig = pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let jwks = format!(
        r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"e1","x":"{}","y":"{}"}}]}}"#,
        enc(&point[1..33]),
        enc(&point[33..65])
    );
    (format!("{input}.{}", enc(sig.as_ref())), jwks)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let mut group = c.benchmark_group("login_check");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(6));

    let hash = hash_password(b"right password").unwrap_or_default();
    let (users, _) = Users::parse(Path::new("bench"), &format!("alice {hash}\n"));
    let users = Arc::new(users);
    let checker = PasswordChecker::new(1).unwrap_or_else(|e| panic!("{e}"));
    group.bench_function("argon2id_password", |b| {
        b.iter(|| {
            let outcome = runtime.block_on(checker.check(&users, "alice", "right password"));
            assert!(matches!(outcome, CheckOutcome::Authenticated { .. }));
        })
    });
    for (name, (token, jwks)) in [("jwt_rs256", rs256()), ("jwt_es256", es256())] {
        let verifier = verifier(&jwks);
        group.bench_function(name, |b| {
            b.iter(|| {
                let checked = runtime.block_on(verifier.verify(&token));
                assert!(matches!(checked, Ok(Ok(_))), "{checked:?}");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
