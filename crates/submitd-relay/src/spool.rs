//! The durable spool: once `store` returns a queue id, the message and its
//! envelope survive a crash or a power cut.
//!
//! ```text
//! spool/
//!   tmp/<id>       being written; never acknowledged
//!   msg/<id>       committed: header (envelope in SMTP wire form, size,
//!                  CRC32) + blank line + the message bytes. Never rewritten.
//!   state/<id>     delivery state (attempts, next try, per recipient),
//!                  rewritten atomically; absent = nothing tried yet
//!   partial/       tmp files found at start (a crash while accepting)
//!   corrupt/       msg files that fail their checks at start
//! ```
//!
//! Commit: write `tmp/<id>`, fsync it, rename it to `msg/<id>`, fsync
//! `msg/`. Only then is the id returned and the client told 250. A crash
//! before the rename leaves a file in `tmp/` (moved to `partial/` at the
//! next start, never delivered: the client was never told it was taken); a
//! crash after it leaves a complete message. Removal deletes `msg/<id>`
//! first, so a crash can leave only a stray state file, never a message
//! without its history.
//!
//! Group commit: concurrent stores rename their files and then wait for one
//! shared fsync of `msg/`, instead of one each.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use submitd_smtp::{MailFrom, RcptTo};
use tokio::sync::{mpsc, oneshot};

const MAGIC: &str = "submitd-spool 1";
const STATE_MAGIC: &str = "submitd-state 1";
/// Largest header accepted when reading a spool file back.
const MAX_HEADER: usize = 1024 * 1024;

/// A spool operation that failed. Paths are named so the log says where.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A spool file does not have the expected form.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No message with this id.
    #[error("no queued message {0}")]
    NotFound(QueueId),
    /// Another process (a running server) holds the queue's lock.
    #[error("{}: the queue is in use by another running submitd; stop it first, or use `submitd queue` commands, which work beside it", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The group commit task is gone (the runtime is shutting down).
    #[error("the spool's commit task has stopped")]
    CommitStopped,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Now, in seconds since the epoch (the spool's unit of time).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A queue id: time-ordered and unique, safe as a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    /// A new id: microseconds since the epoch and 32 random bits, in hex.
    pub fn generate() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let mut random = [0u8; 4];
        // Without OS randomness the time and the pid still separate ids.
        if getrandom::fill(&mut random).is_err() {
            random = std::process::id().to_le_bytes();
        }
        Self(format!("{micros:014x}{:08x}", u32::from_le_bytes(random)))
    }

    /// Reads an id given by a person or a file name.
    pub fn parse(text: &str) -> Option<Self> {
        let ok = (16..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Self(text.to_ascii_lowercase()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The envelope and facts kept with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// Sender and MAIL parameters.
    pub mail_from: MailFrom,
    /// Recipients and their parameters, in order.
    pub recipients: Vec<RcptTo>,
    /// Who submitted it, if anyone authenticated.
    pub user: Option<String>,
    /// When it was accepted, in seconds since the epoch.
    pub received: u64,
}

/// Where one recipient stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipientState {
    /// Still to be delivered; the last temporary failure, if any.
    Pending(Option<String>),
    /// Delivered; the upstream's reply.
    Delivered(String),
    /// Failed for good; the reason (the upstream's reply or expiry).
    Failed(String),
}

/// The delivery state of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryState {
    /// Attempts made so far.
    pub attempts: u32,
    /// Earliest time of the next attempt, in seconds since the epoch.
    pub next_try: u64,
    /// One entry per recipient, in envelope order.
    pub recipients: Vec<RecipientState>,
}

impl DeliveryState {
    /// The state of a message nothing has been tried for.
    pub fn new(recipients: usize, now: u64) -> Self {
        Self {
            attempts: 0,
            next_try: now,
            recipients: vec![RecipientState::Pending(None); recipients],
        }
    }

