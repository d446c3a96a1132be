//! ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2 `esmtp-param`).
//!
//! MAIL: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), RET and
//! ENVID (RFC 3461), AUTH= (RFC 4954 §5). RCPT: NOTIFY and ORCPT (RFC 3461).
//! Values given as xtext are kept in their encoded form, as the relay passes
//! them on unchanged.

use std::collections::HashSet;

/// Longest ENVID, in octets of xtext (RFC 3461 §4.4 bounds it at 100).
const MAX_ENVID: usize = 100;
/// Longest ORCPT and AUTH= values, in octets (RFC 3461 §4.2, RFC 4954 §5).
const MAX_ADDRESS_PARAM: usize = 500;

/// Why a parameter list was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A keyword the server did not advertise (555 5.5.4).
    #[error("parameter {0} is not supported")]
    Unknown(String),
    /// The same keyword twice.
    #[error("parameter {0} is given twice")]
    Duplicate(String),
    /// A known keyword with a bad or missing value.
    #[error("parameter {0} has an invalid value")]
    Invalid(String),
    /// Not `keyword[=value]` separated by spaces.
    #[error("the parameters are not well formed")]
    Syntax,
}

/// The declared body type (RFC 6152).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// What a DSN for this message should return (RFC 3461 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Headers only.
    Hdrs,
}

/// The parameters of a MAIL command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// Declared size in octets.
    pub size: Option<u64>,
    /// Declared body type.
    pub body: Option<BodyType>,
    /// The transaction uses internationalised addresses or headers.
    pub smtputf8: bool,
    /// DSN return content.
    pub ret: Option<Ret>,
    /// DSN envelope identifier, as xtext.
    pub envid: Option<String>,
    /// The AUTH= submitter, as xtext (`<>` when unknown).
    pub auth: Option<String>,
}

/// When the sender wants a DSN for one recipient (RFC 3461 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// `NOTIFY=NEVER`.
    Never,
    /// Some of SUCCESS, FAILURE, DELAY.
    On {
        /// On delivery.
        success: bool,
        /// On failure.
        failure: bool,
        /// On delay.
        delay: bool,
    },
}

/// The original recipient (RFC 3461 §4.2): address type and xtext address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orcpt {
    /// The address type, such as `rfc822` or `utf-8`.
    pub addr_type: String,
    /// The address, as xtext.
    pub addr: String,
}

/// The parameters of an RCPT command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// DSN conditions.
    pub notify: Option<Notify>,
    /// Original recipient.
    pub orcpt: Option<Orcpt>,
}

/// Splits `KEY[=VALUE]` items separated by spaces, refusing repeats.
fn items(input: &str) -> Result<Vec<(String, Option<&str>)>, ParamError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for item in input.split(' ').filter(|s| !s.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let key_ok = key.starts_with(|c: char| c.is_ascii_alphanumeric())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !key_ok {
            return Err(ParamError::Syntax);
        }
        // esmtp-value: 1*(%d33-60 / %d62-126), plus UTF-8 under SMTPUTF8.
        if let Some(v) = value {
            if v.is_empty() || v.chars().any(|c| c.is_control() || c == '=' || c == ' ') {
                return Err(ParamError::Invalid(key.to_ascii_uppercase()));
            }
        }
        let key = key.to_ascii_uppercase();
        if !seen.insert(key.clone()) {
            return Err(ParamError::Duplicate(key));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Parses the parameters after `MAIL FROM:<...>`.
pub(crate) fn parse_mail_params(input: &str) -> Result<MailParams, ParamError> {
    let mut params = MailParams::default();
    for (key, value) in items(input)? {
        let invalid = || ParamError::Invalid(key.clone());
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                // More than u64 octets is more than any limit: saturate.
                params.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {
                params.body = Some(BodyType::SevenBit);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                params.body = Some(BodyType::EightBitMime);
            }
            // BINARYMIME is not advertised (no BINARY support).
            ("SMTPUTF8", None) => params.smtputf8 = true,
            ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => params.ret = Some(Ret::Full),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => params.ret = Some(Ret::Hdrs),
            ("ENVID", Some(v)) if v.len() <= MAX_ENVID && is_xtext(v) => {
                params.envid = Some(v.to_owned());
            }
            ("AUTH", Some(v)) if v.len() <= MAX_ADDRESS_PARAM && (v == "<>" || is_xtext(v)) => {
                params.auth = Some(v.to_owned());
            }
            ("SIZE" | "BODY" | "SMTPUTF8" | "RET" | "ENVID" | "AUTH", _) => return Err(invalid()),
            _ => return Err(ParamError::Unknown(key)),
        }
    }
    Ok(params)
}

/// Parses the parameters after `RCPT TO:<...>`.
pub(crate) fn parse_rcpt_params(input: &str) -> Result<RcptParams, ParamError> {
    let mut params = RcptParams::default();
    for (key, value) in items(input)? {
        let invalid = || ParamError::Invalid(key.clone());
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => params.notify = Some(parse_notify(v).ok_or_else(invalid)?),
            ("ORCPT", Some(v)) => {
                let (addr_type, addr) = v.split_once(';').ok_or_else(invalid)?;
                let type_ok = !addr_type.is_empty()
                    && addr_type
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !type_ok || addr.is_empty() || v.len() > MAX_ADDRESS_PARAM || !is_xtext(addr) {
                    return Err(invalid());
                }
                params.orcpt = Some(Orcpt {
                    addr_type: addr_type.to_owned(),
                    addr: addr.to_owned(),
                });
            }
            ("NOTIFY" | "ORCPT", None) => return Err(invalid()),
            _ => return Err(ParamError::Unknown(key)),
        }
    }
    Ok(params)
}

