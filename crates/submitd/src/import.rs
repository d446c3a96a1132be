//! `submitd import-postfix`: reads a Postfix `main.cf` and `master.cf` and
//! the maps they name, and writes an equivalent submitd config, credential
//! file and upstream password files, listing every submission-related
//! setting it could not carry over and why.
//!
//! What maps to what (also `docs/migrating-from-postfix.md`):
//! `submission`/`submissions`/`smtps` services in master.cf → `[[listen]]`;
//! `myhostname` → `hostname`; `smtpd_tls_cert_file`/`key_file` (or
//! `smtpd_tls_chain_files`) → `[tls]`; `smtpd_sasl_type = dovecot` +
//! `smtpd_sasl_path` → `[auth] backend = "dovecot"`;
//! `smtpd_sender_login_maps` → `send-as` in the credential file;
//! `relayhost` + `smtp_tls_wrappermode` + `smtp_sasl_password_maps` →
//! `[[relay.upstream]]`; `sender_dependent_relayhost_maps` (+
//! `smtp_sender_dependent_authentication`) → `[[relay.sender_upstream]]`;
//! `message_size_limit` → `[limits] message_size`.
//!
//! Maps are read from their source text (`hash:/etc/postfix/x` reads
//! `/etc/postfix/x`, as `postmap` does), and paths under Postfix's config
//! directory are read from the directory given, so a copy of `/etc/postfix`
//! imports as well as the real one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// What the import produced.
#[derive(Debug, Default)]
pub(crate) struct Imported {
    /// `submitd.toml`.
    pub(crate) config: String,
    /// The credential file.
    pub(crate) users: String,
    /// Upstream password files: (file name, password).
    pub(crate) passwords: Vec<(String, String)>,
    /// What was carried over: (Postfix setting, submitd setting).
    pub(crate) carried: Vec<(String, String)>,
    /// What was not, and why: (Postfix setting, reason).
    pub(crate) not_carried: Vec<(String, String)>,
}

/// main.cf's parameters, later lines winning, continuation lines joined.
fn parse_main(text: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            // A comment or blank line ends a continuation in Postfix too.
            last = None;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(key) = &last {
                if let Some(value) = params.get_mut(key) {
                    let value: &mut String = value;
                    value.push(' ');
                    value.push_str(line.trim());
                }
            }
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim().to_owned();
            params.insert(key.clone(), value.trim().to_owned());
            last = Some(key);
        }
    }
    params
}

/// Postfix's defaults for the parameters the import expands.
fn default_of(name: &str) -> Option<&'static str> {
    Some(match name {
        "queue_directory" => "/var/spool/postfix",
        "config_directory" => "/etc/postfix",
        "data_directory" => "/var/lib/postfix",
        "smtpd_sasl_type" => "cyrus",
        "inet_interfaces" => "all",
        "message_size_limit" => "10240000",
        _ => return None,
    })
}