    /// Whether no recipient is pending any more.
    pub fn is_finished(&self) -> bool {
        !self
            .recipients
            .iter()
            .any(|r| matches!(r, RecipientState::Pending(_)))
    }

    fn render(&self) -> String {
        let mut out = format!(
            "{STATE_MAGIC}\nattempts: {}\nnext-try: {}\n",
            self.attempts, self.next_try
        );
        for (i, r) in self.recipients.iter().enumerate() {
            let (word, text) = match r {
                RecipientState::Pending(text) => ("pending", text.as_deref().unwrap_or("")),
                RecipientState::Delivered(text) => ("delivered", text.as_str()),
                RecipientState::Failed(text) => ("failed", text.as_str()),
            };
            out.push_str(&format!("rcpt: {i} {word} {}\n", one_line(text)));
        }
        out
    }

    fn parse(text: &str, recipients: usize) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(STATE_MAGIC) {
            return Err("not a submitd state file".into());
        }
        let mut state = Self::new(recipients, 0);
        for line in lines {
            let (key, value) = line
                .split_once(": ")
                .ok_or_else(|| format!("bad line {line:?}"))?;
            match key {
                "attempts" => state.attempts = value.parse().map_err(|_| "bad attempts")?,
                "next-try" => state.next_try = value.parse().map_err(|_| "bad next-try")?,
                "rcpt" => {
                    let mut parts = value.splitn(3, ' ');
                    let index: usize = parts
                        .next()
                        .and_then(|i| i.parse().ok())
                        .ok_or("bad rcpt index")?;
                    let word = parts.next().unwrap_or("");
                    let text = parts.next().unwrap_or("").to_owned();
                    let slot = state
                        .recipients
                        .get_mut(index)
                        .ok_or("rcpt index out of range")?;
                    *slot = match word {
                        "pending" if text.is_empty() => RecipientState::Pending(None),
                        "pending" => RecipientState::Pending(Some(text)),
                        "delivered" => RecipientState::Delivered(text),
                        "failed" => RecipientState::Failed(text),
                        _ => return Err(format!("bad rcpt state {word:?}")),
                    };
                }
                _ => return Err(format!("unknown key {key:?}")),
            }
        }
        Ok(state)
    }
}

/// Text on one header line: line breaks and other controls become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What recovery found at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Messages in the queue.
    pub queued: Vec<QueueId>,
    /// Unfinished writes moved to `partial/` (never acknowledged).
    pub partial: usize,
    /// Damaged files moved to `corrupt/`.
    pub corrupt: usize,
    /// State files of finished messages, removed.
    pub stray_states: usize,
}

#[derive(Debug)]
struct Dirs {
    tmp: PathBuf,
    msg: PathBuf,
    state: PathBuf,
    partial: PathBuf,
    corrupt: PathBuf,
}

/// The spool.
#[derive(Debug, Clone)]
pub struct Spool {
    dirs: Arc<Dirs>,
    /// The server's exclusive lock on the queue (none for [`Spool::attach`]);
    /// released when the last clone is dropped or the process dies.
    _lock: Option<Arc<File>>,
    group: Option<mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>>,
}

fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

fn move_aside(file: &Path, to_dir: &Path) -> Result<(), SpoolError> {
    let name = file.file_name().unwrap_or_default();
    let target = to_dir.join(name);
    fs::rename(file, &target).map_err(io_error(file))
}

