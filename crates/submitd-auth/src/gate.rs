//! The login gate: every login attempt passes through it, in one order,
//! so no caller can forget a step:
//!
//! ```text
//! credentials + client address ─▶ users changed since? ─▶ throttle forgotten
//!                                     ▼
//!          throttle: this user from this network, or the network, blocked? ─yes─▶ TryLater (log: blocked=true)
//!                                     │ no
//!                                     ▼
//!                 verified-credential cache: a hit ─▶ Authenticated (no argon2)
//!                                     │ miss (always, for any failure)
//!                                     ▼
//!                          backend check (argon2id file or Dovecot) ─ ok ─▶ remembered
//!          Authenticated ◀─ ok ───────┤─── unavailable ─▶ TryLater
//!          (log: authenticated)       │ wrong / unknown user / malformed exchange
//!                                     ▼
//!                  throttle counts it ─▶ delay ─▶ Rejected (log: the fail2ban line)
//! ```
//!
//! Unknown users and wrong passwords take the same path: the backend runs
//! a full check for both (a dummy hash for unknown users) and the reply is
//! the same. A successful login is never delayed by failures elsewhere;
//! only failure replies wait, and only the failing pair (or a network
//! guessing many names) is blocked (see `throttle.rs`). A reload that
//! changes the users clears the throttle: failures against the old file
//! (an empty one, say) must not keep blocking after the fix.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::backend::Authenticator;
use crate::cache::{Verified, VerifiedCache};
use crate::password::CheckOutcome;
use submitd_cluster::Cluster;
use submitd_oauth2::TokenVerifier;

use crate::sasl::{Credentials, Mechanism, TokenCredentials};
use crate::store::CredentialStore;
use crate::throttle::{failure_line, Admission, Throttle, ThrottleConfig};

/// The cache's clock: tokio's, so tests can move it; the same as the
/// system's monotonic clock otherwise.
fn cache_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// How a login attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The credentials are good.
    Authenticated {
        /// The user's name as the credential source writes it.
        user: String,
    },
    /// Wrong credentials, unknown user or a malformed exchange; the
    /// throttle's delay has already passed.
    Rejected,
    /// Not checked now: the client's network is blocked after too many
    /// failures, or the backend is unavailable. The client may retry later.
    TryLater,
}

/// Throttle, check, delay and log for every login.
#[derive(Debug)]
pub struct LoginGate {
    credentials: Arc<CredentialStore>,
    authenticator: Arc<Authenticator>,
    /// The throttle, and the credential generation it counted under.
    throttle: Mutex<(Throttle, u64)>,
    /// Logins verified lately (none: every login pays the full check).
    cache: Option<VerifiedCache>,
    /// Checks bearer tokens (OAUTHBEARER, XOAUTH2), when an issuer is set.
    tokens: Option<Arc<TokenVerifier>>,
    /// Failure counts and blocks shared with other instances.
    cluster: Option<Arc<Cluster>>,
}

impl LoginGate {
    /// A gate over these users and this backend, with a fresh throttle.
    pub fn new(
        credentials: Arc<CredentialStore>,
        authenticator: Arc<Authenticator>,
        throttle: ThrottleConfig,
    ) -> Self {
        let generation = credentials.generation();
        Self {
            credentials,
            authenticator,
            throttle: Mutex::new((Throttle::new(throttle), generation)),
            cache: None,
            tokens: None,
            cluster: None,
        }
    }

    /// Counts failures and blocks in `cluster` too, so that they hold
    /// across the instances sharing it (this instance's own counts decide
    /// alone while it is out of reach).
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Takes bearer tokens too, checked by `verifier`.
    pub fn with_tokens(mut self, verifier: Arc<TokenVerifier>) -> Self {
        self.tokens = Some(verifier);
        self
    }

