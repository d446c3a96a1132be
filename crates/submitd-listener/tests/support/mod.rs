//! What the listener's tests share: the answers' owners wired as the
//! daemon wires them, over a credential file and a spool of the test's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use submitd_auth::{
    Authenticator, CredentialStore, LoginGate, PasswordChecker, SenderPolicy, SendingLimits,
    ThrottleConfig,
};
use submitd_listener::Services;
use submitd_relay::{Intake, Maildir, Relay, RelayConfig, RetryPolicy, Route, Spool};

/// Services for the users in `users`, storing into `spool` and relaying
/// into `maildir`, as `mx.test`; failed logins delayed 10 ms and a
/// network blocked after `block_after`. Returns the relay too.
pub(crate) fn services(
    users: &Path,
    spool: Spool,
    maildir: Maildir,
    block_after: u32,
) -> (Arc<Services>, Relay) {
    let (store, errors) = CredentialStore::open(users).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let credentials = Arc::new(store);
    let authenticator = Arc::new(Authenticator::Local(PasswordChecker::new(2).unwrap()));
    let gate = LoginGate::new(
        Arc::clone(&credentials),
        Arc::clone(&authenticator),
        ThrottleConfig {
            base_delay: Duration::from_millis(10),
            block_after,
            spray_after: block_after,
            ..ThrottleConfig::default()
        },
    );
    let policy = SenderPolicy::new(credentials, authenticator, SendingLimits::defaults());
    let relay = Relay::new(
        spool,
        RelayConfig::new("mx.test", Route::Maildir(maildir), RetryPolicy::default()),
    );
    let intake = Intake::new(relay.clone(), "mx.test", false);
    let services = Services::new(gate, policy, intake, Duration::from_secs(5));
    (Arc::new(services), relay)
}
