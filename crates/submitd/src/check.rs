//! `submitd check`: everything the server would refuse to start with, and
//! what would hurt soon, said one finding a line so a person or a script
//! can act on it. Problems make the exit status 2; warnings do not (the
//! unit runs `check` as ExecStartPre, and a certificate that expires in a
//! week must not stop the server today).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use submitd_auth::CredentialStore;
use submitd_listener::server_tls_config;
use submitd_oauth2::{ClientAuth, Grant, TokenEndpoint};
use submitd_relay::{Connection, MinFree, Route, Spool, Upstream, UpstreamAuth};

use submitd_config::Settings;

/// Warn when a certificate has less than this left.
const EXPIRY_WARNING: Duration = Duration::from_secs(21 * 86_400);

/// What `check` found.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    lines: Vec<(Level, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Ok,
    Warning,
    Problem,
}

impl Findings {
    fn ok(&mut self, text: String) {
        self.lines.push((Level::Ok, text));
    }
    fn warning(&mut self, text: String) {
        self.lines.push((Level::Warning, text));
    }
    fn problem(&mut self, text: String) {
        self.lines.push((Level::Problem, text));
    }

    /// How many problems (not warnings) there are.
    pub(crate) fn problems(&self) -> usize {
        self.lines
            .iter()
            .filter(|(l, _)| *l == Level::Problem)
            .count()
    }