/// Expands `$name`, `${name}` and `$(name)` (nested, bounded).
fn expand(value: &str, params: &BTreeMap<String, String>, depth: u8) -> String {
    if depth > 8 || !value.contains('$') {
        return value.to_owned();
    }
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = match after.chars().next() {
            Some(open @ ('{' | '(')) => {
                let close = if open == '{' { '}' } else { ')' };
                match after.find(close) {
                    Some(end) => (&after[1..end], &after[end + 1..]),
                    None => (after, ""),
                }
            }
            _ => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        let value = params
            .get(name)
            .map(String::as_str)
            .or_else(|| default_of(name))
            .unwrap_or("");
        out.push_str(&expand(value, params, depth + 1));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// One master.cf service.
#[derive(Debug)]
struct Service {
    name: String,
    kind: String,
    command: String,
    overrides: Vec<(String, String)>,
}

fn parse_master(text: &str) -> Vec<Service> {
    let mut services: Vec<Service> = Vec::new();
    let mut args: Vec<Vec<String>> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        if line.starts_with([' ', '\t']) {
            if let Some(last) = args.last_mut() {
                last.extend(words);
            }
            continue;
        }
        if words.len() < 8 {
            continue;
        }
        services.push(Service {
            name: words[0].clone(),
            kind: words[1].clone(),
            command: words[7].clone(),
            overrides: Vec::new(),
        });
        args.push(words[8..].to_vec());
    }
    for (service, args) in services.iter_mut().zip(args) {
        let mut words = args.into_iter();
        while let Some(word) = words.next() {
            let setting = if word == "-o" {
                words.next()
            } else {
                word.strip_prefix("-o").map(str::to_owned)
            };
            if let Some((key, value)) = setting.as_deref().and_then(|s| s.split_once('=')) {
                service
                    .overrides
                    .push((key.trim().to_owned(), value.trim().to_owned()));
            }
        }
    }
    services
}

/// A Postfix map's entries, from its source text.
fn read_map(
    spec: &str,
    key: &str,
    postfix_dir: &Path,
    config_directory: &str,
    out: &mut Imported,
) -> Vec<(String, String)> {
    let Some((kind, path)) = spec.split_once(':') else {
        out.not_carried
            .push((key.into(), format!("{spec:?} is not a TYPE:NAME map")));
        return Vec::new();
    };
    if !matches!(kind, "hash" | "btree" | "lmdb" | "cdb" | "dbm" | "texthash") {
        out.not_carried.push((
            key.into(),
            format!("{kind}: maps are not imported (only file maps: hash, btree, lmdb, cdb, texthash); carry its entries over by hand"),
        ));
        return Vec::new();
    }
    let file = local_path(path, postfix_dir, config_directory);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) => {
            out.not_carried
                .push((key.into(), format!("cannot read {}: {e}", file.display())));
            return Vec::new();
        }
    };
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = entries.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        let mut parts = line.trim().splitn(2, char::is_whitespace);
        if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            entries.push((k.to_owned(), v.trim().to_owned()));
        }
    }
    entries
}

/// Where to read `path` from: under `postfix_dir` when it is inside
/// Postfix's config directory.
fn local_path(path: &str, postfix_dir: &Path, config_directory: &str) -> PathBuf {
    match Path::new(path).strip_prefix(config_directory) {
        Ok(rest) => postfix_dir.join(rest),
        Err(_) => PathBuf::from(path),
    }
}

/// `[host]:port`, `host:port` or `host` (port 25).
fn parse_relay(value: &str) -> Option<(String, u16, bool)> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let (host, port, bracketed) = match value.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            let port = after
                .strip_prefix(':')
                .map_or(Some(25), |p| p.parse().ok())?;
            (host, port, true)
        }
        None => match value.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?, false),
            None => (value, 25, false),
        },
    };
    Some((host.to_owned(), port, bracketed))
}

fn toml_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Settings the import knows of and does not carry, with why.
const NOT_NEEDED: &[(&str, &str)] = &[
    ("smtpd_sasl_auth_enable", "submitd always requires AUTH for mail"),
    ("smtpd_tls_auth_only", "submitd takes AUTH only inside TLS, always"),
    ("smtpd_tls_security_level", "submitd requires TLS on every listener (implicit or STARTTLS)"),
    ("smtpd_tls_wrappermode", "carried as mode = \"implicit\""),
    ("smtpd_tls_mandatory_protocols", "submitd offers TLS 1.2 and 1.3 only"),
    ("smtpd_tls_protocols", "submitd offers TLS 1.2 and 1.3 only"),
    ("smtpd_tls_mandatory_ciphers", "submitd offers forward-secret AEAD suites only"),
    ("smtpd_tls_ciphers", "submitd offers forward-secret AEAD suites only"),
    ("smtpd_tls_session_cache_database", "not needed"),
    ("smtp_tls_session_cache_database", "not needed"),
    ("smtpd_relay_restrictions", "submitd relays for authenticated users only, always"),
    ("smtpd_recipient_restrictions", "submitd relays for authenticated users only, always; no other recipient rules"),
    ("smtpd_sender_restrictions", "reject_sender_login_mismatch is what submitd always does (send-as); other sender rules are not supported"),
    ("smtpd_client_restrictions", "not supported: every client must log in"),
    ("smtpd_helo_restrictions", "not supported: the HELO name of an authenticated client is recorded, not judged"),
    ("smtpd_reject_unlisted_recipient", "submitd does not know local recipients; it relays"),
    ("mynetworks", "submitd never relays without AUTH, for any network"),
    ("syslog_name", "submitd logs to the journal as submitd"),
    ("milter_macro_daemon_name", "no milters"),
    ("smtpd_milters", "milters are not supported (DKIM signing belongs to the upstream or a later submitd)"),
    ("non_smtpd_milters", "milters are not supported"),
    ("header_checks", "not supported"),
    ("smtp_header_checks", "not supported"),
    ("sender_canonical_maps", "address rewriting is not supported"),
    ("canonical_maps", "address rewriting is not supported"),
    ("smtp_generic_maps", "address rewriting is not supported"),
    ("smtp_tls_policy_maps", "TLS to the upstream is always required and verified"),
    ("smtp_sasl_security_options", "submitd uses PLAIN or LOGIN over TLS to the upstream"),
    ("smtp_sasl_tls_security_options", "submitd uses PLAIN or LOGIN over TLS to the upstream"),
    ("smtp_tls_CApath", "submitd uses the system's roots unless ca_file is set"),
    ("smtp_tls_loglevel", "not needed"),
    ("smtpd_tls_loglevel", "not needed"),
];

