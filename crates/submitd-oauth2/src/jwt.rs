//! Checking a client's access token locally, when it is a JWT (RFC 9068)
//! signed by the configured issuer: the signature with an allow-list of
//! asymmetric algorithms (never `none`, never an HMAC, which a public key
//! would turn into a forgery), the key's type matched to the algorithm,
//! then `iss`, `aud`, `exp` and `nbf` with a small leeway, then the login
//! claim.
//!
//! The issuer's keys come from OpenID discovery (`/.well-known/openid-
//! configuration`, then its `jwks_uri`), are kept in memory, and are
//! fetched again when a token names a key id not among them, at most once
//! per [`KeyPolicy::refetch_after`]; every document is bounded in size and
//! the set in keys.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine as _;
use serde::Deserialize;

use crate::http::{Http, HttpError};

/// The largest discovery document or key set read.
const DOCUMENT_LIMIT: u64 = 256 * 1024;
/// The most keys kept from a key set.
const MAX_KEYS: usize = 64;
/// The longest token looked at (the SMTP line bounds it too).
const MAX_TOKEN: usize = 12 * 1024;

/// A signature algorithm allowed for access tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// … with SHA-384.
    Rs384,
    /// … with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// … with SHA-384.
    Ps384,
    /// … with SHA-512.
    Ps512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// All of them: every asymmetric JWS algorithm in common use.
    pub const ALL: [Self; 9] = [
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Ps256,
        Self::Ps384,
        Self::Ps512,
        Self::Es256,
        Self::Es384,
        Self::EdDsa,
    ];

    /// The JWS name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
        }
    }

    /// The algorithm of that JWS name; `none` and the HMACs are not one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// What a token must be to log in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerPolicy {
    /// `iss`, exactly; discovery starts from it.
    pub issuer: String,
    /// A value `aud` must hold.
    pub audience: String,
    /// The claim that is the login name (`email`, `preferred_username`,
    /// `sub`).
    pub login_claim: String,
    /// The algorithms allowed.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// How the issuer's keys are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    /// An unknown key id makes a new fetch only this long after the last.
    pub refetch_after: Duration,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            refetch_after: Duration::from_secs(60),
        }
    }
}

/// Why a token did not log in. Clients all get the same answer; the log
/// gets this.
#[derive(Debug, thiserror::Error)]
pub enum TokenRejection {
    /// Not three base64url parts of JSON, or too long.
    #[error("not a JWT")]
    Malformed,
    /// `alg` is not on the allow-list (`none` and HMACs never are).
    #[error("algorithm {0:?} is not allowed")]
    Algorithm(String),
    /// No key of the issuer has that id (or fits the algorithm).
    #[error("no key of the issuer matches (kid {0:?})")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `iss` is not the issuer.
    #[error("issued by {0:?}")]
    Issuer(String),
    /// `aud` does not hold the audience.
    #[error("not for this audience")]
    Audience,
    /// `exp` is past (or missing).
    #[error("expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("not valid yet")]
    NotYetValid,
    /// The login claim is missing or not a string.
    #[error("no {0:?} claim")]
    NoLogin(String),
}

