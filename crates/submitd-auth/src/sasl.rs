//! SASL PLAIN (RFC 4616), LOGIN, OAUTHBEARER (RFC 7628) and XOAUTH2 as
//! small exchanges.
//!
//! The SMTP machine carries the exchange (334 challenges, base64, `*`); a
//! [`SaslExchange`] turns the decoded client responses into [`Credentials`]
//! (a password) or [`TokenCredentials`] (a bearer token), or a refusal. It
//! checks form only; whether the password or token is good is the login
//! gate's question. After a refused token the server sends RFC 7628's
//! error challenge and the client answers with a dummy response; the
//! exchange takes that and ends ([`SaslExchange::token_refused`]).

use std::fmt;

use zeroize::Zeroizing;

/// Longest user name accepted, in octets.
pub const MAX_USERNAME: usize = 255;
/// Longest password accepted, in octets.
pub const MAX_PASSWORD: usize = 1024;

/// Longest bearer token accepted, in octets (the AUTH line bounds it too).
pub const MAX_TOKEN: usize = 12 * 1024;

/// The mechanisms submitd offers. All send the secret itself (a password
/// or a bearer token), which is why they are only ever offered inside TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN mechanism (draft-murchison-sasl-login).
    Login,
    /// RFC 7628: an OAuth2 bearer token.
    OAuthBearer,
    /// Google's and Microsoft's form of the same.
    XOAuth2,
}

impl Mechanism {
    /// The mechanism for an upper-case SASL name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Self::Plain),
            "LOGIN" => Some(Self::Login),
            "OAUTHBEARER" => Some(Self::OAuthBearer),
            "XOAUTH2" => Some(Self::XOAuth2),
            _ => None,
        }
    }

    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::OAuthBearer => "OAUTHBEARER",
            Self::XOAuth2 => "XOAUTH2",
        }
    }

    /// Whether it carries a bearer token rather than a password.
    pub fn takes_token(self) -> bool {
        matches!(self, Self::OAuthBearer | Self::XOAuth2)
    }
}

/// Why a SASL exchange was refused before any password check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// PLAIN: not `authzid NUL authcid NUL password`.
    #[error("the PLAIN response is not authzid, user and password separated by NUL")]
    Malformed,
    /// PLAIN: an authorization identity other than the user (no proxying).
    #[error("acting as another user is not allowed")]
    AuthzidMismatch,
    /// User name or password is not UTF-8.
    #[error("the user name or password is not UTF-8")]
    NotUtf8,
    /// Empty user name or password.
    #[error("the user name or password is empty")]
    Empty,
    /// Longer than [`MAX_USERNAME`] or [`MAX_PASSWORD`].
    #[error("the user name or password is too long")]
    TooLong,
    /// Control characters (NUL included) in the user name.
    #[error("the user name holds control characters")]
    BadUsername,
    /// OAUTHBEARER/XOAUTH2: not the message RFC 7628 (or Google) defines,
    /// no `auth=Bearer` token, or channel binding asked for.
    #[error("the token message is malformed")]
    BadTokenMessage,
    /// The client's answer to the error challenge; the exchange is over.
    #[error("the token was refused")]
    TokenRefused,
}

/// A bearer token and the user the client named with it (none: the token
/// alone says who; OAUTHBEARER may leave the name out).
pub struct TokenCredentials {
    /// The user named in the SASL message.
    pub username: Option<String>,
    /// The access token; zeroed on drop.
    pub token: Zeroizing<String>,
}

impl TokenCredentials {
    /// The SASL message of `mechanism` that carries these credentials, as
    /// a client would send it (to pass on to Dovecot).
    pub fn message(&self, mechanism: Mechanism) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        let user = self.username.as_deref().unwrap_or("");
        if mechanism == Mechanism::XOAuth2 {
            out.extend_from_slice(b"user=");
            out.extend_from_slice(user.as_bytes());
            out.push(1);
        } else {
            out.extend_from_slice(b"n,");
            if !user.is_empty() {
                out.extend_from_slice(b"a=");
                for &b in user.as_bytes() {
                    match b {
                        b',' => out.extend_from_slice(b"=2C"),
                        b'=' => out.extend_from_slice(b"=3D"),
                        _ => out.push(b),
                    }
                }
            }
            out.extend_from_slice(b",\x01");
        }
        out.extend_from_slice(b"auth=Bearer ");
        out.extend_from_slice(self.token.as_bytes());
        out.extend_from_slice(b"\x01\x01");
        out
    }
}

