//! From the file as written to checked settings, one function per
//! section. Every error names the file, the key and what is expected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use submitd_auth::{DovecotAuth, PasswordChecker, ThrottleConfig, VerifiedCache};
use submitd_cluster::ClusterConfig;
use submitd_listener::{
    CertificatePaths, ConnectionLimits, Network, ProxyProtocol, TrustedProxies,
};
use submitd_oauth2::{Algorithm, ClientAuth, Grant, IssuerPolicy, TokenEndpoint};
use submitd_relay::{MinFree, RelayConfig, RetryPolicy};
use submitd_smtp::{Mechanism, SecretKind};

/// How long one request to an OAuth2 provider may take.
const DEFAULT_OAUTH2_TIMEOUT: Duration = Duration::from_secs(30);
use submitd_smtp::Transport;

use crate::file::{self, BackendKind, File, TlsMode};
use crate::settings::{
    AuthSettings, ClientTokenSettings, LimitSettings, ListenSettings, LocalSettings,
    MetricsSettings, OAuth2Settings, PasswordBackend, QueueSettings, RelaySettings, RouteSettings,
    SenderRouteSettings, Settings, TlsSettings, UpstreamAuthSettings, UpstreamSettings,
};
use crate::{parse_size, ConfigError};

/// The file being read: where relative paths start and what errors name.
pub(crate) struct Context<'a> {
    pub(crate) path: &'a Path,
    base: PathBuf,
}

