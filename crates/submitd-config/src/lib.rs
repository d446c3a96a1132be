//! submitd's config file: TOML read with serde (`deny_unknown_fields`),
//! turned into typed, checked settings for the other crates, nested as the
//! file is (`settings.auth.users` is `[auth] users`). Relative paths are
//! relative to the config file's folder. Every error is a [`ConfigError`]
//! that names the file, the key and what is expected. The reference is
//! `config/submitd.example.toml`.
//!
//! ```text
//! text ─▶ file.rs (serde: the file as written) ─▶ sections.rs (checks, one
//!         function per section) ─▶ settings.rs (Settings, the libraries' types)
//! ```
//!
//! Defaults are the libraries' own (`ConnectionLimits::default()`,
//! `RetryPolicy::default()`, `ThrottleConfig::default()`,
//! `RelayConfig::DEFAULT_CONNECTIONS`, ...): a default is written once,
//! beside the code it bounds.
//!
//! A crate of its own, not part of the binary, so the fuzzer reaches the
//! parser without the daemon. Dependencies: `serde` and `toml` to read
//! the file, `humantime` for durations such as "5d", and `submitd-smtp`,
//! `submitd-auth`, `submitd-listener`, `submitd-relay` for the setting
//! types and defaults they own (types only: nothing here opens a file the
//! settings name, or a socket).

mod file;
mod sections;
mod settings;

use std::path::{Path, PathBuf};

pub use settings::{
    AuthSettings, ClientTokenSettings, LimitSettings, ListenSettings, LocalSettings, LogFormat,
    MetricsSettings, OAuth2Settings, PasswordBackend, QueueSettings, RelaySettings, RouteSettings,
    SenderRouteSettings, Settings, TlsSettings, UpstreamAuthSettings, UpstreamSettings,
};

/// A config problem: the file, the key (when one is to blame) and what is
/// wrong with it, said so a person knows what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{problem}", file.display(), key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// The key, such as `limits.message_size` or `listen[0].address`.
    pub key: Option<String>,
    /// What is wrong and what is expected.
    pub problem: String,
}

impl ConfigError {
    /// A problem with `key` of `file`.
    pub fn key(file: &Path, key: &str, problem: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            key: Some(key.to_owned()),
            problem: problem.into(),
        }
    }

    /// A problem with `file` as a whole (unreadable, not TOML).
    pub fn file(file: &Path, problem: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            key: None,
            problem: problem.into(),
        }
    }
}

/// `25M`, `512K`, `1G` or a number of octets.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, factor) = match text.char_indices().last()? {
        (i, 'K' | 'k') => (&text[..i], 1024),
        (i, 'M' | 'm') => (&text[..i], 1024 * 1024),
        (i, 'G' | 'g') => (&text[..i], 1024 * 1024 * 1024),
        _ => (text, 1),
    };
    number.trim().parse::<u64>().ok()?.checked_mul(factor)
}

impl Settings {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::file(path, format!("cannot read the config file: {e}")))?;
        Self::parse(path, &text)
    }

    /// Checks `text`, the contents of the config file at `path` (which
    /// relative paths are taken from and errors name).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file: file::File =
            toml::from_str(text).map_err(|e| ConfigError::file(path, e.to_string()))?;
        sections::Context::new(path).settings(file)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use submitd_auth::ThrottleConfig;
    use submitd_listener::ConnectionLimits;
    use submitd_relay::{RelayConfig, RetryPolicy};
    use submitd_smtp::Transport;

    use super::*;

    /// The minimal config with `extra` lines in its `[auth]` table.
    fn with_auth(extra: &str) -> Result<Settings, String> {
        load(&MINIMAL.replace(
            "users = \"users\"\n",
            &format!("users = \"users\"\n{extra}"),
        ))
    }

    fn load(text: &str) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("submitd.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load(&path).map_err(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
    }

    const MINIMAL: &str = r#"
