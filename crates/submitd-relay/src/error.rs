//! Why an attempt failed before the upstream answered for each recipient:
//! one error type from the transport (connect, TLS, SMTP session, I/O, the
//! Maildir) through the routes to the retry policy, which decides what
//! the failure does to the message (`retry.rs`).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use submitd_smtp::SessionError;

/// Why TLS to an upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsFailure {
    /// The configured host is not a name TLS can verify.
    #[error("{host} is not a valid TLS server name: {reason}")]
    InvalidName {
        /// The configured host.
        host: String,
        /// Why rustls refused it.
        reason: String,
    },
    /// The handshake failed: most often a certificate that does not verify
    /// (unknown CA, another name, expired).
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
    /// The handshake did not finish within the connect timeout.
    #[error("TLS handshake timed out")]
    Timeout,
}

/// An attempt that failed before per-recipient replies.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The TCP connection could not be made.
    #[error("{upstream}: cannot connect: {source}")]
    Connect {
        /// `host:port`.
        upstream: String,
        /// What the OS said.
        source: io::Error,
    },
    /// The TCP connection was not made within the connect timeout.
    #[error("{upstream}: connection timed out")]
    ConnectTimeout {
        /// `host:port`.
        upstream: String,
    },
    /// TLS could not be set up; nothing was sent.
    #[error("{upstream}: {failure}")]
    Tls {
        /// `host:port`.
        upstream: String,
        /// What went wrong.
        failure: TlsFailure,
    },
    /// The SMTP session failed: a refused greeting, EHLO or AUTH, no
    /// STARTTLS, a late or garbled reply.
    #[error("{upstream}: {error}")]
    Session {
        /// `host:port`.
        upstream: String,
        /// The client machine's account of it.
        error: SessionError,
    },
    /// Reading from or writing to the upstream failed.
    #[error("{upstream}: {doing} failed: {source}")]
    Io {
        /// `host:port`.
        upstream: String,
        /// `read` or `write`.
        doing: &'static str,
        /// What the OS said.
        source: io::Error,
    },
    /// The upstream closed the connection in the middle of the session.
    #[error("{upstream}: upstream closed the connection")]
    Closed {
        /// `host:port`.
        upstream: String,
    },
    /// The Maildir could not take the message.
    #[error("maildir: {0}")]
    Maildir(#[source] io::Error),
    /// The queued message could not be read to its end, or did not match
    /// its checksum, while it was being sent; it was abandoned before its
    /// end of data. Not the upstream's doing: the attempt is not recorded.
    #[error("queued message unreadable: {0}")]
    Content(#[source] crate::spool::SpoolError),
    /// The server is stopping and the transfer had not reached its end of
    /// data: the connection was dropped so the upstream discards it, and
    /// the attempt is not recorded.
    #[error("{upstream}: transfer abandoned before its end of data: the server is stopping")]
    Abandoned {
        /// `host:port`.
        upstream: String,
    },
    /// No OAuth2 access token for the upstream: the provider is down or
    /// refused (a revoked refresh token needs `submitd oauth2 authorize`).
    /// Nothing was sent; the message stays queued.
    #[error("{upstream}: {error}")]
    Token {
        /// `host:port`.
        upstream: String,
        /// Why, shared by the attempts deferred in the same window.
        error: Arc<submitd_oauth2::TokenError>,
    },
    /// No upstream of the route could be opened; one error each, in order.
    #[error("{}", join(.0))]
    AllFailed(Vec<DeliveryError>),
    /// The route has no upstream.
    #[error("no upstream configured")]
    NoUpstream,
    /// Every upstream of the route failed moments ago: this attempt was
    /// deferred without connecting, with the reason of that failure.
    #[error("{cause} (not retried for {}s)", window.as_secs())]
    RouteDown {
        /// The failure that took the route down.
        cause: Arc<DeliveryError>,
        /// How long the route is taken as down after it.
        window: Duration,
    },
}

fn join(errors: &[DeliveryError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

impl DeliveryError {
    /// Whether a person must act before a retry can succeed: the upstream
    /// refused the credentials, its certificate does not verify, it does
    /// not offer STARTTLS or AUTH. Such failures are still retried (see
    /// `retry.rs`) but logged as errors that name the upstream.
    pub fn needs_attention(&self) -> bool {
        match self {
            Self::Tls { failure, .. } => !matches!(failure, TlsFailure::Timeout),
            Self::Session { error, .. } => !error.is_transient(),
            Self::AllFailed(errors) => errors.iter().any(Self::needs_attention),
            Self::RouteDown { cause, .. } => cause.needs_attention(),
            Self::NoUpstream => true,
            Self::Token { error, .. } => error.needs_attention(),
            Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::Io { .. }
            | Self::Closed { .. }
            | Self::Abandoned { .. }
            | Self::Maildir(_) => false,
            Self::Content(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use submitd_smtp::Reply;

    use super::*;

    #[test]
    fn texts_name_the_upstream_and_what_needs_a_person() {
        let refused = DeliveryError::Session {
            upstream: "smtp.example:465".into(),
            error: SessionError::Auth(Reply::new(535, (5, 7, 8), "no")),
        };
        let timeout = DeliveryError::ConnectTimeout {
            upstream: "backup.example:465".into(),
        };
        assert!(refused.needs_attention());
        assert!(!timeout.needs_attention());
        let all = DeliveryError::AllFailed(vec![refused, timeout]);
        let text = all.to_string();
        assert!(
            text.starts_with("smtp.example:465: upstream refused the credentials: 535 5.7.8 no")
        );
        assert!(
            text.ends_with("; backup.example:465: connection timed out"),
            "{text}"
        );
        assert!(all.needs_attention());
        let down = DeliveryError::RouteDown {
            cause: Arc::new(all),
            window: Duration::from_secs(30),
        };
        assert!(down.to_string().ends_with("(not retried for 30s)"));
        assert!(down.needs_attention());
    }
}