impl<'a> Context<'a> {
    pub(crate) fn new(path: &'a Path) -> Self {
        Self {
            path,
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    fn err(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::key(self.path, key, problem)
    }

    fn abs(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn duration(
        &self,
        key: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(text) => humantime::parse_duration(text).map_err(|_| {
                self.err(
                    key,
                    format!("{text:?} is not a duration, such as \"5m\" or \"5d\""),
                )
            }),
        }
    }

    /// All sections, in the order of the file.
    pub(crate) fn settings(&self, file: File) -> Result<Settings, ConfigError> {
        if file.hostname.is_empty() || file.hostname.contains(char::is_whitespace) {
            return Err(self.err(
                "hostname",
                "expected this server's DNS name, such as \"mail.example.org\"",
            ));
        }
        Ok(Settings {
            path: self.path.to_path_buf(),
            listen: self.listen(&file.listen, &file.limits)?,
            tls: self.tls(&file.tls),
            auth: self.auth(&file.auth)?,
            queue: self.queue(&file.queue)?,
            relay: self.relay(&file.relay)?,
            limits: self.limits(&file.limits)?,
            local: self.local(file.local.as_ref(), &file.hostname)?,
            metrics: self.metrics(file.metrics.as_ref(), &file.listen)?,
            cluster: self.cluster(file.cluster.as_ref())?,
            log_format: file.log.format,
            hostname: file.hostname,
            demo: file.demo,
            privacy: file.privacy,
        })
    }

    fn listen(
        &self,
        listen: &[file::Listen],
        limits: &file::Limits,
    ) -> Result<Vec<ListenSettings>, ConfigError> {
        if listen.is_empty() {
            return Err(self.err(
                "listen",
                "expected at least one [[listen]] with address and mode",
            ));
        }
        let defaults = ConnectionLimits::default();
        let shared = ConnectionLimits {
            total: limits.connections.unwrap_or(defaults.total),
            per_client: limits.connections_per_client.unwrap_or(defaults.per_client),
            unauthenticated: limits
                .unauthenticated_connections
                .unwrap_or(defaults.unauthenticated),
            rate: limits.connection_rate.unwrap_or(defaults.rate),
        };
        let mut out = Vec::new();
        for (i, l) in listen.iter().enumerate() {
            let address = l.address.parse().map_err(|_| {
                self.err(
                    &format!("listen[{i}].address"),
                    format!(
                        "{:?} is not an address and port, such as \"[::]:465\" or \"0.0.0.0:465\"",
                        l.address
                    ),
                )
            })?;
            out.push(ListenSettings {
                address,
                transport: transport(l.mode),
                limits: ConnectionLimits {
                    total: l.max_connections.unwrap_or(shared.total),
                    ..shared
                },
                proxy: self.proxy(i, l)?,
            });
        }
        Ok(out)
    }

    /// A listener's `proxy_protocol` and `trusted_proxies`: both or
    /// neither, so that no listener believes headers from anyone.
    fn proxy(&self, i: usize, l: &file::Listen) -> Result<Option<ProxyProtocol>, ConfigError> {
        let key = |name: &str| format!("listen[{i}].{name}");
        if !l.proxy_protocol {
            if !l.trusted_proxies.is_empty() {
                return Err(self.err(
                    &key("trusted_proxies"),
                    "is set but proxy_protocol is not: set proxy_protocol = true, or remove trusted_proxies",
                ));
            }
            return Ok(None);
        }
        if l.trusted_proxies.is_empty() {
            return Err(self.err(
                &key("trusted_proxies"),
                "proxy_protocol = true needs the load balancers' addresses, such as [\"10.0.0.5\", \"10.0.1.0/24\"]: a PROXY header is believed only from them",
            ));
        }
        let networks = l
            .trusted_proxies
            .iter()
            .map(|n| {
                n.parse::<Network>()
                    .map_err(|e| self.err(&key("trusted_proxies"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(ProxyProtocol {
            trusted: TrustedProxies::new(networks),
        }))
    }

    /// `[metrics]`: an address that is no mail listener's and not on a
    /// mail port, so that metrics never answer on the ports clients use.
    fn metrics(
        &self,
        metrics: Option<&file::Metrics>,
        listen: &[file::Listen],
    ) -> Result<Option<MetricsSettings>, ConfigError> {
        let Some(m) = metrics else {
            return Ok(None);
        };
        let address: SocketAddr = m.listen.parse().map_err(|_| {
            self.err(
                "metrics.listen",
                format!(
                    "{:?} is not an address and port, such as \"127.0.0.1:9465\"",
                    m.listen
                ),
            )
        })?;
        let mail_port = [25, 465, 587].contains(&address.port())
            || listen.iter().any(|l| {
                l.address
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.port() == address.port())
            });
        if mail_port {
            return Err(self.err(
                "metrics.listen",
                format!("{address} is a mail port: serve metrics apart, such as on 127.0.0.1:9465"),
            ));
        }
        Ok(Some(MetricsSettings {
            listen: address,
            per_user: m.per_user,
        }))
    }

    /// `[cluster]`: Redis for the limits the instances share.
    fn cluster(
        &self,
        cluster: Option<&file::Cluster>,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        let Some(c) = cluster else {
            return Ok(None);
        };
        if !(c.redis.starts_with("redis://") || c.redis.starts_with("rediss://")) {
            return Err(self.err(
                "cluster.redis",
                "is not a redis:// or rediss:// URL, such as \"redis://10.0.0.9:6379/0\" (rediss:// for TLS)",
            ));
        }
        let prefix = c.prefix.clone().unwrap_or_else(|| "submitd".into());
        if prefix.is_empty() || prefix.contains(char::is_whitespace) {
            return Err(self.err("cluster.prefix", "must be one word, such as \"submitd\""));
        }
        let timeout = self.duration("cluster.timeout", &c.timeout, Duration::from_millis(500))?;
        if timeout.is_zero() || timeout > Duration::from_secs(5) {
            return Err(self.err(
                "cluster.timeout",
                "must be between 1ms and 5s: a login waits this long for Redis before counting alone",
            ));
        }
        let config = ClusterConfig {
            url: c.redis.clone(),
            prefix,
            timeout,
            ca_file: c.ca_file.as_deref().map(|p| self.abs(p)),
        };
        // The URL's form (and the CA file), checked now rather than at the
        // first login.
        submitd_cluster::Cluster::new(config.clone()).map_err(|e| {
            let key = match e {
                submitd_cluster::ClusterError::BadUrl { .. } => "cluster.redis",
                _ => "cluster.ca_file",
            };
            self.err(key, e.to_string())
        })?;
        Ok(Some(config))
    }

    fn tls(&self, tls: &file::Tls) -> TlsSettings {
        let pairs = std::iter::once((&tls.certificate, &tls.key))
            .chain(tls.additional.iter().map(|p| (&p.certificate, &p.key)));
        TlsSettings {
            certificates: pairs
                .map(|(certificate, key)| CertificatePaths {
                    certificate: self.abs(certificate),
                    key: self.abs(key),
                })
                .collect(),
        }
    }

    /// A share such as "5%", from 0 to `max` percent.
    fn percent(&self, key: &str, text: &str, max: u8) -> Result<u8, ConfigError> {
        text.strip_suffix('%')
            .and_then(|n| n.trim().parse::<u8>().ok())
            .filter(|n| *n <= max)
            .ok_or_else(|| {
                self.err(
                    key,
                    format!("must be a share such as \"5%\", from \"0%\" to \"{max}%\""),
                )
            })
    }

    /// `[queue] min_free`: a share ("5%") or a size ("1G").
    fn min_free(&self, text: &str) -> Result<MinFree, ConfigError> {
        if text.trim_end().ends_with('%') {
            return self
                .percent("queue.min_free", text, 50)
                .map(MinFree::Percent);
        }
        parse_size(text).map(MinFree::Octets).ok_or_else(|| {
            self.err(
                "queue.min_free",
                format!("{text:?} is neither a share such as \"5%\" (at most \"50%\") nor a size such as \"1G\" or \"512M\"; leave it out for 5 % of the disk, at most 1G"),
            )
        })
    }

    fn auth(&self, auth: &file::Auth) -> Result<AuthSettings, ConfigError> {
        let throttle = ThrottleConfig::default();
        let failure_delay = self.duration(
            "auth.failure_delay",
            &auth.failure_delay,
            throttle.base_delay,
        )?;
        let backend = match (auth.backend, &auth.dovecot_socket) {
            (None | Some(BackendKind::File), None) => PasswordBackend::File,
            (Some(BackendKind::Dovecot), Some(socket)) => PasswordBackend::Dovecot {
                socket: self.abs(socket),
                timeout: self.duration(
                    "auth.dovecot_timeout",
                    &auth.dovecot_timeout,
                    DovecotAuth::DEFAULT_TIMEOUT,
                )?,
            },
            (Some(BackendKind::Dovecot), None) => {
                return Err(self.err(
                    "auth.dovecot_socket",
                    "backend = \"dovecot\" needs the auth socket, such as \"/var/spool/postfix/private/auth\"",
                ))
            }
            (_, Some(_)) => {
                return Err(self.err(
                    "auth.dovecot_socket",
                    "is only for backend = \"dovecot\"; set that, or remove the key",
                ))
            }
        };
        let reload_max_drop = match auth.reload_max_drop.as_deref() {
            None => submitd_auth::DEFAULT_RELOAD_MAX_DROP,
            Some(text) => self.percent("auth.reload_max_drop", text, 100)?,
        };
        let ttl = self.duration(
            "auth.cache_ttl",
            &auth.cache_ttl,
            VerifiedCache::DEFAULT_TTL,
        )?;
        let verified_cache = match (&backend, auth.dovecot_cache) {
            (PasswordBackend::File, Some(_)) => {
                return Err(self.err(
                    "auth.dovecot_cache",
                    "is only for backend = \"dovecot\" (the file backend's cache is `cache_ttl`); remove the key",
                ))
            }
            // Dovecot's passwords change where submitd cannot see: its
            // cache is asked for, never assumed.
            (PasswordBackend::Dovecot { .. }, None | Some(false)) => None,
            _ => Some(ttl).filter(|ttl| !ttl.is_zero()),
        };
        let oauth2 = auth
            .oauth2
            .as_ref()
            .map(|o| self.client_tokens(o))
            .transpose()?;
        Ok(AuthSettings {
            reload_max_drop,
            verified_cache,
            oauth2,
            users: self.abs(&auth.users),
            backend,
            max_concurrent_checks: auth
                .max_concurrent_checks
                .unwrap_or_else(PasswordChecker::default_concurrency),
            throttle: ThrottleConfig {
                base_delay: failure_delay,
                ..throttle
            },
        })
    }

    fn queue(&self, queue: &file::Queue) -> Result<QueueSettings, ConfigError> {
        let retry = RetryPolicy::default();
        let min_free = match queue.min_free.as_deref() {
            None => submitd_relay::DEFAULT_MIN_FREE,
            Some(text) => self.min_free(text)?,
        };
        let in_flow_delay = self.duration(
            "queue.in_flow_delay",
            &queue.in_flow_delay,
            RelayConfig::DEFAULT_IN_FLOW_DELAY,
        )?;
        if in_flow_delay > Duration::from_secs(10) {
            return Err(self.err(
                "queue.in_flow_delay",
                "must be at most \"10s\" (clients wait this long for their 250); \"1s\" is the default, \"0s\" turns it off",
            ));
        }
        Ok(QueueSettings {
            min_free,
            in_flow_delay,
            directory: self.abs(&queue.directory),
            retry: RetryPolicy {
                lifetime: self.duration("queue.lifetime", &queue.lifetime, retry.lifetime)?,
                ..retry
            },
        })
    }

    fn upstream(
        &self,
        key: &str,
        route: &str,
        u: &file::Upstream,
    ) -> Result<UpstreamSettings, ConfigError> {
        use file::UpstreamAuthKind as Kind;
        let kind = u.auth.unwrap_or(if u.oauth2.is_some() {
            Kind::Xoauth2
        } else if u.password_file.is_some() || u.username.is_some() {
            Kind::Password
        } else {
            Kind::None
        });
        let auth = match kind {
            Kind::None => {
                if u.username.is_some() || u.password_file.is_some() || u.oauth2.is_some() {
                    return Err(self.err(
                        &format!("{key}.auth"),
                        "is \"none\", but username, password_file or oauth2 is set; remove them or set auth = \"password\" or \"xoauth2\"",
                    ));
                }
                UpstreamAuthSettings::None
            }
            Kind::Password => match (&u.username, &u.password_file, &u.oauth2) {
                (Some(user), Some(file), None) => UpstreamAuthSettings::Password {
                    user: user.clone(),
                    file: self.abs(file),
                },
                (_, _, Some(_)) => return Err(self.err(
                    &format!("{key}.oauth2"),
                    "is set, but auth = \"password\"; set auth = \"xoauth2\" or remove the table",
                )),
                _ => return Err(self.err(key, "set both username and password_file, or neither")),
            },
            Kind::Xoauth2 => {
                let Some(user) = &u.username else {
                    return Err(self.err(
                        &format!("{key}.username"),
                        "auth = \"xoauth2\" needs the mailbox the token acts for, such as \"relay@example.org\"",
                    ));
                };
                if u.password_file.is_some() {
                    return Err(self.err(
                        &format!("{key}.password_file"),
                        "is set, but auth = \"xoauth2\" sends a token; remove it",
                    ));
                }
                let Some(table) = &u.oauth2 else {
                    return Err(self.err(
                        &format!("{key}.oauth2"),
                        "auth = \"xoauth2\" needs an oauth2 table (token_url, client_id, grant); see docs/oauth2.md",
                    ));
                };
                UpstreamAuthSettings::XOAuth2 {
                    user: user.clone(),
                    oauth2: Box::new(self.oauth2(&format!("{key}.oauth2"), route, table)?),
                }
            }
        };
        let mechanisms = match &u.mechanisms {
            None => Vec::new(),
            Some(names) => {
                let mkey = format!("{key}.mechanisms");
                if names.is_empty() {
                    return Err(
                        self.err(&mkey, "is empty; remove it, or name the mechanisms allowed")
                    );
                }
                let wanted = match &auth {
                    UpstreamAuthSettings::None => {
                        return Err(self.err(
                            &mkey,
                            "is set, but the upstream has no AUTH (auth = \"none\")",
                        ))
                    }
                    UpstreamAuthSettings::Password { .. } => SecretKind::Password,
                    UpstreamAuthSettings::XOAuth2 { .. } => SecretKind::BearerToken,
                };
                names
                    .iter()
                    .map(|name| match Mechanism::parse(name) {
                        Some(m) if m.kind() == wanted => Ok(m),
                        Some(_) => Err(self.err(
                            &mkey,
                            format!(
                                "{name:?} does not carry a {}",
                                match wanted {
                                    SecretKind::Password => "password (use PLAIN or LOGIN)",
                                    SecretKind::BearerToken => "token (use XOAUTH2 or OAUTHBEARER)",
                                }
                            ),
                        )),
                        None => Err(self.err(
                            &mkey,
                            format!("{name:?} is not one of PLAIN, LOGIN, XOAUTH2, OAUTHBEARER"),
                        )),
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(UpstreamSettings {
            host: u.host.clone(),
            port: u.port,
            transport: transport(u.tls),
            auth,
            mechanisms,
            ca_file: u.ca_file.as_deref().map(|p| self.abs(p)),
        })
    }

    /// `[auth.oauth2]`: which tokens clients may log in with.
    fn client_tokens(&self, o: &file::AuthOAuth2) -> Result<ClientTokenSettings, ConfigError> {
        let k = |name: &str| format!("auth.oauth2.{name}");
        let issuer = o.issuer.trim_end_matches('/');
        if !issuer.starts_with("https://")
            || issuer.len() <= "https://".len()
            || issuer
                .contains(|c: char| c == '"' || c == '\\' || c.is_whitespace() || c.is_control())
        {
            return Err(self.err(
                &k("issuer"),
                format!("{:?} is not an https:// issuer, such as \"https://id.example.org/realms/mail\"", o.issuer),
            ));
        }
        if o.audience.trim().is_empty() {
            return Err(self.err(
                &k("audience"),
                "is empty: the audience (aud) tokens for submitd carry",
            ));
        }
        let algorithms = match &o.algorithms {
            None => Algorithm::ALL.to_vec(),
            Some(names) if names.is_empty() => {
                return Err(self.err(&k("algorithms"), "is empty; remove it to allow every asymmetric algorithm"))
            }
            Some(names) => names
                .iter()
                .map(|name| {
                    Algorithm::parse(name).ok_or_else(|| {
                        self.err(
                            &k("algorithms"),
                            format!("{name:?} is not allowed: use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA (never none or an HMAC)"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let leeway = self.duration(&k("leeway"), &o.leeway, Duration::from_secs(60))?;
        if leeway > Duration::from_secs(300) {
            return Err(self.err(
                &k("leeway"),
                "is more than 5 minutes; fix the clock instead",
            ));
        }
        Ok(ClientTokenSettings {
            policy: IssuerPolicy {
                issuer: issuer.to_owned(),
                audience: o.audience.clone(),
                login_claim: o.login_claim.clone().unwrap_or_else(|| "email".into()),
                algorithms,
                leeway,
            },
            ca_file: o.ca_file.as_deref().map(|p| self.abs(p)),
            timeout: self.duration(&k("timeout"), &o.timeout, Duration::from_secs(10))?,
        })
    }

    /// An upstream's `oauth2` table, presets filled in.
    fn oauth2(
        &self,
        key: &str,
        route: &str,
        o: &file::OAuth2,
    ) -> Result<OAuth2Settings, ConfigError> {
        let k = |name: &str| format!("{key}.{name}");
        let grant = match o.grant.as_str() {
            "client_credentials" => Grant::ClientCredentials,
            "refresh_token" => match &o.refresh_token_file {
                Some(file) => Grant::RefreshToken {
                    file: self.abs(file),
                },
                None => {
                    return Err(self.err(
                        &k("refresh_token_file"),
                        "grant = \"refresh_token\" needs the file that holds it, such as \"/var/lib/submitd/oauth2/default.token\" (written by `submitd oauth2 authorize`)",
                    ))
                }
            },
            other => {
                return Err(self.err(
                    &k("grant"),
                    format!("{other:?} is not \"client_credentials\" or \"refresh_token\""),
                ))
            }
        };
        let (token_url, device_url, auth_url, scope) = self.oauth2_preset(key, o, &grant)?;
        let token_url = o.token_url.clone().or(token_url).ok_or_else(|| {
            self.err(
                &k("token_url"),
                "is not set (or set preset = \"microsoft365\" or \"google\")",
            )
        })?;
        let device_url = o.device_url.clone().or(device_url);
        let auth_url = o.auth_url.clone().or(auth_url);
        for (name, url) in [
            ("token_url", Some(&token_url)),
            ("device_url", device_url.as_ref()),
            ("auth_url", auth_url.as_ref()),
        ] {
            if let Some(url) = url {
                if !url.starts_with("https://") || url.len() <= "https://".len() {
                    return Err(self.err(&k(name), format!("{url:?} is not an https:// address")));
                }
            }
        }
        let scope = o.scope.clone().or(scope).unwrap_or_default();
        if scope.trim().is_empty() {
            return Err(self.err(
                &k("scope"),
                "is not set: the scope the provider grants SMTP with",
            ));
        }
        if o.client_id.trim().is_empty() {
            return Err(self.err(&k("client_id"), "is empty: the application (client) id"));
        }
        let client_auth = self.oauth2_client_auth(key, o)?;
        if grant == Grant::ClientCredentials && client_auth == ClientAuth::None {
            return Err(self.err(
                key,
                "grant = \"client_credentials\" needs client_secret_file, or client_certificate and client_key",
            ));
        }
        Ok(OAuth2Settings {
            endpoint: TokenEndpoint {
                token_url,
                device_url,
                auth_url,
                client_id: o.client_id.clone(),
                client_auth,
                scope,
                grant,
                route: route.to_owned(),
            },
            ca_file: o.ca_file.as_deref().map(|p| self.abs(p)),
            timeout: self.duration(&k("timeout"), &o.timeout, DEFAULT_OAUTH2_TIMEOUT)?,
        })
    }

    /// The endpoints and scope of a documented preset; explicit keys win
    /// over them in `oauth2`.
    #[allow(clippy::type_complexity)]
    fn oauth2_preset(
        &self,
        key: &str,
        o: &file::OAuth2,
        grant: &Grant,
    ) -> Result<
        (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ),
        ConfigError,
    > {
        let k = |name: &str| format!("{key}.{name}");
        Ok(match o.preset.as_deref() {
            None => (None, None, None, None),
            Some("microsoft365") => {
                let Some(tenant) = o.tenant.as_deref().filter(|t| !t.is_empty()) else {
                    return Err(self.err(
                        &k("tenant"),
                        "preset = \"microsoft365\" needs the tenant (its id or domain, such as \"contoso.onmicrosoft.com\")",
                    ));
                };
                if !tenant.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
                    return Err(self.err(&k("tenant"), format!("{tenant:?} is not a tenant id or domain")));
                }
                let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
                let scope = match grant {
                    Grant::ClientCredentials => "https://outlook.office365.com/.default",
                    Grant::RefreshToken { .. } => "https://outlook.office365.com/SMTP.Send offline_access",
                };
                (
                    Some(format!("{base}/token")),
                    Some(format!("{base}/devicecode")),
                    Some(format!("{base}/authorize")),
                    Some(scope.to_owned()),
                )
            }
            Some("google") => (
                Some("https://oauth2.googleapis.com/token".to_owned()),
                Some("https://oauth2.googleapis.com/device/code".to_owned()),
                Some("https://accounts.google.com/o/oauth2/v2/auth".to_owned()),
                Some("https://mail.google.com/".to_owned()),
            ),
            Some(other) => {
                return Err(self.err(
                    &k("preset"),
                    format!("{other:?} is not \"microsoft365\" or \"google\"; or leave it out and set token_url and scope"),
                ))
            }
        })
    }

    /// How the token endpoint knows this client: nothing, a secret or a
    /// signed assertion.
    fn oauth2_client_auth(&self, key: &str, o: &file::OAuth2) -> Result<ClientAuth, ConfigError> {
        Ok(
            match (&o.client_secret_file, &o.client_certificate, &o.client_key) {
                (None, None, None) => ClientAuth::None,
                (Some(file), None, None) => ClientAuth::Secret {
                    file: self.abs(file),
                },
                (None, Some(cert), Some(key)) => ClientAuth::Assertion {
                    certificate: self.abs(cert),
                    key: self.abs(key),
                },
                (None, Some(_), None) | (None, None, Some(_)) => {
                    return Err(self.err(key, "set both client_certificate and client_key"))
                }
                (Some(_), _, _) => {
                    return Err(self.err(
                        key,
                        "set client_secret_file or client_certificate with client_key, not both",
                    ))
                }
            },
        )
    }

    fn sender_route(
        &self,
        i: usize,
        entry: &file::SenderUpstream,
    ) -> Result<SenderRouteSettings, ConfigError> {
        let key = format!("relay.sender_upstream[{i}]");
        if entry.senders.is_empty() {
            return Err(self.err(
                &format!("{key}.senders"),
                "expected addresses and domains, such as [\"alice@example.org\", \"@example.net\"]",
            ));
        }
        for sender in &entry.senders {
            let ok = sender.rsplit_once('@').is_some_and(|(local, domain)| {
                !domain.is_empty()
                    && !domain.contains(char::is_whitespace)
                    && !local.contains(char::is_whitespace)
            });
            if !ok {
                return Err(self.err(
                    &format!("{key}.senders"),
                    format!("{sender:?} is neither an address (alice@example.org) nor a domain (@example.net)"),
                ));
            }
        }
        let name = match &entry.name {
            Some(name) if name.is_empty() || name.contains(char::is_whitespace) => {
                return Err(self.err(
                    &format!("{key}.name"),
                    format!("{name:?} is not a name without spaces"),
                ))
            }
            Some(name) => name.clone(),
            None => entry.senders[0].clone(),
        };
        Ok(SenderRouteSettings {
            senders: entry.senders.clone(),
            upstream: self.upstream(&key, &name, &entry.upstream)?,
            name,
        })
    }

    fn relay(&self, relay: &file::Relay) -> Result<RelaySettings, ConfigError> {
        let sender_routes = relay
            .sender_upstream
            .iter()
            .enumerate()
            .map(|(i, entry)| self.sender_route(i, entry))
            .collect::<Result<_, _>>()?;
        let route = match (&relay.maildir, relay.upstream.is_empty()) {
            (Some(dir), true) => RouteSettings::Maildir(self.abs(dir)),
            (None, false) => RouteSettings::Upstreams(
                relay
                    .upstream
                    .iter()
                    .enumerate()
                    .map(|(i, u)| self.upstream(&format!("relay.upstream[{i}]"), "default", u))
                    .collect::<Result<_, _>>()?,
            ),
            _ => {
                return Err(self.err(
                    "relay",
                    "set either maildir = \"PATH\" or one or more [[relay.upstream]], not both",
                ))
            }
        };
        let connections = relay
            .connections
            .unwrap_or(RelayConfig::DEFAULT_CONNECTIONS);
        if !(1..=100).contains(&connections) {
            return Err(self.err(
                "relay.connections",
                format!("{connections} is not between 1 and 100 (deliveries at once)"),
            ));
        }
        Ok(RelaySettings {
            route,
            sender_routes,
            connections,
            idle_connection: self.duration(
                "relay.idle_connection",
                &relay.idle_connection,
                RelayConfig::DEFAULT_IDLE_CONNECTION,
            )?,
        })
    }

    fn limits(&self, limits: &file::Limits) -> Result<LimitSettings, ConfigError> {
        let mut session = submitd_smtp::Limits::default();
        if let Some(size) = &limits.message_size {
            session.message_size = parse_size(size).ok_or_else(|| {
                self.err(
                    "limits.message_size",
                    format!("{size:?} is not a size, such as \"25M\""),
                )
            })?;
        }
        if let Some(recipients) = limits.recipients {
            if recipients < 100 {
                return Err(self.err("limits.recipients", "RFC 5321 asks for at least 100"));
            }
            session.recipients = recipients;
        }
        session.idle_timeout = self.duration(
            "limits.idle_timeout",
            &limits.idle_timeout,
            session.idle_timeout,
        )?;
        session.session_duration = self.duration(
            "limits.session_duration",
            &limits.session_duration,
            session.session_duration,
        )?;
        session.command_deadline = self.duration(
            "limits.command_deadline",
            &limits.command_deadline,
            session.command_deadline,
        )?;
        if let Some(rate) = &limits.min_data_rate {
            session.min_data_rate = parse_size(rate).filter(|r| *r > 0).ok_or_else(|| {
                self.err(
                    "limits.min_data_rate",
                    format!("{rate:?} is not a rate in octets per second, such as \"1K\""),
                )
            })?;
        }
        Ok(LimitSettings {
            session,
            handshake_timeout: self.duration(
                "limits.handshake_timeout",
                &limits.handshake_timeout,
                submitd_listener::DEFAULT_HANDSHAKE_TIMEOUT,
            )?,
            shutdown_grace: self.duration(
                "limits.shutdown_grace",
                &limits.shutdown_grace,
                submitd_listener::DEFAULT_SHUTDOWN_GRACE,
            )?,
            memory_budget: match &limits.memory_budget {
                None => None,
                Some(size) => Some(parse_size(size).filter(|n| *n > 0).ok_or_else(|| {
                    self.err(
                        "limits.memory_budget",
                        format!("{size:?} is not a size, such as \"512M\""),
                    )
                })?),
            },
        })
    }

    fn local(
        &self,
        local: Option<&file::Local>,
        hostname: &str,
    ) -> Result<Option<LocalSettings>, ConfigError> {
        let Some(l) = local else {
            return Ok(None);
        };
        let domain = l.domain.clone().unwrap_or_else(|| hostname.to_owned());
        if domain.is_empty() || domain.contains(['@', ' ']) {
            return Err(self.err(
                "local.domain",
                format!("{domain:?} is not a domain, such as \"example.org\""),
            ));
        }
        Ok(Some(LocalSettings {
            socket: self.abs(&l.socket),
            domain,
        }))
    }
}

fn transport(mode: TlsMode) -> Transport {
    match mode {
        TlsMode::Implicit => Transport::ImplicitTls,
        TlsMode::Starttls => Transport::StartTls,
    }
}
