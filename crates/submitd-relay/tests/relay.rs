//! The delivery runner over the real spool, to a fake smarthost on
//! loopback TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use submitd_relay::{
    client_tls_config, queue, Maildir, QueueId, Relay, RelayConfig, RetryPolicy, Route,
    SenderRoute, Spool, StoredEnvelope, Upstream, UpstreamAuth,
};
use submitd_smtp::{MailFrom, RcptTo, Transport};
use submitd_testkit::{FakeSmarthost, Fault, TestCa};

struct Setup {
    _dir: tempfile::TempDir,
    spool: Spool,
    ca_file: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&dir.path().join("spool")).unwrap();
    let ca_file = dir.path().join("ca.pem");
    Setup {
        _dir: dir,
        spool,
        ca_file,
    }
}

fn upstream(setup: &Setup, ca: &TestCa, port: u16) -> Upstream {
    std::fs::write(&setup.ca_file, ca.pem()).unwrap();
    Upstream {
        host: "localhost".into(),
        port,
        tls: Transport::ImplicitTls,
        auth: UpstreamAuth::Password {
            user: "alice".into(),
            password: Arc::new(b"secret".to_vec()),
        },
        mechanisms: Vec::new(),
        tls_config: client_tls_config(Some(&setup.ca_file)).unwrap(),
        connect_timeout: Duration::from_secs(5),
    }
}

fn relay(setup: &Setup, route: Route, policy: RetryPolicy) -> Relay {
    Relay::new(
        setup.spool.clone(),
        RelayConfig::new("mx.test", route, policy),
    )
}

/// A fake smarthost with `names` on its certificate and `fault`, and a
/// relay routed to it.
async fn with_fake(
    setup: &Setup,
    names: &[&str],
    fault: Fault,
    policy: RetryPolicy,
) -> (FakeSmarthost, Relay) {
    let ca = TestCa::new();
    let fake = FakeSmarthost::start(&ca, names, Transport::ImplicitTls, fault).await;
    let relay = relay(
        setup,
        Route::Upstreams(vec![upstream(setup, &ca, fake.addr.port())]),
        policy,
    );
    (fake, relay)
}

fn queue_message(spool: &Spool, to: &[&str], data: &[u8]) -> QueueId {
    queue_from(spool, "alice@example.org", to, data)
}

fn queue_from(spool: &Spool, from: &str, to: &[&str], data: &[u8]) -> QueueId {
    let envelope = StoredEnvelope {
        mail_from: MailFrom::parse(&format!("<{from}>")).unwrap(),
        recipients: to
            .iter()
            .map(|r| RcptTo::parse(&format!("<{r}>")).unwrap())
            .collect(),
        user: Some("alice".into()),
        received: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    };
    spool
        .store_blocking(QueueId::generate(), &envelope, data)
        .unwrap()
}