/// Imports from `postfix_dir` (holding main.cf and master.cf).
pub(crate) fn import(postfix_dir: &Path) -> Result<Imported, String> {
    let read = |name: &str| {
        let path = postfix_dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let main = parse_main(&read("main.cf")?);
    let master = parse_master(&read("master.cf")?);
    let mut importer = Importer {
        config_directory: get(&main, "config_directory").unwrap_or_else(|| "/etc/postfix".into()),
        queue_directory: get(&main, "queue_directory")
            .unwrap_or_else(|| "/var/spool/postfix".into()),
        params: main.clone(),
        main,
        postfix_dir,
        out: Imported::default(),
    };
    let listens = importer.listeners(&master);
    let hostname = importer.hostname();
    let (cert, key) = importer.tls();
    let dovecot_socket = importer.password_backend();
    importer.send_as(dovecot_socket.is_some());
    let relay = importer.relay();
    let (limits, lifetime) = importer.limits();
    importer.not_needed();
    let config = Written {
        postfix_dir,
        hostname: &hostname,
        listens: &listens,
        cert: &cert,
        key: &key,
        dovecot_socket: dovecot_socket.as_deref(),
        lifetime: lifetime.as_deref(),
        relay: &relay,
        limits: &limits,
    }
    .config();
    importer.out.config = config;
    Ok(importer.out)
}

/// A parameter after `$name` expansion; empty counts as unset.
fn get(params: &BTreeMap<String, String>, key: &str) -> Option<String> {
    params
        .get(key)
        .map(|v| expand(v, params, 0))
        .filter(|v| !v.is_empty())
}

/// One import under way: main.cf's parameters, the first submission
/// service's (its `-o` overrides on top), and what was found so far.
struct Importer<'a> {
    main: BTreeMap<String, String>,
    /// Per-service settings win where the first submission service has them.
    params: BTreeMap<String, String>,
    postfix_dir: &'a Path,
    config_directory: String,
    queue_directory: String,
    out: Imported,
}

