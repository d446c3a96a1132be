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
//! No group commit: concurrent stores each fsync their file and `msg/`.
//! A shared folder fsync for concurrent stores was tried and measured
//! slower here (`cargo bench -p submitd-relay --bench spool` at 16 stores
//! at once: 3.9k/s with one fsync each against 1.5k–2.7k/s grouped), since
//! the file system already batches concurrent fsyncs in its journal; see
//! `docs/spool.md`.

mod format;
mod id;
mod recovery;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use format::{open_content, read_envelope, read_message, render_header};
pub use format::{Content, DeliveryState, RecipientState, StoredEnvelope, CONTENT_PIECE};
pub use id::{unix_now, QueueId};
pub use recovery::Recovery;

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
    /// The blocking task that wrote the message did not finish (the
    /// runtime is shutting down); nothing was acknowledged.
    #[error("the spool's write task was stopped")]
    WriteStopped,
}

impl SpoolError {
    /// Whether the disk (or the queue's quota) is full: the client is told
    /// "mail system full" (452 4.3.1) rather than a plain local error.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Io { source, .. } if matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
        ))
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug)]
struct Dirs {
    root: PathBuf,
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
        })
    }

    /// The spool's folder.
    pub fn root(&self) -> &Path {
        &self.dirs.root
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
            root: root.to_owned(),
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

    /// Starts a new message under `id` (from [`QueueId::generate`], made
    /// early so the Received header can name it) with its envelope. Nothing
    /// touches the disk until the first [`SpoolFile::append`] or the
    /// commit.
    pub fn create(&self, id: QueueId, envelope: StoredEnvelope) -> SpoolFile {
        SpoolFile {
            tmp: self.dirs.tmp.join(id.as_str()),
            spool: self.clone(),
            id,
            envelope,
            file: None,
            size: 0,
            crc: crc32fast::Hasher::new(),
            eight_bit: false,
            committed: false,
        }
    }

    /// Stores a whole message durably under `id`, on the blocking pool
    /// (bounces; the intake streams with [`Spool::create`] instead).
    pub async fn store(
        &self,
        id: QueueId,
        envelope: StoredEnvelope,
        data: Arc<Vec<u8>>,
    ) -> Result<QueueId, SpoolError> {
        let spool = self.clone();
        tokio::task::spawn_blocking(move || spool.store_blocking(id, &envelope, &data))
            .await
            .map_err(|_| SpoolError::WriteStopped)?
    }

    /// Stores a whole message durably under `id`, blocking the calling
    /// thread.
    pub fn store_blocking(
        &self,
        id: QueueId,
        envelope: &StoredEnvelope,
        data: &[u8],
    ) -> Result<QueueId, SpoolError> {
        self.create(id, envelope.clone()).commit(data)
    }

    /// Reads a queued message: its envelope and bytes.
    pub fn load(&self, id: &QueueId) -> Result<(StoredEnvelope, Vec<u8>), SpoolError> {
        let path = self.dirs.msg.join(id.as_str());
        if !path.exists() {
            return Err(SpoolError::NotFound(id.clone()));
        }
        read_message(&path)
    }

    /// Opens a queued message to be sent in pieces (see [`Content`]).
    pub fn open_content(&self, id: &QueueId) -> Result<Content, SpoolError> {
        let path = self.dirs.msg.join(id.as_str());
        if !path.exists() {
            return Err(SpoolError::NotFound(id.clone()));
        }
        open_content(&path)
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

    /// Moves a queued message whose file is damaged to `corrupt/` (with
    /// its state), as recovery at start does, so it is not tried again
    /// and again; a person decides what to do with it.
    pub fn quarantine(&self, id: &QueueId) -> Result<(), SpoolError> {
        move_aside(&self.dirs.msg.join(id.as_str()), &self.dirs.corrupt)?;
        let state = self.dirs.state.join(id.as_str());
        if state.exists() {
            let target = self.dirs.corrupt.join(format!("{id}.state"));
            fs::rename(&state, &target).map_err(io_error(&state))?;
        }
        Ok(())
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

/// A message being written to `tmp/<id>` in pieces, as it arrives. It is
/// removed unless committed, so a refused, cut-off or failed message
/// leaves nothing behind; only [`SpoolFile::commit`] makes it a queued
/// message.
///
/// On disk while it is written: the spool header with a zero size and
/// checksum (fixed widths), then the content so far. The commit rewrites
/// the header in place with the real values, fsyncs the file, renames it
/// into `msg/` and fsyncs `msg/`: the same order, and the same three
/// flushes, as a message written whole.
pub struct SpoolFile {
    spool: Spool,
    id: QueueId,
    tmp: PathBuf,
    envelope: StoredEnvelope,
    /// Open once the first piece was written.
    file: Option<File>,
    size: u64,
    crc: crc32fast::Hasher,
    eight_bit: bool,
    committed: bool,
}

impl std::fmt::Debug for SpoolFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolFile")
            .field("id", &self.id)
            .field("size", &self.size)
            .field("on_disk", &self.file.is_some())
            .finish()
    }
}

impl SpoolFile {
    /// The message's queue id.
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Octets of content written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Creates `tmp/<id>` with the provisional header; the file is removed
    /// again if that fails half-way.
    fn open_tmp(&self, header: &str) -> Result<File, SpoolError> {
        let open = || -> io::Result<File> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&self.tmp)?;
            file.write_all(header.as_bytes())?;
            Ok(file)
        };
        open().map_err(|source| {
            if source.kind() != io::ErrorKind::AlreadyExists {
                let _ = fs::remove_file(&self.tmp);
            }
            SpoolError::Io {
                path: self.tmp.clone(),
                source,
            }
        })
    }

    /// Appends content, blocking the calling thread (call it on the
    /// blocking pool). The first call creates the file.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        if self.file.is_none() {
            let header = render_header(&self.id, &self.envelope, 0, 0, false);
            self.file = Some(self.open_tmp(&header)?);
        }
        let Some(file) = self.file.as_mut() else {
            return Err(SpoolError::WriteStopped);
        };
        file.write_all(bytes).map_err(io_error(&self.tmp))?;
        self.crc.update(bytes);
        self.eight_bit |= !bytes.is_ascii();
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Appends `tail`, the last of the content, and makes the message
    /// durable: header with the real size and checksum, fsync, rename into
    /// `msg/`, fsync `msg/`. Only after this returns `Ok` may the client be
    /// told 250. Blocking.
    pub fn commit(mut self, tail: &[u8]) -> Result<QueueId, SpoolError> {
        self.crc.update(tail);
        self.eight_bit |= !tail.is_ascii();
        let size = self.size + tail.len() as u64;
        let crc = self.crc.clone().finalize();
        let header = render_header(&self.id, &self.envelope, size, crc, self.eight_bit);
        let tmp = self.tmp.clone();
        let (mut file, provisional) = match self.file.take() {
            // Written whole: one file, one pass, the real header at once.
            None => (self.open_tmp(&header)?, false),
            Some(file) => (file, true),
        };
        // `Drop` must see the file again to remove it if this fails.
        let write = |file: &mut File| -> io::Result<()> {
            use std::os::unix::fs::FileExt;
            file.write_all(tail)?;
            if provisional {
                file.write_all_at(header.as_bytes(), 0)?;
            }
            file.sync_all()
        };
        let written = write(&mut file);
        self.file = Some(file);
        written.map_err(io_error(&tmp))?;
        let target = self.spool.dirs.msg.join(self.id.as_str());
        if target.exists() {
            return Err(SpoolError::Corrupt {
                path: target,
                reason: "queue id already in use".into(),
            });
        }
        fs::rename(&tmp, &target).map_err(io_error(&target))?;
        self.committed = true;
        fsync_dir(&self.spool.dirs.msg)?;
        Ok(self.id.clone())
    }
}

