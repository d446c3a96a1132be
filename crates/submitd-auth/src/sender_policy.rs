//! The sender policy of a session: may its user send as this envelope
//! sender, with these From:/Sender: fields, and is the user within the
//! sending limits. It answers for network logins (the credential file's
//! line, or what the Dovecot backend allows) and for local users on the
//! daemon's unix socket (their line, else `name@domain` only).
//!
//! ```text
//! MAIL FROM ─▶ resolve(account) ─▶ check_envelope: send-as, then limits
//! prepared header ─▶ resolve(account) ─▶ check_header: From:, Sender:
//! stored ─▶ record(user, recipients)
//! ```
//!
//! A user removed from the credential file since they logged in has no
//! policy any more: [`SenderRefusal::AccountGone`], and the session must
//! log in again.

use std::sync::Arc;
use std::time::Instant;

use submitd_cluster::Cluster;

use crate::backend::{local_policy_user, Authenticator};
use crate::limits::{LimitExceeded, RateLimiter, SendingLimits, Used};
use crate::policy::{check_envelope_sender, check_header_senders, PolicyError};
use crate::store::{CredentialStore, User};

/// Whose policy a session is under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Account {
    /// A user who logged in with AUTH, as the backend named them.
    Login(String),
    /// A local user of this machine, named by the unix socket's peer
    /// credentials, whose addresses are `name@domain` unless the
    /// credential file has a line for them.
    Local {
        /// The login name.
        name: String,
        /// The local domain (`[local] domain`).
        domain: String,
    },
}

/// Why a sender was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SenderRefusal {
    /// The user is no longer in the credential file.
    #[error("your account changed; log in again")]
    AccountGone,
    /// The address is not one of the user's.
    #[error(transparent)]
    NotAllowed(#[from] PolicyError),
    /// The user reached a sending limit.
    #[error("sending limit reached: {0}")]
    Limit(#[from] LimitExceeded),
}

/// Sender checks and sending limits for every session.
#[derive(Debug)]
pub struct SenderPolicy {
    credentials: Arc<CredentialStore>,
    authenticator: Arc<Authenticator>,
    rate: RateLimiter,
    default_limits: SendingLimits,
    cluster: Option<Arc<Cluster>>,
}

impl SenderPolicy {
    /// The policy of these users under this backend; users whose line
    /// sets no limit get `default_limits`.
    pub fn new(
        credentials: Arc<CredentialStore>,
        authenticator: Arc<Authenticator>,
        default_limits: SendingLimits,
    ) -> Self {
        Self {
            credentials,
            authenticator,
            rate: RateLimiter::new(),
            default_limits,
            cluster: None,
        }
    }

    /// Counts sending in `cluster` too, so that the limits hold across
    /// the instances sharing it (the local count decides alone while it
    /// is out of reach).
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The user whose policy applies to `account` now.
    pub fn resolve(&self, account: &Account) -> Result<User, SenderRefusal> {
        let users = self.credentials.users();
        let user = match account {
            Account::Login(name) => self.authenticator.policy_user(&users, name),
            Account::Local { name, domain } => Some(local_policy_user(&users, name, domain)),
        };
        user.map(std::borrow::Cow::into_owned)
            .ok_or(SenderRefusal::AccountGone)
    }

    /// May `user` start a message from `sender` (`None`: `<>`) at `now`?
    /// The limits are this instance's count, then the shared one.
    pub async fn check_envelope(
        &self,
        user: &User,
        sender: Option<(&str, &str)>,
        now: Instant,
    ) -> Result<(), SenderRefusal> {
        check_envelope_sender(user, sender)?;
        let limits = user.limits.or(self.default_limits);
        self.rate.check(&user.name, limits, now)?;
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let Some(shared) = cluster.usage(&user.name).await else {
            return Ok(());
        };
        let used = Used {
            messages_hour: shared.messages_hour,
            messages_day: shared.messages_day,
            recipients_hour: shared.recipients_hour,
            recipients_day: shared.recipients_day,
        };
        if let Some(exceeded) = limits.exceeded(used) {
            tracing::warn!(target: "submitd::limits", "sending limit reached: user={:?} limit=\"{exceeded}\" shared=true", user.name);
            return Err(exceeded.into());
        }
        Ok(())
    }

    /// May `user` send a message with these From: addresses and Sender:?
    pub fn check_header(
        &self,
        user: &User,
        from: &[(String, String)],
        sender: Option<&(String, String)>,
    ) -> Result<(), SenderRefusal> {
        fn pair(a: &(String, String)) -> (&str, &str) {
            (&a.0, &a.1)
        }
        let from: Vec<(&str, &str)> = from.iter().map(pair).collect();
        check_header_senders(user, &from, sender.map(pair))?;
        Ok(())
    }

    /// `user` sent a message to `recipients` recipients at `now`. The
    /// shared count is added in the background: the 250 does not wait for
    /// Redis (a MAIL of the same user in that millisecond may miss it;
    /// the local count never does).
    pub fn record(&self, user: &User, recipients: usize, now: Instant) {
        let recipients = u32::try_from(recipients).unwrap_or(u32::MAX);
        self.rate.record(&user.name, recipients, now);
        if let Some(cluster) = &self.cluster {
            let (cluster, name) = (Arc::clone(cluster), user.name.clone());
            tokio::spawn(async move { cluster.record(&name, recipients).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::password::PasswordChecker;

    fn policy(dir: &Path) -> SenderPolicy {
        let path = dir.join("users");
        std::fs::write(
            &path,
            "alice - send-as=alice@example.org max-messages=2/h\n",
        )
        .unwrap();
        let (store, _) = CredentialStore::open(&path).unwrap();
        SenderPolicy::new(
            Arc::new(store),
            Arc::new(Authenticator::Local(PasswordChecker::new(1).unwrap())),
            SendingLimits::defaults(),
        )
    }

    #[tokio::test]
    async fn envelope_header_limits_and_gone_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let policy = policy(dir.path());
        let now = Instant::now();
        let alice = policy.resolve(&Account::Login("alice".into())).unwrap();
        assert_eq!(
            policy
                .check_envelope(&alice, Some(("alice", "example.org")), now)
                .await,
            Ok(())
        );
        assert!(matches!(
            policy
                .check_envelope(&alice, Some(("ceo", "example.org")), now)
                .await,
            Err(SenderRefusal::NotAllowed(_))
        ));
        let ceo = [("ceo".to_owned(), "example.org".to_owned())];
        assert!(matches!(
            policy.check_header(&alice, &ceo, None),
            Err(SenderRefusal::NotAllowed(_))
        ));
        policy.record(&alice, 1, now);
        policy.record(&alice, 1, now);
        assert!(matches!(
            policy
                .check_envelope(&alice, Some(("alice", "example.org")), now)
                .await,
            Err(SenderRefusal::Limit(LimitExceeded::MessagesPerHour(2)))
        ));
        assert_eq!(
            policy.resolve(&Account::Login("mallory".into())),
            Err(SenderRefusal::AccountGone)
        );
        let root = policy
            .resolve(&Account::Local {
                name: "root".into(),
                domain: "example.org".into(),
            })
            .unwrap();
        assert_eq!(
            policy
                .check_envelope(&root, Some(("root", "example.org")), now)
                .await,
            Ok(())
        );
    }
}
