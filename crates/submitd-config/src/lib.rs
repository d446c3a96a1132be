//! submitd's config file: TOML read with serde (`deny_unknown_fields`),
//! turned into typed, checked settings for the other crates. Relative
//! paths are relative to the config file's folder. Every error names the
//! file, the key and what is expected. The reference is
//! `config/submitd.example.toml`.
//!
//! A crate of its own (not part of the binary) so the fuzzer can reach the
//! parser without building TLS and the runtime. Dependencies: `serde` and
//! `toml` to read the file, `humantime` for durations such as "5d",
//! `submitd-smtp` for the session limits it fills in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    hostname: String,
    #[serde(default)]
    demo: bool,
    #[serde(default)]
    privacy: bool,
    listen: Vec<Listen>,
    tls: Tls,
    auth: Auth,
    queue: Queue,
    relay: Relay,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    local: Option<Local>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Local {
    socket: PathBuf,
    #[serde(default)]
    domain: Option<String>,
}

/// The local socket for the machine's own cron jobs and scripts
/// (`submitd sendmail`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSettings {
    /// The unix socket.
    pub socket: PathBuf,
    /// Local user `u` sends as `u@domain` (unless the credential file has
    /// a line for `u`).
    pub domain: String,
}

/// How a listener starts TLS.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// TLS from the first byte (465).
    Implicit,
    /// STARTTLS (587).
    Starttls,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Listen {
    address: String,
    mode: Mode,
    #[serde(default)]
    max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tls {
    certificate: PathBuf,
    key: PathBuf,
    #[serde(default)]
    additional: Vec<TlsPair>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsPair {
    certificate: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Auth {
    users: PathBuf,
    #[serde(default)]
    max_concurrent_checks: Option<usize>,
    #[serde(default)]
    failure_delay: Option<String>,
    #[serde(default)]
    backend: Option<BackendKind>,
    #[serde(default)]
    dovecot_socket: Option<PathBuf>,
    #[serde(default)]
    dovecot_timeout: Option<String>,
}

/// Which backend checks passwords.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum BackendKind {
    /// argon2id hashes in the credential file.
    File,
    /// A running Dovecot's auth socket.
    Dovecot,
}

/// Where passwords are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordBackend {
    /// The credential file's argon2id hashes.
    File,
    /// A Dovecot auth socket, with a bound on each check.
    Dovecot {
        /// The socket.
        socket: PathBuf,
        /// Bound on one check.
        timeout: Duration,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Queue {
    directory: PathBuf,
    #[serde(default)]
    lifetime: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Relay {
    #[serde(default)]
    maildir: Option<PathBuf>,
    #[serde(default)]
    upstream: Vec<UpstreamEntry>,
    #[serde(default)]
    sender_upstream: Vec<SenderUpstreamEntry>,
    #[serde(default)]
    connections: Option<usize>,
    #[serde(default)]
    idle_connection: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamEntry {
    host: String,
    port: u16,
    tls: Mode,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SenderUpstreamEntry {
    senders: Vec<String>,
    #[serde(flatten)]
    upstream: UpstreamEntry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    message_size: Option<String>,
    recipients: Option<usize>,
    idle_timeout: Option<String>,
    session_duration: Option<String>,
    connections: Option<usize>,
    connections_per_client: Option<usize>,
    unauthenticated_connections: Option<usize>,
    handshake_timeout: Option<String>,
    shutdown_grace: Option<String>,
}

/// One listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenSettings {
    /// Address and port.
    pub address: SocketAddr,
    /// Implicit TLS or STARTTLS.
    pub mode: Mode,
    /// Connections at once.
    pub max_connections: usize,
}

/// One certificate chain and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The PEM chain, server certificate first.
    pub certificate: PathBuf,
    /// The PEM private key.
    pub key: PathBuf,
}

/// One upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// Host name (connected to and checked against the certificate).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Implicit TLS or required STARTTLS.
    pub tls: Mode,
    /// User name and password file, if AUTH is needed.
    pub credentials: Option<(String, PathBuf)>,
    /// CA file; the system's roots if `None`.
    pub ca_file: Option<PathBuf>,
}

/// Where messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteSettings {
    /// A Maildir.
    Maildir(PathBuf),
    /// Upstreams in order.
    Upstreams(Vec<UpstreamSettings>),
}

/// The settings, checked and with absolute paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The config file read.
    pub path: PathBuf,
    /// This server's name.
    pub hostname: String,
    /// Create a demo certificate and user on first run.
    pub demo: bool,
    /// Leave client name and address out of Received.
    pub privacy: bool,
    /// Listeners.
    pub listen: Vec<ListenSettings>,
    /// TLS certificate chains and keys (PEM); the first is the default,
    /// the others are chosen by SNI.
    pub certificates: Vec<TlsFiles>,
    /// Credential file.
    pub users: PathBuf,
    /// Concurrent password checks.
    pub max_concurrent_checks: usize,
    /// Delay of the first failed login from a network or for a name
    /// (doubling with each further one, up to 20 s).
    pub failure_delay: Duration,
    /// Where passwords are checked.
    pub password_backend: PasswordBackend,
    /// The local socket, if any.
    pub local: Option<LocalSettings>,
    /// Queue folder.
    pub queue: PathBuf,
    /// How long a message may stay queued.
    pub lifetime: Duration,
    /// Where messages go.
    pub route: RouteSettings,
    /// Upstreams for some senders (addresses, `@domains`), before `route`.
    pub sender_routes: Vec<(Vec<String>, UpstreamSettings)>,
    /// Deliveries at once.
    pub relay_connections: usize,
    /// How long an idle upstream connection is kept.
    pub relay_idle: Duration,
    /// Session limits.
    pub limits: submitd_smtp::Limits,
    /// Connections at once from one client address.
    pub per_client: usize,
    /// Connections at once (per listener) that have not logged in.
    pub unauthenticated: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long sessions get to finish on SIGTERM.
    pub shutdown_grace: Duration,
}

/// A config problem; the text names the file and key.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::error::Error for ConfigError {}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
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
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "{}: cannot read the config file: {e}",
                path.display()
            ))
        })?;
        Self::parse(path, &text)
    }

    /// Checks `text`, the contents of the config file at `path` (which
    /// relative paths are taken from and errors name).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let file: File = toml::from_str(text).map_err(|e| ConfigError(format!("{shown}: {e}")))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let err = |key: &str, what: String| ConfigError(format!("{shown}: key `{key}`: {what}"));

        if file.hostname.is_empty() || file.hostname.contains(char::is_whitespace) {
            return Err(err(
                "hostname",
                "expected this server's DNS name, such as \"mail.example.org\"".into(),
            ));
        }
        if file.listen.is_empty() {
            return Err(err(
                "listen",
                "expected at least one [[listen]] with address and mode".into(),
            ));
        }
        let default_connections = file.limits.connections.unwrap_or(200);
        let mut listen = Vec::new();
        for (i, l) in file.listen.iter().enumerate() {
            let address = l.address.parse().map_err(|_| {
                err(
                    &format!("listen[{i}].address"),
                    format!(
                        "{:?} is not an address and port, such as \"[::]:465\" or \"0.0.0.0:465\"",
                        l.address
                    ),
                )
            })?;
            listen.push(ListenSettings {
                address,
                mode: l.mode,
                max_connections: l.max_connections.unwrap_or(default_connections),
            });
        }
        let upstream = |key: &str, u: &UpstreamEntry| -> Result<UpstreamSettings, ConfigError> {
            let credentials = match (&u.username, &u.password_file) {
                (Some(user), Some(file)) => Some((user.clone(), abs(file))),
                (None, None) => None,
                _ => {
                    return Err(err(
                        key,
                        "set both username and password_file, or neither".into(),
                    ))
                }
            };
            Ok(UpstreamSettings {
                host: u.host.clone(),
                port: u.port,
                tls: u.tls,
                credentials,
                ca_file: u.ca_file.as_deref().map(abs),
            })
        };
        let mut sender_routes = Vec::new();
        for (i, entry) in file.relay.sender_upstream.iter().enumerate() {
            let key = format!("relay.sender_upstream[{i}]");
            if entry.senders.is_empty() {
                return Err(err(
                    &format!("{key}.senders"),
                    "expected addresses and domains, such as [\"alice@example.org\", \"@example.net\"]".into(),
                ));
            }
            for sender in &entry.senders {
                let ok = match sender.rsplit_once('@') {
                    Some((local, domain)) => {
                        !domain.is_empty()
                            && !domain.contains(char::is_whitespace)
                            && !local.contains(char::is_whitespace)
                    }
                    None => false,
                };
                if !ok {
                    return Err(err(
                        &format!("{key}.senders"),
                        format!("{sender:?} is neither an address (alice@example.org) nor a domain (@example.net)"),
                    ));
                }
            }
            sender_routes.push((entry.senders.clone(), upstream(&key, &entry.upstream)?));
        }
        let route = match (&file.relay.maildir, file.relay.upstream.is_empty()) {
            (Some(dir), true) => RouteSettings::Maildir(abs(dir)),
            (None, false) => RouteSettings::Upstreams(
                file.relay
                    .upstream
                    .iter()
                    .enumerate()
                    .map(|(i, u)| upstream(&format!("relay.upstream[{i}]"), u))
                    .collect::<Result<_, _>>()?,
            ),
            _ => {
                return Err(err(
                    "relay",
                    "set either maildir = \"PATH\" or one or more [[relay.upstream]], not both"
                        .into(),
                ))
            }
        };
        let duration = |key: &str,
                        value: &Option<String>,
                        default: Duration|
         -> Result<Duration, ConfigError> {
            match value {
                None => Ok(default),
                Some(text) => humantime::parse_duration(text).map_err(|_| {
                    err(
                        key,
                        format!("{text:?} is not a duration, such as \"5m\" or \"5d\""),
                    )
                }),
            }
        };
        let mut limits = submitd_smtp::Limits::default();
        if let Some(size) = &file.limits.message_size {
            limits.message_size = parse_size(size).ok_or_else(|| {
                err(
                    "limits.message_size",
                    format!("{size:?} is not a size, such as \"25M\""),
                )
            })?;
        }
        if let Some(recipients) = file.limits.recipients {
            if recipients < 100 {
                return Err(err(
                    "limits.recipients",
                    "RFC 5321 asks for at least 100".into(),
                ));
            }
            limits.recipients = recipients;
        }
        limits.idle_timeout = duration(
            "limits.idle_timeout",
            &file.limits.idle_timeout,
            limits.idle_timeout,
        )?;
        limits.session_duration = duration(
            "limits.session_duration",
            &file.limits.session_duration,
            limits.session_duration,
        )?;
        let handshake_timeout = duration(
            "limits.handshake_timeout",
            &file.limits.handshake_timeout,
            Duration::from_secs(30),
        )?;
        let shutdown_grace = duration(
            "limits.shutdown_grace",
            &file.limits.shutdown_grace,
            Duration::from_secs(30),
        )?;
        let failure_delay = duration(
            "auth.failure_delay",
            &file.auth.failure_delay,
            Duration::from_secs(1),
        )?;
        let password_backend = match (file.auth.backend, &file.auth.dovecot_socket) {
            (None | Some(BackendKind::File), None) => PasswordBackend::File,
            (Some(BackendKind::Dovecot), Some(socket)) => PasswordBackend::Dovecot {
                socket: abs(socket),
                timeout: duration(
                    "auth.dovecot_timeout",
                    &file.auth.dovecot_timeout,
                    // Dovecot delays a failure 2 s and adds up to 15 s of
                    // its own penalty per client address: both fit.
                    Duration::from_secs(30),
                )?,
            },
            (Some(BackendKind::Dovecot), None) => {
                return Err(err(
                    "auth.dovecot_socket",
                    "backend = \"dovecot\" needs the auth socket, such as \"/var/spool/postfix/private/auth\"".into(),
                ))
            }
            (_, Some(_)) => {
                return Err(err(
                    "auth.dovecot_socket",
                    "is only for backend = \"dovecot\"; set that, or remove the key".into(),
                ))
            }
        };
        let local = match &file.local {
            None => None,
            Some(l) => {
                let domain = l.domain.clone().unwrap_or_else(|| file.hostname.clone());
                if domain.is_empty() || domain.contains(['@', ' ']) {
                    return Err(err(
                        "local.domain",
                        format!("{domain:?} is not a domain, such as \"example.org\""),
                    ));
                }
                Some(LocalSettings {
                    socket: abs(&l.socket),
                    domain,
                })
            }
        };
        let relay_idle = duration(
            "relay.idle_connection",
            &file.relay.idle_connection,
            Duration::from_secs(5),
        )?;
        let relay_connections = file.relay.connections.unwrap_or(4);
        if !(1..=100).contains(&relay_connections) {
            return Err(err(
                "relay.connections",
                format!("{relay_connections} is not between 1 and 100 (deliveries at once)"),
            ));
        }
        let lifetime = duration(
            "queue.lifetime",
            &file.queue.lifetime,
            Duration::from_secs(5 * 86_400),
        )?;
        Ok(Self {
            path: path.to_path_buf(),
            hostname: file.hostname,
            demo: file.demo,
            privacy: file.privacy,
            listen,
            certificates: std::iter::once((&file.tls.certificate, &file.tls.key))
                .chain(file.tls.additional.iter().map(|p| (&p.certificate, &p.key)))
                .map(|(certificate, key)| TlsFiles {
                    certificate: abs(certificate),
                    key: abs(key),
                })
                .collect(),
            users: abs(&file.auth.users),
            max_concurrent_checks: file
                .auth
                .max_concurrent_checks
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            failure_delay,
            password_backend,
            local,
            queue: abs(&file.queue.directory),
            lifetime,
            route,
            sender_routes,
            relay_connections,
            relay_idle,
            limits,
            per_client: file.limits.connections_per_client.unwrap_or(20),
            unauthenticated: file.limits.unauthenticated_connections.unwrap_or(100),
            handshake_timeout,
            shutdown_grace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("submitd.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load(&path).map_err(|e| e.0.replace(&dir.path().display().to_string(), "DIR"))
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
        assert_eq!(s.certificates.len(), 1);
        let first = &s.certificates[0];
        assert!(first.certificate.is_absolute() && first.certificate.ends_with("cert.pem"));
        assert!(first.key.is_absolute() && first.key.ends_with("key.pem"));
        assert!(matches!(s.route, RouteSettings::Maildir(_)));
        assert_eq!(s.limits, submitd_smtp::Limits::default());
        assert_eq!(s.lifetime, Duration::from_secs(5 * 86_400));
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
    fn sender_upstreams_name_their_senders() {
        let with = |extra: &str| load(&format!("{MINIMAL}{extra}"));
        let s = with("[[relay.sender_upstream]]\nsenders = [\"bob@gmail.com\", \"@example.net\"]\nhost = \"smtp.gmail.com\"\nport = 465\ntls = \"implicit\"\nusername = \"bob@gmail.com\"\npassword_file = \"bob.pass\"\n").unwrap();
        let (senders, up) = &s.sender_routes[0];
        assert_eq!(senders, &["bob@gmail.com", "@example.net"]);
        assert_eq!(up.host, "smtp.gmail.com");
        assert!(up.credentials.as_ref().unwrap().1.is_absolute());
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
    fn the_dovecot_backend_needs_its_socket() {
        let with = |extra: &str| {
            load(&MINIMAL.replace(
                "users = \"users\"\n",
                &format!("users = \"users\"\n{extra}"),
            ))
        };
        assert_eq!(with("").unwrap().password_backend, PasswordBackend::File);
        let s = with("backend = \"dovecot\"\ndovecot_socket = \"/run/dovecot/auth-client\"\ndovecot_timeout = \"2s\"\n").unwrap();
        assert_eq!(
            s.password_backend,
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
    fn additional_certificates_follow_the_default() {
        let s = load(&MINIMAL.replace(
            "key = \"key.pem\"\n",
            "key = \"key.pem\"\n[[tls.additional]]\ncertificate = \"b.crt\"\nkey = \"b.key\"\n",
        ))
        .unwrap();
        let files: Vec<_> = s
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
        assert_eq!(s.limits.message_size, 50 * 1024 * 1024);
        assert_eq!(s.limits.idle_timeout, Duration::from_secs(600));
    }
}
