//! From settings to running parts: each library's objects built from the
//! config's sections, in one place, so the daemon, `check` and the tests
//! wire the crates the same way.
//!
//! ```text
//! Settings.relay + .queue ─▶ route(), sender_routes() ─▶ Relay (over the Spool)
//! Settings.auth ─▶ authenticator() ─▶ LoginGate + SenderPolicy ─┐
//!     (+ Settings.cluster ─▶ Cluster: counts shared in Redis)     │
//! Relay + hostname + privacy ─▶ Intake ─────────────────────────┴▶ Services (listeners)
//! Settings.listen[i] + .limits.session ─▶ ServerConfig per listener
//! ```

use std::sync::Arc;
use std::time::Duration;

use submitd_auth::{
    Authenticator, CredentialStore, DovecotAuth, LoginGate, PasswordChecker, SenderPolicy,
    SendingLimits, VerifiedCache,
};
use submitd_cluster::Cluster;
use submitd_config::{
    PasswordBackend, RouteSettings, Settings, UpstreamAuthSettings, UpstreamSettings,
};
use submitd_listener::Services;
use submitd_oauth2::{Http, KeyPolicy, TokenSource, TokenVerifier};
use submitd_relay::{
    client_tls_config, read_password_file, Intake, Maildir, Relay, RelayConfig, Route, SenderRoute,
    Spool, Upstream, UpstreamAuth,
};
use submitd_smtp::{ServerConfig, Transport};

/// How long connecting to an upstream and its TLS handshake may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One upstream: its password read (0600 or refused) or its token source
/// made, and its TLS roots.
pub(crate) fn upstream(u: &UpstreamSettings) -> Result<Upstream, String> {
    let auth = match &u.auth {
        UpstreamAuthSettings::None => UpstreamAuth::None,
        UpstreamAuthSettings::Password { user, file } => UpstreamAuth::Password {
            user: user.clone(),
            password: read_password_file(file).map_err(|e| e.to_string())?,
        },
        UpstreamAuthSettings::XOAuth2 { user, oauth2 } => {
            let http = Http::new(oauth2.ca_file.as_deref(), oauth2.timeout)
                .map_err(|e| format!("route {}: {e}", oauth2.endpoint.route))?;
            UpstreamAuth::Token {
                user: user.clone(),
                tokens: Arc::new(TokenSource::new(oauth2.endpoint.clone(), http)),
            }
        }
    };
    Ok(Upstream {
        host: u.host.clone(),
        port: u.port,
        tls: u.transport,
        auth,
        mechanisms: u.mechanisms.clone(),
        tls_config: client_tls_config(u.ca_file.as_deref()).map_err(|e| e.to_string())?,
        connect_timeout: UPSTREAM_CONNECT_TIMEOUT,
    })
}

/// The default route: the Maildir (made if missing) or the upstreams.
pub(crate) fn route(settings: &Settings) -> Result<Route, String> {
    match &settings.relay.route {
        RouteSettings::Maildir(path) => Maildir::open(path)
            .map(Route::Maildir)
            .map_err(|e| format!("{}: {e}", path.display())),
        RouteSettings::Upstreams(upstreams) => upstreams
            .iter()
            .map(upstream)
            .collect::<Result<Vec<_>, String>>()
            .map(Route::Upstreams),
    }
}

/// The per-sender upstreams (`[[relay.sender_upstream]]`).
pub(crate) fn sender_routes(settings: &Settings) -> Result<Vec<SenderRoute>, String> {
    settings
        .relay
        .sender_routes
        .iter()
        .map(|r| {
            Ok(SenderRoute {
                name: r.name.clone(),
                senders: r.senders.clone(),
                upstreams: vec![upstream(&r.upstream)?],
            })
        })
        .collect()
}

/// The relay over `spool`.
pub(crate) fn relay(settings: &Settings, spool: Spool) -> Result<Relay, String> {
    let relay = &settings.relay;
    let config = RelayConfig {
        connections: relay.connections,
        idle_connection: relay.idle_connection,
        sender_routes: sender_routes(settings)?,
        in_flow_delay: settings.queue.in_flow_delay,
        ..RelayConfig::new(
            settings.hostname.clone(),
            route(settings)?,
            settings.queue.retry.clone(),
        )
    };
    Ok(Relay::new(spool, config))
}