    /// No issuer of our own: Dovecot's oauth2 passdb decides (the
    /// mechanisms are offered only when Dovecot offers them).
    async fn login_token_by_dovecot(
        &self,
        credentials: &TokenCredentials,
        client: IpAddr,
        mechanism: Mechanism,
    ) -> LoginOutcome {
        let named = credentials.username.as_deref().unwrap_or("");
        let Authenticator::Dovecot(dovecot) = &*self.authenticator else {
            return self.reject(client, named, mechanism.name()).await;
        };
        let message = credentials.message(mechanism);
        match dovecot
            .check_token(mechanism.name(), &message, client)
            .await
        {
            CheckOutcome::Authenticated { user, .. } => {
                tracing::info!(target: "submitd::auth", client = %client, %user, mechanism = mechanism.name(), by = "dovecot", "authenticated");
                counted(mechanism.name(), "ok");
                LoginOutcome::Authenticated { user }
            }
            CheckOutcome::Rejected => self.reject(client, named, mechanism.name()).await,
            CheckOutcome::Unavailable => {
                counted(mechanism.name(), "unavailable");
                LoginOutcome::TryLater
            }
        }
    }

    /// RFC 7628 §3.2.2's error challenge, the same for every refused
    /// token: the status, and where the issuer's configuration is.
    pub fn token_error_challenge(&self) -> Vec<u8> {
        let configuration = self.tokens.as_ref().map(|v| {
            format!(
                "{}/.well-known/openid-configuration",
                v.policy().issuer.trim_end_matches('/')
            )
        });
        let mut json = String::from("{\"status\":\"invalid_token\",\"schemes\":\"bearer\"");
        if let Some(url) = configuration {
            // The issuer is the operator's https:// URL: no quote or
            // backslash to escape (the config refuses them).
            json.push_str(&format!(",\"openid-configuration\":\"{url}\""));
        }
        json.push('}');
        json.into_bytes()
    }

    /// Whether bearer-token mechanisms may be offered.
    pub fn takes_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// One login attempt with a bearer token: the same throttle as
    /// passwords, then the token checked against the issuer's keys; its
    /// login claim must be the user the client named (if it named one) and
    /// a user the sender policy knows. Every refusal is the same to the
    /// client; the log says why.
    pub async fn login_token(
        &self,
        credentials: &TokenCredentials,
        client: IpAddr,
        mechanism: Mechanism,
    ) -> LoginOutcome {
        let named = credentials.username.as_deref().unwrap_or("");
        if self.blocked(client, named, mechanism).await {
            return LoginOutcome::TryLater;
        }
        let Some(verifier) = &self.tokens else {
            return self
                .login_token_by_dovecot(credentials, client, mechanism)
                .await;
        };
        let verified = match verifier.verify(&credentials.token).await {
            Err(unavailable) => {
                tracing::warn!(target: "submitd::auth", client = %client, error = %unavailable, "cannot check tokens: the issuer's keys are out of reach");
                counted(mechanism.name(), "unavailable");
                return LoginOutcome::TryLater;
            }
            Ok(Err(rejection)) => {
                tracing::info!(target: "submitd::auth", client = %client, user = %named, reason = %rejection, "token refused");
                return self.reject(client, named, mechanism.name()).await;
            }
            Ok(Ok(token)) => token,
        };
        if !named.is_empty() && !named.eq_ignore_ascii_case(&verified.login) {
            tracing::info!(target: "submitd::auth", client = %client, user = %named, token_login = %verified.login, reason = "the token is another user's", "token refused");
            return self.reject(client, named, mechanism.name()).await;
        }
        let users = self.credentials.users();
        let Some(user) = self.authenticator.policy_user(&users, &verified.login) else {
            tracing::info!(target: "submitd::auth", client = %client, user = %verified.login, reason = "not in the users file", "token refused");
            return self.reject(client, &verified.login, mechanism.name()).await;
        };
        let user = user.name.clone();
        tracing::info!(target: "submitd::auth", client = %client, %user, mechanism = mechanism.name(), subject = verified.subject.as_deref().unwrap_or("-"), "authenticated");
        counted(mechanism.name(), "ok");
        LoginOutcome::Authenticated { user }
    }

