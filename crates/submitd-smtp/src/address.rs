//! Envelope addresses and client names: RFC 5321 §4.1.2 paths, RFC 6531
//! internationalised addresses, and address literals.
//!
//! Parsing is structural (a quoted local part may hold `>` or `@`), keeps
//! the text as the client sent it (it is relayed unchanged) and enforces the
//! RFC 5321 §4.5.3.1 size limits.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest local part, in octets (RFC 5321 §4.5.3.1.1).
pub(crate) const MAX_LOCAL_PART: usize = 64;
/// Longest domain, in octets (RFC 5321 §4.5.3.1.2).
pub(crate) const MAX_DOMAIN: usize = 255;
/// Longest path with its angle brackets, in octets (RFC 5321 §4.5.3.1.3).
pub(crate) const MAX_PATH: usize = 256;

/// Why an address or client name was refused. The text is shown to people
/// in the reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The path does not start with `<` or does not end with `>`.
    #[error("the address must be enclosed in <>")]
    MissingBrackets,
    /// No `@` between local part and domain.
    #[error("the address has no @domain")]
    MissingDomain,
    /// Local part longer than 64 octets.
    #[error("the local part is longer than 64 octets")]
    LocalPartTooLong,
    /// Domain longer than 255 octets or a label longer than 63.
    #[error("the domain is too long")]
    DomainTooLong,
    /// Path longer than 256 octets.
    #[error("the address is longer than 256 octets")]
    PathTooLong,
    /// Local part is neither a dot-string nor a quoted string.
    #[error("the local part is not valid")]
    InvalidLocalPart,
    /// Domain is not a sequence of valid labels.
    #[error("the domain is not valid")]
    InvalidDomain,
    /// `[...]` holds no valid IPv4, IPv6 or general address literal.
    #[error("the address literal is not valid")]
    InvalidAddressLiteral,
    /// The source route before `:` is malformed.
    #[error("the source route is not valid")]
    InvalidSourceRoute,
    /// The name is empty or holds white space or control characters.
    #[error("the name is not valid")]
    InvalidName,
}

/// A mailbox `local-part@domain`, both parts as the client sent them (a
/// quoted local part keeps its quotes; a literal keeps its brackets).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local_part: String,
    domain: String,
}

impl Mailbox {
    /// Parses `local@domain` (no angle brackets) with the rules of a path.
    pub fn parse(address: &str) -> Result<Self, AddressError> {
        match parse_path(&format!("<{address}>"))? {
            (PathValue::Mailbox(mailbox), "") => Ok(mailbox),
            (PathValue::Mailbox(_), _) => Err(AddressError::MissingBrackets),
            _ => Err(AddressError::MissingDomain),
        }
    }

    /// The local part as sent, quotes included.
    pub fn local_part(&self) -> &str {
        &self.local_part
    }

    /// The domain or address literal as sent.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether the address is all ASCII; if not, it needs SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii() && self.domain.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

/// What a path held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathValue {
    /// `<>`.
    Null,
    /// `<Postmaster>` with no domain (RFC 5321 §4.1.1.3), in its letter case.
    Postmaster(String),
    /// An ordinary mailbox.
    Mailbox(Mailbox),
}

