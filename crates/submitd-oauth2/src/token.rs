//! The token endpoint (RFC 6749 §3.2): which grant, how the client proves
//! who it is, and what the provider answered. One blocking request per
//! call; [`crate::TokenSource`] decides when to call.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::files::{self, FileError, RefreshLock};
use crate::http::{Http, HttpError, TOKEN_RESPONSE_LIMIT};

/// How the client proves who it is to the token endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A public client (the device grant of a native app): the client id only.
    None,
    /// `client_secret` in the form (client_secret_post), read from a 0600 file.
    Secret {
        /// The file whose first line is the secret.
        file: PathBuf,
    },
    /// A signed client assertion (RFC 7523, private_key_jwt).
    Assertion {
        /// The certificate registered with the provider (PEM).
        certificate: PathBuf,
        /// Its private key (PEM, 0600).
        key: PathBuf,
    },
}

/// How access tokens are got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// For a service acting as itself (Microsoft 365's application
    /// permission `SMTP.SendAsApp`).
    ClientCredentials,
    /// For a mailbox a person authorized once (`submitd oauth2 authorize`);
    /// the file holds the refresh token and is rewritten when the provider
    /// rotates it.
    RefreshToken {
        /// The refresh-token file (0600).
        file: PathBuf,
    },
}

/// One OAuth2 client at one provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEndpoint {
    /// The token endpoint (`https://…`).
    pub token_url: String,
    /// The device authorization endpoint, for `submitd oauth2 authorize`.
    pub device_url: Option<String>,
    /// The authorization endpoint, for `submitd oauth2 authorize --browser`.
    pub auth_url: Option<String>,
    /// The client (application) id.
    pub client_id: String,
    /// How the client proves who it is.
    pub client_auth: ClientAuth,
    /// The scope asked for (space-separated).
    pub scope: String,
    /// The grant.
    pub grant: Grant,
    /// What `submitd oauth2 authorize` is given to fix this route.
    pub route: String,
}

/// An access token and how long it is good for.
pub struct AccessToken {
    /// The token.
    pub secret: Zeroizing<String>,
    /// Its lifetime as the provider gave it (`expires_in`).
    pub lifetime: Duration,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// When the provider gives no `expires_in`: assume a short life, so a
/// token is never used long after it died.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);

/// Why no token was got.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A secret file is missing, exposed or unusable.
    #[error("route {route}: {source}")]
    File {
        /// The route.
        route: String,
        /// What is wrong with the file.
        source: FileError,
    },
    /// The provider could not be reached or did not answer in time.
    #[error("route {route}: token endpoint: {source}")]
    Unreachable {
        /// The route.
        route: String,
        /// What went wrong.
        source: HttpError,
    },
    /// The refresh token was refused (revoked, expired, or spent twice):
    /// only a person can fix it.
    #[error("route {route}: the refresh token was refused ({error}{}); run `submitd oauth2 authorize {route}` to authorize again", describe(.description))]
    RefreshRevoked {
        /// The route.
        route: String,
        /// The OAuth2 error code (`invalid_grant`).
        error: String,
        /// The provider's words.
        description: String,
    },
    /// The provider refused the request with an OAuth2 error.
    #[error("route {route}: the token endpoint refused the request ({error}{})", describe(.description))]
    Refused {
        /// The route.
        route: String,
        /// The OAuth2 error code.
        error: String,
        /// The provider's words.
        description: String,
    },
    /// An answer that is not a token or an OAuth2 error.
    #[error("route {route}: the token endpoint answered {status}: {detail}")]
    Unexpected {
        /// The route.
        route: String,
        /// The HTTP status.
        status: u16,
        /// What it was.
        detail: String,
    },
}

fn describe(description: &str) -> String {
    if description.is_empty() {
        String::new()
    } else {
        format!(": {description}")
    }
}