    /// Remembers verified logins in `cache` (see `cache.rs`).
    pub fn with_cache(mut self, cache: VerifiedCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Runs `f` on the throttle, forgotten first if the users changed
    /// since it last counted.
    fn with_throttle<R>(&self, f: impl FnOnce(&mut Throttle) -> R) -> R {
        let mut guard = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        let (throttle, seen) = &mut *guard;
        let generation = self.credentials.generation();
        if *seen != generation {
            throttle.clear();
            *seen = generation;
            tracing::info!(target: "submitd::auth", "the users changed: failed-login counts and blocks cleared");
            if let Some(cluster) = &self.cluster {
                let cluster = Arc::clone(cluster);
                tokio::spawn(async move { cluster.clear_logins().await });
            }
        }
        f(throttle)
    }

    /// Whether the throttle blocks `name` from `client` now (logged):
    /// this instance's, or the shared one.
    async fn blocked(&self, client: IpAddr, name: &str, mechanism: Mechanism) -> bool {
        let admission = self.with_throttle(|t| t.admit(client, name, Instant::now()));
        let mut blocked = matches!(admission, Admission::Blocked { .. });
        if let (false, Some(cluster)) = (blocked, &self.cluster) {
            let network = crate::client_network(client).to_string();
            blocked = cluster.login_blocked(&network, name).await == Some(true);
        }
        if blocked {
            tracing::warn!(target: "submitd::auth", "{} blocked=true", failure_line(client, name, mechanism.name()));
            counted(mechanism.name(), "blocked");
        }
        blocked
    }

    /// One login attempt from `client` with `credentials`, by `mechanism`.
    /// Returns when the client may be answered: a rejection only after
    /// the throttle's delay.
    pub async fn login(
        &self,
        credentials: &Credentials,
        client: IpAddr,
        mechanism: Mechanism,
    ) -> LoginOutcome {
        let username = credentials.username.as_str();
        if self.blocked(client, username, mechanism).await {
            return LoginOutcome::TryLater;
        }
        let users = self.credentials.users();
        let password = credentials.password.as_str();
        // The epoch is read before the users: a reload in between makes a
        // success count under the older epoch, which is then not kept.
        let epoch = self.credentials.reloads();
        // One key for the lookup and, after a full check, the insert.
        let cached = self.cache.as_ref().and_then(|cache| {
            let binding = self
                .authenticator
                .cache_binding(&users, username, password)?;
            Some((cache, cache.key(username, password, binding)))
        });
        if let Some((cache, key)) = cached {
            if let Some(hit) = cache.get(key, epoch, cache_now()) {
                tracing::info!(target: "submitd::auth", client = %client, user = %hit.user, app_password = hit.app_password.as_deref().unwrap_or("-"), cached = true, "authenticated");
                counted(mechanism.name(), "ok");
                return LoginOutcome::Authenticated { user: hit.user };
            }
        }
        let checked = self
            .authenticator
            .check(&users, username, password, client)
            .await;
        match checked {
            CheckOutcome::Authenticated { user, app_password } => {
                tracing::info!(target: "submitd::auth", client = %client, %user, app_password = app_password.as_deref().unwrap_or("-"), "authenticated");
                counted(mechanism.name(), "ok");
                if let Some((cache, key)) = cached {
                    let verified = Verified {
                        user: user.clone(),
                        app_password,
                    };
                    cache.insert(key, epoch, verified, cache_now());
                }
                LoginOutcome::Authenticated { user }
            }
            CheckOutcome::Rejected => self.reject(client, username, mechanism.name()).await,
            CheckOutcome::Unavailable => {
                counted(mechanism.name(), "unavailable");
                LoginOutcome::TryLater
            }
        }
    }

    /// An exchange that failed before it yielded credentials (bad base64
    /// inside the mechanism, a malformed PLAIN message): counted and
    /// delayed like a wrong password, with no user name.
    pub async fn malformed(&self, client: IpAddr, mechanism: Option<Mechanism>) -> LoginOutcome {
        self.reject(client, "", mechanism.map_or("?", Mechanism::name))
            .await
    }

    /// A failure: counted, logged in the fail2ban format, and answered
    /// after the throttle's delay.
    async fn reject(
        &self,
        client: IpAddr,
        username: &str,
        mechanism: &'static str,
    ) -> LoginOutcome {
        counted(mechanism, "failed");
        let (mut delay, config) = self.with_throttle(|t| {
            let delay = t.failure(client, username, Instant::now());
            (delay, t.config().clone())
        });
        if let Some(cluster) = &self.cluster {
            let network = crate::client_network(client).to_string();
            let shared = cluster
                .login_failed(&network, username, config.shared_rules())
                .await;
            if let Some(shared) = shared {
                delay = delay.max(config.delay_after(shared.pair.max(shared.user)));
            }
        }
        tracing::warn!(target: "submitd::auth", "{}", failure_line(client, username, mechanism));
        tokio::time::sleep(delay).await;
        LoginOutcome::Rejected
    }
}

/// A login attempt in the metrics.
fn counted(mechanism: &'static str, outcome: &'static str) {
    submitd_metrics::metrics().login(mechanism, outcome);
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use zeroize::Zeroizing;

    use super::*;
    use crate::cache::VerifiedCache;
    use crate::password::{hash_password, PasswordChecker};

    fn gate(dir: &Path, block_after: u32) -> LoginGate {
        let path = dir.join("users");
        let hash = hash_password(b"pw").unwrap();
        std::fs::write(&path, format!("alice {hash} send-as=alice@example.org\n")).unwrap();
        let (store, errors) = CredentialStore::open(&path).unwrap();
        assert!(errors.is_empty());
        LoginGate::new(
            Arc::new(store),
            Arc::new(Authenticator::Local(PasswordChecker::new(1).unwrap())),
            ThrottleConfig {
                base_delay: Duration::from_millis(200),
                block_after,
                spray_after: block_after,
                ..ThrottleConfig::default()
            },
        )
    }

    fn credentials(username: &str, password: &str) -> Credentials {
        Credentials {
            username: username.into(),
            password: Zeroizing::new(password.into()),
        }
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[tokio::test(start_paused = true)]
    async fn wrong_and_unknown_wait_the_same_and_a_block_stops_checking() {
        let dir = tempfile::tempdir().unwrap();
        let gate = gate(dir.path(), 3);
        let good = gate
            .login(&credentials("alice", "pw"), CLIENT, Mechanism::Plain)
            .await;
        assert_eq!(
            good,
            LoginOutcome::Authenticated {
                user: "alice".into()
            }
        );
        for (name, password) in [("alice", "wrong"), ("nobody", "pw")] {
            let started = tokio::time::Instant::now();
            let outcome = gate
                .login(&credentials(name, password), CLIENT, Mechanism::Login)
                .await;
            assert_eq!(outcome, LoginOutcome::Rejected);
            assert!(started.elapsed() >= Duration::from_millis(200), "{name}");
        }
        assert_eq!(
            gate.malformed(CLIENT, None).await,
            LoginOutcome::Rejected,
            "the third failure"
        );
        // Blocked now: not even the right password is checked.
        let outcome = gate
            .login(&credentials("alice", "pw"), CLIENT, Mechanism::Plain)
            .await;
        assert_eq!(outcome, LoginOutcome::TryLater);
        // Another network is not blocked.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));
        let outcome = gate
            .login(&credentials("alice", "pw"), other, Mechanism::Plain)
            .await;
        assert!(matches!(outcome, LoginOutcome::Authenticated { .. }));
    }

    /// An emptied users file is refused on reload (nobody locked out); a
    /// reload that changes the users clears the blocks failures against
    /// the old file caused.
    #[tokio::test(start_paused = true)]
    async fn reloads_refuse_an_empty_file_and_clear_blocks_when_users_change() {
        let dir = tempfile::tempdir().unwrap();
        let gate = gate(dir.path(), 3);
        let path = dir.path().join("users");
        let good = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        let refused = gate.credentials.reload().unwrap_err();
        assert!(
            refused.to_string().contains("would leave 0 of 1 users"),
            "{refused}"
        );
        let alice = || credentials("alice", "pw");
        assert!(matches!(
            gate.login(&alice(), CLIENT, Mechanism::Plain).await,
            LoginOutcome::Authenticated { .. }
        ));
        // Block the network, then change the users: the block goes.
        for name in ["x", "y", "z"] {
            gate.login(&credentials(name, "no"), CLIENT, Mechanism::Plain)
                .await;
        }
        assert_eq!(
            gate.login(&alice(), CLIENT, Mechanism::Plain).await,
            LoginOutcome::TryLater
        );
        // The same users again change nothing, and clear nothing.
        std::fs::write(&path, &good).unwrap();
        assert!(!gate.credentials.reload().unwrap().changed);
        assert_eq!(
            gate.login(&alice(), CLIENT, Mechanism::Plain).await,
            LoginOutcome::TryLater
        );
        let bob = hash_password(b"pw2").unwrap();
        std::fs::write(&path, format!("{good}bob {bob}\n")).unwrap();
        assert!(gate.credentials.reload().unwrap().changed);
        assert!(matches!(
            gate.login(&alice(), CLIENT, Mechanism::Plain).await,
            LoginOutcome::Authenticated { .. }
        ));
    }

    /// The cache skips argon2 for a login verified lately, never for a
    /// failure, and forgets on every reload and on a new password.
    #[tokio::test(start_paused = true)]
    async fn the_cache_skips_argon2_only_for_verified_logins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let hash = hash_password(b"pw").unwrap();
        std::fs::write(&path, format!("alice {hash}\nbob {hash}\n")).unwrap();
        let (store, _) = CredentialStore::open(&path).unwrap();
        let checker = Arc::new(Authenticator::Local(PasswordChecker::new(1).unwrap()));
        let checks = {
            let checker = Arc::clone(&checker);
            move || match &*checker {
                Authenticator::Local(c) => c.verifications(),
                Authenticator::Dovecot(_) => 0,
            }
        };
        let gate = LoginGate::new(Arc::new(store), checker, ThrottleConfig::default())
            .with_cache(VerifiedCache::new(Duration::from_secs(3600), 100).unwrap());
        let login = |name: &'static str, password: &'static str| {
            let gate = &gate;
            async move {
                gate.login(&credentials(name, password), CLIENT, Mechanism::Plain)
                    .await
            }
        };
        let ok = |user: &str| LoginOutcome::Authenticated { user: user.into() };
        assert_eq!(login("alice", "pw").await, ok("alice"));
        assert_eq!(checks(), 1);
        assert_eq!(login("ALICE", "pw").await, ok("alice"));
        assert_eq!(login("alice", "pw").await, ok("alice"));
        assert_eq!(checks(), 1, "two hits");
        // Failures are checked in full every time, cached or not.
        for (name, password) in [("alice", "wrong"), ("alice", "wrong"), ("nobody", "pw")] {
            assert_eq!(login(name, password).await, LoginOutcome::Rejected);
        }
        assert_eq!(checks(), 4);
        // A reload of the same file (SIGHUP) forgets.
        assert!(!gate.credentials.reload().unwrap().changed);
        assert_eq!(login("alice", "pw").await, ok("alice"));
        assert_eq!(checks(), 5);
        // A new password: the old one no longer works, from the first try.
        let new = hash_password(b"new").unwrap();
        std::fs::write(&path, format!("alice {new}\nbob {hash}\n")).unwrap();
        assert!(gate.credentials.reload().unwrap().changed);
        assert_eq!(login("alice", "pw").await, LoginOutcome::Rejected);
        assert_eq!(login("alice", "new").await, ok("alice"));
        assert_eq!(login("alice", "new").await, ok("alice"));
        assert_eq!(checks(), 7);
        // The TTL runs out.
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert_eq!(login("alice", "new").await, ok("alice"));
        assert_eq!(checks(), 8);
    }

    /// A verifier with one P-256 key, and tokens it signs.
    fn token_gate(dir: &Path, block_after: u32) -> (LoginGate, impl Fn(&str) -> String) {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
        use base64::Engine as _;
        let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref()).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwks = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k","x":"{}","y":"{}"}}]}}"#,
            enc(&point[1..33]),
            enc(&point[33..65])
        );
        let policy = submitd_oauth2::IssuerPolicy {
            issuer: "https://idp.test".into(),
            audience: "urn:smtp".into(),
            login_claim: "email".into(),
            algorithms: submitd_oauth2::Algorithm::ALL.to_vec(),
            leeway: Duration::from_secs(5),
        };
        let http = submitd_oauth2::Http::new(None, Duration::from_secs(1)).unwrap();
        let verifier = TokenVerifier::new(policy, submitd_oauth2::KeyPolicy::default(), http)
            .with_keys(&jwks)
            .unwrap();
        let gate = gate(dir, block_after).with_tokens(Arc::new(verifier));
        let sign = move |email: &str| {
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 600;
            let claims = format!(
                r#"{{"iss":"https://idp.test","aud":"urn:smtp","exp":{exp},"email":"{email}"}}"#
            );
            let input = format!(
                "{}.{}",
                enc(br#"{"alg":"ES256","kid":"k"}"#),
                enc(claims.as_bytes())
            );
            let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
            format!("{input}.{}", enc(sig.as_ref()))
        };
        (gate, sign)
    }