impl Importer<'_> {
    /// Listeners: the submission (587) and submissions/smtps (465)
    /// services of master.cf, as (address, mode).
    fn listeners(&mut self, master: &[Service]) -> Vec<(String, &'static str)> {
        let mut listens: Vec<(String, &'static str)> = Vec::new();
        let mut service_params = Vec::new();
        for s in master
            .iter()
            .filter(|s| s.kind == "inet" && s.command == "smtpd")
        {
            let (host, port) = match s.name.rsplit_once(':') {
                Some((h, p)) => (Some(h.trim_matches(['[', ']'])), p),
                None => (None, s.name.as_str()),
            };
            let port_number: Option<u16> = match port {
                "submission" => Some(587),
                "submissions" | "smtps" => Some(465),
                "smtp" => Some(25),
                p => p.parse().ok(),
            };
            let mut params = self.main.clone();
            for (k, v) in &s.overrides {
                params.insert(k.clone(), v.clone());
            }
            let wrapper = get(&self.params, "smtpd_tls_wrappermode").is_some_and(|v| v == "yes");
            let Some(port_number) = port_number else {
                self.out
                    .not_carried
                    .push((format!("master.cf {}", s.name), "unknown port".into()));
                continue;
            };
            if port_number == 25 && !wrapper {
                self.out.not_carried.push((
                format!("master.cf {}", s.name),
                "port 25 is the MX service: submitd does not receive mail from the internet; keep Postfix (or another MTA) for that".into(),
            ));
                continue;
            }
            let mode = if wrapper || port_number == 465 {
                "implicit"
            } else {
                "starttls"
            };
            let interfaces = get(&self.main, "inet_interfaces").unwrap_or_else(|| "all".into());
            let address = match host {
                Some(h) if h.contains(':') => format!("[{h}]:{port_number}"),
                Some(h) => format!("{h}:{port_number}"),
                None if interfaces == "all" => format!("[::]:{port_number}"),
                None if interfaces.contains("loopback-only") => format!("127.0.0.1:{port_number}"),
                None => {
                    self.out.not_carried.push((
                        "inet_interfaces".into(),
                        format!(
                        "{interfaces:?}: submitd listens on [::] for {}; list addresses by hand",
                        s.name
                    ),
                    ));
                    format!("[::]:{port_number}")
                }
            };
            self.out.carried.push((
                format!("master.cf {} ({})", s.name, s.command),
                format!("[[listen]] address = {address:?}, mode = {mode:?}"),
            ));
            for (k, v) in &s.overrides {
                if let Some((_, why)) = NOT_NEEDED.iter().find(|(n, _)| n == k) {
                    self.out
                        .not_carried
                        .push((format!("master.cf {} -o {k}={v}", s.name), (*why).into()));
                }
            }
            listens.push((address, mode));
            service_params.push(params);
        }
        if listens.is_empty() {
            self.out.not_carried.push((
            "master.cf".into(),
            "no submission or submissions service is enabled: submitd listens on [::]:465 (implicit TLS)".into(),
        ));
            listens.push(("[::]:465".into(), "implicit"));
        }
        if let Some(first) = service_params.into_iter().next() {
            self.params = first;
        }
        listens
    }

    /// `myhostname`.
    fn hostname(&mut self) -> String {
        let hostname = get(&self.params, "myhostname").unwrap_or_else(|| {
            self.out.not_carried.push((
                "myhostname".into(),
                "not set: hostname = \"localhost\" written; set this server's name".into(),
            ));
            "localhost".into()
        });
        self.out
            .carried
            .push(("myhostname".into(), format!("hostname = {hostname:?}")));
        hostname
    }

    /// The certificate and key files.
    fn tls(&mut self) -> (String, String) {
        let (cert, key) = match get(&self.params, "smtpd_tls_chain_files") {
            Some(chain) => {
                let files: Vec<&str> = chain.split([',', ' ']).filter(|s| !s.is_empty()).collect();
                match files.as_slice() {
                    [key, cert, ..] => (cert.to_string(), key.to_string()),
                    [both] => (both.to_string(), both.to_string()),
                    [] => (String::new(), String::new()),
                }
            }
            None => {
                let cert = get(&self.params, "smtpd_tls_cert_file").unwrap_or_default();
                let key = get(&self.params, "smtpd_tls_key_file").unwrap_or_else(|| cert.clone());
                (cert, key)
            }
        };
        if cert.is_empty() {
            self.out.not_carried.push((
                "smtpd_tls_cert_file".into(),
                "not set: point [tls] at your certificate and key".into(),
            ));
        } else {
            self.out.carried.push((
                "smtpd_tls_cert_file, smtpd_tls_key_file".into(),
                "[tls] certificate, key".into(),
            ));
            if cert.contains("snakeoil") {
                self.out.not_carried.push((
                "smtpd_tls_cert_file".into(),
                format!("{cert} is Debian's self-signed snakeoil certificate: mail clients will warn; use one from a CA"),
            ));
            }
        }
        (cert, key)
    }

    /// Who checks passwords: the Dovecot socket, if Dovecot does.
    fn password_backend(&mut self) -> Option<String> {
        let sasl_type = get(&self.params, "smtpd_sasl_type").unwrap_or_else(|| "cyrus".into());
        let mut dovecot_socket = None;
        if sasl_type == "dovecot" {
            let path =
                get(&self.params, "smtpd_sasl_path").unwrap_or_else(|| "private/auth".into());
            if path.starts_with("inet:") {
                self.out.not_carried.push((
                    "smtpd_sasl_path".into(),
                    format!(
                        "{path}: Dovecot over TCP is not supported; give Dovecot a unix_listener"
                    ),
                ));
            } else {
                let socket = if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("{}/{path}", self.queue_directory)
                };
                self.out.carried.push((
                    "smtpd_sasl_type = dovecot, smtpd_sasl_path".into(),
                    format!("[auth] backend = \"dovecot\", dovecot_socket = {socket:?}"),
                ));
                dovecot_socket = Some(socket);
            }
        } else {
            self.out.not_carried.push((
            "smtpd_sasl_type".into(),
            format!("{sasl_type}: passwords cannot be read out of Cyrus SASL; set each user's with `submitd user passwd NAME`"),
        ));
        }
        dovecot_socket
    }

    /// Who may send as whom: the credential file's send-as lines.
    fn send_as(&mut self, dovecot: bool) {
        let mut send_as: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        if let Some(spec) = get(&self.params, "smtpd_sender_login_maps") {
            for map in spec.split([',', ' ']).filter(|s| !s.is_empty()) {
                for (sender, logins) in read_map(
                    map,
                    "smtpd_sender_login_maps",
                    self.postfix_dir,
                    &self.config_directory,
                    &mut self.out,
                ) {
                    for login in logins.split([',', ' ']).filter(|s| !s.is_empty()) {
                        send_as
                            .entry(login.to_owned())
                            .or_default()
                            .insert(sender.clone());
                    }
                }
            }
            self.out.carried.push((
                "smtpd_sender_login_maps".into(),
                format!(
                    "send-as= for {} user(s) in the credential file",
                    send_as.len()
                ),
            ));
        } else {
            self.out.not_carried.push((
            "smtpd_sender_login_maps".into(),
            "not set: Postfix let every user send as anyone; submitd lets a Dovecot user send as their login address only: add send-as lines for more".into(),
        ));
        }
        let mut users =
            String::from("# Written by `submitd import-postfix`. Format: docs/credentials.md.\n");
        if dovecot {
            users.push_str(
                "# Passwords are checked by Dovecot; lines here give sender policy only.\n",
            );
        } else {
            users.push_str(
                "# No passwords were imported: set each with `submitd user passwd NAME`.\n",
            );
        }
        for (login, senders) in &send_as {
            let list: Vec<&str> = senders.iter().map(String::as_str).collect();
            let _ = writeln!(users, "{login} - send-as={}", list.join(","));
        }
        self.out.users = users;
    }

    /// The `[relay]` section: the relayhost and the sender-dependent ones,
    /// with their credentials.
    fn relay(&mut self) -> String {
        let mut sasl: BTreeMap<String, (String, String)> = BTreeMap::new();
        let sasl_enabled = get(&self.main, "smtp_sasl_auth_enable").is_some_and(|v| v == "yes");
        if let Some(spec) = get(&self.main, "smtp_sasl_password_maps").filter(|_| sasl_enabled) {
            for map in spec.split([',', ' ']).filter(|s| !s.is_empty()) {
                for (k, v) in read_map(
                    map,
                    "smtp_sasl_password_maps",
                    self.postfix_dir,
                    &self.config_directory,
                    &mut self.out,
                ) {
                    if let Some((user, password)) = v.split_once(':') {
                        sasl.insert(
                            k.to_ascii_lowercase(),
                            (user.to_owned(), password.to_owned()),
                        );
                    }
                }
            }
            self.out.carried.push((
                "smtp_sasl_password_maps".into(),
                "username and password_file of each upstream".into(),
            ));
        }
        let by_sender_auth =
            get(&self.main, "smtp_sender_dependent_authentication").is_some_and(|v| v == "yes");
        let style = UpstreamStyle {
            wrapper: get(&self.main, "smtp_tls_wrappermode").is_some_and(|v| v == "yes"),
            level: get(&self.main, "smtp_tls_security_level").unwrap_or_else(|| "none".into()),
            ca_file: get(&self.main, "smtp_tls_CAfile"),
        };
        let lookup = |sasl: &BTreeMap<String, (String, String)>, relay: &str| {
            sasl.get(&relay.to_ascii_lowercase()).cloned().or_else(|| {
                parse_relay(relay).and_then(|(host, port, _)| {
                    sasl.get(&format!("[{host}]:{port}").to_ascii_lowercase())
                        .or_else(|| sasl.get(&format!("{host}:{port}").to_ascii_lowercase()))
                        .or_else(|| sasl.get(&host.to_ascii_lowercase()))
                        .cloned()
                })
            })
        };
        let relayhost = get(&self.main, "relayhost").unwrap_or_default();
        let mut relay_section = String::from("[relay]\n");
        match style.toml(
            "relay.upstream",
            None,
            &relayhost,
            lookup(&sasl, &relayhost).as_ref(),
            &mut self.out,
        ) {
            Some(t) => {
                self.out.carried.push((
                    "relayhost, smtp_tls_wrappermode".into(),
                    format!("[[relay.upstream]] for {relayhost}"),
                ));
                relay_section.push_str(&t);
            }
            None => {
                self.out.not_carried.push((
                "relayhost".into(),
                "empty: Postfix delivered to MX hosts itself; submitd relays to one smarthost only: a placeholder upstream smtp.example.invalid is written, replace it".into(),
            ));
                relay_section.push_str(
                "[[relay.upstream]]\n# REPLACE: your provider's submission server\nhost = \"smtp.example.invalid\"\nport = 465\ntls = \"implicit\"\n",
            );
            }
        }
        if let Some(spec) = get(&self.main, "sender_dependent_relayhost_maps") {
            let mut by_relay: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for map in spec.split([',', ' ']).filter(|s| !s.is_empty()) {
                for (sender, relay) in read_map(
                    map,
                    "sender_dependent_relayhost_maps",
                    self.postfix_dir,
                    &self.config_directory,
                    &mut self.out,
                ) {
                    by_relay.entry(relay).or_default().push(sender);
                }
            }
            for (relay, senders) in &by_relay {
                // With sender-dependent authentication each sender may have its
                // own account: one entry per sender then.
                let groups: Vec<Vec<String>> = if by_sender_auth {
                    senders.iter().map(|s| vec![s.clone()]).collect()
                } else {
                    vec![senders.clone()]
                };
                for group in groups {
                    let credentials = group
                        .first()
                        .filter(|_| by_sender_auth)
                        .and_then(|s| sasl.get(&s.to_ascii_lowercase()).cloned())
                        .or_else(|| lookup(&sasl, relay));
                    if let Some(t) = style.toml(
                        "relay.sender_upstream",
                        Some(&group),
                        relay,
                        credentials.as_ref(),
                        &mut self.out,
                    ) {
                        relay_section.push_str(&t);
                    }
                }
            }
            self.out.carried.push((
                "sender_dependent_relayhost_maps, smtp_sender_dependent_authentication".into(),
                format!(
                    "[[relay.sender_upstream]] for {} relay host(s)",
                    by_relay.len()
                ),
            ));
        }
        relay_section
    }

    /// The `[limits]` section, and the queue lifetime.
    fn limits(&mut self) -> (String, Option<String>) {
        let mut limits = String::from("[limits]\n");
        let size = get(&self.main, "message_size_limit").unwrap_or_else(|| "10240000".into());
        match size.parse::<u64>() {
            Ok(0) => self.out.not_carried.push((
                "message_size_limit".into(),
                "0 (unlimited): submitd's limits are finite; its default 25M is kept".into(),
            )),
            Ok(n) => {
                let _ = writeln!(limits, "message_size = \"{n}\"");
                self.out.carried.push((
                    "message_size_limit".into(),
                    format!("[limits] message_size = \"{n}\""),
                ));
            }
            Err(_) => self.out.not_carried.push((
                "message_size_limit".into(),
                format!("{size:?} is not a number"),
            )),
        }

        if let Some(n) = get(&self.params, "smtpd_client_connection_count_limit") {
            match n.parse::<usize>() {
                Ok(n) if n > 0 => {
                    let _ = writeln!(limits, "connections_per_client = {n}");
                    self.out.carried.push((
                        "smtpd_client_connection_count_limit".into(),
                        format!("[limits] connections_per_client = {n}"),
                    ));
                }
                _ => self.out.not_carried.push((
                    "smtpd_client_connection_count_limit".into(),
                    format!("{n:?}: not a positive number; submitd's default 20 is kept"),
                )),
            }
        }
        let lifetime = get(&self.main, "maximal_queue_lifetime")
            .filter(|v| humantime::parse_duration(v).is_ok());
        if let Some(v) = &lifetime {
            self.out.carried.push((
                "maximal_queue_lifetime".into(),
                format!("[queue] lifetime = {v:?}"),
            ));
        }
        (limits, lifetime)
    }

    /// Everything else submission-related that is set, with why it is not needed.
    fn not_needed(&mut self) {
        for (key, why) in NOT_NEEDED {
            if let Some(v) = get(&self.main, key) {
                self.out
                    .not_carried
                    .push((format!("{key} = {v}"), (*why).into()));
            }
        }
    }
}

