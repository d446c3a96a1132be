//! The credential file: one user per line, plain text an admin can edit and
//! diff (format in `docs/credentials.md`).
//!
//! ```text
//! # USER  PASSWORD-HASH  [send-as=ADDR,...] [app:LABEL=ID:HASH ...]
//! #       [max-messages=N/h,N/d] [max-recipients=N/h,N/d] [relax=envelope,header]
//! alice  $argon2id$v=19$m=19456,t=2,p=1$...  send-as=alice@example.org,@example.net
//! ```
//!
//! A malformed line is reported with file and line number and skipped; the
//! other users keep working. A reload whose file has any error keeps the
//! old users in force.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use crate::limits::SendingLimits;
use crate::policy::SendAs;

/// One problem in the credential file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct LineError {
    /// The file.
    pub path: PathBuf,
    /// The line number, from 1.
    pub line: usize,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Why the credential file could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be read.
    #[error("{}: cannot read the credential file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reload refused: the new file would drop every user, or more of them
    /// than the guard allows; the old users stay in force.
    #[error("{}: reload refused: it would leave {after} of {before} users (more than {max_drop}% gone); the previous users stay in force. If this is meant, restart submitd (a fresh start takes the file as it is) or raise [auth] reload_max_drop", path.display())]
    TooManyDropped {
        /// The file.
        path: PathBuf,
        /// Users in force.
        before: usize,
        /// Users in the new file.
        after: usize,
        /// The share, in percent, a reload may drop.
        max_drop: u8,
    },
    /// Reload refused: the new file has errors, the old users stay in force.
    #[error("{} has {} error(s); the previous users stay in force. First: {}", path.display(), errors.len(), errors.first().map(ToString::to_string).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        errors: Vec<LineError>,
    },
}

/// An extra, revocable password for one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPassword {
    /// The admin's name for it ("phone").
    pub label: String,
    /// The public id that starts the password (see [`crate::password`]).
    pub id: String,
    /// Its argon2id PHC hash.
    pub hash: String,
}

/// What a user may relax of the sender checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Relax {
    /// Any envelope sender (MAIL FROM) is allowed.
    pub envelope: bool,
    /// Any header From:/Sender: is allowed.
    pub header: bool,
}

/// One user of the credential file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The name as written in the file; logins match it ASCII-case-blind.
    pub name: String,
    /// The main password's PHC hash; `None` (written `-`) when only app
    /// passwords may log in.
    pub password_hash: Option<String>,
    /// Addresses and domains the user may send as.
    pub send_as: SendAs,
    /// Extra passwords, one per device.
    pub app_passwords: Vec<AppPassword>,
    /// Sending limits that replace the defaults, where set.
    pub limits: SendingLimits,
    /// Sender checks relaxed for this user.
    pub relax: Relax,
}

/// All users of one version of the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
    by_name: HashMap<String, User>,
}

impl Users {
    /// The user for a login name, matched ASCII-case-insensitively.
    pub fn get(&self, login: &str) -> Option<&User> {
        self.by_name.get(&login.to_ascii_lowercase())
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Every user, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.by_name.values()
    }

    /// Parses a whole file's text. Returns the users of the good lines and
    /// an error for every bad one.
    pub fn parse(path: &Path, text: &str) -> (Self, Vec<LineError>) {
        let mut users = Self::default();
        let mut errors = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let error = |message: String| LineError {
                path: path.to_owned(),
                line: index + 1,
                message,
            };
            match parse_line(line) {
                Ok(None) => {}
                Ok(Some(user)) => {
                    let key = user.name.to_ascii_lowercase();
                    match users.by_name.entry(key) {
                        std::collections::hash_map::Entry::Occupied(_) => {
                            errors.push(error(format!(
                                "user {:?} appears twice; the first line stays in force",
                                user.name
                            )));
                        }
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            slot.insert(user);
                        }
                    }
                }
                Err(message) => errors.push(error(message)),
            }
        }
        (users, errors)
    }
}

/// One line of the file as fields, kept in order so edits can rewrite a
/// line and leave the rest of it as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) name: String,
    pub(crate) hash: String,
    pub(crate) fields: Vec<(String, String)>,
}

impl Record {
    pub(crate) fn split(line: &str) -> Option<Result<Self, String>> {
        let content = line.trim();
        if content.is_empty() || content.starts_with('#') {
            return None;
        }
        let mut words = content.split_whitespace();
        let name = words.next()?.to_owned();
        let Some(hash) = words.next() else {
            return Some(Err(format!(
                "user {name:?} has no password hash; write an argon2id hash from `submitd hash-password`, or - for app passwords only"
            )));
        };
        let mut fields = Vec::new();
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Some(Err(format!(
                    "{word:?} is not KEY=VALUE (keys: send-as, app:LABEL, max-messages, max-recipients, relax)"
                )));
            };
            fields.push((key.to_owned(), value.to_owned()));
        }
        Some(Ok(Self {
            name,
            hash: hash.to_owned(),
            fields,
        }))
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.hash)?;
        for (key, value) in &self.fields {
            write!(f, " {key}={value}")?;
        }
        Ok(())
    }
}

