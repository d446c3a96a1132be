//! Editing the credential file, for the daemon's `user` commands.
//!
//! Each operation reads the file, changes one user's line (other lines,
//! comments and blank lines stay exactly as written) and replaces the file
//! atomically: write a temporary file beside it, fsync it, rename it over
//! the old one, fsync the directory. A crash leaves the old file or the new
//! one, never half of either. The new file keeps the old one's permissions
//! (0600 for a new file): it holds password hashes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::password::{generate_app_password, hash_password, PasswordError};
use crate::policy::SendAs;
use crate::store::{user_from_record, Record};

/// Why an edit was not made. The file is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The user is already in the file.
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// The user is not in the file.
    #[error("no user {0:?}")]
    NoSuchUser(String),
    /// The user has no app password with this label.
    #[error("user {0:?} has no app password {1:?}")]
    NoSuchAppPassword(String, String),
    /// The user already has an app password with this label.
    #[error("user {0:?} already has an app password {1:?}")]
    AppPasswordExists(String, String),
    /// A given value is not valid; the text says what is expected.
    #[error("{0}")]
    Invalid(String),
    /// The user's line in the file could not be read, so it is not edited.
    #[error("{}:{line}: {message}; fix the line first", path.display())]
    BadLine {
        /// The file.
        path: PathBuf,
        /// Its line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Hashing or generating failed.
    #[error(transparent)]
    Password(#[from] PasswordError),
}

/// One user as `user list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    /// The name.
    pub name: String,
    /// Whether a main password is set.
    pub has_password: bool,
    /// The `send-as` value as written.
    pub send_as: String,
    /// App password labels.
    pub app_passwords: Vec<String>,
}

/// Reads a password from the terminal without echo.
pub fn read_password_no_echo(prompt: &str) -> std::io::Result<Zeroizing<String>> {
    rpassword::prompt_password(prompt).map(Zeroizing::new)
}

struct FileLines {
    path: PathBuf,
    lines: Vec<String>,
    trailing_newline: bool,
}

impl FileLines {
    fn read(path: &Path) -> Result<Self, EditError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(EditError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Ok(Self {
            path: path.to_owned(),
            trailing_newline: text.is_empty() || text.ends_with('\n'),
            lines: text.lines().map(str::to_owned).collect(),
        })
    }

    /// The index and parsed record of `name`'s line.
    fn find(&self, name: &str) -> Result<Option<(usize, Record)>, EditError> {
        for (i, line) in self.lines.iter().enumerate() {
            let Some(record) = Record::split(line) else {
                continue;
            };
            let bad = |message: String| EditError::BadLine {
                path: self.path.clone(),
                line: i + 1,
                message,
            };
            let first = line.split_whitespace().next().unwrap_or_default();
            if !first.eq_ignore_ascii_case(name) {
                continue;
            }
            let record = record.map_err(bad)?;
            user_from_record(&record).map_err(bad)?;
            return Ok(Some((i, record)));
        }
        Ok(None)
    }

    fn require(&self, name: &str) -> Result<(usize, Record), EditError> {
        self.find(name)?
            .ok_or_else(|| EditError::NoSuchUser(name.to_owned()))
    }

    fn write(&self) -> Result<(), EditError> {
        let io = |source| EditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut text = self.lines.join("\n");
        if self.trailing_newline && !text.is_empty() {
            text.push('\n');
        }
        write_atomically(&self.path, text.as_bytes()).map_err(io)
    }
}

/// Writes `contents` to `path` so that a crash leaves the old or the new.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let existing = fs::metadata(path).ok();
    let mode = existing
        .as_ref()
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        // The new file keeps the old one's owner: root editing the users
        // file of a daemon that runs as `submitd` must not leave it
        // unreadable to the daemon. Best effort: someone who may not
        // give a file away edits their own, and keeps it.
        if let Some(old) = &existing {
            let _ = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()));
        }
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn check_name(name: &str) -> Result<(), EditError> {
    let ok = !name.is_empty()
        && name.len() <= crate::sasl::MAX_USERNAME
        && !name.starts_with('#')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(EditError::Invalid(format!(
            "user name {name:?} must be 1 to 255 octets without spaces, control characters or a leading #"
        )))
    }
}

/// Adds a user with a password and the addresses they may send as.
pub fn add_user(
    path: &Path,
    name: &str,
    password: &[u8],
    send_as: &[String],
) -> Result<(), EditError> {
    check_name(name)?;
    let send_as = send_as.join(",");
    if !send_as.is_empty() {
        SendAs::parse(&send_as).map_err(|e| EditError::Invalid(format!("send-as: {e}")))?;
    }
    let mut file = FileLines::read(path)?;
    if file.find(name)?.is_some() {
        return Err(EditError::UserExists(name.to_owned()));
    }
    let mut record = Record {
        name: name.to_owned(),
        hash: hash_password(password)?,
        fields: Vec::new(),
    };
    if !send_as.is_empty() {
        record.fields.push(("send-as".into(), send_as));
    }
    file.lines.push(record.to_string());
    file.write()
}

/// Sets a user's main password.
pub fn set_password(path: &Path, name: &str, password: &[u8]) -> Result<(), EditError> {
    let mut file = FileLines::read(path)?;
    let (index, mut record) = file.require(name)?;
    record.hash = hash_password(password)?;
    file.lines[index] = record.to_string();
    file.write()
}

/// Removes a user.
pub fn remove_user(path: &Path, name: &str) -> Result<(), EditError> {
    let mut file = FileLines::read(path)?;
    let (index, _) = file.require(name)?;
    file.lines.remove(index);
    file.write()
}