impl Spool {
    /// Opens (creating if needed) the spool at `root` for the one server
    /// that owns it: takes the queue's exclusive lock (a second server on
    /// the same queue is refused) and recovers it: unfinished writes go to
    /// `partial/`, damaged files to `corrupt/`, each with a log line;
    /// nothing is deleted but state files of messages that are gone.
    pub fn open(root: &Path) -> Result<(Self, Recovery), SpoolError> {
        let dirs = Self::dirs(root)?;
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .mode(0o600)
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked { path: lock_path })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
        }
        let spool = Self {
            dirs: Arc::new(dirs),
            _lock: Some(Arc::new(lock)),
            group: None,
        };
        let recovery = spool.recover()?;
        Ok((spool, recovery))
    }

    /// Opens the spool at `root` beside a running server, for looking at
    /// it and acting on single messages (`submitd queue`, `submitd
    /// check`): no lock and no recovery, which only the owning server may
    /// do (a write in progress is not a crashed one).
    pub fn attach(root: &Path) -> Result<Self, SpoolError> {
        Ok(Self {
            dirs: Arc::new(Self::dirs(root)?),
            _lock: None,
            group: None,
        })
    }

    /// Whether a server holds the queue's lock now.
    pub fn is_locked(root: &Path) -> bool {
        let Ok(file) = File::open(root.join("lock")) else {
            return false;
        };
        matches!(file.try_lock_shared(), Err(fs::TryLockError::WouldBlock))
    }

    fn dirs(root: &Path) -> Result<Dirs, SpoolError> {
        let dirs = Dirs {
            tmp: root.join("tmp"),
            msg: root.join("msg"),
            state: root.join("state"),
            partial: root.join("partial"),
            corrupt: root.join("corrupt"),
        };
        for dir in [
            root,
            &dirs.tmp,
            &dirs.msg,
            &dirs.state,
            &dirs.partial,
            &dirs.corrupt,
        ] {
            // Queued mail is private whatever the umask: 0700 folders.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error(dir))?;
        }
        Ok(dirs)
    }

    /// Turns on group commit: concurrent stores share one directory fsync.
    /// Needs a tokio runtime.
    pub fn with_group_commit(mut self) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<(), String>>>();
        let dir = self.dirs.msg.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiting = vec![first];
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                let dir = dir.clone();
                let result = tokio::task::spawn_blocking(move || fsync_dir(&dir))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                for waiter in waiting {
                    let _ = waiter.send(result.clone());
                }
            }
        });
        self.group = Some(tx);
        self
    }

    fn recover(&self) -> Result<Recovery, SpoolError> {
        let mut recovery = Recovery::default();
        for path in list_dir(&self.dirs.tmp)? {
            tracing::warn!(target: "submitd::spool", file = %path.display(), "unfinished write from before a crash; never acknowledged; moved to partial/");
            move_aside(&path, &self.dirs.partial)?;
            recovery.partial += 1;
        }
        for path in list_dir(&self.dirs.msg)? {
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(QueueId::parse);
            let checked = match id {
                Some(id) => read_message(&path).map(|_| id),
                None => Err(SpoolError::Corrupt {
                    path: path.clone(),
                    reason: "not a queue id".into(),
                }),
            };
            match checked {
                Ok(id) => recovery.queued.push(id),
                Err(e) => {
                    tracing::error!(target: "submitd::spool", error = %e, "damaged queue file moved to corrupt/");
                    move_aside(&path, &self.dirs.corrupt)?;
                    recovery.corrupt += 1;
                }
            }
        }
        for path in list_dir(&self.dirs.state)? {
            let name = path.file_name().unwrap_or_default();
            if !self.dirs.msg.join(name).exists() {
                fs::remove_file(&path).map_err(io_error(&path))?;
                recovery.stray_states += 1;
            }
        }
        fsync_dir(&self.dirs.msg)?;
        recovery.queued.sort();
        Ok(recovery)
    }

    /// Writes, fsyncs and renames a new message file; the caller must still
    /// make the rename durable (fsync `msg/`).
    fn write_file(
        &self,
        id: QueueId,
        envelope: &StoredEnvelope,
        data: &[u8],
    ) -> Result<QueueId, SpoolError> {
        let mut header = format!("{MAGIC}\nid: {id}\nreceived: {}\n", envelope.received);
        header.push_str(&format!(
            "user: {}\n",
            envelope.user.as_deref().map_or("-".into(), one_line)
        ));
        header.push_str(&format!("mail-from: {}\n", envelope.mail_from));
        for rcpt in &envelope.recipients {
            header.push_str(&format!("rcpt: {rcpt}\n"));
        }
        header.push_str(&format!(
            "size: {}\ncrc32: {:08x}\n\n",
            data.len(),
            crc32fast::hash(data)
        ));
        let tmp = self.dirs.tmp.join(id.as_str());
        let write = || -> io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(header.as_bytes())?;
            file.write_all(data)?;
            file.sync_all()
        };
        if let Err(source) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(SpoolError::Io { path: tmp, source });
        }
        let target = self.dirs.msg.join(id.as_str());
        if target.exists() {
            let _ = fs::remove_file(&tmp);
            return Err(SpoolError::Corrupt {
                path: target,
                reason: "queue id already in use".into(),
            });
        }
        fs::rename(&tmp, &target).map_err(io_error(&target))?;
        Ok(id)
    }

    /// Stores a message durably under `id` (from [`QueueId::generate`], made
    /// early so the Received header can name it), on the blocking pool.
    /// With group commit, waits for the shared directory fsync.
    pub async fn store(
        &self,
        id: QueueId,
        envelope: StoredEnvelope,
        data: Arc<Vec<u8>>,
    ) -> Result<QueueId, SpoolError> {
        let spool = self.clone();
        let group = self.group.clone();
        let grouped = group.is_some();
        let id = tokio::task::spawn_blocking(move || {
            let id = spool.write_file(id, &envelope, &data)?;
            if !grouped {
                fsync_dir(&spool.dirs.msg)?;
            }
            Ok::<_, SpoolError>(id)
        })
        .await
        .map_err(|_| SpoolError::CommitStopped)??;
        if let Some(group) = group {
            let (done, wait) = oneshot::channel();
            group.send(done).map_err(|_| SpoolError::CommitStopped)?;
            wait.await
                .map_err(|_| SpoolError::CommitStopped)?
                .map_err(|reason| SpoolError::Corrupt {
                    path: self.dirs.msg.clone(),
                    reason,
                })?;
        }
        Ok(id)
    }

    /// Stores a message durably under `id`, blocking the calling thread.
    pub fn store_blocking(
        &self,
        id: QueueId,
        envelope: &StoredEnvelope,
        data: &[u8],
    ) -> Result<QueueId, SpoolError> {
        let id = self.write_file(id, envelope, data)?;
        fsync_dir(&self.dirs.msg)?;
        Ok(id)
    }

    /// Reads a queued message: its envelope and bytes.
    pub fn load(&self, id: &QueueId) -> Result<(StoredEnvelope, Vec<u8>), SpoolError> {
        let path = self.dirs.msg.join(id.as_str());
        if !path.exists() {
            return Err(SpoolError::NotFound(id.clone()));
        }
        read_message(&path)
    }

    /// The envelope of a queued message, read without its content (for
    /// scheduling: cheap whatever the message's size).
    pub fn load_envelope(&self, id: &QueueId) -> Result<StoredEnvelope, SpoolError> {
        let path = self.dirs.msg.join(id.as_str());
        if !path.exists() {
            return Err(SpoolError::NotFound(id.clone()));
        }
        read_envelope(&path)
    }

    /// The delivery state of a queued message.
    pub fn state(&self, id: &QueueId, recipients: usize) -> Result<DeliveryState, SpoolError> {
        let path = self.dirs.state.join(id.as_str());
        match fs::read_to_string(&path) {
            Ok(text) => DeliveryState::parse(&text, recipients)
                .map_err(|reason| SpoolError::Corrupt { path, reason }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DeliveryState::new(recipients, 0)),
            Err(source) => Err(SpoolError::Io { path, source }),
        }
    }

    /// Replaces the delivery state atomically and durably.
    pub fn save_state(&self, id: &QueueId, state: &DeliveryState) -> Result<(), SpoolError> {
        let target = self.dirs.state.join(id.as_str());
        let tmp = self.dirs.state.join(format!(".{id}.tmp"));
        let write = || -> io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(state.render().as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, &target)
        };
        write().map_err(io_error(&target))?;
        fsync_dir(&self.dirs.state)
    }

    /// Removes a message whose delivery is finished.
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        let msg = self.dirs.msg.join(id.as_str());
        match fs::remove_file(&msg) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.clone()))
            }
            Err(source) => return Err(SpoolError::Io { path: msg, source }),
        }
        // No fsync of the folder: if a power cut loses this unlink, the
        // message comes back and is delivered again, which at-least-once
        // allows; nothing can be lost by it. (A process crash loses nothing
        // here: the kernel has the unlink.) It saves one flush of three per
        // message.
        let state = self.dirs.state.join(id.as_str());
        match fs::remove_file(&state) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SpoolError::Io {
                path: state,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// The ids of every queued message, oldest first.
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        let mut ids: Vec<QueueId> = list_dir(&self.dirs.msg)?
            .iter()
            .filter_map(|p| p.file_name()?.to_str().and_then(QueueId::parse))
            .collect();
        ids.sort();
        Ok(ids)
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Reads and checks a message file.
/// A spool file's header: the envelope and what the content must match.
struct Header {
    envelope: StoredEnvelope,
    size: usize,
    crc: u32,
}

/// Parses the header at the start of `bytes`; returns it with the offset
/// of the content.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(Header, usize), SpoolError> {
    let corrupt = |reason: String| SpoolError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let end = bytes
        .windows(2)
        .take(MAX_HEADER)
        .position(|w| w == b"\n\n")
        .ok_or_else(|| corrupt("no end of header".into()))?;
    let header =
        std::str::from_utf8(&bytes[..end]).map_err(|_| corrupt("header is not UTF-8".into()))?;
    let mut lines = header.lines();
    if lines.next() != Some(MAGIC) {
        return Err(corrupt("not a submitd spool file".into()));
    }
    let (mut received, mut user, mut mail_from, mut size, mut crc) = (None, None, None, None, None);
    let mut recipients = Vec::new();
    for line in lines {
        let (key, value) = line
            .split_once(": ")
            .ok_or_else(|| corrupt(format!("bad header line {line:?}")))?;
        match key {
            "id" => {}
            "received" => received = value.parse::<u64>().ok(),
            "user" => user = Some((value != "-").then(|| value.to_owned())),
            "mail-from" => {
                mail_from =
                    Some(MailFrom::parse(value).map_err(|e| corrupt(format!("mail-from: {e}")))?)
            }
            "rcpt" => {
                recipients.push(RcptTo::parse(value).map_err(|e| corrupt(format!("rcpt: {e}")))?)
            }
            "size" => size = value.parse::<usize>().ok(),
            "crc32" => crc = u32::from_str_radix(value, 16).ok(),
            _ => return Err(corrupt(format!("unknown header {key:?}"))),
        }
    }
    let (Some(received), Some(user), Some(mail_from), Some(size), Some(crc)) =
        (received, user, mail_from, size, crc)
    else {
        return Err(corrupt("header incomplete".into()));
    };
    if recipients.is_empty() {
        return Err(corrupt("no recipients".into()));
    }
    let envelope = StoredEnvelope {
        mail_from,
        recipients,
        user,
        received,
    };
    Ok((
        Header {
            envelope,
            size,
            crc,
        },
        end + 2,
    ))
}

