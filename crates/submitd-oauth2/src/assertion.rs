//! A signed client assertion (RFC 7523 §2.2): the client proves who it is
//! with a short-lived JWT signed by its private key instead of a shared
//! secret. Microsoft calls it a certificate credential and finds the key
//! by the certificate's thumbprint (`x5t`), so the header carries both
//! thumbprints. RSA keys sign RS256, P-256 keys ES256.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, RsaKeyPair};
use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::files::{read_private, FileError};

/// How long an assertion is good for: long enough for one request.
const LIFETIME_SECS: u64 = 300;

enum Key {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unusable(path: &Path, reason: impl Into<String>) -> FileError {
    FileError::Unusable {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn load_key(path: &Path) -> Result<Key, FileError> {
    let pem = read_private(path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| unusable(path, format!("no PEM private key: {e}")))?;
    let der = key.secret_der();
    if let Ok(rsa) = RsaKeyPair::from_pkcs8(der).or_else(|_| RsaKeyPair::from_der(der)) {
        return Ok(Key::Rsa(rsa));
    }
    let p256 = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    EcdsaKeyPair::from_pkcs8(p256, der)
        .or_else(|_| EcdsaKeyPair::from_private_key_der(p256, der))
        .map(Key::P256)
        .map_err(|_| unusable(path, "not an RSA or P-256 private key"))
}

fn certificate(path: &Path) -> Result<CertificateDer<'static>, FileError> {
    let bytes = std::fs::read(path).map_err(|source| FileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    CertificateDer::pem_slice_iter(&bytes)
        .next()
        .ok_or_else(|| unusable(path, "no PEM certificate in the file"))?
        .map_err(|e| unusable(path, e.to_string()))
}

/// A fresh assertion for `client_id` at `audience` (the token endpoint),
/// signed with the key at `key_path`; `certificate_path` gives the
/// thumbprints. Files are read on every call, so a renewed certificate is
/// used without a restart.
pub(crate) fn client_assertion(
    client_id: &str,
    audience: &str,
    certificate_path: &Path,
    key_path: &Path,
) -> Result<String, FileError> {
    let der = certificate(certificate_path)?;
    let key = load_key(key_path)?;
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
    let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    let alg = match key {
        Key::Rsa(_) => "RS256",
        Key::P256(_) => "ES256",
    };
    let header = serde_json::json!({
        "alg": alg,
        "typ": "JWT",
        "x5t": b64url(sha1.as_ref()),
        "x5t#S256": b64url(sha256.as_ref()),
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti).map_err(|e| unusable(key_path, format!("no randomness: {e}")))?;
    let claims = serde_json::json!({
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": b64url(&jti),
        "iat": now,
        "nbf": now,
        "exp": now + LIFETIME_SECS,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let rng = SystemRandom::new();
    let signature = match key {
        Key::Rsa(rsa) => {
            let mut out = vec![0; rsa.public_modulus_len()];
            rsa.sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                signing_input.as_bytes(),
                &mut out,
            )
            .map_err(|_| unusable(key_path, "RSA signing failed"))?;
            out
        }
        Key::P256(ec) => ec
            .sign(&rng, signing_input.as_bytes())
            .map_err(|_| unusable(key_path, "ECDSA signing failed"))?
            .as_ref()
            .to_vec(),
    };
    Ok(format!("{signing_input}.{}", b64url(&signature)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn assertions_verify_with_the_certificates_key_and_name_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.pem");
        let key = dir.path().join("client.key");
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=submitd",
                "-days",
                "2",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(made.status.success());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let jwt = client_assertion("app-1", "https://idp.test/token", &cert, &key).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap()
        };
        let header: serde_json::Value = serde_json::from_slice(&decode(parts[0])).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&decode(parts[1])).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(
            header["x5t"].as_str().unwrap().len(),
            27,
            "SHA-1, base64url"
        );
        assert_eq!(claims["iss"], "app-1");
        assert_eq!(claims["sub"], "app-1");
        assert_eq!(claims["aud"], "https://idp.test/token");
        // The signature checks against the key's public half.
        use aws_lc_rs::signature::KeyPair as _;
        let Key::Rsa(pair) = load_key(&key).unwrap() else {
            panic!("an RSA key")
        };
        let public = signature::UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            pair.public_key().as_ref().to_vec(),
        );
        public
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &decode(parts[2]),
            )
            .unwrap();
        // A key others can read is refused.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(client_assertion("app-1", "x", &cert, &key).is_err());
    }
}