    /// One line a finding: `ok: …`, `warning: …` or `problem: …`.
    pub(crate) fn print(&self) {
        for (level, text) in &self.lines {
            let word = match level {
                Level::Ok => "ok",
                Level::Warning => "warning",
                Level::Problem => "problem",
            };
            println!("{word}: {text}");
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn date(unix: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Runs every check; with `connect`, also logs in to each upstream.
pub(crate) async fn run(settings: &Settings, connect: bool) -> Findings {
    let mut found = Findings::default();
    found.ok(format!("config {}", settings.path.display()));
    placeholders(settings, &mut found);
    certificates(settings, &mut found);
    credentials(&settings.auth.users, &mut found);
    if let submitd_config::PasswordBackend::Dovecot { socket, timeout } = &settings.auth.backend {
        let dovecot = submitd_auth::DovecotAuth {
            socket: socket.clone(),
            timeout: *timeout,
        };
        match dovecot.probe().await {
            Ok(()) => found.ok(format!(
                "auth: Dovecot answers on {} and offers PLAIN",
                socket.display()
            )),
            Err(e) => found.problem(format!("auth: {e}")),
        }
    }
    if let Some(tokens) = &settings.auth.oauth2 {
        let issuer = &tokens.policy.issuer;
        let verifier =
            submitd_oauth2::Http::new(tokens.ca_file.as_deref(), tokens.timeout).map(|http| {
                submitd_oauth2::TokenVerifier::new(
                    tokens.policy.clone(),
                    submitd_oauth2::KeyPolicy::default(),
                    http,
                )
            });
        // An issuer out of reach stops token logins only (454), not the
        // server: warnings, so `check` before the start does not fail.
        match verifier {
            Err(e) => found.problem(format!("auth: tokens of {issuer}: {e}")),
            Ok(verifier) => match verifier.fetch_keys().await {
                Ok(0) => found.warning(format!(
                    "auth: tokens of {issuer}: the issuer publishes no signing key"
                )),
                Ok(n) => found.ok(format!(
                    "auth: tokens of {issuer}: {n} signing key(s) found; OAUTHBEARER and XOAUTH2 offered, logins by the {:?} claim",
                    tokens.policy.login_claim
                )),
                Err(e) => found.warning(format!(
                    "auth: tokens of {issuer}: {e}; token logins get 454 until it answers"
                )),
            },
        }
    }
    if let Some(config) = &settings.cluster {
        cluster(config, &mut found).await;
    }
    if let Some(metrics) = &settings.metrics {
        found.ok(format!(
            "metrics: GET /metrics on {}{}",
            metrics.listen,
            if metrics.per_user {
                ", with per-user series"
            } else {
                ""
            }
        ));
    }
    queue(&settings.queue.directory, &mut found);
    free_space(
        &settings.queue.directory,
        settings.queue.min_free,
        &mut found,
    );
    let routes = crate::wiring::route(settings).and_then(|route| {
        let senders = crate::wiring::sender_routes(settings)?;
        Ok((route, senders))
    });
    let (route, senders) = match routes {
        Err(e) => {
            found.problem(format!("relay: {e}"));
            return found;
        }
        Ok(routes) => routes,
    };
    let mut upstreams: Vec<(String, Upstream)> = Vec::new();
    match route {
        Route::Maildir(maildir) => found.ok(format!(
            "relay: delivering into the Maildir {}",
            maildir.root().display()
        )),
        Route::Upstreams(list) => {
            upstreams.extend(list.into_iter().map(|u| ("upstream".to_owned(), u)));
        }
    }
    for route in senders {
        let who = format!("upstream for {}", route.senders.join(", "));
        upstreams.extend(route.upstreams.into_iter().map(|u| (who.clone(), u)));
    }
    for (who, upstream) in &upstreams {
        let name = format!("{}:{} ({:?})", upstream.host, upstream.port, upstream.tls);
        if !connect {
            if let UpstreamAuth::Token { tokens, .. } = &upstream.auth {
                oauth2_files(tokens.endpoint(), &mut found);
            }
            found.ok(format!(
                "relay: {who} {name} configured (use --connect to log in to it)"
            ));
            continue;
        }
        match Connection::open(upstream, &settings.hostname).await {
            Ok(connection) => {
                connection.quit().await;
                let auth = match &upstream.auth {
                    UpstreamAuth::Password { user, .. } => format!("AUTH accepted for {user}"),
                    UpstreamAuth::Token { user, .. } => {
                        format!("access token fetched and AUTH accepted for {user}")
                    }
                    UpstreamAuth::None => "no AUTH configured".to_owned(),
                };
                found.ok(format!(
                    "relay: {who} {name}: connected, certificate verified, {auth}"
                ));
            }
            Err(e) => found.problem(format!("relay: {who}: {e}")),
        }
    }
    found
}

/// The files an OAuth2 upstream needs, checked without asking the
/// provider: present, private, not empty.
/// Names still the template's (`.invalid`, RFC 2606: the package's
/// /etc/submitd/submitd.toml uses them so that nothing runs before they
/// are filled in).
fn placeholders(settings: &Settings, found: &mut Findings) {
    let placeholder = |name: &str| name.ends_with(".invalid");
    if placeholder(&settings.hostname) {
        found.problem(format!(
            "hostname: {:?} is the template's placeholder; set this server's DNS name (what its certificate names)",
            settings.hostname
        ));
    }
    let upstreams = match &settings.relay.route {
        submitd_config::RouteSettings::Upstreams(list) => list.iter().collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    for upstream in upstreams {
        if placeholder(&upstream.host) {
            found.problem(format!(
                "relay.upstream: host {:?} is the template's placeholder; set your smarthost (docs/relay.md)",
                upstream.host
            ));
        }
    }
}

/// Redis answers a read of the shared counts. Out of reach, the daemon
/// still runs (each instance counts alone): a warning, not a problem.
async fn cluster(config: &submitd_cluster::ClusterConfig, found: &mut Findings) {
    let cluster = match submitd_cluster::Cluster::new(config.clone()) {
        Ok(cluster) => cluster,
        Err(e) => return found.problem(format!("cluster: {e}")),
    };
    match cluster.usage("submitd-check").await {
        Some(_) => found.ok(format!(
            "cluster: Redis at {} answers; limits are shared (prefix {:?})",
            cluster.location(),
            config.prefix
        )),
        None => found.warning(format!(
            "cluster: Redis at {} does not answer within {:?}; each instance counts limits on its own until it does",
            cluster.location(),
            config.timeout
        )),
    }
}

fn oauth2_files(endpoint: &TokenEndpoint, found: &mut Findings) {
    let route = &endpoint.route;
    let mut files: Vec<(&Path, &str)> = Vec::new();
    match &endpoint.client_auth {
        ClientAuth::None => {}
        ClientAuth::Secret { file } => files.push((file, "client_secret_file")),
        ClientAuth::Assertion { key, .. } => files.push((key, "client_key")),
    }
    if let Grant::RefreshToken { file } = &endpoint.grant {
        files.push((file, "refresh_token_file"));
    }
    for (path, key) in files {
        use std::os::unix::fs::PermissionsExt as _;
        match std::fs::metadata(path) {
            // Messages of the route wait in the queue until it is
            // written; the server itself can run.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && key == "refresh_token_file" => {
                found.warning(format!(
                    "relay: route {route}: {} does not exist; run `submitd oauth2 authorize {route}` (until then its messages stay queued)",
                    path.display()
                ))
            }
            Err(e) => found.problem(format!("relay: route {route}: {key} {}: {e}", path.display())),
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => found.problem(format!(
                "relay: route {route}: {} is readable by others; run `chmod 600 {}`",
                path.display(),
                path.display()
            )),
            Ok(_) => {}
        }
    }
}

fn certificates(settings: &Settings, found: &mut Findings) {
    let (_, certs) = match server_tls_config(&settings.tls.certificates) {
        Ok(loaded) => loaded,
        Err(e) => {
            found.problem(format!("tls: {e}"));
            return;
        }
    };
    let now = unix_now();
    for (i, (paths, facts)) in certs.facts().into_iter().enumerate() {
        let file = paths.certificate.display();
        let names = facts.names.join(", ");
        if facts.not_after < now {
            found.problem(format!(
                "tls: {file}: expired on {}; renew it and run `systemctl reload submitd`",
                date(facts.not_after)
            ));
        } else if facts.not_before > now {
            found.problem(format!(
                "tls: {file}: not valid before {} (check the clock)",
                date(facts.not_before)
            ));
        } else {
            let left = facts.not_after - now;
            let text = format!(
                "tls: {file}: {names}; key matches; valid until {} ({} days)",
                date(facts.not_after),
                left / 86_400
            );
            if left < EXPIRY_WARNING.as_secs() as i64 {
                found.warning(format!("{text}: renew it soon"));
            } else {
                found.ok(text);
            }
        }
        if i == 0 && !facts.covers(&settings.hostname) {
            found.warning(format!(
                "tls: {file} (the default certificate) does not cover hostname {:?}; clients that connect by that name will refuse it",
                settings.hostname
            ));
        }
    }
}

fn credentials(path: &Path, found: &mut Findings) {
    match CredentialStore::open(path) {
        Ok((store, errors)) => {
            for error in &errors {
                found.problem(error.to_string());
            }
            found.ok(format!(
                "auth: {}: {} user(s)",
                path.display(),
                store.users().len()
            ));
        }
        Err(e) => {
            found.problem(e.to_string());
            return;
        }
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            found.warning(format!(
                "auth: {}: readable by everyone (mode {:o}); run `chmod o-rwx {}`",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            ));
        }
    }
}

/// The queue disk's free space against `[queue] min_free`.
fn free_space(root: &Path, min_free: MinFree, found: &mut Findings) {
    let Ok(space) = submitd_relay::free_space(root) else {
        found.warning(format!(
            "queue: {}: cannot tell its free space",
            root.display()
        ));
        return;
    };
    let mib = |n: u64| n / (1024 * 1024);
    let floor = min_free.floor(space.total);
    let text = format!(
        "queue disk: {} MiB free of {} MiB (new messages are refused below {} MiB, min_free {min_free})",
        mib(space.available),
        mib(space.total),
        mib(floor)
    );
    if space.available < floor {
        found.problem(format!(
            "{text}: below the floor now, every new message gets 452; free space or move [queue] directory"
        ));
    } else if space.available < floor.saturating_mul(2) {
        found.warning(format!("{text}: close to the floor"));
    } else {
        found.ok(text);
    }
}

/// The user the shipped unit and the package run the server as.
const SERVICE_USER: &str = "submitd";

/// What is wrong with the queue's owner, if anything, for a check run as
/// `me`: the server must own its queue. Root checking on behalf of the
/// service (`sudo submitd check`) expects the service's user to own it,
/// when that user exists; anyone else expects to own it themselves.
fn queue_owner(owner: u32, me: u32, service: Option<u32>) -> Option<String> {
    match (me, service) {
        _ if owner == me && me != 0 => None,
        (0, Some(service)) if owner == service => None,
        (0, Some(service)) => Some(format!(
            "owned by uid {owner}, but the service runs as {SERVICE_USER} (uid {service}) and must own its queue"
        )),
        (0, None) if owner == 0 => None,
        _ => Some(format!(
            "owned by uid {owner}, but this runs as uid {me}; the server must own its queue"
        )),
    }
}

fn queue(root: &Path, found: &mut Findings) {
    if let Err(e) = Spool::attach(root) {
        found.problem(format!("queue: {e}"));
        return;
    }
    let Ok(meta) = std::fs::metadata(root) else {
        found.problem(format!("queue: {}: cannot be read", root.display()));
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        found.problem(format!(
            "queue: {}: others may open it (mode {mode:o}) and read queued mail; run `chmod 700 {}`",
            root.display(),
            root.display()
        ));
    } else if mode & 0o070 != 0 {
        found.warning(format!(
            "queue: {}: its group may open it (mode {mode:o}); `chmod 700 {}` keeps queued mail private",
            root.display(),
            root.display()
        ));
    }
    if let Some(me) = submitd_auth::os_user::effective_uid() {
        let service = submitd_auth::os_user::uid_of(SERVICE_USER);
        if let Some(text) = queue_owner(meta.uid(), me, service) {
            found.warning(format!(
                "queue: {}: {text} (`chown -R {SERVICE_USER}: {}`)",
                root.display(),
                root.display()
            ));
        }
    }
    let running = if Spool::is_locked(root) {
        "; a server is running on it"
    } else {
        ""
    };
    found.ok(format!(
        "queue: {} (mode {mode:o}){running}",
        root.display()
    ));
}

#[cfg(test)]
mod tests {
    use super::queue_owner;

    #[test]
    fn the_queue_owner_is_judged_for_whoever_checks() {
        // The server's own user checking its own queue.
        assert_eq!(queue_owner(995, 995, Some(995)), None);
        assert_eq!(queue_owner(1000, 1000, None), None);
        // Root checking a packaged install: the service's user owns it.
        assert_eq!(queue_owner(995, 0, Some(995)), None);
        // Root checking a queue the service could not write.
        let root_owned = queue_owner(0, 0, Some(995)).unwrap();
        assert!(
            root_owned.contains("runs as submitd (uid 995)"),
            "{root_owned}"
        );
        let other = queue_owner(1000, 0, Some(995)).unwrap();
        assert!(other.contains("owned by uid 1000"), "{other}");
        // No service user: root running it itself owns it.
        assert_eq!(queue_owner(0, 0, None), None);
        // Someone else's queue.
        let foreign = queue_owner(1000, 1001, Some(995)).unwrap();
        assert!(foreign.contains("this runs as uid 1001"), "{foreign}");
    }
}