/// How main.cf says upstreams are reached: what each `[[relay.*]]`
/// entry the import writes has in common.
struct UpstreamStyle {
    /// `smtp_tls_wrappermode = yes`: implicit TLS.
    wrapper: bool,
    /// `smtp_tls_security_level`.
    level: String,
    /// `smtp_tls_CAfile`.
    ca_file: Option<String>,
}

impl UpstreamStyle {
    /// One `[[table]]` entry for `relay`, its password file recorded in
    /// `out`; `None` when `relay` is not a host.
    fn toml(
        &self,
        table: &str,
        senders: Option<&[String]>,
        relay: &str,
        credentials: Option<&(String, String)>,
        out: &mut Imported,
    ) -> Option<String> {
        let (host, port, _) = parse_relay(relay)?;
        let tls = if self.wrapper || port == 465 {
            "implicit"
        } else {
            "starttls"
        };
        if tls == "starttls"
            && !matches!(
                self.level.as_str(),
                "encrypt" | "verify" | "secure" | "dane-only"
            )
        {
            out.not_carried.push((
                "smtp_tls_security_level".into(),
                format!("{:?} for {relay}: submitd always requires TLS with a verified certificate to the upstream", self.level),
            ));
        }
        let mut t = String::new();
        let _ = writeln!(t, "[[{table}]]");
        if let Some(senders) = senders {
            let list: Vec<String> = senders.iter().map(|s| toml_string(s)).collect();
            let _ = writeln!(t, "senders = [{}]", list.join(", "));
        }
        let _ = writeln!(
            t,
            "host = {}\nport = {port}\ntls = \"{tls}\"",
            toml_string(&host)
        );
        if let Some((user, password)) = credentials {
            let file = format!("upstream-{}.pass", out.passwords.len() + 1);
            let _ = writeln!(
                t,
                "username = {}\npassword_file = {}",
                toml_string(user),
                toml_string(&file)
            );
            out.passwords.push((file, password.clone()));
        }
        if let Some(ca) = &self.ca_file {
            let _ = writeln!(t, "ca_file = {}", toml_string(ca));
        }
        Some(t)
    }
}

