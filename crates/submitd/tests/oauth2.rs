//! OAuth2 to the upstream against real components: oidc-provider (an
//! OpenID-certified provider, from npm) issuing 30-second JWT access
//! tokens, and aiosmtpd as a smarthost that takes only XOAUTH2 and checks
//! every token against the provider's keys. The real `submitd` binary
//! relays with client credentials (a secret, and a signed assertion), with
//! a refresh token got by the device grant (`submitd oauth2 authorize`,
//! approved at the provider) across token expiries and rotations, through
//! a provider that is down, and after its refresh token is revoked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{certificates, password_file, require, start_upstream_as, Daemon};

const MAILBOX: &str = "relay@example.org";
const TTL: u64 = 30;

/// oidc-provider on loopback over HTTPS; its token requests, as it logs them.
struct Provider {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Provider {
    /// Starts it on `port` (0: any), keys kept in `dir/idp`.
    fn start(dir: &Path, port: u16) -> Self {
        let node = require("node", "nodejs");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/provider.mjs");
        assert!(
            script.with_file_name("node_modules").join("oidc-provider").is_dir(),
            "this test drives oidc-provider: run `npm ci --prefix crates/submitd/tests/oidc`, or `bash .ci/run`, which does"
        );
        let mut child = Command::new(node)
            .arg(&script)
            .arg(port.to_string())
            .arg(dir.join("idp.crt"))
            .arg(dir.join("idp.key"))
            .arg(dir.join("idp"))
            .arg("600")
            .env("TOKEN_TTL", TTL.to_string())
            .env("ASSERTION_CERT", dir.join("app.crt"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("the provider says ready").unwrap();
            if let Some(port) = line.strip_prefix("ready ") {
                break port.trim().parse().unwrap();
            }
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let all = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                all.lock().unwrap().push(line);
            }
        });
        Self { child, port, log }
    }