/// Why the token could not be checked at all: the issuer's keys are out
/// of reach. Clients get a temporary failure.
#[derive(Debug, thiserror::Error)]
pub enum KeysUnavailable {
    /// Discovery or the key set could not be fetched.
    #[error("{0}")]
    Http(#[from] HttpError),
    /// An answer that is not what OpenID discovery or JWKS says.
    #[error("{url}: {reason}")]
    Document {
        /// Where.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// What a good token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The login claim's value.
    pub login: String,
    /// `sub`, for the log.
    pub subject: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize, Clone)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: Option<String>,
    jwks_uri: Option<String>,
}

#[derive(Default)]
struct Keys {
    keys: Arc<Vec<Jwk>>,
    fetched: Option<Instant>,
}

/// Checks access tokens of one issuer.
pub struct TokenVerifier {
    policy: IssuerPolicy,
    keys_policy: KeyPolicy,
    http: Http,
    keys: tokio::sync::Mutex<Keys>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn b64url(text: &str) -> Result<Vec<u8>, TokenRejection> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| TokenRejection::Malformed)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl TokenVerifier {
    /// A verifier for `policy`, fetching keys through `http`.
    pub fn new(policy: IssuerPolicy, keys_policy: KeyPolicy, http: Http) -> Self {
        Self {
            policy,
            keys_policy,
            http,
            keys: tokio::sync::Mutex::new(Keys::default()),
        }
    }

    /// The same with the keys of `jwks` (a JWK set, as JSON) rather than
    /// fetched ones, until the next fetch (tests and benchmarks).
    pub fn with_keys(mut self, jwks: &str) -> Result<Self, KeysUnavailable> {
        let set: JwkSet = serde_json::from_str(jwks).map_err(|_| KeysUnavailable::Document {
            url: "(given)".into(),
            reason: "not a JWK set".into(),
        })?;
        let keys = self.keys.get_mut();
        keys.keys = Arc::new(
            set.keys
                .into_iter()
                .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
                .take(MAX_KEYS)
                .collect(),
        );
        keys.fetched = Some(Instant::now());
        Ok(self)
    }

    /// What tokens must be.
    pub fn policy(&self) -> &IssuerPolicy {
        &self.policy
    }

    /// Fetches the issuer's keys now (at start, and for `submitd check`).
    pub async fn fetch_keys(&self) -> Result<usize, KeysUnavailable> {
        let mut keys = self.keys.lock().await;
        self.refresh(&mut keys).await?;
        Ok(keys.keys.len())
    }

    async fn refresh(&self, keys: &mut Keys) -> Result<(), KeysUnavailable> {
        keys.fetched = Some(Instant::now());
        let http = self.http.clone();
        let issuer = self.policy.issuer.clone();
        let fetched = tokio::task::spawn_blocking(move || fetch_keys(&http, &issuer))
            .await
            .map_err(|e| KeysUnavailable::Document {
                url: self.policy.issuer.clone(),
                reason: format!("the fetch did not finish: {e}"),
            })??;
        tracing::info!(target: "submitd::oauth2", issuer = %self.policy.issuer, keys = fetched.len(), "issuer keys fetched");
        keys.keys = Arc::new(fetched);
        Ok(())
    }

    /// Checks `token`. `Ok(Err(_))`: the token is refused; `Err(_)`: it
    /// could not be checked (no keys).
    pub async fn verify(
        &self,
        token: &str,
    ) -> Result<Result<VerifiedToken, TokenRejection>, KeysUnavailable> {
        let parsed = match Parsed::new(token, &self.policy.algorithms) {
            Ok(parsed) => parsed,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let keys = {
            let mut keys = self.keys.lock().await;
            let known = keys.keys.iter().any(|k| parsed.fits(k));
            let may_refetch = keys
                .fetched
                .is_none_or(|at| at.elapsed() >= self.keys_policy.refetch_after);
            if !known && may_refetch {
                // A first token, or a key the issuer rotated in.
                self.refresh(&mut keys).await?;
            }
            Arc::clone(&keys.keys)
        };
        Ok(parsed.check(&keys, &self.policy, now_secs()))
    }
}

/// Discovery, then the key set; keys that cannot be used are left out.
fn fetch_keys(http: &Http, issuer: &str) -> Result<Vec<Jwk>, KeysUnavailable> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let bad = |url: &str, reason: &str| KeysUnavailable::Document {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let answer = http.get(&url, DOCUMENT_LIMIT)?;
    if answer.status != 200 {
        return Err(bad(&url, &format!("HTTP status {}", answer.status)));
    }
    let discovery: Discovery = serde_json::from_str(&answer.body)
        .map_err(|_| bad(&url, "not an OpenID discovery document"))?;
    if discovery.issuer.as_deref() != Some(issuer) {
        return Err(bad(&url, "its issuer is not the configured issuer"));
    }
    let jwks_uri = discovery.jwks_uri.ok_or_else(|| bad(&url, "no jwks_uri"))?;
    let answer = http.get(&jwks_uri, DOCUMENT_LIMIT)?;
    if answer.status != 200 {
        return Err(bad(&jwks_uri, &format!("HTTP status {}", answer.status)));
    }
    let set: JwkSet =
        serde_json::from_str(&answer.body).map_err(|_| bad(&jwks_uri, "not a JWK set"))?;
    Ok(set
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        .filter(|k| k.usage.as_deref().is_none_or(|u| u == "sig"))
        .take(MAX_KEYS)
        .collect())
}

struct Parsed<'a> {
    algorithm: Algorithm,
    kid: Option<String>,
    signing_input: &'a str,
    signature: Vec<u8>,
    claims: serde_json::Map<String, serde_json::Value>,
}

impl<'a> Parsed<'a> {
    fn new(token: &'a str, allowed: &[Algorithm]) -> Result<Self, TokenRejection> {
        if token.len() > MAX_TOKEN {
            return Err(TokenRejection::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenRejection::Malformed);
        };
        let header: Header =
            serde_json::from_slice(&b64url(header)?).map_err(|_| TokenRejection::Malformed)?;
        let algorithm = Algorithm::parse(&header.alg)
            .filter(|a| allowed.contains(a))
            .ok_or_else(|| TokenRejection::Algorithm(header.alg.chars().take(16).collect()))?;
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&b64url(payload)?).map_err(|_| TokenRejection::Malformed)?;
        let signing_input = &token[..header_len(token)];
        Ok(Self {
            algorithm,
            kid: header.kid,
            signing_input,
            signature: b64url(signature)?,
            claims,
        })
    }

