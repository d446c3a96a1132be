//! The device authorization grant (RFC 8628), for `submitd oauth2
//! authorize`: the provider gives a code, a person enters it at the
//! provider's page and signs in as the mailbox, and meanwhile the command
//! polls the token endpoint, politely (`interval`, and 5 s more on every
//! `slow_down`), until it gets the refresh token it writes to the file.

use std::time::{Duration, Instant};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::files::{self, RefreshLock};
use crate::http::{Http, TOKEN_RESPONSE_LIMIT};
use crate::token::{printable, Answer, TokenEndpoint, TokenError};

/// What the person is told.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    /// The code the command polls with (not shown).
    device_code: Zeroizing<String>,
    /// The code the person enters.
    pub user_code: String,
    /// Where the person enters it.
    pub verification_uri: String,
    /// The same address with the code filled in, when the provider gives one.
    pub verification_uri_complete: Option<String>,
    /// How long the code is good for.
    pub expires_in: Duration,
    /// How long to wait between polls.
    pub interval: Duration,
}

#[derive(Deserialize)]
struct DeviceResponse {
    device_code: Option<String>,
    user_code: Option<String>,
    verification_uri: Option<String>,
    // Google's name for it.
    verification_url: Option<String>,
    verification_uri_complete: Option<String>,
    expires_in: Option<u64>,
    interval: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Why the device grant did not end with a refresh token.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The route has no device authorization endpoint, or its grant is not
    /// `refresh_token`.
    #[error("route {route}: {problem}")]
    NotConfigured {
        /// The route.
        route: String,
        /// What to set.
        problem: &'static str,
    },
    /// A request failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The person declined at the provider.
    #[error("route {route}: authorization was declined at the provider")]
    Denied {
        /// The route.
        route: String,
    },
    /// Something on this machine failed (the loopback listener, the
    /// random source), or the answer pasted does not fit.
    #[error("route {route}: {reason}")]
    Local {
        /// The route.
        route: String,
        /// What.
        reason: String,
    },
    /// Nobody entered the code in time.
    #[error("route {route}: the code expired before it was entered; run the command again")]
    Expired {
        /// The route.
        route: String,
    },
    /// Tokens came, but no refresh token (the scope lacks `offline_access`,
    /// or the provider gives none to this client).
    #[error("route {route}: the provider sent no refresh token; ask for offline access in the scope (Microsoft: offline_access)")]
    NoRefreshToken {
        /// The route.
        route: String,
    },
}

/// Asks `endpoint`'s device authorization endpoint for a code.
pub fn start(endpoint: &TokenEndpoint, http: &Http) -> Result<DeviceAuthorization, DeviceError> {
    let route = endpoint.route.clone();
    let url = endpoint.person_endpoint(
        endpoint.device_url.as_deref(),
        "no device_url (the device authorization endpoint) is set",
    )?;
    let mut fields = endpoint.client_fields()?;
    fields.push(("scope", Zeroizing::new(endpoint.scope.clone())));
    let form: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let response = http
        .post_form(url, &form, TOKEN_RESPONSE_LIMIT)
        .map_err(|source| TokenError::Unreachable {
            route: route.clone(),
            source,
        })?;
    let unexpected = |detail: &str| TokenError::Unexpected {
        route: route.clone(),
        status: response.status,
        detail: detail.into(),
    };
    let parsed: DeviceResponse = serde_json::from_str(&response.body)
        .map_err(|_| unexpected("not a JSON device authorization response"))?;
    if let Some(error) = parsed.error {
        return Err(endpoint
            .refused(
                printable(&error, 64),
                printable(parsed.error_description.as_deref().unwrap_or(""), 300),
            )
            .into());
    }
    let (Some(device_code), Some(user_code), Some(uri)) = (
        parsed.device_code,
        parsed.user_code,
        parsed.verification_uri.or(parsed.verification_url),
    ) else {
        return Err(unexpected("device_code, user_code or verification_uri is missing").into());
    };
    Ok(DeviceAuthorization {
        device_code: Zeroizing::new(device_code),
        user_code: printable(&user_code, 64),
        verification_uri: printable(&uri, 500),
        verification_uri_complete: parsed.verification_uri_complete.map(|u| printable(&u, 600)),
        expires_in: Duration::from_secs(parsed.expires_in.unwrap_or(600).min(3600)),
        // RFC 8628 §3.2: 5 s when the provider says nothing.
        interval: Duration::from_secs(parsed.interval.unwrap_or(5).clamp(1, 60)),
    })
}

/// Polls until the person has entered the code, then writes the refresh
/// token to the route's file. `sleep` waits between polls; `on_wait` is
/// told each new interval (after `slow_down`).
pub fn finish(
    endpoint: &TokenEndpoint,
    http: &Http,
    authorization: &DeviceAuthorization,
    sleep: &mut dyn FnMut(Duration),
) -> Result<(), DeviceError> {
    let route = endpoint.route.clone();
    let file = endpoint.refresh_token_file()?;
    let deadline = Instant::now() + authorization.expires_in;
    let mut interval = authorization.interval;
    loop {
        if Instant::now() >= deadline {
            return Err(DeviceError::Expired { route });
        }
        sleep(interval);
        let fields = vec![
            (
                "grant_type",
                Zeroizing::new("urn:ietf:params:oauth:grant-type:device_code".to_owned()),
            ),
            ("device_code", authorization.device_code.clone()),
        ];
        match endpoint.post(http, fields)? {
            Answer::Token {
                refresh: Some(refresh),
                ..
            } => {
                let _lock = RefreshLock::take(file).map_err(|source| TokenError::File {
                    route: route.clone(),
                    source,
                })?;
                files::write_private_atomically(file, &refresh).map_err(|source| {
                    TokenError::File {
                        route: route.clone(),
                        source,
                    }
                })?;
                return Ok(());
            }
            Answer::Token { refresh: None, .. } => {
                return Err(DeviceError::NoRefreshToken { route })
            }
            Answer::Error { error, description } => match error.as_str() {
                "authorization_pending" => {}
                // RFC 8628 §3.5: five seconds more, for this and every
                // later poll.
                "slow_down" => interval += Duration::from_secs(5),
                "access_denied" => return Err(DeviceError::Denied { route }),
                "expired_token" => return Err(DeviceError::Expired { route }),
                _ => return Err(endpoint.refused(error, description).into()),
            },
        }
    }
}