/// Parses one line; `Ok(None)` for comments and blank lines.
pub(crate) fn parse_line(line: &str) -> Result<Option<User>, String> {
    let Some(record) = Record::split(line) else {
        return Ok(None);
    };
    let record = record?;
    user_from_record(&record).map(Some)
}

pub(crate) fn user_from_record(record: &Record) -> Result<User, String> {
    let name = &record.name;
    if name.len() > crate::sasl::MAX_USERNAME || name.chars().any(char::is_control) {
        return Err(format!(
            "user name {name:?} is too long or holds control characters"
        ));
    }
    let password_hash = match record.hash.as_str() {
        "-" => None,
        hash => {
            crate::password::check_phc(hash).map_err(|e| format!("user {name:?}: {e}"))?;
            Some(hash.to_owned())
        }
    };
    let mut user = User {
        name: name.clone(),
        password_hash,
        send_as: SendAs::default(),
        app_passwords: Vec::new(),
        limits: SendingLimits::default(),
        relax: Relax::default(),
    };
    for (key, value) in &record.fields {
        match key.as_str() {
            "send-as" => {
                user.send_as = SendAs::parse(value).map_err(|e| format!("user {name:?}: send-as: {e}"))?;
            }
            "max-messages" => {
                let (hour, day) = SendingLimits::parse_pair(value)
                    .map_err(|e| format!("user {name:?}: max-messages: {e}"))?;
                user.limits.messages_per_hour = hour;
                user.limits.messages_per_day = day;
            }
            "max-recipients" => {
                let (hour, day) = SendingLimits::parse_pair(value)
                    .map_err(|e| format!("user {name:?}: max-recipients: {e}"))?;
                user.limits.recipients_per_hour = hour;
                user.limits.recipients_per_day = day;
            }
            "relax" => {
                for item in value.split(',') {
                    match item {
                        "envelope" => user.relax.envelope = true,
                        "header" => user.relax.header = true,
                        other => {
                            return Err(format!(
                                "user {name:?}: relax: {other:?} is not envelope or header"
                            ))
                        }
                    }
                }
            }
            app if app.starts_with("app:") => {
                let label = &app[4..];
                let valid_label = !label.is_empty()
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
                if !valid_label {
                    return Err(format!(
                        "user {name:?}: app password label {label:?} must be letters, digits, - _ ."
                    ));
                }
                let Some((id, hash)) = value.split_once(':') else {
                    return Err(format!(
                        "user {name:?}: app:{label} must be ID:HASH as written by `submitd user app-password`"
                    ));
                };
                if !crate::password::is_app_id(id) {
                    return Err(format!("user {name:?}: app:{label}: {id:?} is not an app password id"));
                }
                crate::password::check_phc(hash)
                    .map_err(|e| format!("user {name:?}: app:{label}: {e}"))?;
                if user.app_passwords.iter().any(|a| a.label == label || a.id == id) {
                    return Err(format!("user {name:?}: app password {label:?} given twice"));
                }
                user.app_passwords.push(AppPassword {
                    label: label.to_owned(),
                    id: id.to_owned(),
                    hash: hash.to_owned(),
                });
            }
            other => {
                return Err(format!(
                    "user {name:?}: unknown key {other:?} (keys: send-as, app:LABEL, max-messages, max-recipients, relax)"
                ))
            }
        }
    }
    Ok(user)
}

/// The users in force, reloadable while sessions run.
#[derive(Debug)]
pub struct CredentialStore {
    path: PathBuf,
    current: RwLock<Arc<Users>>,
    /// Counts reloads that changed the users (the login gate forgets its
    /// throttle when it moves).
    generation: AtomicU64,
    /// Counts every reload asked for, whatever came of it (the
    /// verified-credential cache is flushed when it moves).
    reloads: AtomicU64,
    /// The share of users, in percent, a reload may drop.
    max_drop: AtomicU8,
}

/// What a reload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// Users now in force.
    pub users: usize,
    /// Whether they differ from those before.
    pub changed: bool,
}

/// The share of users a reload may drop when the config does not say: a
/// file that would lose more (or all of them: empty, truncated, the wrong
/// file) is refused, since every login would then fail and every client
/// address soon be blocked.
pub const DEFAULT_RELOAD_MAX_DROP: u8 = 50;

impl CredentialStore {
    /// Loads the file at start. Bad lines are returned and skipped; the
    /// store works with the rest. Fails only if the file cannot be read.
    pub fn open(path: impl Into<PathBuf>) -> Result<(Self, Vec<LineError>), StoreError> {
        let path = path.into();
        let (users, errors) = Self::read(&path)?;
        if users.is_empty() {
            tracing::warn!(target: "submitd::auth", path = %path.display(), "the credential file has no users: every login fails");
        }
        Ok((
            Self {
                path,
                current: RwLock::new(Arc::new(users)),
                generation: AtomicU64::new(0),
                reloads: AtomicU64::new(0),
                max_drop: AtomicU8::new(DEFAULT_RELOAD_MAX_DROP),
            },
            errors,
        ))
    }