    /// Whether `key` may verify this token: the id, the key type for the
    /// algorithm, and the key's own `alg` if it names one.
    fn fits(&self, key: &Jwk) -> bool {
        if let (Some(want), Some(have)) = (&self.kid, &key.kid) {
            if want != have {
                return false;
            }
        } else if self.kid.is_some() {
            return false;
        }
        if key
            .alg
            .as_deref()
            .is_some_and(|a| a != self.algorithm.name())
        {
            return false;
        }
        match self.algorithm {
            Algorithm::Rs256
            | Algorithm::Rs384
            | Algorithm::Rs512
            | Algorithm::Ps256
            | Algorithm::Ps384
            | Algorithm::Ps512 => key.kty == "RSA",
            Algorithm::Es256 => key.kty == "EC" && key.crv.as_deref() == Some("P-256"),
            Algorithm::Es384 => key.kty == "EC" && key.crv.as_deref() == Some("P-384"),
            Algorithm::EdDsa => key.kty == "OKP" && key.crv.as_deref() == Some("Ed25519"),
        }
    }

    fn verify_with(&self, key: &Jwk) -> bool {
        let message = self.signing_input.as_bytes();
        let part = |v: &Option<String>| v.as_deref().and_then(|s| b64url(s).ok());
        match self.algorithm {
            Algorithm::Rs256
            | Algorithm::Rs384
            | Algorithm::Rs512
            | Algorithm::Ps256
            | Algorithm::Ps384
            | Algorithm::Ps512 => {
                let (Some(n), Some(e)) = (part(&key.n), part(&key.e)) else {
                    return false;
                };
                let params: &signature::RsaParameters = match self.algorithm {
                    Algorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, &self.signature)
                    .is_ok()
            }
            Algorithm::Es256 | Algorithm::Es384 => {
                let (Some(x), Some(y)) = (part(&key.x), part(&key.y)) else {
                    return false;
                };
                let point = [&[4u8][..], &x, &y].concat();
                let alg = if self.algorithm == Algorithm::Es256 {
                    &signature::ECDSA_P256_SHA256_FIXED
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED
                };
                UnparsedPublicKey::new(alg, point)
                    .verify(message, &self.signature)
                    .is_ok()
            }
            Algorithm::EdDsa => {
                let Some(x) = part(&key.x) else {
                    return false;
                };
                UnparsedPublicKey::new(&signature::ED25519, x)
                    .verify(message, &self.signature)
                    .is_ok()
            }
        }
    }