impl fmt::Debug for TokenCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCredentials")
            .field("username", &self.username)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// A user name and password as the client sent them.
pub struct Credentials {
    /// The user name (authentication identity).
    pub username: String,
    /// The password; zeroed on drop.
    pub password: Zeroizing<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// What the exchange needs next.
#[derive(Debug)]
pub enum SaslStep {
    /// Send this challenge and feed the client's response to
    /// [`SaslExchange::respond`].
    Challenge(&'static [u8]),
    /// The exchange is complete: check these credentials.
    Done(Credentials),
    /// The exchange carried a bearer token: check it. If it is refused,
    /// send the error challenge and call [`SaslExchange::token_refused`].
    Token(TokenCredentials),
    /// The exchange failed on form; answer as for a wrong password.
    Failed(SaslError),
}

#[derive(Debug)]
enum State {
    TokenResponse(Mechanism),
    /// The error challenge went out; the client's dummy answer ends it.
    TokenErrorSent,
    PlainResponse,
    LoginUser,
    LoginPassword(String),
    Finished,
}

/// One SASL exchange.
#[derive(Debug)]
pub struct SaslExchange {
    state: State,
}

/// LOGIN's prompts, exactly as Thunderbird and Outlook expect them (base64
/// `VXNlcm5hbWU6` and `UGFzc3dvcmQ6` on the wire).
pub const LOGIN_USERNAME_PROMPT: &[u8] = b"Username:";
/// See [`LOGIN_USERNAME_PROMPT`].
pub const LOGIN_PASSWORD_PROMPT: &[u8] = b"Password:";

impl SaslExchange {
    /// Starts an exchange, with the initial response if the client sent one.
    pub fn start(mechanism: Mechanism, initial_response: Option<&[u8]>) -> (Self, SaslStep) {
        let mut exchange = Self {
            state: match mechanism {
                Mechanism::Plain => State::PlainResponse,
                Mechanism::Login => State::LoginUser,
                Mechanism::OAuthBearer | Mechanism::XOAuth2 => State::TokenResponse(mechanism),
            },
        };
        let step = match (mechanism, initial_response) {
            (_, Some(response)) => exchange.respond(response),
            (Mechanism::Login, None) => SaslStep::Challenge(LOGIN_USERNAME_PROMPT),
            (_, None) => SaslStep::Challenge(b""),
        };
        (exchange, step)
    }

    /// The token of [`SaslStep::Token`] was refused and the error
    /// challenge is being sent: the next response is the client's dummy
    /// answer (RFC 7628 §3.2.3), which ends the exchange as
    /// [`SaslError::TokenRefused`].
    pub fn token_refused(&mut self) {
        self.state = State::TokenErrorSent;
    }