impl TokenError {
    /// Whether a person must act (a revoked refresh token, a refused client,
    /// a missing file) rather than wait for the provider.
    pub fn needs_attention(&self) -> bool {
        match self {
            Self::File { .. } | Self::RefreshRevoked { .. } => true,
            Self::Refused { error, .. } => !matches!(
                error.as_str(),
                "temporarily_unavailable" | "server_error" | "slow_down"
            ),
            Self::Unreachable { .. } => false,
            Self::Unexpected { status, .. } => !(*status >= 500 || *status == 429),
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Drop for TokenResponse {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        if let Some(t) = self.access_token.as_mut() {
            t.zeroize();
        }
        if let Some(t) = self.refresh_token.as_mut() {
            t.zeroize();
        }
    }
}

/// Printable and short: the provider's text goes to the log.
pub(crate) fn printable(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
}

/// What came back from a token request: a token, or the OAuth2 error
/// (kept apart because the device grant polls on some of them).
pub(crate) enum Answer {
    Token {
        token: AccessToken,
        refresh: Option<Zeroizing<String>>,
    },
    Error {
        error: String,
        description: String,
    },
}

impl TokenEndpoint {
    /// The form fields that prove who the client is.
    pub(crate) fn client_fields(
        &self,
    ) -> Result<Vec<(&'static str, Zeroizing<String>)>, TokenError> {
        let file = |source| TokenError::File {
            route: self.route.clone(),
            source,
        };
        let mut fields = vec![("client_id", Zeroizing::new(self.client_id.clone()))];
        match &self.client_auth {
            ClientAuth::None => {}
            ClientAuth::Secret { file: path } => {
                let secret =
                    files::read_first_line(path, "write the client secret on it").map_err(file)?;
                fields.push(("client_secret", secret));
            }
            ClientAuth::Assertion { certificate, key } => {
                let jwt = crate::assertion::client_assertion(
                    &self.client_id,
                    &self.token_url,
                    certificate,
                    key,
                )
                .map_err(file)?;
                fields.push((
                    "client_assertion_type",
                    Zeroizing::new("urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()),
                ));
                fields.push(("client_assertion", Zeroizing::new(jwt)));
            }
        }
        Ok(fields)
    }

    /// POSTs `fields` and the client's own to the token endpoint.
    pub(crate) fn post(
        &self,
        http: &Http,
        mut fields: Vec<(&'static str, Zeroizing<String>)>,
    ) -> Result<Answer, TokenError> {
        fields.extend(self.client_fields()?);
        let form: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = http
            .post_form(&self.token_url, &form, TOKEN_RESPONSE_LIMIT)
            .map_err(|source| TokenError::Unreachable {
                route: self.route.clone(),
                source,
            })?;
        let body = Zeroizing::new(response.body);
        let unexpected = |detail: String| TokenError::Unexpected {
            route: self.route.clone(),
            status: response.status,
            detail,
        };
        let parsed: TokenResponse = serde_json::from_str(&body).map_err(|_| {
            unexpected(if (200..300).contains(&response.status) {
                "not a JSON token response".into()
            } else {
                "not a JSON OAuth2 error".into()
            })
        })?;
        if let Some(error) = &parsed.error {
            return Ok(Answer::Error {
                error: printable(error, 64),
                description: printable(parsed.error_description.as_deref().unwrap_or(""), 300),
            });
        }
        if !(200..300).contains(&response.status) {
            return Err(unexpected("no OAuth2 error code in the answer".into()));
        }
        let Some(access) = parsed.access_token.as_deref().filter(|t| !t.is_empty()) else {
            return Err(unexpected("no access_token in the answer".into()));
        };
        if !parsed
            .token_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
        {
            return Err(unexpected("token_type is not Bearer".into()));
        }
        // Some endpoints send expires_in as a string ("3599").
        let lifetime = match &parsed.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        Ok(Answer::Token {
            token: AccessToken {
                secret: Zeroizing::new(access.to_owned()),
                lifetime,
            },
            refresh: parsed
                .refresh_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(|t| Zeroizing::new(t.to_owned())),
        })
    }

    /// Gets a new access token with the configured grant (blocking). A
    /// rotated refresh token is written back before the access token is
    /// returned; the refresh-token file is locked meanwhile.
    pub fn fetch(&self, http: &Http) -> Result<AccessToken, TokenError> {
        let file_error = |source| TokenError::File {
            route: self.route.clone(),
            source,
        };
        let scope = || ("scope", Zeroizing::new(self.scope.clone()));
        match &self.grant {
            Grant::ClientCredentials => {
                let fields = vec![
                    ("grant_type", Zeroizing::new("client_credentials".into())),
                    scope(),
                ];
                match self.post(http, fields)? {
                    Answer::Token { token, .. } => Ok(token),
                    Answer::Error { error, description } => Err(self.refused(error, description)),
                }
            }
            Grant::RefreshToken { file } => {
                let _lock = RefreshLock::take(file).map_err(file_error)?;
                let refresh = files::read_first_line(
                    file,
                    "run `submitd oauth2 authorize ROUTE` to write it",
                )
                .map_err(file_error)?;
                let fields = vec![
                    ("grant_type", Zeroizing::new("refresh_token".into())),
                    ("refresh_token", refresh.clone()),
                    scope(),
                ];
                match self.post(http, fields)? {
                    Answer::Token {
                        token,
                        refresh: new,
                    } => {
                        if let Some(new) = new.filter(|new| new.as_str() != refresh.as_str()) {
                            match files::write_private_atomically(file, &new) {
                                Ok(()) => {
                                    tracing::info!(target: "submitd::oauth2", route = %self.route, file = %file.display(), "refresh token rotated by the provider; saved")
                                }
                                // The access token is good; the next refresh
                                // will fail with the old refresh token, loudly.
                                Err(error) => {
                                    tracing::error!(target: "submitd::oauth2", route = %self.route, %error, "the provider rotated the refresh token and the new one could not be saved; the next refresh will fail: make the file's folder writable by the service, then run `submitd oauth2 authorize {}`", self.route)
                                }
                            }
                        }
                        Ok(token)
                    }
                    Answer::Error { error, description } if error == "invalid_grant" => {
                        Err(TokenError::RefreshRevoked {
                            route: self.route.clone(),
                            error,
                            description,
                        })
                    }
                    Answer::Error { error, description } => Err(self.refused(error, description)),
                }
            }
        }
    }

    /// The refresh-token file a person's authorization is written to, or
    /// why there is none (the grant is not `refresh_token`).
    pub(crate) fn refresh_token_file(&self) -> Result<&std::path::Path, crate::DeviceError> {
        match &self.grant {
            Grant::RefreshToken { file } => Ok(file),
            _ => Err(crate::DeviceError::NotConfigured {
                route: self.route.clone(),
                problem: "grant is not \"refresh_token\"",
            }),
        }
    }

    /// The endpoint `url` of a grant a person authorizes, checked: set,
    /// and the grant is `refresh_token` (`missing` says which key to set).
    pub(crate) fn person_endpoint<'a>(
        &self,
        url: Option<&'a str>,
        missing: &'static str,
    ) -> Result<&'a str, crate::DeviceError> {
        let route = self.route.clone();
        let Some(url) = url else {
            return Err(crate::DeviceError::NotConfigured {
                route,
                problem: missing,
            });
        };
        if !matches!(self.grant, Grant::RefreshToken { .. }) {
            return Err(crate::DeviceError::NotConfigured {
                route,
                problem:
                    "grant is not \"refresh_token\": only that grant is authorized by a person",
            });
        }
        Ok(url)
    }

    pub(crate) fn refused(&self, error: String, description: String) -> TokenError {
        TokenError::Refused {
            route: self.route.clone(),
            error,
            description,
        }
    }
}