    fn bearer(user: Option<&str>, token: &str) -> TokenCredentials {
        TokenCredentials {
            username: user.map(str::to_owned),
            token: Zeroizing::new(token.to_owned()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn token_logins_need_a_known_user_and_failures_count_like_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let (gate, sign) = token_gate(dir.path(), 3);
        assert!(gate.takes_tokens());
        let m = Mechanism::OAuthBearer;
        // The token alone names alice; or alice names herself.
        for named in [None, Some("alice"), Some("ALICE")] {
            let outcome = gate
                .login_token(&bearer(named, &sign("alice")), CLIENT, m)
                .await;
            assert_eq!(
                outcome,
                LoginOutcome::Authenticated {
                    user: "alice".into()
                },
                "{named:?}"
            );
        }
        // A user not in the file (from another network, not to count here).
        let elsewhere = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 9));
        let outcome = gate
            .login_token(&bearer(None, &sign("bob")), elsewhere, m)
            .await;
        assert_eq!(outcome, LoginOutcome::Rejected);
        // Named as alice: another user's token, a forged one, another's.
        let started = tokio::time::Instant::now();
        for (named, token) in [
            (Some("alice"), sign("bob")),
            (Some("alice"), format!("{}x", sign("alice"))),
            (Some("alice"), sign("carol")),
        ] {
            let outcome = gate.login_token(&bearer(named, &token), CLIENT, m).await;
            assert_eq!(outcome, LoginOutcome::Rejected);
        }
        assert!(
            started.elapsed() >= Duration::from_millis(600),
            "refusals are delayed"
        );
        // Three failures for alice from this network: blocked, even with a
        // good token, and for her password too.
        let outcome = gate
            .login_token(&bearer(Some("alice"), &sign("alice")), CLIENT, m)
            .await;
        assert_eq!(outcome, LoginOutcome::TryLater);
        let outcome = gate
            .login(&credentials("alice", "pw"), CLIENT, Mechanism::Plain)
            .await;
        assert_eq!(outcome, LoginOutcome::TryLater);
        let challenge = String::from_utf8(gate.token_error_challenge()).unwrap();
        assert_eq!(
            challenge,
            r#"{"status":"invalid_token","schemes":"bearer","openid-configuration":"https://idp.test/.well-known/openid-configuration"}"#
        );
    }
}
