//! Which backend checks passwords, and whose sender policy applies to a
//! logged-in user.
//!
//! * `Local`: the credential file's argon2id hashes; only users of the file
//!   can log in, and their line is their policy.
//! * `Dovecot`: a running Dovecot checks the password; the credential
//!   file, where present, still gives the policy (its password column may
//!   be `-`). A Dovecot user without a line may send as their login when
//!   the login is an address (virtual users, `alice@example.org`), and as
//!   nothing otherwise: the refusal then says to add them to the file.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::dovecot::DovecotAuth;
use crate::password::{CheckOutcome, PasswordChecker};
use crate::policy::SendAs;
use crate::store::{Relax, User, Users};
use crate::SendingLimits;

/// The password backend in force.
#[derive(Debug)]
pub enum Authenticator {
    /// argon2id hashes in the credential file.
    Local(PasswordChecker),
    /// A Dovecot auth socket.
    Dovecot(DovecotAuth),
}

impl Authenticator {
    /// Checks one login attempt from `client`.
    pub async fn check(
        &self,
        users: &Users,
        login: &str,
        password: &str,
        client: IpAddr,
    ) -> CheckOutcome {
        match self {
            Self::Local(checker) => checker.check(users, login, password).await,
            Self::Dovecot(dovecot) => dovecot.check(login, password, client).await,
        }
    }

    /// What a verified login is bound to in the cache besides its login
    /// and password: the stored hash it would be checked against (so a new
    /// password or a revoked app password never meets an old entry), or
    /// nothing for Dovecot, whose hashes submitd does not see. `None`: no
    /// such user in the file, so there is nothing a hit could be.
    pub fn cache_binding<'a>(
        &self,
        users: &'a Users,
        login: &str,
        password: &str,
    ) -> Option<&'a str> {
        match self {
            Self::Local(_) => crate::password::stored_hash(users, login, password),
            Self::Dovecot(_) => Some(""),
        }
    }

    /// The user whose policy applies to `name`, logged in by this backend;
    /// `None` when a local user is no longer in the file.
    pub fn policy_user<'a>(&self, users: &'a Users, name: &str) -> Option<Cow<'a, User>> {
        if let Some(user) = users.get(name) {
            return Some(Cow::Borrowed(user));
        }
        match self {
            Self::Local(_) => None,
            Self::Dovecot(_) => Some(Cow::Owned(sending_as(name, name))),
        }
    }
}

/// The policy of a local user (the machine's own, on the local socket):
/// the credential file's line of that name if there is one, else sending
/// as `name@domain` only.
pub fn local_policy_user<'a>(users: &'a Users, name: &str, domain: &str) -> Cow<'a, User> {
    match users.get(name) {
        Some(user) => Cow::Borrowed(user),
        None => Cow::Owned(sending_as(name, &format!("{name}@{domain}"))),
    }
}

/// A user without a line in the file who may send as `address` only (as
/// nothing when it is not an address), with the default limits.
fn sending_as(name: &str, address: &str) -> User {
    User {
        name: name.to_owned(),
        password_hash: None,
        send_as: SendAs::parse(address).unwrap_or_default(),
        app_passwords: Vec::new(),
        limits: SendingLimits::default(),
        relax: Relax::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn dovecot_users_without_a_line_send_as_their_login_address() {
        let (users, _) = Users::parse(Path::new("u"), "dave - send-as=@example.net\n");
        let dovecot = Authenticator::Dovecot(DovecotAuth {
            socket: "/nonexistent".into(),
            timeout: Duration::from_secs(1),
        });
        let carol = dovecot.policy_user(&users, "carol@example.org").unwrap();
        assert!(carol.send_as.allows("carol", "example.org"));
        assert!(!carol.send_as.allows("ceo", "example.org"));
        let bare = dovecot.policy_user(&users, "erin").unwrap();
        assert!(!bare.send_as.allows("erin", "example.org"));
        let dave = dovecot.policy_user(&users, "DAVE").unwrap();
        assert!(dave.send_as.allows("anyone", "example.net"));
        let local = Authenticator::Local(PasswordChecker::new(1).unwrap());
        assert!(local.policy_user(&users, "carol@example.org").is_none());
        assert!(local.policy_user(&users, "dave").is_some());
        // Local (unix) users: their line, else name@domain only.
        let root = local_policy_user(&users, "root", "example.org");
        assert!(root.send_as.allows("root", "example.org"));
        assert!(!root.send_as.allows("ceo", "example.org"));
        assert!(local_policy_user(&users, "dave", "example.org")
            .send_as
            .allows("x", "example.net"));
    }
}