/// What the written submitd.toml holds.
struct Written<'a> {
    postfix_dir: &'a Path,
    hostname: &'a str,
    listens: &'a [(String, &'static str)],
    cert: &'a str,
    key: &'a str,
    dovecot_socket: Option<&'a str>,
    lifetime: Option<&'a str>,
    relay: &'a str,
    limits: &'a str,
}

impl Written<'_> {
    fn config(&self) -> String {
        let Self {
            postfix_dir,
            hostname,
            listens,
            cert,
            key,
            dovecot_socket,
            lifetime,
            relay,
            limits,
        } = self;
        let mut config = String::new();
        let _ = writeln!(
        config,
        "# Written by `submitd import-postfix` from {}.\n# Check it with `submitd check --connect --config FILE`.\n\nhostname = {}\n",
        postfix_dir.display(),
        toml_string(hostname)
    );
        for (address, mode) in listens.iter() {
            let _ = writeln!(
                config,
                "[[listen]]\naddress = {}\nmode = \"{mode}\"\n",
                toml_string(address)
            );
        }
        let _ = writeln!(
            config,
            "[tls]\ncertificate = {}\nkey = {}\n",
            toml_string(if cert.is_empty() {
                "/etc/submitd/cert.pem"
            } else {
                cert
            }),
            toml_string(if key.is_empty() {
                "/etc/submitd/key.pem"
            } else {
                key
            })
        );
        let _ = writeln!(config, "[auth]\nusers = \"users\"");
        if let Some(socket) = &dovecot_socket {
            let _ = writeln!(
                config,
                "backend = \"dovecot\"\ndovecot_socket = {}",
                toml_string(socket)
            );
        }
        let _ = writeln!(config, "\n[queue]\ndirectory = \"/var/lib/submitd/queue\"");
        if let Some(v) = &lifetime {
            let _ = writeln!(config, "lifetime = {}", toml_string(v));
        }
        config.push('\n');
        config.push_str(relay);
        config.push('\n');
        config.push_str(limits);
        config
    }
}

