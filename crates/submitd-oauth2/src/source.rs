//! Access tokens for one upstream, shared by all its delivery workers:
//! fetched on demand, kept in memory, renewed a margin before they expire,
//! one request at a time. A failed request is not repeated for a window
//! (every attempt in it gets the same error), so a provider that is down
//! costs one request per window, not one per queued message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::http::Http;
use crate::token::{TokenEndpoint, TokenError};

/// After a failed token request, how long attempts get its error without
/// asking again (the relay's window for a dead upstream).
pub const FAILURE_WINDOW: Duration = Duration::from_secs(30);

/// The largest renewal margin: a token is renewed this long (or a quarter
/// of its lifetime, if less) before it expires.
pub(crate) const MAX_MARGIN: Duration = Duration::from_secs(300);

struct Cached {
    secret: Arc<Zeroizing<String>>,
    /// When it must no longer be used (expiry minus the margin).
    renew_at: Instant,
}

#[derive(Default)]
struct State {
    token: Option<Cached>,
    failed: Option<(Instant, Arc<TokenError>)>,
}

/// The token source of one upstream.
pub struct TokenSource {
    endpoint: TokenEndpoint,
    http: Http,
    state: tokio::sync::Mutex<State>,
    requests: AtomicU64,
    failure_window: Duration,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("route", &self.endpoint.route)
            .field("token_url", &self.endpoint.token_url)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A source asking `endpoint` through `http`.
    pub fn new(endpoint: TokenEndpoint, http: Http) -> Self {
        Self {
            endpoint,
            http,
            state: tokio::sync::Mutex::new(State::default()),
            requests: AtomicU64::new(0),
            failure_window: FAILURE_WINDOW,
        }
    }

    /// The same with another failure window (tests).
    pub fn with_failure_window(mut self, window: Duration) -> Self {
        self.failure_window = window;
        self
    }

    /// The endpoint asked.
    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    /// How many token requests were made.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A token good for a while yet: the cached one, or a new one.
    pub async fn token(&self) -> Result<Arc<Zeroizing<String>>, Arc<TokenError>> {
        // Held across the request: the other workers wait for its token.
        let mut state = self.state.lock().await;
        let now = Instant::now();
        if let Some(cached) = &state.token {
            if now < cached.renew_at {
                return Ok(Arc::clone(&cached.secret));
            }
        }
        if let Some((until, error)) = &state.failed {
            if now < *until {
                return Err(Arc::clone(error));
            }
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let endpoint = self.endpoint.clone();
        let http = self.http.clone();
        let fetched = tokio::task::spawn_blocking(move || endpoint.fetch(&http)).await;
        let fetched = match fetched {
            Ok(result) => result,
            Err(join) => Err(TokenError::Unexpected {
                route: self.endpoint.route.clone(),
                status: 0,
                detail: format!("the request did not finish: {join}"),
            }),
        };
        let now = Instant::now();
        match fetched {
            Ok(token) => {
                let margin = (token.lifetime / 4).min(MAX_MARGIN);
                let secret = Arc::new(token.secret.clone());
                tracing::info!(target: "submitd::oauth2", route = %self.endpoint.route, lifetime = token.lifetime.as_secs(), "access token fetched");
                submitd_metrics::metrics().token_request(&self.endpoint.route, true);
                state.token = Some(Cached {
                    secret: Arc::clone(&secret),
                    renew_at: now + token.lifetime.saturating_sub(margin),
                });
                state.failed = None;
                Ok(secret)
            }
            Err(error) => {
                let error = Arc::new(error);
                submitd_metrics::metrics().token_request(&self.endpoint.route, false);
                if error.needs_attention() {
                    tracing::error!(target: "submitd::oauth2", route = %self.endpoint.route, %error, "no access token; messages stay queued");
                } else {
                    tracing::warn!(target: "submitd::oauth2", route = %self.endpoint.route, %error, "no access token; retried in {}s", self.failure_window.as_secs());
                }
                state.token = None;
                state.failed = Some((now + self.failure_window, Arc::clone(&error)));
                Err(error)
            }
        }
    }

    /// The upstream refused `secret`: forget it, so the next attempt asks
    /// for a new one (a token revoked or expired early). A newer token
    /// fetched meanwhile is kept.
    pub async fn refused(&self, secret: &Arc<Zeroizing<String>>) {
        let mut state = self.state.lock().await;
        if state
            .token
            .as_ref()
            .is_some_and(|cached| Arc::ptr_eq(&cached.secret, secret))
        {
            state.token = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{ClientAuth, Grant};

    fn endpoint(url: String) -> TokenEndpoint {
        TokenEndpoint {
            token_url: url,
            device_url: None,
            auth_url: None,
            client_id: "c".into(),
            client_auth: ClientAuth::None,
            scope: "s".into(),
            grant: Grant::ClientCredentials,
            route: "default".into(),
        }
    }

    /// A provider that accepts the connection and never answers: the
    /// request ends at the timeout, and the failure holds for the window
    /// (one request, however many attempts ask).
    #[tokio::test]
    async fn a_silent_provider_costs_one_timeout_per_window() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(3));
            drop(stream);
        });
        let http = Http::new(None, Duration::from_millis(500)).unwrap();
        let source = TokenSource::new(endpoint(format!("https://127.0.0.1:{port}/token")), http)
            .with_failure_window(Duration::from_secs(60));
        let started = Instant::now();
        let first = source.token().await.unwrap_err();
        assert!(first.to_string().contains("no answer within"), "{first}");
        assert!(!first.needs_attention());
        assert!(started.elapsed() < Duration::from_secs(3));
        for _ in 0..5 {
            let again = source.token().await.unwrap_err();
            assert!(Arc::ptr_eq(&first, &again));
        }
        assert_eq!(source.requests(), 1);
        held.join().unwrap();
    }

    #[tokio::test]
    async fn http_addresses_are_never_asked() {
        let http = Http::new(None, Duration::from_secs(1)).unwrap();
        let source = TokenSource::new(endpoint("http://127.0.0.1:9/token".into()), http);
        let error = source.token().await.unwrap_err();
        assert!(error.to_string().contains("only https://"), "{error}");
    }
}