    /// Feeds the client's next (decoded) response.
    pub fn respond(&mut self, response: &[u8]) -> SaslStep {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::PlainResponse => match parse_plain(response) {
                Ok(credentials) => SaslStep::Done(credentials),
                Err(e) => SaslStep::Failed(e),
            },
            State::LoginUser => match username(response) {
                Ok(user) => {
                    self.state = State::LoginPassword(user);
                    SaslStep::Challenge(LOGIN_PASSWORD_PROMPT)
                }
                Err(e) => SaslStep::Failed(e),
            },
            State::LoginPassword(user) => match password(response) {
                Ok(password) => SaslStep::Done(Credentials {
                    username: user,
                    password,
                }),
                Err(e) => SaslStep::Failed(e),
            },
            State::TokenResponse(mechanism) => match parse_token(mechanism, response) {
                Ok(credentials) => SaslStep::Token(credentials),
                Err(e) => SaslStep::Failed(e),
            },
            State::TokenErrorSent => SaslStep::Failed(SaslError::TokenRefused),
            State::Finished => SaslStep::Failed(SaslError::Malformed),
        }
    }
}

/// The `auth=Bearer <token>` value and the user of an OAUTHBEARER
/// (`n,a=user,^Aauth=Bearer t^A^A`) or XOAUTH2
/// (`user=u^Aauth=Bearer t^A^A`) message.
fn parse_token(mechanism: Mechanism, response: &[u8]) -> Result<TokenCredentials, SaslError> {
    if response.len() > MAX_TOKEN + MAX_USERNAME + 256 {
        return Err(SaslError::TooLong);
    }
    let (authzid_user, pairs) = match mechanism {
        Mechanism::OAuthBearer => {
            // gs2-header: "n" (no channel binding; "y" means the client
            // could have used it), an optional "a=" authzid, then ^A.
            let rest = response
                .strip_prefix(b"n,")
                .or_else(|| response.strip_prefix(b"y,"))
                .ok_or(SaslError::BadTokenMessage)?;
            let comma = memchr_comma(rest).ok_or(SaslError::BadTokenMessage)?;
            let (authzid, rest) = (&rest[..comma], &rest[comma + 1..]);
            let rest = rest
                .strip_prefix(b"\x01")
                .ok_or(SaslError::BadTokenMessage)?;
            let user = match authzid {
                b"" => None,
                a => Some(gs2_name(
                    a.strip_prefix(b"a=").ok_or(SaslError::BadTokenMessage)?,
                )?),
            };
            (user, rest)
        }
        _ => (None, response),
    };
    let mut user = authzid_user;
    let mut token = None;
    // key=value pairs, each ended by ^A, then one more ^A.
    let pairs = pairs
        .strip_suffix(b"\x01\x01")
        .ok_or(SaslError::BadTokenMessage)?;
    for pair in pairs.split(|&b| b == 1) {
        let eq = pair
            .iter()
            .position(|&b| b == b'=')
            .ok_or(SaslError::BadTokenMessage)?;
        let (key, value) = (&pair[..eq], &pair[eq + 1..]);
        match key {
            b"auth" => {
                let value = std::str::from_utf8(value).map_err(|_| SaslError::NotUtf8)?;
                let (scheme, credential) =
                    value.split_once(' ').ok_or(SaslError::BadTokenMessage)?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(SaslError::BadTokenMessage);
                }
                let credential = credential.trim();
                if credential.is_empty() {
                    return Err(SaslError::Empty);
                }
                if credential.len() > MAX_TOKEN {
                    return Err(SaslError::TooLong);
                }
                if credential.chars().any(|c| c.is_control() || c == ' ') {
                    return Err(SaslError::BadTokenMessage);
                }
                token = Some(Zeroizing::new(credential.to_owned()));
            }
            b"user" if mechanism == Mechanism::XOAuth2 => user = Some(username(value)?),
            // host=, port= and others (RFC 7628 §3.1) are not needed.
            _ => {}
        }
    }
    let token = token.ok_or(SaslError::BadTokenMessage)?;
    if mechanism == Mechanism::XOAuth2 && user.is_none() {
        return Err(SaslError::BadTokenMessage);
    }
    Ok(TokenCredentials {
        username: user,
        token,
    })
}

fn memchr_comma(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b',')
}

/// A gs2 name: `=2C` is a comma, `=3D` an equals sign (RFC 5801).
fn gs2_name(bytes: &[u8]) -> Result<String, SaslError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' => {
                match bytes.get(i + 1..i + 3) {
                    Some(b"2C") => out.push(b','),
                    Some(b"3D") => out.push(b'='),
                    _ => return Err(SaslError::BadTokenMessage),
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    username(&out)
}

