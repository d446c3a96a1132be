//! What the relay's benchmarks share: a relay to the fake smarthost, the
//! envelope and the 10 KiB message they queue.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use submitd_relay::{
    client_tls_config, Relay, RelayConfig, RetryPolicy, Route, Spool, StoredEnvelope, Upstream,
    UpstreamAuth,
};
use submitd_smtp::{MailFrom, RcptTo, Transport};
use submitd_testkit::{FakeSmarthost, Fault, TestCa};

/// A two-thread runtime, a test CA and a well-behaved fake smarthost over
/// implicit TLS on it.
pub(crate) fn runtime_and_fake() -> (tokio::runtime::Runtime, TestCa, FakeSmarthost) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let ca = TestCa::new();
    let fake = runtime.block_on(FakeSmarthost::start(
        &ca,
        &["localhost"],
        Transport::ImplicitTls,
        Fault::None,
    ));
    (runtime, ca, fake)
}

/// A relay over `spool` to the fake smarthost on `port`, trusting the CA
/// in `ca_file`, with the default settings.
pub(crate) fn relay_to_fake(spool: &Spool, port: u16, ca_file: &Path) -> Relay {
    let upstream = Upstream {
        host: "localhost".into(),
        port,
        tls: Transport::ImplicitTls,
        auth: UpstreamAuth::Password {
            user: "alice".into(),
            password: Arc::new(b"secret".to_vec()),
        },
        mechanisms: Vec::new(),
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