    /// Sets the share of users, in percent (at most 100), a reload may
    /// drop; 100 turns the guard off.
    pub fn set_reload_max_drop(&self, percent: u8) {
        self.max_drop.store(percent.min(100), Ordering::Relaxed);
    }

    /// How many reloads changed the users so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// How many reloads were asked for so far, whatever came of them.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Acquire)
    }

    /// Reads the file again (on SIGHUP). If it cannot be read, has any
    /// error, or would drop all users or more than the guard allows, the
    /// users in force stay and the error says why.
    pub fn reload(&self) -> Result<Reloaded, StoreError> {
        self.reloads.fetch_add(1, Ordering::AcqRel);
        let (users, errors) = Self::read(&self.path)?;
        if !errors.is_empty() {
            return Err(StoreError::Invalid {
                path: self.path.clone(),
                errors,
            });
        }
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (before, after) = (current.len(), users.len());
        let max_drop = self.max_drop.load(Ordering::Relaxed);
        let dropped = before.saturating_sub(after);
        let too_many = before > 0
            && max_drop < 100
            && (after == 0 || dropped * 100 > before * usize::from(max_drop));
        if too_many {
            return Err(StoreError::TooManyDropped {
                path: self.path.clone(),
                before,
                after,
                max_drop,
            });
        }
        let changed = **current != users;
        if changed {
            *current = Arc::new(users);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(Reloaded {
            users: after,
            changed,
        })
    }

    /// The users in force now. Cheap: a reference-counted snapshot.
    pub fn users(&self) -> Arc<Users> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(&current)
    }

    /// The file this store reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(path: &Path) -> Result<(Users, Vec<LineError>), StoreError> {
        let text = std::fs::read_to_string(path).map_err(|source| StoreError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Users::parse(path, &text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3Wf4yJt1FbqaJfaJrDXyvsCt7ocqBXKMxlFJQf1Wyvg";

    fn parse(text: &str) -> (Users, Vec<LineError>) {
        Users::parse(Path::new("users.txt"), text)
    }

    #[test]
    fn full_line() {
        let text = format!(
            "# comment\n\n  alice {HASH} send-as=alice@example.org,@Example.NET app:phone=abcd:{HASH} app:laptop=efgh:{HASH} max-messages=10/h,50/d max-recipients=100/h,500/d relax=header\nbob - app:tablet=wxyz:{HASH}\n"
        );
        let (users, errors) = parse(&text);
        assert_eq!(errors, vec![]);
        let alice = users.get("ALICE").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.password_hash.as_deref(), Some(HASH));
        assert_eq!(alice.app_passwords.len(), 2);
        assert_eq!(alice.app_passwords[0].label, "phone");
        assert_eq!(alice.app_passwords[0].id, "abcd");
        assert_eq!(alice.limits.messages_per_hour, Some(10));
        assert_eq!(alice.limits.recipients_per_day, Some(500));
        assert!(alice.relax.header && !alice.relax.envelope);
        assert!(alice.send_as.allows("alice", "EXAMPLE.org"));
        assert!(alice.send_as.allows("anyone", "example.net"));
        let bob = users.get("bob").unwrap();
        assert_eq!(bob.password_hash, None);
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let text = format!(
            "alice {HASH}\nbroken\ncarol notahash\ndave {HASH} colour=blue\nerin {HASH} relax=all\nfrank {HASH} app:phone={HASH}\nalice {HASH}\ngina {HASH} send-as=not-an-address\nhal {HASH}\n"
        );
        let (users, errors) = parse(&text);
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8]);
        assert!(users.get("alice").is_some() && users.get("hal").is_some());
        assert_eq!(users.len(), 2);
        let shown = errors[2].to_string();
        assert!(shown.starts_with("users.txt:4: "), "{shown}");
        assert!(shown.contains("colour"), "{shown}");
        assert!(errors[0].to_string().contains("submitd hash-password"));
    }

    #[test]
    fn reload_keeps_the_old_users_when_the_new_file_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, format!("alice {HASH}\n")).unwrap();
        let (store, errors) = CredentialStore::open(&path).unwrap();
        assert!(errors.is_empty());
        std::fs::write(&path, format!("alice {HASH}\nbob {HASH}\n")).unwrap();
        assert_eq!(
            store.reload().unwrap(),
            Reloaded {
                users: 2,
                changed: true
            }
        );
        std::fs::write(&path, format!("carol {HASH}\nbroken\n")).unwrap();
        let error = store.reload().unwrap_err();
        assert!(error.to_string().contains(":2:"), "{error}");
        assert!(store.users().get("bob").is_some());
        assert!(store.users().get("carol").is_none());
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(store.reload(), Err(StoreError::Read { .. })));
        assert_eq!(store.users().len(), 2);
    }

    #[test]
    fn record_round_trip_keeps_fields_in_order() {
        let line = format!("alice {HASH} relax=header send-as=@example.org");
        let record = Record::split(&line).unwrap().unwrap();
        assert_eq!(record.to_string(), line);
    }
}
