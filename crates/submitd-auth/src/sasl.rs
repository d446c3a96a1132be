//! SASL PLAIN (RFC 4616) and LOGIN as small exchanges.
//!
//! The SMTP machine carries the exchange (334 challenges, base64, `*`); a
//! [`SaslExchange`] turns the decoded client responses into [`Credentials`]
//! or a refusal. It checks form only; whether the password is right is the
//! credential store's question.

use std::fmt;

use zeroize::Zeroizing;

/// Longest user name accepted, in octets.
pub const MAX_USERNAME: usize = 255;
/// Longest password accepted, in octets.
pub const MAX_PASSWORD: usize = 1024;

/// The mechanisms submitd offers. Both send the password itself, which is
/// why they are only ever offered inside TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN mechanism (draft-murchison-sasl-login).
    Login,
}

impl Mechanism {
    /// The mechanism for an upper-case SASL name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Self::Plain),
            "LOGIN" => Some(Self::Login),
            _ => None,
        }
    }

    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
        }
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
    /// The exchange failed on form; answer as for a wrong password.
    Failed(SaslError),
}

#[derive(Debug)]
enum State {
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
            },
        };
        let step = match (mechanism, initial_response) {
            (_, Some(response)) => exchange.respond(response),
            (Mechanism::Plain, None) => SaslStep::Challenge(b""),
            (Mechanism::Login, None) => SaslStep::Challenge(LOGIN_USERNAME_PROMPT),
        };
        (exchange, step)
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
            State::Finished => SaslStep::Failed(SaslError::Malformed),
        }
    }
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

    #[test]
    fn credentials_never_show_the_password() {
        let (_, step) = SaslExchange::start(Mechanism::Plain, Some(b"\0alice\0hunter2"));
        assert!(!format!("{step:?}").contains("hunter2"));
    }
}
