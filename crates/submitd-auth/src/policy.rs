//! Which sender addresses an authenticated user may use.
//!
//! Both the envelope sender (MAIL FROM) and the header From: (and Sender:
//! when present) must be one of the user's addresses or in one of the
//! user's domains. The header check is what stops a stolen account from
//! sending mail that *shows* the CEO as its author. Domains compare
//! without regard to ASCII case; local parts compare exactly, as RFC 5321
//! §2.4 says, after removing quoting that changes nothing (`"alice"` is
//! `alice`).

use crate::store::User;

/// One entry of `send-as=`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// `alice@example.org`: this address.
    Address { local: String, domain: String },
    /// `@example.org`: any address in the domain.
    Domain(String),
}

/// The addresses and domains a user may send as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendAs {
    entries: Vec<Entry>,
}

/// A sender refused by policy. The text names the address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The envelope sender is not the user's.
    #[error("sender address <{address}> is not allowed for user {user}")]
    EnvelopeSender {
        /// The refused address.
        address: String,
        /// The authenticated user.
        user: String,
    },
    /// A From: or Sender: header address is not the user's.
    #[error("{header} address <{address}> is not allowed for user {user}")]
    HeaderSender {
        /// `From` or `Sender`.
        header: &'static str,
        /// The refused address.
        address: String,
        /// The authenticated user.
        user: String,
    },
}

/// A `send-as=` entry that is neither an address nor a domain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{item:?} is neither an address (user@example.org) nor a domain (@example.org)")]
pub struct SendAsError {
    /// The entry as written.
    pub item: String,
}

impl SendAs {
    /// Parses `addr,@domain,...`.
    pub fn parse(value: &str) -> Result<Self, SendAsError> {
        let mut entries = Vec::new();
        for item in value.split(',') {
            let entry = match item.rsplit_once('@') {
                Some(("", domain)) if valid_domain(domain) => {
                    Entry::Domain(domain.to_ascii_lowercase())
                }
                Some((local, domain)) if !local.is_empty() && valid_domain(domain) => {
                    Entry::Address {
                        local: normalize_local(local),
                        domain: domain.to_ascii_lowercase(),
                    }
                }
                _ => {
                    return Err(SendAsError {
                        item: item.to_owned(),
                    })
                }
            };
            entries.push(entry);
        }
        Ok(Self { entries })
    }

    /// Whether `local@domain` is allowed.
    pub fn allows(&self, local: &str, domain: &str) -> bool {
        let local = normalize_local(local);
        self.entries.iter().any(|entry| match entry {
            Entry::Domain(d) => d.eq_ignore_ascii_case(domain),
            Entry::Address {
                local: l,
                domain: d,
            } => *l == local && d.eq_ignore_ascii_case(domain),
        })
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// `"alice"` and `"al\ice"` are `alice`; a quoted local part that needs its
/// quotes (`"a b"`) stays as written.
fn normalize_local(local: &str) -> String {
    let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) else {
        return local.to_owned();
    };
    let mut unquoted = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => unquoted.extend(chars.next()),
            c => unquoted.push(c),
        }
    }
    let is_atext = |c: char| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let dot_atom = !unquoted.is_empty()
        && unquoted
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext));
    if dot_atom {
        unquoted
    } else {
        local.to_owned()
    }
}

/// Checks the envelope sender; `None` is the null sender `<>`, which is
/// always allowed (bounces and receipts use it).
pub fn check_envelope_sender(user: &User, sender: Option<(&str, &str)>) -> Result<(), PolicyError> {
    match sender {
        None => Ok(()),
        Some(_) if user.relax.envelope => Ok(()),
        Some((local, domain)) if user.send_as.allows(local, domain) => Ok(()),
        Some((local, domain)) => Err(PolicyError::EnvelopeSender {
            address: format!("{local}@{domain}"),
            user: user.name.clone(),
        }),
    }
}

/// Checks the addresses of the From: header and of Sender: when present.
pub fn check_header_senders(
    user: &User,
    from: &[(&str, &str)],
    sender: Option<(&str, &str)>,
) -> Result<(), PolicyError> {
    if user.relax.header {
        return Ok(());
    }
    let headers = from
        .iter()
        .map(|a| ("From", *a))
        .chain(sender.map(|a| ("Sender", a)));
    for (header, (local, domain)) in headers {
        if !user.send_as.allows(local, domain) {
            return Err(PolicyError::HeaderSender {
                header,
                address: format!("{local}@{domain}"),
                user: user.name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::SendingLimits;
    use crate::store::Relax;

    fn user(send_as: &str, relax: Relax) -> User {
        User {
            name: "alice".into(),
            password_hash: None,
            send_as: SendAs::parse(send_as).unwrap(),
            app_passwords: vec![],
            limits: SendingLimits::default(),
            relax,
        }
    }

    #[test]
    fn addresses_and_domains() {
        let send_as = SendAs::parse("alice@Example.org,@example.net").unwrap();
        for (local, domain, allowed) in [
            ("alice", "example.org", true),
            ("alice", "EXAMPLE.ORG", true),
            ("\"alice\"", "example.org", true),
            ("\"al\\ice\"", "example.org", true),
            ("Alice", "example.org", false),
            ("alice2", "example.org", false),
            ("bob", "example.org", false),
            ("anyone", "example.net", true),
            ("anyone", "sub.example.net", false),
            ("alice", "example.org.evil", false),
            ("\"alice bob\"", "example.net", true),
        ] {
            assert_eq!(send_as.allows(local, domain), allowed, "{local}@{domain}");
        }
        for bad in ["", "alice", "alice@", "@", "a@b..c", "alice@exa mple.org"] {
            assert!(SendAs::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn envelope_and_header_checks() {
        let alice = user("alice@example.org", Relax::default());
        assert_eq!(
            check_envelope_sender(&alice, Some(("alice", "example.org"))),
            Ok(())
        );
        assert_eq!(check_envelope_sender(&alice, None), Ok(()));
        let refused = check_envelope_sender(&alice, Some(("ceo", "example.org"))).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "sender address <ceo@example.org> is not allowed for user alice"
        );
        assert_eq!(
            check_header_senders(&alice, &[("alice", "example.org")], None),
            Ok(())
        );
        let refused = check_header_senders(&alice, &[("ceo", "example.org")], None).unwrap_err();
        assert!(refused
            .to_string()
            .starts_with("From address <ceo@example.org>"));
        let refused = check_header_senders(
            &alice,
            &[("alice", "example.org")],
            Some(("ceo", "example.org")),
        )
        .unwrap_err();
        assert!(refused
            .to_string()
            .starts_with("Sender address <ceo@example.org>"));
        // Several From: addresses: every one must be allowed.
        assert!(check_header_senders(
            &alice,
            &[("alice", "example.org"), ("ceo", "example.org")],
            None
        )
        .is_err());
    }

    #[test]
    fn relaxing_is_per_check() {
        let relaxed = user(
            "alice@example.org",
            Relax {
                envelope: true,
                header: false,
            },
        );
        assert_eq!(
            check_envelope_sender(&relaxed, Some(("list-bounces", "lists.example"))),
            Ok(())
        );
        assert!(check_header_senders(&relaxed, &[("ceo", "example.org")], None).is_err());
        let relaxed = user(
            "alice@example.org",
            Relax {
                envelope: false,
                header: true,
            },
        );
        assert!(check_envelope_sender(&relaxed, Some(("ceo", "example.org"))).is_err());
        assert_eq!(
            check_header_senders(&relaxed, &[("ceo", "example.org")], None),
            Ok(())
        );
    }
}