/// A message that was not committed leaves no file behind.
impl Drop for SpoolFile {
    fn drop(&mut self) {
        if !self.committed && self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
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

#[cfg(test)]
mod tests {
    use submitd_smtp::{MailFrom, RcptTo};

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

    /// A message written in pieces is the same file, byte for byte, as
    /// one written whole; one dropped before its commit leaves nothing.
    #[test]
    fn streamed_and_whole_messages_are_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let whole = spool
            .store_blocking(QueueId::generate(), &envelope(), &data)
            .unwrap();
        let id = QueueId::generate();
        let mut file = spool.create(id.clone(), envelope());
        for piece in data[..data.len() - 10].chunks(65_536) {
            file.append(piece).unwrap();
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
        file.commit(&data[data.len() - 10..]).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let read = |id: &QueueId| {
            let text = fs::read(dir.path().join("msg").join(id.as_str())).unwrap();
            String::from_utf8_lossy(&text).replace(id.as_str(), "ID")
        };
        assert!(read(&whole) == read(&id), "the two files differ");
        assert_eq!(spool.load(&id).unwrap().1, data);

        let mut dropped = spool.create(QueueId::generate(), envelope());
        dropped.append(b"half a message").unwrap();
        drop(dropped);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(spool.list().unwrap().len(), 2);
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
    async fn concurrent_stores_each_land_once() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
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
