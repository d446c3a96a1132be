//! What the relay's benchmarks share: a relay to the fake smarthost, the
//! envelope and the 10 KiB message they queue.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use submitd_relay::{
    client_tls_config, Relay, RelayConfig, RetryPolicy, Route, Spool, StoredEnvelope, Upstream,
};
use submitd_smtp::{MailFrom, RcptTo, Transport};

/// A relay over `spool` to the fake smarthost on `port`, trusting the CA
/// in `ca_file`, with the default settings.
pub(crate) fn relay_to_fake(spool: &Spool, port: u16, ca_file: &Path) -> Relay {
    let upstream = Upstream {
        host: "localhost".into(),
        port,
        tls: Transport::ImplicitTls,
        credentials: Some(("alice".into(), Arc::new(b"secret".to_vec()))),
        tls_config: client_tls_config(Some(ca_file)).unwrap_or_else(|e| panic!("{e}")),
        connect_timeout: Duration::from_secs(5),
    };
    Relay::new(
        spool.clone(),
        RelayConfig::new(
            "mx.test",
            Route::Upstreams(vec![upstream]),
            RetryPolicy::default(),
        ),
    )
}

/// alice@example.org to bob@example.net, received now.
pub(crate) fn envelope() -> StoredEnvelope {
    StoredEnvelope {
        mail_from: MailFrom::parse("<alice@example.org>").unwrap_or_else(|e| panic!("{e}")),
        recipients: vec![RcptTo::parse("<bob@example.net>").unwrap_or_else(|e| panic!("{e}"))],
        user: Some("alice".into()),
        received: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

/// A message of about 10 KiB.
pub(crate) fn body() -> String {
    format!(
        "From: alice@example.org\r\nSubject: bench\r\n\r\n{}",
        format!("{}\r\n", "x".repeat(76)).repeat(128)
    )
}