/// An address literal (RFC 5321 §4.1.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressLiteral {
    /// `[192.0.2.1]`.
    Ipv4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`, the tag in any letter case.
    Ipv6(Ipv6Addr),
    /// `[tag:content]` with a standardised tag other than IPv6.
    General {
        /// The tag.
        tag: String,
        /// What follows the colon.
        content: String,
    },
}

/// The name a client gave in EHLO or HELO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientName {
    /// A syntactically valid domain.
    Domain(String),
    /// An address literal in brackets.
    Literal(AddressLiteral),
    /// Something else without white space or control characters, such as a
    /// Windows host name with `_` or a bare IP address. Authenticated
    /// clients send these; refusing them would only break mail.
    Unchecked(String),
}

impl fmt::Display for ClientName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Domain(d) | Self::Unchecked(d) => f.write_str(d),
            Self::Literal(AddressLiteral::Ipv4(a)) => write!(f, "[{a}]"),
            Self::Literal(AddressLiteral::Ipv6(a)) => write!(f, "[IPv6:{a}]"),
            Self::Literal(AddressLiteral::General { tag, content }) => {
                write!(f, "[{tag}:{content}]")
            }
        }
    }
}

/// Parses the EHLO/HELO argument.
pub(crate) fn parse_client_name(arg: &str) -> Result<ClientName, AddressError> {
    if arg.is_empty() || arg.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AddressError::InvalidName);
    }
    if let Some(inner) = arg.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or(AddressError::InvalidAddressLiteral)?;
        return parse_literal(inner).map(ClientName::Literal);
    }
    if arg.len() <= MAX_DOMAIN && is_domain(arg) {
        Ok(ClientName::Domain(arg.to_owned()))
    } else if arg.len() <= MAX_DOMAIN {
        Ok(ClientName::Unchecked(arg.to_owned()))
    } else {
        Err(AddressError::DomainTooLong)
    }
}

/// Parses a path at the start of `input` and returns it with the rest of
/// the input (the ESMTP parameters).
pub(crate) fn parse_path(input: &str) -> Result<(PathValue, &str), AddressError> {
    let rest = input
        .strip_prefix('<')
        .ok_or(AddressError::MissingBrackets)?;
    if let Some(after) = rest.strip_prefix('>') {
        return Ok((PathValue::Null, after));
    }
    let rest = skip_source_route(rest)?;
    let (local_part, rest) = split_local_part(rest)?;
    if let Some(after) = rest.strip_prefix('>') {
        if local_part.eq_ignore_ascii_case("postmaster") {
            check_path_len(input, after)?;
            return Ok((PathValue::Postmaster(local_part.to_owned()), after));
        }
        return Err(AddressError::MissingDomain);
    }
    let rest = rest.strip_prefix('@').ok_or(AddressError::MissingDomain)?;
    let (domain, after) = split_domain(rest)?;
    let after = after
        .strip_prefix('>')
        .ok_or(AddressError::MissingBrackets)?;
    if local_part.len() > MAX_LOCAL_PART {
        return Err(AddressError::LocalPartTooLong);
    }
    check_path_len(input, after)?;
    Ok((
        PathValue::Mailbox(Mailbox {
            local_part: local_part.to_owned(),
            domain: domain.to_owned(),
        }),
        after,
    ))
}

fn check_path_len(input: &str, after: &str) -> Result<(), AddressError> {
    if input.len() - after.len() > MAX_PATH {
        Err(AddressError::PathTooLong)
    } else {
        Ok(())
    }
}

/// Skips an obsolete source route `@a,@b:` (RFC 5321 §4.1.2 says to accept
/// and ignore it).
fn skip_source_route(input: &str) -> Result<&str, AddressError> {
    if !input.starts_with('@') {
        return Ok(input);
    }
    let colon = input.find(':').ok_or(AddressError::InvalidSourceRoute)?;
    for hop in input[..colon].split(',') {
        let domain = hop
            .strip_prefix('@')
            .ok_or(AddressError::InvalidSourceRoute)?;
        if !is_domain(domain) {
            return Err(AddressError::InvalidSourceRoute);
        }
    }
    Ok(&input[colon + 1..])
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Splits off a dot-string or quoted-string local part.
fn split_local_part(input: &str) -> Result<(&str, &str), AddressError> {
    if let Some(body) = input.strip_prefix('"') {
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    let end = 1 + i + 1;
                    return Ok((&input[..end], &input[end..]));
                }
                '\\' => match chars.next() {
                    Some((_, q)) if (' '..='~').contains(&q) || !q.is_ascii() => {}
                    _ => return Err(AddressError::InvalidLocalPart),
                },
                ' ' | '!' | '#'..='[' | ']'..='~' => {}
                c if !c.is_ascii() && !c.is_control() => {}
                _ => return Err(AddressError::InvalidLocalPart),
            }
        }
        return Err(AddressError::InvalidLocalPart);
    }
    let end = input
        .char_indices()
        .find(|&(_, c)| !(is_atext(c) || c == '.'))
        .map_or(input.len(), |(i, _)| i);
    let local = &input[..end];
    if local.is_empty() || local.split('.').any(str::is_empty) {
        return Err(AddressError::InvalidLocalPart);
    }
    if local.chars().any(char::is_control) {
        return Err(AddressError::InvalidLocalPart);
    }
    Ok((local, &input[end..]))
}

/// Splits off a domain or address literal.
fn split_domain(input: &str) -> Result<(&str, &str), AddressError> {
    if let Some(inner) = input.strip_prefix('[') {
        let close = inner.find(']').ok_or(AddressError::InvalidAddressLiteral)?;
        parse_literal(&inner[..close])?;
        let end = close + 2;
        return Ok((&input[..end], &input[end..]));
    }
    let end = input
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || !c.is_ascii()))
        .map_or(input.len(), |(i, _)| i);
    let domain = &input[..end];
    if domain.len() > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    if !is_domain(domain) {
        return Err(if domain.split('.').any(|label| label.len() > 63) {
            AddressError::DomainTooLong
        } else {
            AddressError::InvalidDomain
        });
    }
    Ok((domain, &input[end..]))
}

/// RFC 5321 `Domain`, with U-labels (RFC 6531) allowed.
pub(crate) fn is_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= MAX_DOMAIN
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| {
                    c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric())
                })
        })
}

/// Parses what stands between `[` and `]`.
fn parse_literal(inner: &str) -> Result<AddressLiteral, AddressError> {
    let bad = AddressError::InvalidAddressLiteral;
    match inner.split_once(':') {
        Some((tag, addr)) if tag.eq_ignore_ascii_case("IPv6") => {
            addr.parse().map(AddressLiteral::Ipv6).map_err(|_| bad)
        }
        Some((tag, content)) => {
            let tag_ok = !tag.is_empty()
                && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !tag.ends_with('-');
            // dcontent: %d33-90 / %d94-126, printable ASCII but [ \ ].
            let content_ok =
                !content.is_empty() && content.bytes().all(|b| matches!(b, 33..=90 | 94..=126));
            if tag_ok && content_ok {
                Ok(AddressLiteral::General {
                    tag: tag.to_owned(),
                    content: content.to_owned(),
                })
            } else {
                Err(bad)
            }
        }
        None => inner.parse().map(AddressLiteral::Ipv4).map_err(|_| bad),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(input: &str) -> Result<(String, String, String), AddressError> {
        match parse_path(input)? {
            (PathValue::Mailbox(m), rest) => Ok((m.local_part, m.domain, rest.to_owned())),
            (other, _) => panic!("{input}: not a mailbox: {other:?}"),
        }
    }

    #[test]
    fn valid_paths() {
        for (input, local, domain, rest) in [
            ("<a@example.org>", "a", "example.org", ""),
            (
                "<a.b+tag@sub.example.org> SIZE=1",
                "a.b+tag",
                "sub.example.org",
                " SIZE=1",
            ),
            ("<\"a>b@c\"@example.org>", "\"a>b@c\"", "example.org", ""),
            ("<\"a\\\"b\"@x.example>", "\"a\\\"b\"", "x.example", ""),
            (
                "<@relay.example,@b.example:u@example.org>",
                "u",
                "example.org",
                "",
            ),
            ("<u@[192.0.2.1]>", "u", "[192.0.2.1]", ""),
            ("<u@[IPv6:2001:db8::1]>", "u", "[IPv6:2001:db8::1]", ""),
            ("<u@[ipv6:::1]>", "u", "[ipv6:::1]", ""),
            ("<用户@例子.测试>", "用户", "例子.测试", ""),
            ("<o'brien@x-y.example>", "o'brien", "x-y.example", ""),
        ] {
            assert_eq!(
                mailbox(input),
                Ok((local.into(), domain.into(), rest.into())),
                "{input}"
            );
        }
    }

    #[test]
    fn mailbox_parse() {
        let m = Mailbox::parse("\"a b\"@[IPv6:::1]").unwrap();
        assert_eq!((m.local_part(), m.domain()), ("\"a b\"", "[IPv6:::1]"));
        assert_eq!(m.to_string(), "\"a b\"@[IPv6:::1]");
        for bad in ["", "a", "<a@b.example>", "a@b.example> x", "Postmaster"] {
            assert!(Mailbox::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn null_and_postmaster() {
        assert_eq!(parse_path("<> X"), Ok((PathValue::Null, " X")));
        assert_eq!(
            parse_path("<PostMaster>"),
            Ok((PathValue::Postmaster("PostMaster".into()), ""))
        );
    }

    #[test]
    fn invalid_paths() {
        let long_local = format!("<{}@example.org>", "a".repeat(65));
        let long_label = format!("<a@{}.example>", "b".repeat(64));
        let long_path = format!("<{}@{}>", "a".repeat(60), vec!["c".repeat(60); 4].join("."));
        for (input, error) in [
            ("a@example.org", AddressError::MissingBrackets),
            ("<a@example.org", AddressError::MissingBrackets),
            ("<a>", AddressError::MissingDomain),
            ("<a@>", AddressError::InvalidDomain),
            ("<a..b@example.org>", AddressError::InvalidLocalPart),
            ("<.a@example.org>", AddressError::InvalidLocalPart),
            ("<a b@example.org>", AddressError::MissingDomain),
            (
                "<\"unterminated@example.org>",
                AddressError::InvalidLocalPart,
            ),
            ("<a@-x.example>", AddressError::InvalidDomain),
            ("<a@x..example>", AddressError::InvalidDomain),
            ("<a@[999.0.0.1]>", AddressError::InvalidAddressLiteral),
            ("<a@[IPv6:zz]>", AddressError::InvalidAddressLiteral),
            ("<@:a@example.org>", AddressError::InvalidSourceRoute),
            (
                "<@a.example;b:a@example.org>",
                AddressError::InvalidSourceRoute,
            ),
            (long_local.as_str(), AddressError::LocalPartTooLong),
            (long_label.as_str(), AddressError::DomainTooLong),
            (long_path.as_str(), AddressError::PathTooLong),
        ] {
            assert_eq!(parse_path(input), Err(error), "{input}");
        }
    }

    #[test]
    fn client_names_in_every_real_form() {
        use AddressLiteral::*;
        for (input, expected) in [
            (
                "mail.example.org",
                ClientName::Domain("mail.example.org".into()),
            ),
            ("localhost", ClientName::Domain("localhost".into())),
            (
                "[192.0.2.1]",
                ClientName::Literal(Ipv4([192, 0, 2, 1].into())),
            ),
            (
                "[127.0.0.1]",
                ClientName::Literal(Ipv4([127, 0, 0, 1].into())),
            ),
            (
                "[10.1.2.3]",
                ClientName::Literal(Ipv4([10, 1, 2, 3].into())),
            ),
            ("[IPv6:::1]", ClientName::Literal(Ipv6(Ipv6Addr::LOCALHOST))),
            (
                "[ipv6:fe80::1]",
                ClientName::Literal(Ipv6("fe80::1".parse().unwrap())),
            ),
            (
                "[IPV6:2001:DB8::1]",
                ClientName::Literal(Ipv6("2001:db8::1".parse().unwrap())),
            ),
            (
                "DESKTOP-AB_12",
                ClientName::Unchecked("DESKTOP-AB_12".into()),
            ),
            ("192.168.1.5", ClientName::Domain("192.168.1.5".into())),
        ] {
            assert_eq!(parse_client_name(input), Ok(expected), "{input}");
        }
        for input in ["", "[1.2.3]", "[IPv6:1.2.3.4]", "[192.0.2.1", "a\tb"] {
            assert!(parse_client_name(input).is_err(), "{input}");
        }
    }

    #[test]
    fn client_names_display_as_a_trace_header_would_show_them() {
        assert_eq!(
            parse_client_name("[IPv6:2001:DB8::1]").unwrap().to_string(),
            "[IPv6:2001:db8::1]"
        );
        assert_eq!(
            parse_client_name("[x-tag:abc]").unwrap().to_string(),
            "[x-tag:abc]"
        );
    }
}
