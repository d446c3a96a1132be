//! Delivery to a fake smarthost on loopback, over real TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use submitd_relay::{
    apply, client_tls_config, AttemptResult, Connection, DeliveryError, DeliveryState,
    RecipientState, RetryPolicy, Upstream, UpstreamAuth,
};
use submitd_smtp::{Envelope, MailFrom, RcptTo, Transport};
use submitd_testkit::{FakeSmarthost, Fault, TestCa};

/// Whether the retry policy keeps a recipient pending after `error` (the
/// one place that decides).
fn retried(error: &DeliveryError) -> bool {
    let mut state = DeliveryState::new(1, 0);
    let failed = apply(
        &mut state,
        &AttemptResult::Failed(error),
        &RetryPolicy::default(),
        0,
        10,
        0.5,
    );
    failed.is_empty() && matches!(state.recipients[0], RecipientState::Pending(Some(_)))
}

fn upstream(ca: &TestCa, smarthost: &FakeSmarthost, tls: Transport, password: &str) -> Upstream {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    Upstream {
        host: "localhost".into(),
        port: smarthost.addr.port(),
        tls,
        auth: UpstreamAuth::Password {
            user: "alice".into(),
            password: Arc::new(password.as_bytes().to_vec()),
        },
        mechanisms: Vec::new(),
        tls_config: client_tls_config(Some(&ca_file)).unwrap(),
        connect_timeout: Duration::from_secs(5),
    }
}

fn envelope(to: &[&str]) -> Envelope {
    Envelope {
        mail_from: MailFrom::parse("<alice@example.org>").unwrap(),
        recipients: to
            .iter()
            .map(|r| RcptTo::parse(&format!("<{r}>")).unwrap())
            .collect(),
    }
}

const MESSAGE: &[u8] =
    b"From: alice@example.org\r\nSubject: caf\xc3\xa9\r\n\r\n.dot first\r\n..two\r\n.\r\n8-bit \xe2\x82\xac\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_exact_over_implicit_tls_with_reuse_and_partial_failure() {
    let ca = TestCa::new();
    let smarthost =
        FakeSmarthost::start(&ca, &["localhost"], Transport::ImplicitTls, Fault::None).await;
    let upstream = upstream(&ca, &smarthost, Transport::ImplicitTls, "secret");
    let mut connection = Connection::open(&upstream, "relay.test").await.unwrap();
    let outcome = connection
        .send(
            &envelope(&[
                "bob@example.net",
                "unknown@example.net",
                "carol@example.net",
            ]),
            MESSAGE,
        )
        .await
        .unwrap();
    assert!(outcome.delivered(0) && !outcome.delivered(1) && outcome.delivered(2));
    assert_eq!(outcome.recipients[1].code(), 550);
    // A second message on the same connection, then a 5xx after DATA.
    let second = connection
        .send(&envelope(&["dave@example.net"]), b"Subject: 2\r\n\r\nx\r\n")
        .await
        .unwrap();
    assert!(second.delivered(0));
    let rejected = connection
        .send(
            &envelope(&["erin@example.net"]),
            b"X-Store: reject\r\n\r\nx\r\n",
        )
        .await
        .unwrap();
    assert_eq!(rejected.recipients[0].code(), 554);
    assert!(connection.is_usable());
    connection.quit().await;

    let messages = smarthost.messages();
    assert_eq!(messages.len(), 2);
    assert!(messages[0].data == MESSAGE, "not byte-exact");
    assert_eq!(messages[0].recipients.len(), 2);
    assert!(messages[0].tls);
    assert_eq!(
        smarthost.connections(),
        1,
        "one connection carried every message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_starttls() {
    let ca = TestCa::new();
    let smarthost =
        FakeSmarthost::start(&ca, &["localhost"], Transport::StartTls, Fault::None).await;
    let upstream = upstream(&ca, &smarthost, Transport::StartTls, "secret");
    let mut connection = Connection::open(&upstream, "relay.test").await.unwrap();
    assert!(connection
        .send(&envelope(&["bob@example.net"]), MESSAGE)
        .await
        .unwrap()
        .delivered(0));
    let messages = smarthost.messages();
    assert!(messages[0].tls && messages[0].data == MESSAGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_refused_and_nothing_is_sent() {
    let ca = TestCa::new();
    let smarthost = FakeSmarthost::start(
        &ca,
        &["smtp.other.example"],
        Transport::ImplicitTls,
        Fault::None,
    )
    .await;
    let upstream = upstream(&ca, &smarthost, Transport::ImplicitTls, "secret");
    let error = Connection::open(&upstream, "relay.test").await.unwrap_err();
    assert!(retried(&error), "retried, not bounced");
    assert!(
        error.to_string().contains("TLS handshake failed"),
        "{error}"
    );
    assert!(
        error.to_string().contains("NotValidForName")
            || error.to_string().contains("not valid for"),
        "{error}"
    );
    assert!(smarthost.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ca_is_refused() {
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let smarthost = FakeSmarthost::start(
        &other_ca,
        &["localhost"],
        Transport::ImplicitTls,
        Fault::None,
    )
    .await;
    let upstream = upstream(&ca, &smarthost, Transport::ImplicitTls, "secret");
    let error = Connection::open(&upstream, "relay.test").await.unwrap_err();
    assert!(
        error.to_string().contains("invalid peer certificate"),
        "{error}"
    );
    assert!(smarthost.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_dropped_connections_are_errors_to_retry() {
    let ca = TestCa::new();
    let smarthost =
        FakeSmarthost::start(&ca, &["localhost"], Transport::ImplicitTls, Fault::None).await;
    let error = Connection::open(
        &upstream(&ca, &smarthost, Transport::ImplicitTls, "wrong"),
        "relay.test",
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("535"), "{error}");
    assert!(retried(&error));

    let dropping = FakeSmarthost::start(
        &ca,
        &["localhost"],
        Transport::ImplicitTls,
        Fault::DropDuringData(10),
    )
    .await;
    let mut connection = Connection::open(
        &upstream(&ca, &dropping, Transport::ImplicitTls, "secret"),
        "relay.test",
    )
    .await
    .unwrap();
    let big = [MESSAGE, &b"x".repeat(100_000)[..], b"\r\n"].concat();
    let error = connection
        .send(&envelope(&["bob@example.net"]), &big)
        .await
        .unwrap_err();
    assert!(retried(&error), "{error}");
    assert!(dropping.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_times_out() {
    let ca = TestCa::new();
    let smarthost =
        FakeSmarthost::start(&ca, &["localhost"], Transport::ImplicitTls, Fault::Stall).await;
    let mut upstream = upstream(&ca, &smarthost, Transport::ImplicitTls, "secret");
    upstream.connect_timeout = Duration::from_millis(300);
    let error = Connection::open(&upstream, "relay.test").await.unwrap_err();
    assert!(error.to_string().contains("timed out"), "{error}");
}