    /// Token requests of `grant` so far, and how many of them succeeded.
    fn token_requests(&self, grant: &str) -> (usize, usize) {
        let log = self.log.lock().unwrap();
        let of: Vec<&String> = log
            .iter()
            .filter(|l| l.contains(&format!("\"grant\":\"{grant}\"")))
            .collect();
        let ok = of.iter().filter(|l| l.contains("\"status\":200")).count();
        (of.len(), ok)
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// POSTs a form with curl, trusting the test CA.
    fn post(&self, dir: &Path, path: &str, form: &[&str]) -> String {
        let mut command = Command::new(require("curl", "curl"));
        command
            .args(["-s", "--max-time", "10", "--cacert"])
            .arg(dir.join("ca.pem"))
            .args(["-X", "POST", &self.url(path)]);
        for field in form {
            command.args(["--data-urlencode", field]);
        }
        String::from_utf8(command.output().unwrap().stdout).unwrap()
    }
}

/// The test CA, certificates for submitd, the smarthost and the provider,
/// an application certificate for signed assertions, the users file, and
/// the client secret.
fn setup(dir: &Path) {
    certificates(dir, &["submitd", "upstream", "idp"]);
    let made = Command::new(require("openssl", "openssl"))
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=relay-jwt",
        ])
        .arg("-keyout")
        .arg(dir.join("app.key"))
        .arg("-out")
        .arg(dir.join("app.crt"))
        .output()
        .unwrap();
    assert!(made.status.success());
    std::fs::set_permissions(dir.join("app.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let hash = submitd_auth::hash_password(b"pw").unwrap();
    std::fs::write(
        dir.join("users"),
        format!("alice {hash} send-as=alice@example.org,@assert.example max-messages=100000/h,100000/d max-recipients=100000/h,100000/d\n"),
    )
    .unwrap();
    password_file(&dir.join("cc.secret"), "cc-secret");
}

/// aiosmtpd taking only XOAUTH2, checking tokens against the provider's
/// keys (made by [`Provider::start`] in `dir/idp`) for [`MAILBOX`].
fn xoauth2_smarthost(dir: &Path) -> common::Upstream {
    let jwks = format!("jwks:{}", dir.join("idp/public-jwks.json").display());
    start_upstream_as(
        dir,
        &dir.join("upstream.crt"),
        &dir.join("upstream.key"),
        0,
        (MAILBOX, &jwks),
    )
}

fn oauth2_table(provider_port: u16, rest: &str) -> String {
    format!(
        "token_url = \"https://localhost:{provider_port}/token\"\ndevice_url = \"https://localhost:{provider_port}/device/auth\"\n\
         scope = \"smtp\"\nca_file = \"ca.pem\"\n{rest}"
    )
}

/// The config: the default route with `default_oauth2`, and a sender route
/// for @assert.example with a signed client assertion.
fn write_config(dir: &Path, smarthost: u16, provider: u16, default_oauth2: &str) -> PathBuf {
    let upstream = |table: &str| {
        format!(
            "host = \"localhost\"\nport = {smarthost}\ntls = \"implicit\"\nca_file = \"ca.pem\"\n\
             username = \"{MAILBOX}\"\nmechanisms = [\"XOAUTH2\"]\n[{table}.oauth2]\n"
        )
    };
    common::config(
        dir,
        "queue",
        &format!(
            "[[relay.upstream]]\n{}{}\n[[relay.sender_upstream]]\nsenders = [\"@assert.example\"]\nname = \"app\"\n{}{}",
            upstream("relay.upstream"),
            oauth2_table(provider, default_oauth2),
            upstream("relay.sender_upstream"),
            oauth2_table(
                provider,
                "client_id = \"relay-jwt\"\nclient_certificate = \"app.crt\"\nclient_key = \"app.key\"\ngrant = \"client_credentials\"\n"
            ),
        ),
    )
}

const CLIENT_CREDENTIALS: &str =
    "client_id = \"relay-cc\"\nclient_secret_file = \"cc.secret\"\ngrant = \"client_credentials\"\n";
const REFRESH: &str =
    "client_id = \"relay-device\"\ngrant = \"refresh_token\"\nrefresh_token_file = \"state/default.token\"\n";

/// Submits one message as alice with lettre over implicit TLS.
fn submit(dir: &Path, port: u16, from: &str, subject: &str) {
    use lettre::address::Envelope;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::Transport as _;
    let ca = Certificate::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(ca)
        .build_rustls()
        .unwrap();
    let transport = lettre::SmtpTransport::builder_dangerous("localhost")
        .port(port)
        .tls(Tls::Wrapper(tls))
        .credentials(Credentials::new("alice".into(), "pw".into()))
        .timeout(Some(Duration::from_secs(30)))
        .build();
    let envelope = Envelope::new(
        Some(from.parse().unwrap()),
        vec!["bob@example.net".parse().unwrap()],
    )
    .unwrap();
    let text =
        format!("From: {from}\r\nTo: bob@example.net\r\nSubject: {subject}\r\n\r\nhello\r\n");
    transport.send_raw(&envelope, text.as_bytes()).unwrap();
}

/// The envelope files of the smarthost (one per message), in order.
fn delivered(dir: &Path) -> Vec<Env> {
    let out = dir.join("upstream");
    let mut n = 1;
    let mut found = Vec::new();
    while let Ok(text) = std::fs::read_to_string(out.join(format!("{n}.env"))) {
        found.push(Env::parse(&text));
        n += 1;
    }
    found
}

/// One envelope file of the smarthost (JSON), the fields the tests read.
#[derive(Debug, Clone)]
struct Env {
    mail_from: String,
    jti: String,
    client_id: String,
    session: String,
}

impl Env {
    fn parse(text: &str) -> Self {
        let json: serde_json::Value = serde_json::from_str(text).unwrap();
        let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
        // The token's claims, when the smarthost took one (XOAUTH2).
        let token = &json["token"];
        Self {
            mail_from: text(&json["mail_from"]),
            jti: text(&token["jti"]),
            client_id: text(&token["client_id"]),
            session: text(&json["session"]),
        }
    }
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn submitd(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// Runs `submitd oauth2 authorize default`, approves the code it prints
/// at the provider as the mailbox, and waits for it to write the file.
fn authorize(dir: &Path, config: &Path, provider: &Provider) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(["oauth2", "authorize", "default", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let code = first
        .rsplit("enter the code ")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    assert!(first.contains(&provider.url("/device")), "{first}");
    // The person is slower than the first poll: it is answered pending
    // (or, the first time, slow_down), then approved.
    let device = "urn:ietf:params:oauth:grant-type:device_code";
    let polls = provider.token_requests(device).0;
    wait_for("the first poll", Duration::from_secs(20), || {
        provider.token_requests(device).0 > polls
    });
    let approved = provider.post(
        dir,
        &format!("/test/approve?user_code={code}&account={MAILBOX}"),
        &[],
    );
    assert_eq!(approved, "approved");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{first}\n{}", rest.join("\n"));
    rest.join("\n")
}

#[test]
fn client_credentials_with_a_secret_and_with_a_signed_assertion() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let provider = Provider::start(d, 0);
    let smarthost = xoauth2_smarthost(d);
    let config = write_config(d, smarthost.port, provider.port, CLIENT_CREDENTIALS);
    let daemon = common::start(Daemon::command(&config));
    let port = daemon.implicit.unwrap();
    for i in 0..5 {
        submit(d, port, "alice@example.org", &format!("secret {i}"));
    }
    submit(d, port, "alice@assert.example", "assertion");
    wait_for("six deliveries", Duration::from_secs(60), || {
        delivered(d).len() == 6
    });
    let envs = delivered(d);
    let by = |client: &str| envs.iter().filter(|e| e.client_id == client).count();
    assert_eq!(by("relay-cc"), 5, "{envs:?}");
    assert_eq!(by("relay-jwt"), 1, "{envs:?}");
    assert_eq!(
        envs.iter()
            .find(|e| e.client_id == "relay-jwt")
            .unwrap()
            .mail_from,
        "alice@assert.example"
    );
    // One token per route for all its messages, not one per message.
    let (requests, ok) = provider.token_requests("client_credentials");
    assert_eq!((requests, ok), (2, 2), "{:?}", provider.log.lock().unwrap());
    // `check --connect` gets a token and logs in with it.
    let out = submitd(&config, &["check", "--connect"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches("access token fetched and AUTH accepted for relay@example.org")
            .count(),
        2,
        "{text}"
    );
    drop(daemon);
}

#[test]
fn a_dead_provider_defers_with_one_request_per_window_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    // The provider's port is known, but nothing listens there yet.
    let provider_port = common::free_port();
    // Keys made now, so the smarthost knows them before the provider runs.
    drop(Provider::start(d, provider_port));
    let smarthost = xoauth2_smarthost(d);
    let config = write_config(d, smarthost.port, provider_port, CLIENT_CREDENTIALS);
    let daemon = common::start(Daemon::command(&config));
    let port = daemon.implicit.unwrap();
    for i in 0..20 {
        submit(d, port, "alice@example.org", &format!("while down {i}"));
    }
    // Every message accepted and deferred; one token request for them all.
    daemon.wait_count(&["no access token"], 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    let log = daemon.log.lock().unwrap().join("\n");
    assert_eq!(log.matches("no access token").count(), 1, "{log}");
    assert!(log.contains("route default: token endpoint"), "{log}");
    assert!(delivered(d).is_empty());
    // The provider comes back: everything is delivered on the retry.
    let provider = Provider::start(d, provider_port);
    wait_for("20 deliveries", Duration::from_secs(150), || {
        delivered(d).len() == 20
    });
    let (requests, ok) = provider.token_requests("client_credentials");
    assert!(ok >= 1 && requests <= 2, "{requests} requests");
    drop(daemon);
}

#[test]
fn refresh_tokens_from_the_device_grant_survive_expiry_rotation_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    std::fs::create_dir(d.join("state")).unwrap();
    let provider = Provider::start(d, 0);
    let smarthost = xoauth2_smarthost(d);
    let config = write_config(d, smarthost.port, provider.port, REFRESH);
    let token_file = d.join("state/default.token");

    // Before authorizing, `check` says what to run (a warning: the server
    // can run; the route's messages wait).
    let out = submitd(&config, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("warning: relay: route default:")
            && text.contains("run `submitd oauth2 authorize default`"),
        "{text}"
    );

    // The device grant, approved at the provider.
    let said = authorize(d, &config, &provider);
    assert!(said.contains("Authorized"), "{said}");
    // Polled politely: 5 s apart (no interval given), 10 s after slow_down.
    let polls: Vec<(String, u64)> = provider
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("device_code"))
        .map(|l| {
            let error = l
                .split("\"error\":\"")
                .nth(1)
                .map_or("", |r| r.split('"').next().unwrap_or(""));
            let at = l
                .split("\"at\":")
                .nth(1)
                .and_then(|r| r.trim_end_matches('}').parse().ok())
                .unwrap_or(0);
            (error.to_owned(), at)
        })
        .collect();
    assert_eq!(polls.len(), 2, "{polls:?}");
    assert_eq!(polls[0].0, "slow_down");
    assert!(polls[1].1 - polls[0].1 >= 9_500, "{polls:?}");
    let first_refresh = std::fs::read_to_string(&token_file).unwrap();
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let daemon = common::start(Daemon::command(&config));
    let port = daemon.implicit.unwrap();
    // Three messages, each after the last token expired: three refreshes,
    // each rotating the refresh token, which is written back and used.
    let mut refresh_tokens = vec![first_refresh];
    for round in 0..3 {
        submit(d, port, "alice@example.org", &format!("round {round}"));
        wait_for("the delivery", Duration::from_secs(30), || {
            delivered(d).len() == round + 1
        });
        let now = std::fs::read_to_string(&token_file).unwrap();
        assert_ne!(
            &now,
            refresh_tokens.last().unwrap(),
            "rotated in round {round}"
        );
        refresh_tokens.push(now);
        if round < 2 {
            std::thread::sleep(Duration::from_secs(TTL + 1));
        }
    }
    let envs = delivered(d);
    let mut jtis: Vec<&str> = envs.iter().map(|e| e.jti.as_str()).collect();
    jtis.dedup();
    assert_eq!(
        jtis.len(),
        3,
        "a new access token after each expiry: {envs:?}"
    );
    assert!(envs.iter().all(|e| e.client_id == "relay-device"));
    assert_eq!(provider.token_requests("refresh_token"), (3, 3));
    let log = daemon.log.lock().unwrap().join("\n");
    assert!(
        !log.contains(refresh_tokens.last().unwrap().trim()),
        "a refresh token was logged"
    );

    // The refresh token is revoked at the provider; a restarted daemon
    // (no token in memory) cannot refresh: the message stays queued, the
    // log and `check --connect` say what to run.
    drop(daemon);
    let revoked = provider.post(
        d,
        "/token/revocation",
        &[
            &format!("token={}", refresh_tokens.last().unwrap().trim()),
            "client_id=relay-device",
        ],
    );
    assert_eq!(revoked, "");
    let daemon = common::start(Daemon::command(&config));
    let port = daemon.implicit.unwrap();
    submit(d, port, "alice@example.org", "after revocation");
    daemon.wait_count(&["oauth2 authorize default"], 1, Duration::from_secs(20));
    let out = submitd(&config, &["check", "--connect"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("the refresh token was refused (invalid_grant")
            && text.contains("run `submitd oauth2 authorize default`"),
        "{text}"
    );
    let listed = submitd(&config, &["queue", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("alice@example.org"));
    assert_eq!(delivered(d).len(), 3);

    // Authorized again: the queued message goes on the next attempt.
    authorize(d, &config, &provider);
    let authorized = std::fs::read_to_string(&token_file).unwrap();
    let flush = submitd(&config, &["queue", "flush"]);
    assert!(flush.status.success());
    drop(daemon);
    // This time the rotated refresh token cannot be written back (a
    // folder where its temporary file goes stops even root): the access
    // token is still used and the message delivered, the log says loudly
    // what will happen and what to run, and it does happen: the next
    // refresh, with the spent token, is refused.
    std::fs::create_dir(d.join("state/.default.token.new")).unwrap();
    let daemon = common::start(Daemon::command(&config));
    wait_for("the queued message", Duration::from_secs(60), || {
        delivered(d).len() == 4
    });
    let warned = daemon.wait_count(
        &["could not be saved", "oauth2 authorize default"],
        1,
        Duration::from_secs(10),
    );
    assert_eq!(warned, 1, "one loud line");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), authorized);
    drop(daemon);
    let out = submitd(&config, &["check", "--connect"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("invalid_grant"),
        "{text}"
    );
}

/// Runs `tests/token_login.py` (smtplib) against `daemon` as alice, with
/// `extra` arguments.
fn token_login(
    d: &Path,
    daemon: &Daemon,
    provider: &Provider,
    extra: &[&str],
) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/token_login.py");
    Command::new("python3")
        .arg(script)
        .arg(daemon.implicit.unwrap().to_string())
        .arg(d.join("ca.pem"))
        .arg(provider.url(""))
        .arg(d.join("idp"))
        .arg("alice@example.org")
        .args(extra)
        .output()
        .unwrap()
}

/// Clients log in with the provider's tokens (OAUTHBEARER and XOAUTH2,
/// through smtplib); every bad token gets RFC 7628's error challenge and
/// then the same 535, and counts as a failed login.
#[test]
fn clients_log_in_with_tokens_and_bad_tokens_are_all_refused_alike() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let provider = Provider::start(d, 0);
    let hash = submitd_auth::hash_password(b"pw").unwrap();
    std::fs::write(
        d.join("users"),
        format!("alice@example.org {hash} send-as=alice@example.org\n"),
    )
    .unwrap();
    let config = d.join("submitd.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"localhost\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nmode = \"implicit\"\n\
             [tls]\ncertificate = \"submitd.crt\"\nkey = \"submitd.key\"\n\
             [auth]\nusers = \"users\"\nfailure_delay = \"100ms\"\n\
             [auth.oauth2]\nissuer = \"{}\"\naudience = \"urn:submitd:smtp\"\nca_file = \"ca.pem\"\nleeway = \"5s\"\n\
             [queue]\ndirectory = \"queue\"\n[relay]\nmaildir = \"Maildir\"\n",
            provider.url("")
        ),
    )
    .unwrap();
    // `check` finds the issuer's keys.
    let out = submitd(&config, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("auth: tokens of"), "{text}");
    let daemon = common::start(Daemon::command(&config));
    let out = token_login(d, &daemon, &provider, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| -> String {
        results
            .split(&format!("\"{name}\": {{"))
            .nth(1)
            .and_then(|r| r.split('}').next())
            .unwrap_or_else(|| panic!("{name} in {results}"))
            .to_owned()
    };
    for good in ["oauthbearer", "xoauth2"] {
        let got = field(good);
        assert!(
            got.contains("\"code\": 235") && got.contains("\"sent\": true"),
            "{good}: {got}"
        );
        assert!(
            got.contains("\"OAUTHBEARER\"") && got.contains("\"XOAUTH2\""),
            "{got}"
        );
    }
    let bad = [
        "wrong_audience_from_the_provider",
        "wrong_audience",
        "expired",
        "another_user",
        "another_key",
        "alg_none",
        "named_as_another",
    ];
    let mut texts = Vec::new();
    for name in bad {
        let got = field(name);
        assert!(got.contains("\"code\": 535"), "{name}: {got}");
        assert!(
            got.contains("\\\"status\\\":\\\"invalid_token\\\"")
                && got.contains("openid-configuration"),
            "{name}: the error challenge: {got}"
        );
        texts.push(
            got.split("\"text\": ")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    texts.dedup();
    assert_eq!(
        texts.len(),
        1,
        "the same reply for every bad token: {texts:?}"
    );
    // Each refusal is a failed login in the fail2ban format; none succeeded.
    daemon.wait_count(
        &["authentication failed"],
        bad.len(),
        Duration::from_secs(10),
    );
    let log = daemon.log.lock().unwrap().join("\n");
    assert_eq!(
        log.matches("authentication failed").count(),
        bad.len(),
        "{log}"
    );
    for reason in [
        "not for this audience",
        "expired",
        "bad signature",
        "algorithm \"none\"",
        "another user's",
    ] {
        assert!(log.contains(reason), "{reason}: {log}");
    }
    // The two messages were taken, from the token's user.
    let maildir = d.join("Maildir/new");
    wait_for("two messages", Duration::from_secs(20), || {
        std::fs::read_dir(&maildir).map(|r| r.count()).unwrap_or(0) == 2
    });
    drop(daemon);
}

/// With `backend = "dovecot"` and no issuer of submitd's own, the token
/// mechanisms Dovecot offers are offered and passed through: Dovecot's
/// oauth2 passdb introspects the token at the same provider.
#[test]
fn dovecot_decides_token_logins_when_it_offers_the_mechanisms() {
    require("dovecot", "apt-get install dovecot-core");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let provider = Provider::start(d, 0);
    std::fs::write(d.join("passwd"), "").unwrap();
    std::fs::write(
        d.join("oauth2.conf.ext"),
        format!(
            "introspection_mode = post\nintrospection_url = https://dovecot:dovecot-secret@localhost:{}/token/introspection\n\
             username_attribute = sub\nactive_attribute = active\nactive_value = true\nforce_introspection = yes\n\
             tls_ca_cert_file = {}\n",
            provider.port,
            d.join("ca.pem").display()
        ),
    )
    .unwrap();
    let dovecot = common::start_dovecot_with(d, Some(&d.join("oauth2.conf.ext")));
    // Policy only: alice may send as herself.
    std::fs::write(
        d.join("users"),
        "alice@example.org - send-as=alice@example.org\n",
    )
    .unwrap();
    let config = d.join("submitd.toml");
    std::fs::write(
        &config,
        "hostname = \"localhost\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nmode = \"implicit\"\n\
             [tls]\ncertificate = \"submitd.crt\"\nkey = \"submitd.key\"\n\
             [auth]\nusers = \"users\"\nbackend = \"dovecot\"\ndovecot_socket = \"auth-client\"\nfailure_delay = \"100ms\"\n\
             [queue]\ndirectory = \"queue\"\n[relay]\nmaildir = \"Maildir\"\n",
    )
    .unwrap();
    let daemon = common::start(Daemon::command(&config));
    let out = token_login(d, &daemon, &provider, &["dovecot"]);
    drop(dovecot);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = String::from_utf8(out.stdout).unwrap();
    let log = daemon.log.lock().unwrap().join("\n");
    for good in [
        "\"oauthbearer\": {\"code\": 235",
        "\"xoauth2\": {\"code\": 235",
    ] {
        assert!(results.contains(good), "{good}: {results}\n{log}");
    }
    assert!(results.contains("\"made_up\": {\"code\": 535"), "{results}");
    assert!(log.contains("passed through to it"), "{log}");
    assert_eq!(
        log.matches("by=\"dovecot\"").count() + log.matches("by=dovecot").count(),
        2,
        "{log}"
    );
    drop(daemon);
}

/// Messages submitted at a steady rate over several token lifetimes: the
/// token requests are one per lifetime for the route (renewed a quarter
/// before expiry), not one per message or per connection. Prints the
/// figure; `scripts/oauth2-token-load` runs it longer (OAUTH2_MESSAGES,
/// OAUTH2_RATE per second, 4 clients).
#[test]
fn token_requests_follow_the_token_lifetime_not_the_message_count() {
    let messages = common::env_or("OAUTH2_MESSAGES", 120);
    let rate = common::env_or("OAUTH2_RATE", 4).max(1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let provider = Provider::start(d, 0);
    let smarthost = xoauth2_smarthost(d);
    let config = write_config(d, smarthost.port, provider.port, CLIENT_CREDENTIALS);
    // OAUTH2_IDLE: how long the relay keeps an idle upstream connection;
    // short, every message opens one (and needs a token at AUTH).
    let idle = std::env::var("OAUTH2_IDLE").unwrap_or_else(|_| "1s".into());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("[relay]\nidle_connection = \"{idle}\"\n"));
    std::fs::write(&config, text).unwrap();
    let daemon = common::start(Daemon::command(&config));
    let port = daemon.implicit.unwrap();
    let started = Instant::now();
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let d = d.to_path_buf();
            std::thread::spawn(move || {
                let mut i = c;
                while i < messages {
                    // Paced: message i goes at i / rate seconds.
                    let due = started + Duration::from_millis(i * 1000 / rate);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    submit(&d, port, "alice@example.org", &format!("load {i}"));
                    i += 4;
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let messages = usize::try_from(messages).unwrap();
    wait_for("every delivery", Duration::from_secs(120), || {
        delivered(d).len() == messages
    });
    let elapsed = started.elapsed();
    let (requests, ok) = provider.token_requests("client_credentials");
    let per_thousand = requests as f64 * 1000.0 / messages as f64;
    println!(
        "oauth2 load: {messages} messages in {:.0}s at {rate}/s, tokens of {TTL}s, idle upstream connections kept {idle}: {requests} token requests ({ok} ok), {per_thousand:.1} per 1,000 messages; {} upstream sessions (logins)",
        elapsed.as_secs_f64(),
        delivered(d).into_iter().map(|e| e.session).collect::<std::collections::BTreeSet<_>>().len()
    );
    // Renewed at three quarters of the lifetime: one more per 22.5 s.
    let lifetimes = elapsed.as_secs_f64() / (TTL as f64 * 0.75);
    assert!(
        ok == requests && requests >= 1,
        "{requests} requests, {ok} ok"
    );
    assert!(
        (requests as f64) <= lifetimes.ceil() + 1.0,
        "{requests} requests in {elapsed:?}"
    );
    let distinct: std::collections::BTreeSet<String> =
        delivered(d).into_iter().map(|e| e.jti).collect();
    assert_eq!(distinct.len(), requests, "each token fetched was used");
    drop(daemon);
}

/// Follows the provider's redirects the way a browser would (cookies
/// kept), up to the loopback address it sends back to; returns that.
fn browse_to_loopback(dir: &Path, start: &str) -> String {
    let jar = dir.join("cookies");
    let mut url = start.to_owned();
    for _ in 0..10 {
        let out = Command::new(require("curl", "curl"))
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{redirect_url}",
                "--max-time",
                "10",
                "--cacert",
            ])
            .arg(dir.join("ca.pem"))
            .arg("-c")
            .arg(&jar)
            .arg("-b")
            .arg(&jar)
            .arg(&url)
            .output()
            .unwrap();
        url = String::from_utf8(out.stdout).unwrap();
        if url.starts_with("http://127.0.0.1") {
            return url;
        }
        assert!(
            url.starts_with("https://localhost"),
            "redirected to {url:?}"
        );
    }
    panic!("no redirect back to the loopback address")
}

/// `submitd oauth2 authorize --browser`: the authorization code grant
/// with PKCE and a loopback redirect (what Gmail needs), once with the
/// address pasted (a headless server) and once with the redirect reaching
/// the command's listener; the refresh token then relays.
#[test]
fn browser_sign_in_by_loopback_redirect_or_pasted_address() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    std::fs::create_dir(d.join("state")).unwrap();
    let provider = Provider::start(d, 0);
    let smarthost = xoauth2_smarthost(d);
    let rest = format!(
        "auth_url = \"{}\"\nclient_id = \"relay-code\"\ngrant = \"refresh_token\"\nrefresh_token_file = \"state/default.token\"\n",
        provider.url("/auth")
    );
    let config = write_config(d, smarthost.port, provider.port, &rest);
    let token_file = d.join("state/default.token");
    let mut tokens = Vec::new();
    let mut backs: Vec<String> = Vec::new();
    for pasted in [true, false] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_submitd"))
            .args(["oauth2", "authorize", "default", "--browser", "--config"])
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let said = lines.next().unwrap().unwrap();
        assert!(said.contains("open this address in a browser"), "{said}");
        let address = lines.next().unwrap().unwrap();
        assert!(address.contains("code_challenge_method=S256"), "{address}");
        let back = browse_to_loopback(d, &address);
        assert!(back.contains("code=") && back.contains("state="), "{back}");
        if pasted {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{back}").unwrap();
        } else {
            let page = Command::new("curl")
                .args(["-s", "--max-time", "10", &back])
                .output()
                .unwrap();
            assert!(String::from_utf8_lossy(&page.stdout).contains("authorization received"));
        }
        let status = child.wait().unwrap();
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        assert!(status.success(), "pasted={pasted}: {}", rest.join("\n"));
        tokens.push(std::fs::read_to_string(&token_file).unwrap());
        backs.push(back);
    }
    assert_ne!(
        tokens[0], tokens[1],
        "each sign-in wrote its own refresh token"
    );
    // An old address pasted into a new sign-in: its state is not this
    // one's; refused without a token request, the file untouched.
    let mut child = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(["oauth2", "authorize", "default", "--browser", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        writeln!(child.stdin.take().unwrap(), "{}", backs[0]).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("state does not match"));
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), tokens[1]);
    let daemon = common::start(Daemon::command(&config));
    submit(
        d,
        daemon.implicit.unwrap(),
        "alice@example.org",
        "after a browser sign-in",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered(d).is_empty() {
        assert!(
            Instant::now() < deadline,
            "not delivered:\n{}\n{:?}",
            daemon.log.lock().unwrap().join("\n"),
            provider.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(delivered(d)[0].client_id, "relay-code");
    assert_eq!(provider.token_requests("authorization_code"), (2, 2));
    drop(daemon);
}