fn parse_notify(value: &str) -> Option<Notify> {
    if value.eq_ignore_ascii_case("NEVER") {
        return Some(Notify::Never);
    }
    let (mut success, mut failure, mut delay) = (false, false, false);
    for word in value.split(',') {
        let flag = match word.to_ascii_uppercase().as_str() {
            "SUCCESS" => &mut success,
            "FAILURE" => &mut failure,
            "DELAY" => &mut delay,
            _ => return None, // NEVER mixed with others, or unknown
        };
        if *flag {
            return None;
        }
        *flag = true;
    }
    Some(Notify::On {
        success,
        failure,
        delay,
    })
}

/// Writes MAIL parameters in wire form, each preceded by a space.
pub(crate) fn write_mail_params(
    p: &MailParams,
    f: &mut std::fmt::Formatter<'_>,
) -> std::fmt::Result {
    if let Some(size) = p.size {
        write!(f, " SIZE={size}")?;
    }
    match p.body {
        Some(BodyType::SevenBit) => f.write_str(" BODY=7BIT")?,
        Some(BodyType::EightBitMime) => f.write_str(" BODY=8BITMIME")?,
        None => {}
    }
    if p.smtputf8 {
        f.write_str(" SMTPUTF8")?;
    }
    match p.ret {
        Some(Ret::Full) => f.write_str(" RET=FULL")?,
        Some(Ret::Hdrs) => f.write_str(" RET=HDRS")?,
        None => {}
    }
    if let Some(envid) = &p.envid {
        write!(f, " ENVID={envid}")?;
    }
    if let Some(auth) = &p.auth {
        write!(f, " AUTH={auth}")?;
    }
    Ok(())
}

/// Writes RCPT parameters in wire form, each preceded by a space.
pub(crate) fn write_rcpt_params(
    p: &RcptParams,
    f: &mut std::fmt::Formatter<'_>,
) -> std::fmt::Result {
    match p.notify {
        Some(Notify::Never) => f.write_str(" NOTIFY=NEVER")?,
        Some(Notify::On {
            success,
            failure,
            delay,
        }) => {
            let words: Vec<&str> = [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
                .into_iter()
                .filter_map(|(on, word)| on.then_some(word))
                .collect();
            write!(f, " NOTIFY={}", words.join(","))?;
        }
        None => {}
    }
    if let Some(orcpt) = &p.orcpt {
        write!(f, " ORCPT={};{}", orcpt.addr_type, orcpt.addr)?;
    }
    Ok(())
}

/// RFC 3461 §4 xtext: printable ASCII but `+` and `=`, or `+XX` in upper
/// case hex. Under SMTPUTF8 non-ASCII characters are also allowed as sent
/// (RFC 6533 utf-8-addr-xtext keeps them when the next hop offers SMTPUTF8).
pub(crate) fn is_xtext(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = |b: u8| b.is_ascii_digit() || (b'A'..=b'F').contains(&b);
                if i + 2 >= bytes.len() {
                    return false;
                }
                if !(hex(bytes[i + 1]) && hex(bytes[i + 2])) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            b'!'..=b'~' | 0x80.. => i += 1,
            _ => return false,
        }
    }
    true
}