const DATA: &[u8] = b"From: alice@example.org\r\nSubject: t\r\n\r\n.dot\r\n\xe2\x82\xac\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_everything_due_over_one_connection_and_removes_it() {
    let setup = setup();
    let (fake, relay) =
        with_fake(&setup, &["localhost"], Fault::None, RetryPolicy::default()).await;
    queue_message(&setup.spool, &["bob@example.net"], DATA);
    queue_message(
        &setup.spool,
        &["carol@example.net", "dave@example.net"],
        DATA,
    );
    let figures = relay.run_once().await;
    assert_eq!(
        (figures.attempted, figures.delivered, figures.removed),
        (2, 3, 2)
    );
    assert!(setup.spool.list().unwrap().is_empty());
    let messages = fake.messages();
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().all(|m| m.data == DATA));
    assert_eq!(fake.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recipient_bounced_the_others_delivered() {
    let setup = setup();
    let (fake, relay) =
        with_fake(&setup, &["localhost"], Fault::None, RetryPolicy::default()).await;
    queue_message(
        &setup.spool,
        &[
            "bob@example.net",
            "unknown@example.net",
            "carol@example.net",
        ],
        DATA,
    );
    // The bounce is queued and delivered in the same pass.
    let first = relay.run_once().await;
    assert_eq!(
        (first.delivered, first.failed, first.bounces, first.removed),
        (2 + 1, 1, 1, 2),
        "two recipients and the bounce delivered; the message and the bounce removed"
    );
    assert_eq!(relay.run_once().await, Default::default(), "nothing left");
    let messages = fake.messages();
    assert_eq!(messages.len(), 2);
    let bounce = &messages[1];
    assert_eq!(bounce.mail_from.reverse_path, None);
    assert_eq!(bounce.recipients[0].to_string(), "<alice@example.org>");
    let text = String::from_utf8_lossy(&bounce.data);
    assert!(
        text.contains("Final-Recipient: rfc822; unknown@example.net"),
        "{text}"
    );
    assert!(text.contains("550 5.1.1"), "{text}");
    assert!(!text.contains("Final-Recipient: rfc822; bob@example.net"));
    assert!(setup.spool.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_after_a_temporary_failure_then_delivered() {
    let setup = setup();
    let (fake, relay) = with_fake(
        &setup,
        &["localhost"],
        Fault::TempFailFirst(1),
        RetryPolicy::default(),
    )
    .await;
    let id = queue_message(&setup.spool, &["bob@example.net"], DATA);
    let first = relay.run_once().await;
    assert_eq!((first.deferred, first.removed), (1, 0));
    let entry = queue::show(&setup.spool, &id).unwrap();
    assert_eq!(entry.state.attempts, 1);
    assert!(
        entry.state.next_try > entry.envelope.received,
        "backoff scheduled"
    );
    assert_eq!(relay.run_once().await.attempted, 0, "not due yet");
    queue::flush(&setup.spool, Some(&id)).unwrap();
    let second = relay.run_once().await;
    assert_eq!((second.delivered, second.removed), (1, 1));
    assert_eq!(fake.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_produces_exactly_one_bounce() {
    let setup = setup();
    let (fake, relay) = with_fake(
        &setup,
        &["localhost"],
        Fault::TempFailFirst(1000),
        RetryPolicy {
            lifetime: Duration::ZERO,
            ..RetryPolicy::default()
        },
    )
    .await;
    queue_message(
        &setup.spool,
        &["bob@example.net", "carol@example.net"],
        DATA,
    );
    let mut bounces = 0;
    for _ in 0..4 {
        bounces += relay.run_once().await.bounces;
    }
    assert_eq!(
        bounces, 1,
        "one bounce for both recipients, none for the bounce"
    );
    assert!(setup.spool.list().unwrap().is_empty());
    assert!(fake.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_certificate_keeps_the_message_queued_with_the_reason() {
    let setup = setup();
    let (fake, relay) = with_fake(
        &setup,
        &["smtp.other.example"],
        Fault::None,
        RetryPolicy::default(),
    )
    .await;
    let id = queue_message(&setup.spool, &["bob@example.net"], DATA);
    let figures = relay.run_once().await;
    assert_eq!((figures.deferred, figures.bounces), (1, 0));
    let entry = queue::show(&setup.spool, &id).unwrap();
    let submitd_relay::RecipientState::Pending(Some(reason)) = &entry.state.recipients[0] else {
        panic!("{:?}", entry.state);
    };
    assert!(
        reason.contains("TLS handshake failed") && reason.contains("certificate"),
        "{reason}"
    );
    assert!(fake.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_upstream() {
    let setup = setup();
    let ca = TestCa::new();
    let fake = FakeSmarthost::start(&ca, &["localhost"], Transport::ImplicitTls, Fault::None).await;
    // A port nothing listens on: bind, note it, drop it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let route = Route::Upstreams(vec![
        upstream(&setup, &ca, dead),
        upstream(&setup, &ca, fake.addr.port()),
    ]);
    let relay = relay(&setup, route, RetryPolicy::default());
    queue_message(&setup.spool, &["bob@example.net"], DATA);
    assert_eq!(relay.run_once().await.delivered, 1);
    assert_eq!(fake.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maildir_route() {
    let setup = setup();
    let maildir_path = setup._dir.path().join("Maildir");
    let relay = relay(
        &setup,
        Route::Maildir(Maildir::open(&maildir_path).unwrap()),
        RetryPolicy::default(),
    );
    queue_message(&setup.spool, &["bob@example.net"], DATA);
    assert_eq!(relay.run_once().await.delivered, 1);
    let files: Vec<_> = std::fs::read_dir(maildir_path.join("new"))
        .unwrap()
        .collect();
    assert_eq!(files.len(), 1);
    let content = std::fs::read(files[0].as_ref().unwrap().path()).unwrap();
    assert!(content.ends_with(DATA));
    assert!(setup.spool.list().unwrap().is_empty());
}

/// An upstream that takes each connection and drops it at once: when every
/// upstream failed, the other queued messages are deferred with the same
/// reason for a while, without a connection attempt each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_costs_one_attempt_not_one_per_message() {
    let setup = setup();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(tcp);
        }
    });
    let relay = relay(
        &setup,
        Route::Upstreams(vec![upstream(&setup, &TestCa::new(), port)]),
        RetryPolicy {
            first_backoff: Duration::ZERO,
            ..RetryPolicy::default()
        },
    );
    let ids: Vec<QueueId> = (0..5)
        .map(|_| queue_message(&setup.spool, &["bob@example.net"], DATA))
        .collect();
    let figures = relay.run_once().await;
    assert_eq!((figures.attempted, figures.deferred), (5, 5));
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one connection for five messages"
    );
    for id in &ids {
        let entry = queue::show(&setup.spool, id).unwrap();
        assert_eq!(entry.state.attempts, 1, "each message's attempt is counted");
    }
}

/// Per-sender upstreams: a sender's whole address, then its domain, picks
/// its own smarthost; everyone else (and bounces) takes the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_take_their_own_upstream_and_the_rest_the_default() {
    let setup = setup();
    let ca = TestCa::new();
    let default =
        FakeSmarthost::start(&ca, &["localhost"], Transport::ImplicitTls, Fault::None).await;
    let gmail =
        FakeSmarthost::start(&ca, &["localhost"], Transport::ImplicitTls, Fault::None).await;
    let net = FakeSmarthost::start(&ca, &["localhost"], Transport::ImplicitTls, Fault::None).await;
    let mut config = RelayConfig::new(
        "mx.test",
        Route::Upstreams(vec![upstream(&setup, &ca, default.addr.port())]),
        RetryPolicy::default(),
    );
    config.sender_routes = vec![
        SenderRoute {
            name: "net".into(),
            senders: vec!["@example.net".into()],
            upstreams: vec![upstream(&setup, &ca, net.addr.port())],
        },
        SenderRoute {
            name: "gmail".into(),
            senders: vec!["Bob@example.NET".into()],
            upstreams: vec![upstream(&setup, &ca, gmail.addr.port())],
        },
    ];
    let relay = Relay::new(setup.spool.clone(), config);
    queue_from(&setup.spool, "alice@example.org", &["x@example.com"], DATA);
    queue_from(&setup.spool, "bob@example.net", &["x@example.com"], DATA);
    queue_from(&setup.spool, "carol@example.net", &["x@example.com"], DATA);
    queue_from(&setup.spool, "dave@example.org", &["x@example.com"], DATA);
    let figures = relay.run_once().await;
    assert_eq!(figures.delivered, 4, "{figures:?}");
    let senders = |fake: &FakeSmarthost| -> Vec<String> {
        fake.messages()
            .iter()
            .map(|m| m.mail_from.reverse_path.as_ref().unwrap().to_string())
            .collect()
    };
    assert_eq!(senders(&default), ["alice@example.org", "dave@example.org"]);
    assert_eq!(senders(&gmail), ["bob@example.net"]);
    assert_eq!(senders(&net), ["carol@example.net"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_relay_delivers_what_is_enqueued_and_stops_with_its_token() {
    let setup = setup();
    let (fake, relay) =
        with_fake(&setup, &["localhost"], Fault::None, RetryPolicy::default()).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(relay.clone().run(shutdown.clone()));
    let id = queue_message(&setup.spool, &["bob@example.net"], DATA);
    relay.enqueue(id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.message_count() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.message_count(), 1, "delivered by a worker");
    // The workers hold a warm connection; cancelling ends them and it.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the relay stops when its token is cancelled")
        .unwrap();
    assert!(setup.spool.list().unwrap().is_empty());
}

/// Content is read from the spool as it is sent: a large message arrives
/// byte-exact; one whose file was damaged after it was queued (a flipped
/// octet near its end, found only by the checksum after the last piece)
/// is abandoned before its end of data, so the upstream stores nothing,
/// and moved to `corrupt/`; a file written by an older version (no `body:`
/// line) still goes out with BODY=8BITMIME when it has 8-bit content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_streamed_checked_and_abandoned_when_damaged() {
    let setup = setup();
    let (fake, relay) =
        with_fake(&setup, &["localhost"], Fault::None, RetryPolicy::default()).await;
    let mut big = b"From: alice@example.org\r\nSubject: big\r\n\r\n".to_vec();
    while big.len() < 2 << 20 {
        big.extend_from_slice(b".a line that starts with a dot, and some more text\r\n");
    }
    queue_message(&setup.spool, &["bob@example.net"], &big);
    let damaged = queue_message(&setup.spool, &["carol@example.net"], &big);
    let path = setup._dir.path().join("spool/msg").join(damaged.as_str());
    let mut bytes = std::fs::read(&path).unwrap();
    let near_end = bytes.len() - 10;
    bytes[near_end] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let old = queue_message(&setup.spool, &["dave@example.net"], DATA);
    let path = setup._dir.path().join("spool/msg").join(old.as_str());
    let text = std::fs::read(&path).unwrap();
    let without: Vec<u8> = String::from_utf8_lossy(&text)
        .replace("body: 8bit\n", "")
        .into_bytes();
    assert_ne!(without.len(), text.len(), "the new files record the body");
    std::fs::write(&path, without).unwrap();

    relay.run_once().await;
    let messages = fake.messages();
    assert_eq!(messages.len(), 2, "the damaged message is not delivered");
    assert!(
        messages.iter().any(|m| m.data == big),
        "big message changed"
    );
    let old = messages.iter().find(|m| m.data == DATA).unwrap();
    assert_eq!(
        old.mail_from.params.body,
        Some(submitd_smtp::BodyType::EightBitMime)
    );
    // Moved aside, not tried again and again; nothing else touched.
    assert!(setup.spool.list().unwrap().is_empty());
    let corrupt = setup
        ._dir
        .path()
        .join("spool/corrupt")
        .join(damaged.as_str());
    assert!(corrupt.exists(), "the damaged file is kept for a person");
}

/// A stop whose grace has run out abandons a transfer before its end of
/// data: the upstream stores nothing, the message stays queued with no
/// attempt recorded, and the next start delivers it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_abandons_a_transfer_before_its_end_of_data() {
    let setup = setup();
    let ca = TestCa::new();
    let slow = FakeSmarthost::start(
        &ca,
        &["localhost"],
        Transport::ImplicitTls,
        Fault::SlowData(Duration::from_millis(50)),
    )
    .await;
    let relay = relay(
        &setup,
        Route::Upstreams(vec![upstream(&setup, &ca, slow.addr.port())]),
        RetryPolicy::default(),
    );
    let mut big = b"From: alice@example.org\r\nSubject: big\r\n\r\n".to_vec();
    while big.len() < 8 << 20 {
        big.extend_from_slice(b"a line of a large attachment, slow to send\r\n");
    }
    let id = queue_message(&setup.spool, &["bob@example.net"], &big);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(relay.clone().run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    shutdown.cancel();
    relay.abandon_transfers();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the relay stops at once")
        .unwrap();
    assert!(slow.messages().is_empty(), "the upstream stored nothing");
    assert_eq!(setup.spool.list().unwrap(), vec![id.clone()]);
    assert_eq!(
        setup.spool.state(&id, 1).unwrap().attempts,
        0,
        "nothing recorded"
    );

    // The next start delivers it, once.
    let (fake, relay) =
        with_fake(&setup, &["localhost"], Fault::None, RetryPolicy::default()).await;
    relay.run_once().await;
    assert_eq!(fake.messages().len(), 1);
    assert!(fake.messages()[0].data == big);
    assert!(setup.spool.list().unwrap().is_empty());
}