hostname = "mail.example.org"
[[listen]]
address = "127.0.0.1:4650"
mode = "implicit"
[tls]
certificate = "cert.pem"
key = "key.pem"
[auth]
users = "users"
[queue]
directory = "queue"
[relay]
maildir = "Maildir"
"#;

    #[test]
    fn the_shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/submitd.example.toml");
        let settings = Settings::load(&path).unwrap();
        assert!(settings.demo);
        assert_eq!(settings.listen.len(), 2);
    }

    #[test]
    fn minimal_and_relative_paths() {
        let s = load(MINIMAL).unwrap();
        assert_eq!(s.tls.certificates.len(), 1);
        let first = &s.tls.certificates[0];
        assert!(first.certificate.is_absolute() && first.certificate.ends_with("cert.pem"));
        assert!(first.key.is_absolute() && first.key.ends_with("key.pem"));
        assert!(matches!(s.relay.route, RouteSettings::Maildir(_)));
        assert_eq!(s.limits.session, submitd_smtp::Limits::default());
        assert_eq!(s.queue.retry, RetryPolicy::default());
        assert_eq!(s.queue.retry.lifetime, Duration::from_secs(5 * 86_400));
        // Every default comes from the library that owns the setting.
        assert_eq!(s.listen[0].limits, ConnectionLimits::default());
        assert_eq!(s.auth.throttle, ThrottleConfig::default());
        assert_eq!(s.relay.connections, RelayConfig::DEFAULT_CONNECTIONS);
        assert_eq!(
            s.relay.idle_connection,
            RelayConfig::DEFAULT_IDLE_CONNECTION
        );
        assert_eq!(
            s.limits.handshake_timeout,
            submitd_listener::DEFAULT_HANDSHAKE_TIMEOUT
        );
        assert_eq!(s.listen[0].transport, Transport::ImplicitTls);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_fix() {
        for (text, expected) in [
            (
                MINIMAL.replace("hostname", "hostnme"),
                "unknown field `hostnme`",
            ),
            (
                MINIMAL.replace("127.0.0.1:4650", "localhost"),
                "key `listen[0].address`",
            ),
            (MINIMAL.replace("implicit", "tls"), "unknown variant `tls`"),
            (
                format!("{MINIMAL}[limits]\nmessage_size = \"lots\"\n"),
                "key `limits.message_size`: \"lots\" is not a size",
            ),
            (
                format!("{MINIMAL}[limits]\nidle_timeout = \"soon\"\n"),
                "key `limits.idle_timeout`",
            ),
            (
                format!("{MINIMAL}[limits]\nrecipients = 10\n"),
                "at least 100",
            ),
            (
                MINIMAL.replace("maildir = \"Maildir\"", ""),
                "key `relay`: set either maildir",
            ),
        ] {
            let error = load(&text).unwrap_err();
            assert!(error.starts_with("DIR/submitd.toml: "), "{error}");
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn proxy_listeners_name_whom_they_trust() {
        let with = |keys: &str| {
            load(&MINIMAL.replace(
                "mode = \"implicit\"\n",
                &format!("mode = \"implicit\"\n{keys}"),
            ))
        };
        assert_eq!(with("").unwrap().listen[0].proxy, None);
        let s = with("proxy_protocol = true\ntrusted_proxies = [\"10.0.0.5\", \"fd00::/8\"]\n")
            .unwrap();
        let proxy = s.listen[0].proxy.as_ref().unwrap();
        assert!(proxy.trusted.trusts("10.0.0.5".parse().unwrap()));
        assert!(proxy.trusted.trusts("fd00::9".parse().unwrap()));
        assert!(!proxy.trusted.trusts("10.0.0.6".parse().unwrap()));
        for (keys, expected) in [
            ("proxy_protocol = true\n", "DIR/submitd.toml: key `listen[0].trusted_proxies`: proxy_protocol = true needs the load balancers' addresses"),
            ("trusted_proxies = [\"10.0.0.5\"]\n", "DIR/submitd.toml: key `listen[0].trusted_proxies`: is set but proxy_protocol is not"),
            ("proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/40\"]\n", "DIR/submitd.toml: key `listen[0].trusted_proxies`: \"10.0.0.0/40\" is not an address or a network"),
        ] {
            let e = with(keys).unwrap_err();
            assert!(e.starts_with(expected), "{e}");
        }
    }

    #[test]
    fn metrics_cluster_and_log_sections() {
        let with = |extra: &str| load(&format!("{MINIMAL}{extra}"));
        let s = with("[metrics]\nlisten = \"127.0.0.1:9465\"\nper_user = true\n[cluster]\nredis = \"rediss://:pw@10.0.0.9:6379/0\"\ntimeout = \"200ms\"\n[log]\nformat = \"json\"\n").unwrap();
        let metrics = s.metrics.unwrap();
        assert_eq!(metrics.listen.port(), 9465);
        assert!(metrics.per_user);
        let cluster = s.cluster.unwrap();
        assert_eq!(cluster.prefix, "submitd");
        assert_eq!(cluster.timeout, Duration::from_millis(200));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(with("").unwrap().log_format, LogFormat::Text);
        for (extra, expected) in [
            (
                "[metrics]\nlisten = \"0.0.0.0:465\"\n",
                "key `metrics.listen`: 0.0.0.0:465 is a mail port",
            ),
            (
                "[metrics]\nlisten = \"127.0.0.1:4650\"\n",
                "key `metrics.listen`: 127.0.0.1:4650 is a mail port",
            ),
            (
                "[metrics]\nlisten = \"localhost\"\n",
                "key `metrics.listen`: \"localhost\" is not an address and port",
            ),
            (
                "[cluster]\nredis = \"10.0.0.9:6379\"\n",
                "key `cluster.redis`: is not a redis:// or rediss:// URL",
            ),
            (
                "[cluster]\nredis = \"redis://x\"\ntimeout = \"1m\"\n",
                "key `cluster.timeout`: must be between 1ms and 5s",
            ),
            (
                "[cluster]\nredis = \"redis://x\"\nca_file = \"ca.pem\"\n",
                "key `cluster.ca_file`: a CA file is for rediss:// (TLS) only",
            ),
            (
                "[cluster]\nredis = \"rediss://x\"\nca_file = \"ca.pem\"\n",
                "key `cluster.ca_file`: DIR/ca.pem: cannot read the CA file",
            ),
            (
                "[log]\nformat = \"xml\"\n",
                "unknown variant `xml`, expected `text` or `json`",
            ),
        ] {
            let e = with(extra).unwrap_err();
            assert!(e.contains(expected), "{extra}: {e}");
        }
        // The example's sections, uncommented, are what this parses.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/submitd.example.toml");
        let example = std::fs::read_to_string(path).unwrap();
        let tail = &example[example.find("# [metrics]").unwrap()..];
        let uncommented: String = tail
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            // Its CA file is for rediss:// and does not exist here.
            .filter(|l| !l.starts_with("ca_file"))
            .map(|l| format!("{l}\n"))
            .collect();
        let s = with(&uncommented).unwrap();
        assert!(s.metrics.is_some() && s.cluster.is_some());
    }

    #[test]
    fn sender_upstreams_name_their_senders() {
        let with = |extra: &str| load(&format!("{MINIMAL}{extra}"));
        let s = with("[[relay.sender_upstream]]\nsenders = [\"bob@gmail.com\", \"@example.net\"]\nhost = \"smtp.gmail.com\"\nport = 465\ntls = \"implicit\"\nusername = \"bob@gmail.com\"\npassword_file = \"bob.pass\"\n").unwrap();
        let SenderRouteSettings {
            senders,
            name,
            upstream: up,
        } = &s.relay.sender_routes[0];
        assert_eq!(senders, &["bob@gmail.com", "@example.net"]);
        assert_eq!(name, "bob@gmail.com", "named by its first sender");
        assert_eq!(up.host, "smtp.gmail.com");
        assert!(
            matches!(&up.auth, UpstreamAuthSettings::Password { file, .. } if file.is_absolute())
        );
        let e = with("[[relay.sender_upstream]]\nsenders = [\"bob\"]\nhost = \"h\"\nport = 465\ntls = \"implicit\"\n").unwrap_err();
        assert!(
            e.contains("key `relay.sender_upstream[0].senders`: \"bob\" is neither"),
            "{e}"
        );
        let e = with("[[relay.sender_upstream]]\nsenders = []\nhost = \"h\"\nport = 465\ntls = \"implicit\"\n").unwrap_err();
        assert!(e.contains("expected addresses and domains"), "{e}");
        let e = with("[[relay.sender_upstream]]\nsenders = [\"@x.org\"]\nhost = \"h\"\nport = 465\ntls = \"implicit\"\nusername = \"u\"\n").unwrap_err();
        assert!(
            e.contains("key `relay.sender_upstream[0]`: set both username"),
            "{e}"
        );
    }

    #[test]
    fn oauth2_upstreams_are_checked_and_presets_filled_in() {
        use submitd_oauth2::{ClientAuth, Grant};
        use submitd_smtp::Mechanism;
        let upstream =
            "[[relay.upstream]]\nhost = \"smtp.office365.com\"\nport = 587\ntls = \"starttls\"\n";
        let with = |extra: &str| {
            let text = MINIMAL.replace("maildir = \"Maildir\"", "");
            load(&format!("{text}{upstream}{extra}"))
        };
        let s = with("auth = \"xoauth2\"\nusername = \"relay@contoso.example\"\nmechanisms = [\"XOAUTH2\"]\n[relay.upstream.oauth2]\npreset = \"microsoft365\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"app\"\nclient_certificate = \"app.pem\"\nclient_key = \"app.key\"\ngrant = \"client_credentials\"\n").unwrap();
        let RouteSettings::Upstreams(ups) = &s.relay.route else {
            panic!("upstreams")
        };
        let UpstreamAuthSettings::XOAuth2 { user, oauth2 } = &ups[0].auth else {
            panic!("xoauth2: {:?}", ups[0].auth)
        };
        assert_eq!(user, "relay@contoso.example");
        assert_eq!(ups[0].mechanisms, vec![Mechanism::XOAuth2]);
        let e = &oauth2.endpoint;
        assert_eq!(
            e.token_url,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(e.scope, "https://outlook.office365.com/.default");
        assert_eq!(e.route, "default");
        assert!(matches!(&e.client_auth, ClientAuth::Assertion { key, .. } if key.is_absolute()));
        assert_eq!(oauth2.timeout.as_secs(), 30);

        let s = with("username = \"me@gmail.com\"\n[relay.upstream.oauth2]\npreset = \"google\"\nclient_id = \"c\"\nclient_secret_file = \"c.secret\"\ngrant = \"refresh_token\"\nrefresh_token_file = \"me.token\"\n").unwrap();
        let RouteSettings::Upstreams(ups) = &s.relay.route else {
            panic!("upstreams")
        };
        let UpstreamAuthSettings::XOAuth2 { oauth2, .. } = &ups[0].auth else {
            panic!("an oauth2 table means xoauth2")
        };
        assert!(
            matches!(&oauth2.endpoint.grant, Grant::RefreshToken { file } if file.is_absolute())
        );
        assert_eq!(oauth2.endpoint.scope, "https://mail.google.com/");

        for (extra, expected) in [
            ("auth = \"xoauth2\"\nusername = \"u@x\"\n", "key `relay.upstream[0].oauth2`: auth = \"xoauth2\" needs an oauth2 table"),
            ("username = \"u@x\"\n[relay.upstream.oauth2]\ntoken_url = \"http://idp/token\"\nclient_id = \"c\"\nscope = \"s\"\nclient_secret_file = \"s\"\ngrant = \"client_credentials\"\n", "key `relay.upstream[0].oauth2.token_url`: \"http://idp/token\" is not an https:// address"),
            ("username = \"u@x\"\n[relay.upstream.oauth2]\ntoken_url = \"https://idp/token\"\nclient_id = \"c\"\nscope = \"s\"\ngrant = \"client_credentials\"\n", "needs client_secret_file, or client_certificate and client_key"),
            ("username = \"u@x\"\n[relay.upstream.oauth2]\ntoken_url = \"https://idp/token\"\nclient_id = \"c\"\nscope = \"s\"\ngrant = \"refresh_token\"\n", "key `relay.upstream[0].oauth2.refresh_token_file`"),
            ("username = \"u@x\"\n[relay.upstream.oauth2]\npreset = \"microsoft365\"\nclient_id = \"c\"\ngrant = \"refresh_token\"\nrefresh_token_file = \"t\"\n", "key `relay.upstream[0].oauth2.tenant`"),
            ("username = \"u@x\"\npassword_file = \"p\"\nmechanisms = [\"XOAUTH2\"]\n", "\"XOAUTH2\" does not carry a password"),
            ("username = \"u@x\"\npassword_file = \"p\"\nmechanisms = [\"CRAM-MD5\"]\n", "is not one of PLAIN, LOGIN, XOAUTH2, OAUTHBEARER"),
            ("auth = \"none\"\nusername = \"u@x\"\n", "key `relay.upstream[0].auth`: is \"none\""),
        ] {
            let error = with(extra).unwrap_err();
            assert!(error.contains(expected), "{extra}: {error}");
        }
    }

    #[test]
    fn the_dovecot_backend_needs_its_socket() {
        let with = with_auth;
        assert_eq!(with("").unwrap().auth.backend, PasswordBackend::File);
        let s = with("backend = \"dovecot\"\ndovecot_socket = \"/run/dovecot/auth-client\"\ndovecot_timeout = \"2s\"\n").unwrap();
        assert_eq!(
            s.auth.backend,
            PasswordBackend::Dovecot {
                socket: "/run/dovecot/auth-client".into(),
                timeout: Duration::from_secs(2)
            }
        );
        let e = with("backend = \"dovecot\"\n").unwrap_err();
        assert!(
            e.contains("key `auth.dovecot_socket`: backend = \"dovecot\" needs"),
            "{e}"
        );
        let e = with("dovecot_socket = \"/x\"\n").unwrap_err();
        assert!(e.contains("only for backend"), "{e}");
        let e = with("backend = \"ldap\"\n").unwrap_err();
        assert!(e.contains("unknown variant `ldap`"), "{e}");
    }

    #[test]
    fn the_verified_cache_is_on_for_the_file_and_asked_for_with_dovecot() {
        let with = with_auth;
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(with("").unwrap().auth.verified_cache, hour);
        assert_eq!(
            with("cache_ttl = \"10m\"\n").unwrap().auth.verified_cache,
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            with("cache_ttl = \"0s\"\n").unwrap().auth.verified_cache,
            None
        );
        let dovecot = "backend = \"dovecot\"\ndovecot_socket = \"/x\"\n";
        assert_eq!(with(dovecot).unwrap().auth.verified_cache, None);
        assert_eq!(
            with(&format!("{dovecot}dovecot_cache = true\n"))
                .unwrap()
                .auth
                .verified_cache,
            hour
        );
        let e = with("dovecot_cache = true\n").unwrap_err();
        assert!(
            e.contains("key `auth.dovecot_cache`: is only for backend"),
            "{e}"
        );
        let e = with("cache_ttl = \"soon\"\n").unwrap_err();
        assert!(e.contains("key `auth.cache_ttl`"), "{e}");
    }

    #[test]
    fn additional_certificates_follow_the_default() {
        let s = load(&MINIMAL.replace(
            "key = \"key.pem\"\n",
            "key = \"key.pem\"\n[[tls.additional]]\ncertificate = \"b.crt\"\nkey = \"b.key\"\n",
        ))
        .unwrap();
        let files: Vec<_> = s
            .tls
            .certificates
            .iter()
            .map(|p| p.certificate.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(files, ["cert.pem", "b.crt"]);
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("25M"), Some(25 * 1024 * 1024));
        assert_eq!(parse_size("512k"), Some(512 * 1024));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("x"), None);
        let s = load(&format!(
            "{MINIMAL}[limits]\nmessage_size = \"50M\"\nidle_timeout = \"10m\"\n"
        ))
        .unwrap();
        assert_eq!(s.limits.session.message_size, 50 * 1024 * 1024);
        assert_eq!(s.limits.session.idle_timeout, Duration::from_secs(600));
    }

    #[test]
    fn min_free_is_a_share_or_a_size() {
        use submitd_relay::{MinFree, DEFAULT_MIN_FREE};
        let with = |value: &str| {
            load(&MINIMAL.replace(
                "directory = \"queue\"\n",
                &format!("directory = \"queue\"\nmin_free = \"{value}\"\n"),
            ))
        };
        assert_eq!(load(MINIMAL).unwrap().queue.min_free, DEFAULT_MIN_FREE);
        assert_eq!(with("10%").unwrap().queue.min_free, MinFree::Percent(10));
        assert_eq!(with("0%").unwrap().queue.min_free, MinFree::Percent(0));
        assert_eq!(with("2G").unwrap().queue.min_free, MinFree::Octets(2 << 30));
        assert_eq!(
            with("512M").unwrap().queue.min_free,
            MinFree::Octets(512 << 20)
        );
        for bad in ["51%", "lots", "-1G"] {
            let e = with(bad).unwrap_err();
            assert!(e.contains("key `queue.min_free`"), "{bad}: {e}");
        }
        assert!(with("x").unwrap_err().contains("a size such as \"1G\""));
    }
}