    fn check(
        &self,
        keys: &[Jwk],
        policy: &IssuerPolicy,
        now: i64,
    ) -> Result<VerifiedToken, TokenRejection> {
        let candidates: Vec<&Jwk> = keys.iter().filter(|k| self.fits(k)).collect();
        if candidates.is_empty() {
            return Err(TokenRejection::UnknownKey(
                self.kid
                    .clone()
                    .unwrap_or_default()
                    .chars()
                    .take(64)
                    .collect(),
            ));
        }
        if !candidates.iter().any(|k| self.verify_with(k)) {
            return Err(TokenRejection::Signature);
        }
        // Signed by the issuer's key: now the claims are worth reading.
        let text = |name: &str| self.claims.get(name).and_then(|v| v.as_str());
        let number = |name: &str| self.claims.get(name).and_then(serde_json::Value::as_i64);
        match text("iss") {
            Some(iss) if iss == policy.issuer => {}
            other => {
                return Err(TokenRejection::Issuer(
                    other.unwrap_or_default().chars().take(100).collect(),
                ))
            }
        }
        let audience_ok = match self.claims.get("aud") {
            Some(serde_json::Value::String(aud)) => *aud == policy.audience,
            Some(serde_json::Value::Array(list)) => {
                list.iter().any(|a| a.as_str() == Some(&policy.audience))
            }
            _ => false,
        };
        if !audience_ok {
            return Err(TokenRejection::Audience);
        }
        let leeway = i64::try_from(policy.leeway.as_secs()).unwrap_or(i64::MAX);
        match number("exp") {
            Some(exp) if exp.saturating_add(leeway) > now => {}
            _ => return Err(TokenRejection::Expired),
        }
        if number("nbf").is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(TokenRejection::NotYetValid);
        }
        let login = text(&policy.login_claim)
            .filter(|l| !l.is_empty() && !l.chars().any(char::is_control))
            .ok_or_else(|| TokenRejection::NoLogin(policy.login_claim.clone()))?;
        Ok(VerifiedToken {
            login: login.to_owned(),
            subject: text("sub").map(str::to_owned),
        })
    }
}