/// Decodes xtext into bytes; `None` if it is not valid xtext.
pub fn decode_xtext(value: &str) -> Option<Vec<u8>> {
    if !is_xtext(value) {
        return None;
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_params() {
        let p = parse_mail_params(
            " SIZE=1000 body=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=alice+40example.org",
        )
        .unwrap();
        assert_eq!(
            p,
            MailParams {
                size: Some(1000),
                body: Some(BodyType::EightBitMime),
                smtputf8: true,
                ret: Some(Ret::Hdrs),
                envid: Some("QQ+2B1".into()),
                auth: Some("alice+40example.org".into()),
            }
        );
        assert_eq!(
            parse_mail_params("AUTH=<>").unwrap().auth.as_deref(),
            Some("<>")
        );
        assert_eq!(
            parse_mail_params("SIZE=99999999999999999999").unwrap().size,
            Some(u64::MAX)
        );
        assert_eq!(parse_mail_params("").unwrap(), MailParams::default());
    }

    #[test]
    fn mail_param_errors() {
        for (input, error) in [
            ("FOO=1", ParamError::Unknown("FOO".into())),
            ("BODY=BINARYMIME", ParamError::Invalid("BODY".into())),
            ("SIZE=12a", ParamError::Invalid("SIZE".into())),
            ("SIZE", ParamError::Invalid("SIZE".into())),
            ("SMTPUTF8=yes", ParamError::Invalid("SMTPUTF8".into())),
            ("SIZE=1 size=2", ParamError::Duplicate("SIZE".into())),
            ("RET=ALL", ParamError::Invalid("RET".into())),
            ("ENVID=a+zz", ParamError::Invalid("ENVID".into())),
            ("ENVID=a+4", ParamError::Invalid("ENVID".into())),
            ("=x", ParamError::Syntax),
            ("SIZE=", ParamError::Invalid("SIZE".into())),
        ] {
            assert_eq!(parse_mail_params(input), Err(error), "{input}");
        }
        let long_envid = format!("ENVID={}", "a".repeat(101));
        assert_eq!(
            parse_mail_params(&long_envid),
            Err(ParamError::Invalid("ENVID".into()))
        );
    }

    #[test]
    fn rcpt_params() {
        let p = parse_rcpt_params("NOTIFY=SUCCESS,delay ORCPT=rfc822;bob+40example.org").unwrap();
        assert_eq!(
            p.notify,
            Some(Notify::On {
                success: true,
                failure: false,
                delay: true
            })
        );
        assert_eq!(
            p.orcpt,
            Some(Orcpt {
                addr_type: "rfc822".into(),
                addr: "bob+40example.org".into()
            })
        );
        assert_eq!(
            parse_rcpt_params("NOTIFY=never").unwrap().notify,
            Some(Notify::Never)
        );
        for (input, error) in [
            ("NOTIFY=NEVER,SUCCESS", ParamError::Invalid("NOTIFY".into())),
            (
                "NOTIFY=FAILURE,FAILURE",
                ParamError::Invalid("NOTIFY".into()),
            ),
            ("NOTIFY=SOMETIMES", ParamError::Invalid("NOTIFY".into())),
            ("ORCPT=bob@example.org", ParamError::Invalid("ORCPT".into())),
            ("ORCPT=rfc822;", ParamError::Invalid("ORCPT".into())),
            ("SIZE=1", ParamError::Unknown("SIZE".into())),
        ] {
            assert_eq!(parse_rcpt_params(input), Err(error), "{input}");
        }
    }

    #[test]
    fn xtext_round_trip() {
        assert_eq!(decode_xtext("a+2Bb+3D").unwrap(), b"a+b=");
        assert_eq!(decode_xtext("a+2b"), None);
        assert_eq!(decode_xtext("a+"), None);
        assert_eq!(decode_xtext("a+2"), None);
        assert_eq!(decode_xtext("ä").unwrap(), "ä".as_bytes());
    }
}