fn read_message(path: &Path) -> Result<(StoredEnvelope, Vec<u8>), SpoolError> {
    let corrupt = |reason: String| SpoolError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_error(path))?;
    let (header, start) = parse_header(path, &bytes)?;
    let data = bytes.split_off(start);
    if data.len() != header.size {
        return Err(corrupt(format!(
            "message is {} octets, header says {}",
            data.len(),
            header.size
        )));
    }
    if crc32fast::hash(&data) != header.crc {
        return Err(corrupt("message does not match its checksum".into()));
    }
    Ok((header.envelope, data))
}

/// Reads only the header of a spool file (the envelope), not its content.
fn read_envelope(path: &Path) -> Result<StoredEnvelope, SpoolError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = file.read(&mut chunk).map_err(io_error(path))?;
        let searched = bytes.len().saturating_sub(1);
        bytes.extend_from_slice(&chunk[..n]);
        let found = bytes[searched..].windows(2).any(|w| w == b"\n\n");
        if found || n == 0 || bytes.len() > MAX_HEADER {
            return parse_header(path, &bytes).map(|(h, _)| h.envelope);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> StoredEnvelope {
        StoredEnvelope {
            mail_from: MailFrom::parse(
                "<alice@example.org> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=x+2By",
            )
            .unwrap(),
            recipients: vec![
                RcptTo::parse("<bob@example.net> NOTIFY=FAILURE ORCPT=rfc822;bob+40example.net")
                    .unwrap(),
                RcptTo::parse("<Postmaster>").unwrap(),
            ],
            user: Some("alice".into()),
            received: 1_800_000_000,
        }
    }

    const DATA: &[u8] = b"Subject: x\r\n\r\n\xe2\x82\xac body\r\n.\r\n\n\n";

    #[test]
    fn one_owner_at_a_time_and_attach_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!Spool::is_locked(dir.path()));
        let (owner, _) = Spool::open(dir.path()).unwrap();
        assert!(Spool::is_locked(dir.path()));
        let second = Spool::open(dir.path()).unwrap_err();
        assert!(matches!(second, SpoolError::Locked { .. }), "{second}");
        assert!(second
            .to_string()
            .contains("in use by another running submitd"));
        // A write in progress stays where it is when a command attaches.
        fs::write(dir.path().join("tmp").join("in-flight"), b"x").unwrap();
        let attached = Spool::attach(dir.path()).unwrap();
        assert!(attached.list().unwrap().is_empty());
        assert!(dir.path().join("tmp").join("in-flight").exists());
        // The lock goes with the last clone of the owner.
        let clone = owner.clone();
        drop(owner);
        assert!(Spool::open(dir.path()).is_err());
        drop(clone);
        assert!(!Spool::is_locked(dir.path()));
        let (_, recovery) = Spool::open(dir.path()).unwrap();
        assert_eq!(recovery.partial, 1);
    }

    #[test]
    fn the_envelope_alone_across_read_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let mut many = envelope();
        many.recipients = (0..1000)
            .map(|i| RcptTo::parse(&format!("<recipient-{i}@example.net>")).unwrap())
            .collect();
        let big = vec![b'x'; 3 * 1024 * 1024];
        let id = spool
            .store_blocking(QueueId::generate(), &many, &big)
            .unwrap();
        assert_eq!(spool.load_envelope(&id).unwrap(), many);
        let small = spool
            .store_blocking(QueueId::generate(), &envelope(), b"")
            .unwrap();
        assert_eq!(spool.load_envelope(&small).unwrap(), envelope());
        assert!(matches!(
            spool.load_envelope(&QueueId::generate()),
            Err(SpoolError::NotFound(_))
        ));
    }

    #[test]
    fn store_load_state_remove() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, recovery) = Spool::open(dir.path()).unwrap();
        assert_eq!(recovery, Recovery::default());
        let id = spool
            .store_blocking(QueueId::generate(), &envelope(), DATA)
            .unwrap();
        let (loaded, data) = spool.load(&id).unwrap();
        assert_eq!(loaded, envelope());
        assert_eq!(spool.load_envelope(&id).unwrap(), envelope());
        // Private whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("msg")), 0o700);
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        assert_eq!(mode(&dir.path().join("msg").join(id.as_str())), 0o600);
        assert_eq!(data, DATA);
        assert_eq!(spool.list().unwrap(), vec![id.clone()]);
        assert!(spool
            .store_blocking(id.clone(), &envelope(), b"other")
            .is_err());
        assert_eq!(
            spool.load(&id).unwrap().1,
            DATA,
            "a reused id overwrites nothing"
        );

        assert_eq!(spool.state(&id, 2).unwrap(), DeliveryState::new(2, 0));
        let state = DeliveryState {
            attempts: 3,
            next_try: 1_800_000_600,
            recipients: vec![
                RecipientState::Delivered("250 2.0.0 ok".into()),
                RecipientState::Pending(Some("451 4.3.0 try\nlater".into())),
            ],
        };
        spool.save_state(&id, &state).unwrap();
        let read = spool.state(&id, 2).unwrap();
        assert_eq!(read.attempts, 3);
        assert_eq!(
            read.recipients[1],
            RecipientState::Pending(Some("451 4.3.0 try later".into()))
        );
        assert!(!read.is_finished());

        spool.remove(&id).unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert!(matches!(spool.load(&id), Err(SpoolError::NotFound(_))));
        assert!(matches!(spool.remove(&id), Err(SpoolError::NotFound(_))));
    }

    #[test]
    fn recovery_moves_aside_and_never_deletes_messages() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let good = spool
            .store_blocking(QueueId::generate(), &envelope(), DATA)
            .unwrap();
        let truncated = spool
            .store_blocking(QueueId::generate(), &envelope(), DATA)
            .unwrap();
        let flipped = spool
            .store_blocking(QueueId::generate(), &envelope(), DATA)
            .unwrap();
        let msg = dir.path().join("msg");
        let bytes = fs::read(msg.join(truncated.as_str())).unwrap();
        fs::write(msg.join(truncated.as_str()), &bytes[..bytes.len() - 3]).unwrap();
        let mut bytes = fs::read(msg.join(flipped.as_str())).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0x20;
        fs::write(msg.join(flipped.as_str()), bytes).unwrap();
        fs::write(
            dir.path().join("tmp").join("0123456789abcdef0123"),
            b"half a mess",
        )
        .unwrap();
        fs::write(msg.join("not-an-id"), b"?").unwrap();
        fs::write(
            dir.path().join("state").join("00000000000000000000ff"),
            "submitd-state 1\n",
        )
        .unwrap();

        drop(spool); // as a crash or restart does
        let (spool, recovery) = Spool::open(dir.path()).unwrap();
        assert_eq!(recovery.queued, vec![good]);
        assert_eq!(
            (recovery.partial, recovery.corrupt, recovery.stray_states),
            (1, 3, 1)
        );
        let corrupt: Vec<_> = fs::read_dir(dir.path().join("corrupt")).unwrap().collect();
        assert_eq!(corrupt.len(), 3);
        assert_eq!(fs::read_dir(dir.path().join("partial")).unwrap().count(), 1);
        assert_eq!(spool.list().unwrap().len(), 1);
    }

    #[test]
    fn ids_are_unique_and_ordered() {
        let a = QueueId::generate();
        let b = QueueId::generate();
        assert_ne!(a, b);
        assert!(QueueId::parse(a.as_str()).is_some());
        assert!(QueueId::parse("../etc/passwd").is_none());
        assert!(QueueId::parse("short").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_stores_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let spool = spool.with_group_commit();
        let data = Arc::new(DATA.to_vec());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (spool, data) = (spool.clone(), Arc::clone(&data));
            tasks.spawn(async move { spool.store(QueueId::generate(), envelope(), data).await });
        }
        let mut ids = Vec::new();
        while let Some(result) = tasks.join_next().await {
            ids.push(result.unwrap().unwrap());
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 50);
        assert_eq!(spool.list().unwrap(), ids);
    }
}
