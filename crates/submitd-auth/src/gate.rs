//! The login gate: every login attempt passes through it, in one order,
//! so no caller can forget a step:
//!
//! ```text
//! credentials + client address ─▶ throttle: network blocked? ─yes─▶ TryLater (log: blocked=true)
//!                                     │ no
//!                                     ▼
//!                          backend check (argon2id file or Dovecot)
//!          Authenticated ◀─ ok ───────┤─── unavailable ─▶ TryLater
//!          (log: authenticated)       │ wrong / unknown user / malformed exchange
//!                                     ▼
//!                  throttle counts it ─▶ delay ─▶ Rejected (log: the fail2ban line)
//! ```
//!
//! Unknown users and wrong passwords take the same path: the backend runs
//! a full check for both (a dummy hash for unknown users) and the reply is
//! the same. A successful login is never delayed by failures elsewhere;
//! only failure replies wait (see `throttle.rs`).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::backend::Authenticator;
use crate::password::CheckOutcome;
use crate::sasl::{Credentials, Mechanism};
use crate::store::CredentialStore;
use crate::throttle::{failure_line, Admission, Throttle, ThrottleConfig};

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
    throttle: Mutex<Throttle>,
}

impl LoginGate {
    /// A gate over these users and this backend, with a fresh throttle.
    pub fn new(
        credentials: Arc<CredentialStore>,
        authenticator: Arc<Authenticator>,
        throttle: ThrottleConfig,
    ) -> Self {
        Self {
            credentials,
            authenticator,
            throttle: Mutex::new(Throttle::new(throttle)),
        }
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
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
        if let Admission::Blocked { .. } = self.throttle().admit(client, Instant::now()) {
            tracing::warn!(target: "submitd::auth", "{} blocked=true", failure_line(client, username, mechanism.name()));
            return LoginOutcome::TryLater;
        }
        let users = self.credentials.users();
        let checked = self
            .authenticator
            .check(&users, username, &credentials.password, client)
            .await;
        match checked {
            CheckOutcome::Authenticated { user, app_password } => {
                tracing::info!(target: "submitd::auth", client = %client, %user, app_password = app_password.as_deref().unwrap_or("-"), "authenticated");
                LoginOutcome::Authenticated { user }
            }
            CheckOutcome::Rejected => self.reject(client, username, mechanism.name()).await,
            CheckOutcome::Unavailable => LoginOutcome::TryLater,
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
    async fn reject(&self, client: IpAddr, username: &str, mechanism: &str) -> LoginOutcome {
        let delay = self.throttle().failure(client, username, Instant::now());
        tracing::warn!(target: "submitd::auth", "{}", failure_line(client, username, mechanism));
        tokio::time::sleep(delay).await;
        LoginOutcome::Rejected
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use zeroize::Zeroizing;

    use super::*;
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
}