/// Writes what `import` produced into `out_dir` (refusing to overwrite
/// unless `force`), password files 0600.
pub(crate) fn write(imported: &Imported, out_dir: &Path, force: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut files: Vec<(String, String, u32)> = vec![
        ("submitd.toml".into(), imported.config.clone(), 0o640),
        ("users".into(), imported.users.clone(), 0o640),
    ];
    for (name, password) in &imported.passwords {
        files.push((name.clone(), format!("{password}\n"), 0o600));
    }
    for (name, _, _) in &files {
        let path = out_dir.join(name);
        if path.exists() && !force {
            return Err(format!(
                "{} exists; remove it or pass --force",
                path.display()
            ));
        }
    }
    for (name, text, mode) in files {
        let path = out_dir.join(&name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_cf_continuations_and_expansion() {
        let p = parse_main("a = one\n  two\n# c\nb = $a ${a} $(a)\nq = $queue_directory/x\n");
        assert_eq!(p["a"], "one two");
        assert_eq!(expand(&p["b"], &p, 0), "one two one two one two");
        assert_eq!(expand(&p["q"], &p, 0), "/var/spool/postfix/x");
        let loop_ = parse_main("x = $y\ny = $x\n");
        // A loop ends (bounded depth), leaving the unexpanded name.
        assert!(expand("$x", &loop_, 0).starts_with('$'));
    }

    #[test]
    fn master_cf_services_and_overrides() {
        let m = parse_master(
            "smtp inet n - y - - smtpd\nsubmission inet n - y - - smtpd\n  -o smtpd_tls_security_level=encrypt\n  -o smtpd_sasl_auth_enable=yes\n127.0.0.1:submissions inet n - y - - smtpd -o smtpd_tls_wrappermode=yes\n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].overrides.len(), 2);
        assert_eq!(m[2].name, "127.0.0.1:submissions");
        assert_eq!(
            m[2].overrides[0],
            ("smtpd_tls_wrappermode".into(), "yes".into())
        );
    }

    #[test]
    fn relay_hosts() {
        assert_eq!(
            parse_relay("[smtp.x.org]:465"),
            Some(("smtp.x.org".into(), 465, true))
        );
        assert_eq!(
            parse_relay("[smtp.x.org]"),
            Some(("smtp.x.org".into(), 25, true))
        );
        assert_eq!(
            parse_relay("smtp.x.org:587"),
            Some(("smtp.x.org".into(), 587, false))
        );
        assert_eq!(parse_relay(""), None);
        assert_eq!(parse_relay("[oops"), None);
    }
}