/// The password backend `[auth]` names.
pub(crate) fn authenticator(settings: &Settings) -> Result<Authenticator, String> {
    Ok(match &settings.auth.backend {
        PasswordBackend::File => Authenticator::Local(
            PasswordChecker::new(settings.auth.max_concurrent_checks).map_err(|e| e.to_string())?,
        ),
        PasswordBackend::Dovecot { socket, timeout } => Authenticator::Dovecot(DovecotAuth {
            socket: socket.clone(),
            timeout: *timeout,
        }),
    })
}

/// What every session's questions are answered with.
pub(crate) fn services(
    settings: &Settings,
    credentials: Arc<CredentialStore>,
    relay: Relay,
) -> Result<Services, String> {
    let authenticator = Arc::new(authenticator(settings)?);
    let mut gate = LoginGate::new(
        Arc::clone(&credentials),
        Arc::clone(&authenticator),
        settings.auth.throttle.clone(),
    );
    if let Some(tokens) = &settings.auth.oauth2 {
        let http = Http::new(tokens.ca_file.as_deref(), tokens.timeout)
            .map_err(|e| format!("auth.oauth2: {e}"))?;
        let verifier = TokenVerifier::new(tokens.policy.clone(), KeyPolicy::default(), http);
        gate = gate.with_tokens(Arc::new(verifier));
    }
    if let Some(ttl) = settings.auth.verified_cache {
        let cache =
            VerifiedCache::new(ttl, VerifiedCache::DEFAULT_CAPACITY).map_err(|e| e.to_string())?;
        gate = gate.with_cache(cache);
    }
    let mut policy = SenderPolicy::new(credentials, authenticator, SendingLimits::defaults());
    if let Some(config) = &settings.cluster {
        let cluster =
            Arc::new(Cluster::new(config.clone()).map_err(|e| format!("cluster.redis: {e}"))?);
        tracing::info!(redis = %cluster.location(), prefix = %config.prefix, "limits shared in Redis");
        gate = gate.with_cluster(Arc::clone(&cluster));
        policy = policy.with_cluster(cluster);
    }
    let intake = Intake::new(relay, &settings.hostname, settings.privacy)
        .with_min_free(settings.queue.min_free);
    Ok(Services::new(
        gate,
        policy,
        intake,
        settings.limits.handshake_timeout,
    ))
}

/// The server machine's settings for a listener of `transport`.
/// `token_mechanisms` (from [`token_mechanisms`]) are offered beside PLAIN
/// and LOGIN; like them, only ever inside TLS.
pub(crate) fn server_config(
    settings: &Settings,
    transport: Transport,
    token_mechanisms: &[String],
) -> Arc<ServerConfig> {
    let mut smtp = ServerConfig::new(settings.hostname.clone(), transport);
    smtp.limits = settings.limits.session.clone();
    smtp.auth_mechanisms
        .extend(token_mechanisms.iter().cloned());
    Arc::new(smtp)
}

/// The bearer-token mechanisms offered to clients: both, when
/// `[auth.oauth2]` names an issuer; else those of XOAUTH2 and OAUTHBEARER
/// that Dovecot offers (asked once, at start), passed through to it.
pub(crate) async fn token_mechanisms(settings: &Settings) -> Vec<String> {
    const TOKEN_MECHANISMS: [&str; 2] = ["OAUTHBEARER", "XOAUTH2"];
    if settings.auth.oauth2.is_some() {
        return TOKEN_MECHANISMS.map(str::to_owned).to_vec();
    }
    let PasswordBackend::Dovecot { socket, timeout } = &settings.auth.backend else {
        return Vec::new();
    };
    let dovecot = DovecotAuth {
        socket: socket.clone(),
        timeout: *timeout,
    };
    match dovecot.offered_mechanisms().await {
        Ok(offered) => {
            let passed: Vec<String> = offered
                .into_iter()
                .filter(|m| TOKEN_MECHANISMS.contains(&m.as_str()))
                .collect();
            if !passed.is_empty() {
                tracing::info!(target: "submitd::auth", mechanisms = %passed.join(" "), "Dovecot offers bearer-token mechanisms: passed through to it");
            }
            passed
        }
        Err(error) => {
            tracing::warn!(target: "submitd::auth", %error, "cannot ask Dovecot for its mechanisms; XOAUTH2 and OAUTHBEARER are not offered until a restart");
            Vec::new()
        }
    }
}
