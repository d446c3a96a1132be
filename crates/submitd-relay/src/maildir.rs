//! The `maildir:PATH` transport: delivers into a Maildir instead of an
//! upstream. For a first run with no smarthost (the README's default) and
//! for tests. Delivery is as durable as the spool: write `tmp/`, fsync,
//! rename into `new/`, fsync `new/`. A `Return-Path:` line is added in
//! front, as final delivery does (RFC 5321 §4.4); the bytes after it are the
//! spooled message unchanged.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::spool::{QueueId, StoredEnvelope};

/// A Maildir to deliver into.
#[derive(Clone, Debug)]
pub struct Maildir {
    root: PathBuf,
}

impl Maildir {
    /// The Maildir at `root`; its `tmp`, `new` and `cur` folders are made
    /// if missing.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(Self { root })
    }

    /// Delivers one message; returns the file it landed in.
    pub fn deliver(
        &self,
        id: &QueueId,
        envelope: &StoredEnvelope,
        data: &[u8],
    ) -> io::Result<PathBuf> {
        let host = hostname();
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Unique: the queue id is unique, and a retry of the same id gets
        // a new attempt counter from the existing files.
        let mut name = format!("{secs}.{id}.{host}");
        let mut n = 1;
        while self.root.join("new").join(&name).exists()
            || self.root.join("cur").join(&name).exists()
        {
            n += 1;
            name = format!("{secs}.{id}_{n}.{host}");
        }
        let tmp = self.root.join("tmp").join(&name);
        let target = self.root.join("new").join(&name);
        let return_path = match &envelope.mail_from.reverse_path {
            Some(m) => format!("Return-Path: <{m}>\r\n"),
            None => "Return-Path: <>\r\n".to_owned(),
        };
        let result = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            file.write_all(return_path.as_bytes())?;
            file.write_all(data)?;
            file.sync_all()?;
            fs::rename(&tmp, &target)?;
            File::open(self.root.join("new"))?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| target)
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The host name for Maildir file names, with `/` and `:` made safe.
fn hostname() -> String {
    let name =
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    name.trim().replace('/', "\\057").replace(':', "\\072")
}

#[cfg(test)]
mod tests {
    use submitd_smtp::{MailFrom, RcptTo};

    use super::*;

    #[test]
    fn delivers_durably_with_return_path() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(dir.path().join("Maildir")).unwrap();
        let envelope = StoredEnvelope {
            mail_from: MailFrom::parse("<alice@example.org>").unwrap(),
            recipients: vec![RcptTo::parse("<bob@example.net>").unwrap()],
            user: None,
            received: 0,
        };
        let id = QueueId::generate();
        let data = b"Subject: x\r\n\r\n\xe2\x82\xac\r\n";
        let first = maildir.deliver(&id, &envelope, data).unwrap();
        let second = maildir.deliver(&id, &envelope, data).unwrap();
        assert_ne!(first, second, "a retry never overwrites");
        let content = fs::read(&first).unwrap();
        assert_eq!(&content[..29], b"Return-Path: <alice@example.o");
        assert!(content.ends_with(data));
        assert_eq!(fs::read_dir(maildir.root().join("tmp")).unwrap().count(), 0);
    }
}