fn username(bytes: &[u8]) -> Result<String, SaslError> {
    if bytes.is_empty() {
        return Err(SaslError::Empty);
    }
    if bytes.len() > MAX_USERNAME {
        return Err(SaslError::TooLong);
    }
    let name = std::str::from_utf8(bytes).map_err(|_| SaslError::NotUtf8)?;
    if name.chars().any(char::is_control) {
        return Err(SaslError::BadUsername);
    }
    Ok(name.to_owned())
}

fn password(bytes: &[u8]) -> Result<Zeroizing<String>, SaslError> {
    if bytes.is_empty() {
        return Err(SaslError::Empty);
    }
    if bytes.len() > MAX_PASSWORD {
        return Err(SaslError::TooLong);
    }
    if bytes.contains(&0) {
        return Err(SaslError::Malformed);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| SaslError::NotUtf8)?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616 §2).
fn parse_plain(response: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = response.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let username = username(authcid)?;
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(Credentials {
        username,
        password: password(passwd)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(step: SaslStep) -> (String, String) {
        match step {
            SaslStep::Done(c) => (c.username, c.password.to_string()),
            other => panic!("not done: {other:?}"),
        }
    }

    fn failed(step: SaslStep) -> SaslError {
        match step {
            SaslStep::Failed(e) => e,
            other => panic!("not failed: {other:?}"),
        }
    }

    #[test]
    fn plain_with_and_without_initial_response() {
        let (_, step) = SaslExchange::start(Mechanism::Plain, Some(b"\0alice\0s3cret"));
        assert_eq!(done(step), ("alice".into(), "s3cret".into()));
        let (_, step) = SaslExchange::start(Mechanism::Plain, Some(b"alice\0alice\0pw"));
        assert_eq!(done(step), ("alice".into(), "pw".into()));
        let (mut ex, step) = SaslExchange::start(Mechanism::Plain, None);
        assert!(matches!(step, SaslStep::Challenge(b"")));
        assert_eq!(
            done(ex.respond("\0zoë\0pässwörd".as_bytes())),
            ("zoë".into(), "pässwörd".into())
        );
    }

    #[test]
    fn plain_refusals() {
        let long_user = [&b"\0"[..], &[b'u'; 256], b"\0pw"].concat();
        let long_password = [&b"\0u\0"[..], &[b'p'; 1025]].concat();
        for (response, error) in [
            (&b"alice\0secret"[..], SaslError::Malformed),
            (b"", SaslError::Malformed),
            (b"bob\0alice\0secret", SaslError::AuthzidMismatch),
            (b"\0\0secret", SaslError::Empty),
            (b"\0alice\0", SaslError::Empty),
            (b"\0alice\0sec\0ret", SaslError::Malformed),
            (b"\0al\xffice\0secret", SaslError::NotUtf8),
            (b"\0alice\0\xff", SaslError::NotUtf8),
            (b"\0al\x01ice\0secret", SaslError::BadUsername),
            (&long_user, SaslError::TooLong),
            (&long_password, SaslError::TooLong),
        ] {
            let (_, step) = SaslExchange::start(Mechanism::Plain, Some(response));
            assert_eq!(failed(step), error, "{response:?}");
        }
    }

    #[test]
    fn login_prompts_and_flow() {
        let (mut ex, step) = SaslExchange::start(Mechanism::Login, None);
        assert!(matches!(step, SaslStep::Challenge(b"Username:")));
        assert!(matches!(
            ex.respond(b"alice"),
            SaslStep::Challenge(b"Password:")
        ));
        assert_eq!(
            done(ex.respond(b"secret")),
            ("alice".into(), "secret".into())
        );
        // Nothing more after the end.
        assert_eq!(failed(ex.respond(b"again")), SaslError::Malformed);

        let (mut ex, step) = SaslExchange::start(Mechanism::Login, Some(b"alice"));
        assert!(matches!(step, SaslStep::Challenge(b"Password:")));
        assert_eq!(failed(ex.respond(b"")), SaslError::Empty);
        let (_, step) = SaslExchange::start(Mechanism::Login, Some(b"a\0b"));
        assert_eq!(failed(step), SaslError::BadUsername);
    }

    fn token(step: SaslStep) -> (Option<String>, String) {
        match step {
            SaslStep::Token(t) => (t.username, t.token.to_string()),
            other => panic!("no token: {other:?}"),
        }
    }

    #[test]
    fn oauthbearer_and_xoauth2_messages() {
        let (_, step) = SaslExchange::start(
            Mechanism::OAuthBearer,
            Some(
                b"n,a=alice@example.org,\x01host=mx\x01port=465\x01auth=Bearer abc.def.ghi\x01\x01",
            ),
        );
        assert_eq!(
            token(step),
            (Some("alice@example.org".into()), "abc.def.ghi".into())
        );
        // No authzid: the token alone names the user.
        let (_, step) = SaslExchange::start(
            Mechanism::OAuthBearer,
            Some(b"n,,\x01auth=bearer t\x01\x01"),
        );
        assert_eq!(token(step), (None, "t".into()));
        // Escaped comma in the name.
        let (_, step) = SaslExchange::start(
            Mechanism::OAuthBearer,
            Some(b"n,a=a=2Cb,\x01auth=Bearer t\x01\x01"),
        );
        assert_eq!(token(step).0.as_deref(), Some("a,b"));
        let (mut ex, step) = SaslExchange::start(Mechanism::XOAuth2, None);
        assert!(matches!(step, SaslStep::Challenge(b"")));
        assert_eq!(
            token(ex.respond(b"user=bob\x01auth=Bearer tok\x01\x01")),
            (Some("bob".into()), "tok".into())
        );
        // Rebuilt for Dovecot, it parses to the same.
        for m in [Mechanism::XOAuth2, Mechanism::OAuthBearer] {
            let creds = TokenCredentials {
                username: Some("a,b=c".into()),
                token: Zeroizing::new("tok".into()),
            };
            let (_, step) = SaslExchange::start(m, Some(&creds.message(m)));
            assert_eq!(token(step), (Some("a,b=c".into()), "tok".into()), "{m:?}");
        }
        // The refusal: the dummy answer ends the exchange.
        ex.token_refused();
        assert_eq!(failed(ex.respond(b"\x01")), SaslError::TokenRefused);
        for (mechanism, message) in [
            (
                Mechanism::OAuthBearer,
                &b"p=tls-unique,,\x01auth=Bearer t\x01\x01"[..],
            ),
            (
                Mechanism::OAuthBearer,
                b"n,a=alice,\x01auth=Basic dXNlcg==\x01\x01",
            ),
            (Mechanism::OAuthBearer, b"n,a=alice,\x01auth=Bearer t\x01"),
            (Mechanism::OAuthBearer, b"n,a=alice,auth=Bearer t\x01\x01"),
            (
                Mechanism::OAuthBearer,
                b"n,a=al=ZZice,\x01auth=Bearer t\x01\x01",
            ),
            (Mechanism::OAuthBearer, b"n,a=alice,\x01host=x\x01\x01"),
            (Mechanism::XOAuth2, b"auth=Bearer t\x01\x01"),
            (Mechanism::XOAuth2, b"user=a\x01auth=Bearer t\x00x\x01\x01"),
            (Mechanism::XOAuth2, b"user=a\x01auth=Bearer \x01\x01"),
            (
                Mechanism::XOAuth2,
                b"user=a\x01auth=Bearer t\x01\x01junk\x01",
            ),
        ] {
            let (_, step) = SaslExchange::start(mechanism, Some(message));
            assert!(matches!(step, SaslStep::Failed(_)), "{message:?}: {step:?}");
        }
    }

    #[test]
    fn credentials_never_show_the_password() {
        let (_, step) = SaslExchange::start(Mechanism::Plain, Some(b"\0alice\0hunter2"));
        assert!(!format!("{step:?}").contains("hunter2"));
        let (_, step) = SaslExchange::start(
            Mechanism::XOAuth2,
            Some(b"user=a\x01auth=Bearer hunter2\x01\x01"),
        );
        assert!(!format!("{step:?}").contains("hunter2"));
    }
}
