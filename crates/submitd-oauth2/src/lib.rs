//! OAuth2 with an identity provider, for the places submitd meets it:
//! getting access tokens to log in to the upstream with XOAUTH2 when the
//! smarthost (Microsoft 365, Google) no longer takes passwords, the device
//! grant that lets a person authorize a mailbox once (`submitd oauth2
//! authorize`), and checking the tokens clients log in with.
//!
//! - [`TokenEndpoint`] (`token.rs`): the grant (`client_credentials`,
//!   `refresh_token`), the client's proof (secret, signed assertion,
//!   none) and one request.
//! - [`TokenSource`] (`source.rs`): one per upstream, shared by its
//!   workers: cached tokens, one request at a time, a failure window.
//! - `device.rs`: RFC 8628; `code.rs`: the authorization code grant with
//!   PKCE and a loopback redirect (for providers whose device grant does
//!   not cover mail). `files.rs`: the 0600 files, the refresh token
//!   rewritten atomically under a lock. `assertion.rs`: RFC 7523.
//! - [`TokenVerifier`] (`jwt.rs`): clients' access tokens checked locally
//!   against the issuer's keys (OpenID discovery), for OAUTHBEARER and
//!   XOAUTH2 logins.
//! - `http.rs`: the HTTP client.
//!
//! Dependencies: `ureq` is the HTTP client (blocking, small, over rustls;
//! see `docs/oauth2.md` for why not reqwest); `rustls`/`aws-lc-rs` are the
//! TLS and the signing the rest of submitd already uses; `serde_json` reads
//! the providers' answers; `rustix` takes the file lock; `zeroize` wipes
//! tokens and secrets; `submitd-metrics` counts token requests.

mod assertion;
pub mod code;
pub mod device;
mod files;
mod http;
pub mod jwt;
mod source;
mod token;

pub use code::BrowserAuthorization;
pub use device::{DeviceAuthorization, DeviceError};
pub use files::FileError;
pub use http::{Http, HttpError, HttpSetupError};
pub use jwt::{
    Algorithm, IssuerPolicy, KeyPolicy, KeysUnavailable, TokenRejection, TokenVerifier,
    VerifiedToken,
};
pub use source::{TokenSource, FAILURE_WINDOW};
pub use token::{AccessToken, ClientAuth, Grant, TokenEndpoint, TokenError};
