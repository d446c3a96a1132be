//! The envelope: who a message is from and to, with its ESMTP parameters,
//! and the message the server hands over for storage. One set of types for
//! both machines, the spool (which stores paths in their wire form and
//! parses them back with the same code) and the bounce builder.
//!
//! A path is parsed in one place, [`MailFrom::parse`] and [`RcptTo::parse`];
//! the server's MAIL and RCPT verbs call them and turn a [`PathError`] into
//! the reply, so the spool and the wire can never disagree on what a valid
//! path is.

use std::fmt;

use crate::address::{parse_path, ClientName, Mailbox, PathValue};
use crate::params::{
    parse_mail_params, parse_rcpt_params, write_mail_params, write_rcpt_params, MailParams,
    ParamError, RcptParams,
};
use crate::AddressError;

/// Why a `<path> [parameters]` text was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The address itself is malformed.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// `<Postmaster>` without a domain given as a sender: only a recipient
    /// may be that (RFC 5321 §4.1.1.3).
    #[error("the address has no @domain")]
    NoDomain,
    /// `<>` given as a recipient.
    #[error("<> is not a recipient")]
    NullRecipient,
    /// Something other than a space follows the closing `>`.
    #[error("text after the address")]
    TrailingText,
    /// The ESMTP parameters are malformed or unknown.
    #[error(transparent)]
    Param(#[from] ParamError),
}

/// Splits `<path> [params]` and checks that the parameters are separated
/// from the path by a space.
fn split(text: &str) -> Result<(PathValue, &str), PathError> {
    let (path, params) = parse_path(text)?;
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(PathError::TrailingText);
    }
    Ok((path, params))
}

/// The envelope sender and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailFrom {
    /// The sender; `None` for the null reverse-path `<>`.
    pub reverse_path: Option<Mailbox>,
    /// ESMTP parameters.
    pub params: MailParams,
}

impl MailFrom {
    /// Parses what follows `MAIL FROM:` on the wire (`<path> [params]`),
    /// as the MAIL verb and the spool read it.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let (path, params) = split(text)?;
        let reverse_path = match path {
            PathValue::Null => None,
            PathValue::Mailbox(m) => Some(m),
            PathValue::Postmaster(_) => return Err(PathError::NoDomain),
        };
        Ok(Self {
            reverse_path,
            params: parse_mail_params(params)?,
        })
    }

    /// The sender's address as text (`alice@example.org`); empty for `<>`.
    pub fn address(&self) -> String {
        self.reverse_path
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// The sender as `(local part, domain)`; `None` for `<>`.
    pub fn sender(&self) -> Option<(&str, &str)> {
        self.reverse_path
            .as_ref()
            .map(|m| (m.local_part(), m.domain()))
    }
}

/// The wire form after `MAIL FROM:`: `<address>` and the parameters.
impl fmt::Display for MailFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reverse_path {
            Some(m) => write!(f, "<{m}>")?,
            None => f.write_str("<>")?,
        }
        write_mail_params(&self.params, f)
    }
}

/// A recipient address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<Postmaster>` with no domain (RFC 5321 §4.1.1.3), as written.
    Postmaster(String),
    /// An ordinary mailbox.
    Mailbox(Mailbox),
}

impl ForwardPath {
    /// Whether the address is all ASCII; if not, it needs SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        match self {
            Self::Postmaster(_) => true,
            Self::Mailbox(m) => m.is_ascii(),
        }
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postmaster(p) => f.write_str(p),
            Self::Mailbox(m) => m.fmt(f),
        }
    }
}

/// One recipient and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptTo {
    /// The recipient.
    pub forward_path: ForwardPath,
    /// ESMTP parameters.
    pub params: RcptParams,
}

impl RcptTo {
    /// Parses what follows `RCPT TO:` on the wire (`<path> [params]`), as
    /// the RCPT verb and the spool read it.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let (path, params) = split(text)?;
        let forward_path = match path {
            PathValue::Null => return Err(PathError::NullRecipient),
            PathValue::Mailbox(m) => ForwardPath::Mailbox(m),
            PathValue::Postmaster(p) => ForwardPath::Postmaster(p),
        };
        Ok(Self {
            forward_path,
            params: parse_rcpt_params(params)?,
        })
    }
}

/// The wire form after `RCPT TO:`.
impl fmt::Display for RcptTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.forward_path)?;
        write_rcpt_params(&self.params, f)
    }
}

/// A message to relay: sender and recipients (the client machine's input).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Sender and MAIL parameters.
    pub mail_from: MailFrom,
    /// Recipients and their parameters.
    pub recipients: Vec<RcptTo>,
}

/// A message's envelope and the facts of the session it came in, as the
/// server machine hands them over when its content begins. The content
/// itself follows in pieces (`Output::MessageData`); the machine never
/// holds it whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The sender.
    pub mail_from: MailFrom,
    /// The accepted recipients, in order.
    pub recipients: Vec<RcptTo>,
    /// The name the client gave in EHLO.
    pub client_name: ClientName,
    /// Who authenticated, as the credential check named them.
    pub auth_user: Option<String>,
    /// Whether the session was inside TLS.
    pub tls: bool,
    /// Whether the content came by BDAT rather than DATA.
    pub chunked: bool,
}

impl Message {
    /// The `with` protocol name for the Received header (RFC 3848, and
    /// RFC 6531 §3.7.3 for UTF8SMTP).
    pub fn protocol(&self) -> &'static str {
        match (
            self.mail_from.params.smtputf8,
            self.tls,
            self.auth_user.is_some(),
        ) {
            (false, false, false) => "ESMTP",
            (false, true, false) => "ESMTPS",
            (false, false, true) => "ESMTPA",
            (false, true, true) => "ESMTPSA",
            (true, false, false) => "UTF8SMTP",
            (true, true, false) => "UTF8SMTPS",
            (true, false, true) => "UTF8SMTPA",
            (true, true, true) => "UTF8SMTPSA",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_errors_say_what_is_wrong() {
        for (text, expected) in [
            ("<Postmaster>", PathError::NoDomain),
            ("<a@b.example>x", PathError::TrailingText),
            (
                "a@b.example",
                PathError::Address(AddressError::MissingBrackets),
            ),
            (
                "<a@b.example> FOO=1",
                PathError::Param(ParamError::Unknown("FOO".into())),
            ),
        ] {
            assert_eq!(MailFrom::parse(text), Err(expected), "{text}");
        }
        assert_eq!(RcptTo::parse("<>"), Err(PathError::NullRecipient));
        assert!(RcptTo::parse("<Postmaster>").is_ok());
    }
}