/// The length of `header.payload` in a token known to have three parts.
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};

    use super::*;

    fn enc(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn policy() -> IssuerPolicy {
        IssuerPolicy {
            issuer: "https://idp.test".into(),
            audience: "urn:smtp".into(),
            login_claim: "email".into(),
            algorithms: Algorithm::ALL.to_vec(),
            leeway: Duration::from_secs(5),
        }
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut base = serde_json::json!({
            "iss": "https://idp.test", "aud": ["urn:smtp", "other"],
            "exp": now_secs() + 60, "email": "alice@example.org", "sub": "u1",
        });
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        base
    }

    struct Signer {
        pair: EcdsaKeyPair,
        kid: &'static str,
    }

    impl Signer {
        fn new(kid: &'static str) -> Self {
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let doc = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new()).unwrap();
            Self {
                pair: EcdsaKeyPair::from_pkcs8(alg, doc.as_ref()).unwrap(),
                kid,
            }
        }

        fn jwk(&self) -> Jwk {
            let point = self.pair.public_key().as_ref();
            Jwk {
                kty: "EC".into(),
                kid: Some(self.kid.into()),
                alg: None,
                usage: Some("sig".into()),
                crv: Some("P-256".into()),
                n: None,
                e: None,
                x: Some(enc(&point[1..33])),
                y: Some(enc(&point[33..65])),
            }
        }

        fn sign(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
            let input = format!(
                "{}.{}",
                enc(header.to_string().as_bytes()),
                enc(claims.to_string().as_bytes())
            );
            let sig = self
                .pair
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap();
            format!("{input}.{}", enc(sig.as_ref()))
        }

        fn token(&self, claims: serde_json::Value) -> String {
            self.sign(serde_json::json!({"alg": "ES256", "kid": self.kid}), claims)
        }
    }

    fn check(token: &str, keys: &[Jwk]) -> Result<VerifiedToken, TokenRejection> {
        let policy = policy();
        Parsed::new(token, &policy.algorithms)?.check(keys, &policy, now_secs())
    }

    #[test]
    fn a_good_token_logs_in_as_its_claim() {
        let signer = Signer::new("k1");
        let token = signer.token(claims(serde_json::json!({})));
        let ok = check(&token, &[signer.jwk()]).unwrap();
        assert_eq!(ok.login, "alice@example.org");
        assert_eq!(ok.subject.as_deref(), Some("u1"));
    }

    #[test]
    fn every_bad_token_is_refused_for_its_reason() {
        let signer = Signer::new("k1");
        let other = Signer::new("k1");
        let keys = [signer.jwk()];
        let now = now_secs();
        let cases: Vec<(String, &str)> = vec![
            (
                signer.token(claims(serde_json::json!({"aud": "urn:other"}))),
                "audience",
            ),
            (
                signer.token(claims(serde_json::json!({"exp": now - 10}))),
                "expired",
            ),
            (
                signer.token(claims(serde_json::json!({"nbf": now + 60}))),
                "not valid yet",
            ),
            (
                signer.token(claims(serde_json::json!({"iss": "https://evil.test"}))),
                "issued by",
            ),
            (
                signer.token(claims(serde_json::json!({"email": 7}))),
                "no \"email\"",
            ),
            (other.token(claims(serde_json::json!({}))), "bad signature"),
            (
                Signer::new("k2").token(claims(serde_json::json!({}))),
                "no key",
            ),
            // alg=none: an unsigned token.
            (
                format!(
                    "{}.{}.",
                    enc(br#"{"alg":"none","kid":"k1"}"#),
                    enc(claims(serde_json::json!({})).to_string().as_bytes())
                ),
                "algorithm \"none\"",
            ),
            // HS256 with the public key as the secret: the classic confusion.
            (
                signer.sign(
                    serde_json::json!({"alg": "HS256", "kid": "k1"}),
                    claims(serde_json::json!({})),
                ),
                "algorithm \"HS256\"",
            ),
            // ES256 claimed, but the key is for another curve's algorithm.
            (
                signer.sign(
                    serde_json::json!({"alg": "ES384", "kid": "k1"}),
                    claims(serde_json::json!({})),
                ),
                "no key",
            ),
            ("a.b".into(), "not a JWT"),
            ("!!.!!.!!".into(), "not a JWT"),
        ];
        for (token, expected) in cases {
            let error = check(&token, &keys).unwrap_err().to_string();
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }

    #[test]
    fn ed25519_and_rsa_keys_verify_their_own_algorithms_only() {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let jwk = Jwk {
            kty: "OKP".into(),
            kid: None,
            alg: None,
            usage: None,
            crv: Some("Ed25519".into()),
            n: None,
            e: None,
            x: Some(enc(pair.public_key().as_ref())),
            y: None,
        };
        let input = format!(
            "{}.{}",
            enc(br#"{"alg":"EdDSA"}"#),
            enc(claims(serde_json::json!({})).to_string().as_bytes())
        );
        let token = format!("{input}.{}", enc(pair.sign(input.as_bytes()).as_ref()));
        assert!(check(&token, std::slice::from_ref(&jwk)).is_ok());
        // The same key offered for RS256 does not fit.
        let rs = format!(
            "{}.{}.{}",
            enc(br#"{"alg":"RS256"}"#),
            enc(claims(serde_json::json!({})).to_string().as_bytes()),
            enc(b"sig")
        );
        assert!(check(&rs, &[jwk])
            .unwrap_err()
            .to_string()
            .contains("no key"));
        // Only the configured algorithms pass.
        let mut narrow = policy();
        narrow.algorithms = vec![Algorithm::Rs256];
        assert!(Parsed::new(&token, &narrow.algorithms).is_err());
    }
}