/// Adds an app password labelled `label`; returns the password, to be shown
/// to the admin once (only its hash is kept).
pub fn add_app_password(
    path: &Path,
    name: &str,
    label: &str,
) -> Result<Zeroizing<String>, EditError> {
    let mut file = FileLines::read(path)?;
    let (index, mut record) = file.require(name)?;
    let key = format!("app:{label}");
    if record.fields.iter().any(|(k, _)| *k == key) {
        return Err(EditError::AppPasswordExists(
            name.to_owned(),
            label.to_owned(),
        ));
    }
    let existing = user_from_record(&record).map_err(EditError::Invalid)?;
    let (id, password) = loop {
        let (id, password) = generate_app_password()?;
        if !existing.app_passwords.iter().any(|a| a.id == id) {
            break (id, password);
        }
    };
    record
        .fields
        .push((key, format!("{id}:{}", hash_password(password.as_bytes())?)));
    // Validates the label the same way loading does.
    user_from_record(&record).map_err(EditError::Invalid)?;
    file.lines[index] = record.to_string();
    file.write()?;
    Ok(password)
}

/// Revokes the app password labelled `label`.
pub fn revoke_app_password(path: &Path, name: &str, label: &str) -> Result<(), EditError> {
    let mut file = FileLines::read(path)?;
    let (index, mut record) = file.require(name)?;
    let key = format!("app:{label}");
    let before = record.fields.len();
    record.fields.retain(|(k, _)| *k != key);
    if record.fields.len() == before {
        return Err(EditError::NoSuchAppPassword(
            name.to_owned(),
            label.to_owned(),
        ));
    }
    file.lines[index] = record.to_string();
    file.write()
}

/// Lists the users of the file, in file order. Lines that cannot be read
/// are left out (the daemon's `check` reports them).
pub fn list_users(path: &Path) -> Result<Vec<UserSummary>, EditError> {
    let file = FileLines::read(path)?;
    Ok(file
        .lines
        .iter()
        .filter_map(|line| Record::split(line)?.ok())
        .filter_map(|record| {
            let user = user_from_record(&record).ok()?;
            let send_as = record
                .fields
                .iter()
                .find(|(k, _)| k == "send-as")
                .map(|(_, v)| v.clone());
            Some(UserSummary {
                name: user.name,
                has_password: user.password_hash.is_some(),
                send_as: send_as.unwrap_or_default(),
                app_passwords: user.app_passwords.into_iter().map(|a| a.label).collect(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Users;

    #[test]
    fn edits_keep_other_lines_and_are_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        fs::write(&path, "# submitd users\n\n# alice is the admin\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();

        add_user(
            &path,
            "alice",
            b"pw1",
            &["alice@example.org".into(), "@example.net".into()],
        )
        .unwrap();
        add_user(&path, "bob", b"pw2", &[]).unwrap();
        assert!(matches!(
            add_user(&path, "ALICE", b"x", &[]),
            Err(EditError::UserExists(_))
        ));
        assert!(matches!(
            add_user(&path, "bad name", b"x", &[]),
            Err(EditError::Invalid(_))
        ));
        assert!(matches!(
            add_user(&path, "carol", b"x", &["nope".into()]),
            Err(EditError::Invalid(_))
        ));

        let phone = add_app_password(&path, "alice", "phone").unwrap();
        assert!(matches!(
            add_app_password(&path, "alice", "phone"),
            Err(EditError::AppPasswordExists(..))
        ));
        assert!(matches!(
            add_app_password(&path, "alice", "bad label"),
            Err(EditError::Invalid(_))
        ));
        add_app_password(&path, "alice", "laptop").unwrap();
        set_password(&path, "bob", b"new").unwrap();

        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# submitd users\n\n# alice is the admin\nalice $argon2id$"),
            "{text}"
        );
        assert!(
            !text.contains(phone.as_str()),
            "the app password itself is never stored"
        );
        let (users, errors) = Users::parse(&path, &text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(users.get("alice").unwrap().app_passwords.len(), 2);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );

        revoke_app_password(&path, "alice", "phone").unwrap();
        assert!(matches!(
            revoke_app_password(&path, "alice", "phone"),
            Err(EditError::NoSuchAppPassword(..))
        ));
        remove_user(&path, "bob").unwrap();
        assert!(matches!(
            remove_user(&path, "bob"),
            Err(EditError::NoSuchUser(_))
        ));

        let listed = list_users(&path).unwrap();
        assert_eq!(
            listed,
            vec![UserSummary {
                name: "alice".into(),
                has_password: true,
                send_as: "alice@example.org,@example.net".into(),
                app_passwords: vec!["laptop".into()],
            }]
        );
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("users")]);
    }

    #[test]
    fn a_new_file_is_private_and_a_bad_line_is_not_edited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        add_user(&path, "alice", b"pw", &[]).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(&path, "alice notahash\n").unwrap();
        let error = set_password(&path, "alice", b"x").unwrap_err();
        assert!(error.to_string().contains(":1:"), "{error}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "alice notahash\n");
    }

    #[test]
    fn an_edit_keeps_the_files_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        add_user(&path, "alice", b"pw", &[]).unwrap();
        let me = fs::metadata(&path).unwrap();
        // As root (CI, a package's postinst): a file the daemon's user owns
        // stays the daemon's after root edits it.
        if std::os::unix::fs::chown(&path, Some(65534), Some(65534)).is_ok() {
            add_user(&path, "bob", b"pw", &[]).unwrap();
            let after = fs::metadata(&path).unwrap();
            assert_eq!((after.uid(), after.gid()), (65534, 65534));
        } else {
            add_user(&path, "bob", b"pw", &[]).unwrap();
            let after = fs::metadata(&path).unwrap();
            assert_eq!((after.uid(), after.gid()), (me.uid(), me.gid()));
        }
    }
}
