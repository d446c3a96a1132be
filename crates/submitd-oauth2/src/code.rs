//! The authorization code grant with PKCE and a loopback redirect (RFC
//! 6749 §4.1, RFC 7636, RFC 8252 §7.3), for `submitd oauth2 authorize
//! --browser`: for providers whose device grant does not cover mail
//! (Google grants devices only a short list of scopes, Gmail's not among
//! them).
//!
//! The command listens on `127.0.0.1` at a free port and prints the
//! provider's sign-in address, whose redirect comes back to that port.
//! When the browser runs on the server, the redirect reaches the listener.
//! On a headless server the browser elsewhere fails to load
//! `http://127.0.0.1:…/?code=…`; the person copies that address from the
//! address bar and pastes it into the command. Either way the `state` must
//! match and the code is exchanged once, with the PKCE verifier.

use std::io::{BufRead, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::device::DeviceError;
use crate::files::{self, RefreshLock};
use crate::http::Http;
use crate::token::{Answer, TokenEndpoint, TokenError};

/// How long the person has to sign in.
const WAIT: Duration = Duration::from_secs(600);

/// A sign-in in progress: the address to open, and what checks the answer.
#[derive(Debug)]
pub struct BrowserAuthorization {
    /// The provider's sign-in address.
    pub url: String,
    /// Where the provider sends the browser back.
    pub redirect_uri: String,
    listener: TcpListener,
    state: String,
    verifier: Zeroizing<String>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random(n: usize) -> Result<Vec<u8>, std::io::Error> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes)
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query of a redirect address or request target, as pairs.
fn query(text: &str) -> Vec<(String, String)> {
    let query = text.split_once('?').map_or("", |(_, q)| q);
    let query = query.split(['#', ' ']).next().unwrap_or("");
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// Starts a sign-in for `endpoint` (which needs `auth_url` and the
/// `refresh_token` grant): a listener on a free loopback port, the PKCE
/// verifier and a random state.
pub fn start(endpoint: &TokenEndpoint) -> Result<BrowserAuthorization, DeviceError> {
    let route = endpoint.route.clone();
    let auth_url = endpoint.person_endpoint(
        endpoint.auth_url.as_deref(),
        "no auth_url (the authorization endpoint) is set; set it or a preset",
    )?;
    let io = |e: std::io::Error| DeviceError::Local {
        route: route.clone(),
        reason: e.to_string(),
    };
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(io)?;
    let port = listener.local_addr().map_err(io)?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}/");
    let verifier = Zeroizing::new(b64url(&random(32).map_err(io)?));
    let challenge =
        b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref());
    let state = b64url(&random(16).map_err(io)?);
    let params = [
        ("response_type", "code"),
        ("client_id", endpoint.client_id.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("scope", endpoint.scope.as_str()),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        // Google gives a refresh token only with these two.
        ("access_type", "offline"),
        ("prompt", "consent"),
    ];
    let joined: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let separator = if auth_url.contains('?') { '&' } else { '?' };
    Ok(BrowserAuthorization {
        url: format!("{auth_url}{separator}{}", joined.join("&")),
        redirect_uri,
        listener,
        state,
        verifier,
    })
}

/// Answers one request on the loopback listener and returns its target.
fn serve_one(stream: &mut TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head).lines().next()?.to_owned();
    let target = line.strip_prefix("GET ")?.split(' ').next()?.to_owned();
    let body = "submitd: authorization received; you can close this window.\n";
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Some(target)
}

impl BrowserAuthorization {
    /// Waits for the redirect (at the listener, or pasted as a line of
    /// `pasted`), exchanges the code and writes the refresh token.
    pub fn finish(
        self,
        endpoint: &TokenEndpoint,
        http: &Http,
        pasted: impl BufRead + Send + 'static,
    ) -> Result<(), DeviceError> {
        let route = endpoint.route.clone();
        let file = endpoint.refresh_token_file()?;
        let (tx, rx) = mpsc::channel::<String>();
        let from_browser = tx.clone();
        let listener = self.listener;
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if let Some(target) = serve_one(&mut stream) {
                    if target.contains("code=") || target.contains("error=") {
                        let _ = from_browser.send(target);
                        return;
                    }
                }
            }
        });
        std::thread::spawn(move || {
            for line in pasted.lines().map_while(Result::ok) {
                if line.contains("code=") || line.contains("error=") {
                    let _ = tx.send(line.trim().to_owned());
                    return;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        let answer = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| DeviceError::Expired {
                route: route.clone(),
            })?;
        let pairs = query(&answer);
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if let Some(error) = get("error") {
            return Err(match error.as_str() {
                "access_denied" => DeviceError::Denied { route },
                _ => endpoint
                    .refused(
                        crate::token::printable(&error, 64),
                        crate::token::printable(&get("error_description").unwrap_or_default(), 300),
                    )
                    .into(),
            });
        }
        if get("state").as_deref() != Some(self.state.as_str()) {
            return Err(DeviceError::Local {
                route,
                reason: "the answer's state does not match this sign-in (an old or a forged address); run the command again".into(),
            });
        }
        let code = get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| DeviceError::Local {
                route: route.clone(),
                reason: "no code in the address".into(),
            })?;
        let fields = vec![
            (
                "grant_type",
                Zeroizing::new("authorization_code".to_owned()),
            ),
            ("code", Zeroizing::new(code)),
            ("redirect_uri", Zeroizing::new(self.redirect_uri.clone())),
            ("code_verifier", self.verifier.clone()),
        ];
        match endpoint.post(http, fields)? {
            Answer::Token {
                refresh: Some(refresh),
                ..
            } => {
                let file_error = |source| TokenError::File {
                    route: route.clone(),
                    source,
                };
                let _lock = RefreshLock::take(file).map_err(file_error)?;
                files::write_private_atomically(file, &refresh).map_err(file_error)?;
                Ok(())
            }
            Answer::Token { refresh: None, .. } => Err(DeviceError::NoRefreshToken { route }),
            Answer::Error { error, description } => {
                Err(endpoint.refused(error, description).into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_round_trip_and_targets_parse() {
        assert_eq!(encode("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
        assert_eq!(decode("a%20b%2Fc+d%zz"), "a b/c d%zz");
        let pairs = query("http://127.0.0.1:5/?code=x%2Fy&state=s1#frag");
        assert_eq!(
            pairs,
            vec![("code".into(), "x/y".into()), ("state".into(), "s1".into())]
        );
        assert_eq!(
            query("/?error=access_denied HTTP/1.1")[0].1,
            "access_denied"
        );
    }
}
