//! The durable spool: once `store` returns a queue id, the message and its
//! envelope survive a crash or a power cut.
//!
//! ```text
//! spool/
//!   msg/<id>       the message: header (envelope in SMTP wire form, size,
//!                  CRC32) + blank line + the message bytes. Written in
//!                  place under its final name behind a "still being
//!                  received" header; never rewritten once committed.
//!   state/<id>     delivery state (attempts, next try, per recipient),
//!                  rewritten atomically; absent = nothing tried yet
//!   tmp/           the old layout's writes in progress (read at start only)
//!   partial/       writes found unfinished at start (a crash while accepting)
//!   corrupt/       msg files that fail their checks
//! ```
//!
//! Commit: create `msg/<id>` (exclusively) with the header
//! `submitd-input 1` and zeros for size and checksum, write the content as
//! it arrives, rewrite the header in place as `submitd-spool 1` with the
//! real size and checksum, fsync the file, fsync `msg/`. Only then is the
//! id returned and the client told 250. A crash before the fsyncs leaves a
//! file that says it is still being received (or is torn); recovery moves
//! it to `partial/` and it is never delivered: the client was never told it
//! was taken. While it is written, the running server leaves it alone (the
//! ids being received are kept in memory, and readers take the input
//! header as "not a message yet"). Removal deletes `msg/<id>` first, so a
//! crash can leave only a stray state file, never a message without its
//! history.
//!
//! Why in place, not a file in `tmp/` renamed into `msg/` (the first
//! versions): the rename is a second change to the directories that needs
//! its own flush. On ext4 with a journal, the file's fsync commits its new
//! directory entry with it, so the fsync of `msg/` that POSIX asks for
//! finds nothing left to write: one journal commit per message instead of
//! two. Measured (`docs/spool.md`, `scripts/spool-writes.py`): 1.1 to 1.6
//! times the stores a second and half to two thirds of the CPU per store.
//!
//! No group commit: concurrent stores each fsync their file and `msg/`
//! (a shared folder fsync was measured slower; see `docs/spool.md`). The
//! folders are held open, and files are opened relative to them, so a
//! store walks no path and opens no folder.

mod format;
mod id;
mod recovery;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags};

use format::{open_content, read_envelope, read_message, render_header};
pub use format::{Content, DeliveryState, Peeked, RecipientState, StoredEnvelope, CONTENT_PIECE};
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
    /// The file is a message still being received (or one whose receipt
    /// a crash cut off), not a queued message.
    #[error("{}: still being received, not a queued message yet", path.display())]
    Receiving {
        /// The file.
        path: PathBuf,
    },
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
    /// `msg/` and `state/`, held open: files are opened and removed
    /// relative to them, and `msg/` is fsynced through it.
    msg_fd: OwnedFd,
    state_fd: OwnedFd,
    /// Ids being received by this process: not queued messages yet.
    receiving: Mutex<HashSet<QueueId>>,
    /// Finished messages waiting for their files to be removed.
    removals: Arc<Removals>,
}

/// The last handle to the spool is gone: the remover finishes what it has
/// and stops.
impl Drop for Dirs {
    fn drop(&mut self) {
        self.removals.close();
    }
}

impl Dirs {
    fn receiving(&self) -> std::sync::MutexGuard<'_, HashSet<QueueId>> {
        self.receiving.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn open_dir(dir: &Path) -> Result<OwnedFd, SpoolError> {
    rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error(dir)(e.into()))
}

/// Opens `name` in the held folder `dir`.
fn open_in(dir: &OwnedFd, name: &str, flags: OFlags) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        flags | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// Removes `name` from the folder `dir`.
fn unlink_in(dir: &OwnedFd, name: &str) -> io::Result<()> {
    rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty()).map_err(Into::into)
}

/// Removes a finished message's file, then its state file if `has_state`
/// (one that never had one saves the unlink that would fail). `Ok(false)`:
/// the message file was already gone. An error says whether it was the
/// state file's (`true`) or the message's.
///
/// No fsync of the folders: if a power cut loses an unlink, the message
/// comes back and is delivered again, which at-least-once allows; nothing
/// can be lost by it. (A process crash loses nothing here: the kernel has
/// the unlink.) It saves one flush per message.
fn unlink_message(
    msg: &OwnedFd,
    state: &OwnedFd,
    id: &QueueId,
    has_state: bool,
) -> Result<bool, (bool, io::Error)> {
    let existed = match unlink_in(msg, id.as_str()) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err((false, e)),
    };
    if existed && has_state {
        match unlink_in(state, id.as_str()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err((true, e)),
            _ => {}
        }
    }
    Ok(existed)
}

/// The spool.
#[derive(Debug, Clone)]
pub struct Spool {
    dirs: Arc<Dirs>,
    /// The server's exclusive lock on the queue (none for [`Spool::attach`]);
    /// released when the last clone is dropped or the process dies.
    _lock: Option<Arc<File>>,
}

/// The file `submitd queue flush` leaves for the running server.
const RESCAN_REQUEST: &str = "rescan";

/// Flushes a held folder (`path` names it in errors).
fn fsync_held(dir: &OwnedFd, path: &Path) -> Result<(), SpoolError> {
    rustix::fs::fsync(dir).map_err(|e| io_error(path)(e.into()))
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
        let (tmp, msg, state) = (root.join("tmp"), root.join("msg"), root.join("state"));
        let (partial, corrupt) = (root.join("partial"), root.join("corrupt"));
        for dir in [root, &tmp, &msg, &state, &partial, &corrupt] {
            // Queued mail is private whatever the umask: 0700 folders.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error(dir))?;
        }
        Ok(Dirs {
            root: root.to_owned(),
            msg_fd: open_dir(&msg)?,
            state_fd: open_dir(&state)?,
            tmp,
            msg,
            state,
            partial,
            corrupt,
            receiving: Mutex::default(),
            removals: Arc::default(),
        })
    }

    /// Starts a new message under `id` (from [`QueueId::generate`], made
    /// early so the Received header can name it) with its envelope. Nothing
    /// touches the disk until the first [`SpoolFile::append`] or the
    /// commit.
    pub fn create(&self, id: QueueId, envelope: StoredEnvelope) -> SpoolFile {
        self.dirs.receiving().insert(id.clone());
        SpoolFile {
            path: self.dirs.msg.join(id.as_str()),
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

    /// Opens `msg/<id>` for reading; a missing file is [`SpoolError::NotFound`].
    fn open_msg(&self, id: &QueueId) -> Result<(PathBuf, File), SpoolError> {
        let path = self.dirs.msg.join(id.as_str());
        match open_in(&self.dirs.msg_fd, id.as_str(), OFlags::RDONLY) {
            Ok(file) => Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SpoolError::NotFound(id.clone())),
            Err(source) => Err(SpoolError::Io { path, source }),
        }
    }

    /// Reads a queued message whole, checking its size and checksum: its
    /// envelope and bytes (bounces, `queue show`).
    pub fn load(&self, id: &QueueId) -> Result<(StoredEnvelope, Vec<u8>), SpoolError> {
        let (path, file) = self.open_msg(id)?;
        read_message(&path, file)
    }

    /// Opens a queued message to be sent in pieces (see [`Content`]).
    pub fn open_content(&self, id: &QueueId) -> Result<Content, SpoolError> {
        let (path, file) = self.open_msg(id)?;
        open_content(path, file)
    }

    /// The envelope of a queued message, read without its content (for
    /// scheduling: cheap whatever the message's size).
    pub fn load_envelope(&self, id: &QueueId) -> Result<StoredEnvelope, SpoolError> {
        let (path, file) = self.open_msg(id)?;
        read_envelope(&path, file).map(|p| p.envelope)
    }

    /// The envelope and size of a queued message from its header and the
    /// file's length, without reading the content (`queue list`).
    pub fn peek(&self, id: &QueueId) -> Result<Peeked, SpoolError> {
        let (path, file) = self.open_msg(id)?;
        read_envelope(&path, file)
    }

    /// The delivery state of a queued message.
    pub fn state(&self, id: &QueueId, recipients: usize) -> Result<DeliveryState, SpoolError> {
        self.load_state(id, recipients).map(|(state, _)| state)
    }

    /// The delivery state of a queued message, and whether it has a state
    /// file (none until something was recorded for it).
    pub fn load_state(
        &self,
        id: &QueueId,
        recipients: usize,
    ) -> Result<(DeliveryState, bool), SpoolError> {
        let path = || self.dirs.state.join(id.as_str());
        let text = open_in(&self.dirs.state_fd, id.as_str(), OFlags::RDONLY).and_then(|mut f| {
            let mut text = String::new();
            io::Read::read_to_string(&mut f, &mut text).map(|_| text)
        });
        match text {
            Ok(text) => DeliveryState::parse(&text, recipients)
                .map(|state| (state, true))
                .map_err(|reason| SpoolError::Corrupt {
                    path: path(),
                    reason,
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok((DeliveryState::new(recipients, 0), false))
            }
            Err(source) => Err(SpoolError::Io {
                path: path(),
                source,
            }),
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
        fsync_held(&self.dirs.state_fd, &self.dirs.state)
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

    /// Removes a message whose delivery is finished, and its state file.
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.remove_message(id, true)
    }

    /// Removes a finished message's files soon, on a thread of the spool's
    /// own, so that the relay's workers never wait for the file system to
    /// free a message's blocks (on some file systems a synchronous write).
    /// Until then the message is left out of [`Spool::list`], so no scan
    /// schedules it again. A crash before the removal delivers it again
    /// at the next start, which at-least-once allows (the removal was
    /// never flushed anyway; see [`Spool::remove_message`]).
    pub fn remove_later(&self, id: QueueId, has_state: bool) {
        if !self.dirs.removals.queue(&self.dirs, id.clone(), has_state) {
            if let Err(e) = self.remove_message(&id, has_state) {
                tracing::error!(target: "submitd::spool", %id, error = %e, "cannot remove a finished message");
            }
        }
    }

    /// Waits until every removal asked for so far is done.
    pub fn wait_removals(&self) {
        self.dirs.removals.wait_idle();
    }

    /// Removes a finished message; its state file too if `has_state` (a
    /// message delivered at its first attempt never had one, and the
    /// unlink that would fail is saved).
    pub fn remove_message(&self, id: &QueueId, has_state: bool) -> Result<(), SpoolError> {
        let dirs = &self.dirs;
        match unlink_message(&dirs.msg_fd, &dirs.state_fd, id, has_state) {
            Ok(true) => Ok(()),
            Ok(false) => Err(SpoolError::NotFound(id.clone())),
            Err((in_state, source)) => Err(SpoolError::Io {
                path: if in_state { &dirs.state } else { &dirs.msg }.join(id.as_str()),
                source,
            }),
        }
    }

    /// Asks the running server to read every state file again at its next
    /// scan (within a minute): `submitd queue flush` changed some behind
    /// its back. A request nobody takes (no server running) is harmless.
    pub fn request_rescan(&self) -> Result<(), SpoolError> {
        let path = self.dirs.root.join(RESCAN_REQUEST);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map(drop)
            .map_err(io_error(&path))
    }

    /// Whether a full scan was asked for since the last call (the request
    /// is taken: it answers `true` once).
    pub fn take_rescan_request(&self) -> bool {
        fs::remove_file(self.dirs.root.join(RESCAN_REQUEST)).is_ok()
    }

    /// The ids of every queued message, oldest first; not those this
    /// process is still receiving.
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        let mut hidden = self.dirs.receiving().clone();
        self.dirs.removals.pending_into(&mut hidden);
        let mut ids: Vec<QueueId> = list_dir(&self.dirs.msg)?
            .iter()
            .filter_map(|p| p.file_name()?.to_str().and_then(QueueId::parse))
            .filter(|id| !hidden.contains(id))
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// Finished messages whose files a thread of their own removes.
#[derive(Debug, Default)]
struct Removals {
    state: Mutex<RemovalState>,
    /// The remover waits here for work.
    work: std::sync::Condvar,
    /// Callers of `wait_idle` wait here.
    idle: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct RemovalState {
    /// Waiting: the id and whether it has a state file.
    queued: Vec<(QueueId, bool)>,
    /// Being removed now.
    busy: Vec<QueueId>,
    started: bool,
    closed: bool,
    /// The thread waits on `work` (else it will look again by itself).
    waiting: bool,
}

/// How long the remover pauses after a batch, so that the removals of a
/// busy moment are taken together, without a wake-up each.
const REMOVAL_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

impl Removals {
    fn lock(&self) -> std::sync::MutexGuard<'_, RemovalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a removal, starting the thread the first time; `false` if
    /// the thread cannot run (the caller removes it itself).
    fn queue(self: &Arc<Self>, dirs: &Dirs, id: QueueId, has_state: bool) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        if !state.started {
            let fds = (dirs.msg_fd.try_clone(), dirs.state_fd.try_clone());
            let (Ok(msg_fd), Ok(state_fd)) = fds else {
                return false;
            };
            let (removals, paths) = (Arc::clone(self), (dirs.msg.clone(), dirs.state.clone()));
            let spawned = std::thread::Builder::new()
                .name("spool-remove".into())
                .spawn(move || removals.run(&msg_fd, &state_fd, &paths));
            if spawned.is_err() {
                return false;
            }
            state.started = true;
        }
        state.queued.push((id, has_state));
        let wake = std::mem::take(&mut state.waiting);
        drop(state);
        if wake {
            self.work.notify_one();
        }
        true
    }

    /// Adds the ids waiting or being removed to `ids`.
    fn pending_into(&self, ids: &mut HashSet<QueueId>) {
        let state = self.lock();
        ids.extend(state.queued.iter().map(|(id, _)| id.clone()));
        ids.extend(state.busy.iter().cloned());
    }

    fn wait_idle(&self) {
        let mut state = self.lock();
        while state.started && !(state.queued.is_empty() && state.busy.is_empty()) {
            state = self.idle.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.waiting = false;
        drop(state);
        self.work.notify_one();
    }

    /// The thread: takes what is queued, removes it (message, then state
    /// file), until closed and empty.
    fn run(&self, msg_fd: &OwnedFd, state_fd: &OwnedFd, (msg, state_dir): &(PathBuf, PathBuf)) {
        loop {
            let batch = {
                let mut state = self.lock();
                while state.queued.is_empty() && !state.closed {
                    state.waiting = true;
                    state = self.work.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                state.waiting = false;
                if state.queued.is_empty() {
                    return;
                }
                let batch = std::mem::take(&mut state.queued);
                state.busy = batch.iter().map(|(id, _)| id.clone()).collect();
                batch
            };
            for (id, has_state) in batch {
                if let Err((in_state, e)) = unlink_message(msg_fd, state_fd, &id, has_state) {
                    let dir = if in_state { state_dir } else { msg };
                    tracing::error!(target: "submitd::spool", %id, folder = %dir.display(), error = %e, "cannot remove a finished message; it is delivered again after a restart");
                }
            }
            self.lock().busy.clear();
            self.idle.notify_all();
            std::thread::sleep(REMOVAL_PAUSE);
        }
    }
}

/// A message being written to `msg/<id>` in pieces, as it arrives. It is
/// removed unless committed, so a refused, cut-off or failed message
/// leaves nothing behind; only [`SpoolFile::commit`] makes it a queued
/// message.
///
/// On disk while it is written: the input header (`submitd-input 1`) with
/// a zero size and checksum (fixed widths), then the content so far. The
/// commit rewrites the header in place as a message header with the real
/// values, fsyncs the file and fsyncs `msg/`: the same order, and the
/// same flushes, as a message written whole.
pub struct SpoolFile {
    spool: Spool,
    id: QueueId,
    path: PathBuf,
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

    /// Creates `msg/<id>` (exclusively: an id in use is an error) with
    /// `header` followed by `first`, in one write; the file is removed
    /// again if that fails half-way.
    fn create_file(&self, header: &str, first: &[u8]) -> Result<File, SpoolError> {
        let create = || -> io::Result<File> {
            let mut file = open_in(
                &self.spool.dirs.msg_fd,
                self.id.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            )?;
            write_all_vectored(&mut file, header.as_bytes(), first)?;
            Ok(file)
        };
        create().map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                return SpoolError::Corrupt {
                    path: self.path.clone(),
                    reason: "queue id already in use".into(),
                };
            }
            let _ = unlink_in(&self.spool.dirs.msg_fd, self.id.as_str());
            SpoolError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Appends content, blocking the calling thread (call it on the
    /// blocking pool). The first call creates the file.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        match self.file.as_mut() {
            None => {
                let header = render_header(&self.id, &self.envelope, 0, 0, false, false);
                self.file = Some(self.create_file(&header, bytes)?);
            }
            Some(file) => file.write_all(bytes).map_err(io_error(&self.path))?,
        }
        self.crc.update(bytes);
        self.eight_bit |= !bytes.is_ascii();
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Appends `tail`, the last of the content, and makes the message
    /// durable: the header rewritten with the real size and checksum,
    /// fsync, fsync `msg/`. Only after this returns `Ok` may the client be
    /// told 250. Blocking.
    pub fn commit(mut self, tail: &[u8]) -> Result<QueueId, SpoolError> {
        self.crc.update(tail);
        self.eight_bit |= !tail.is_ascii();
        let size = self.size + tail.len() as u64;
        let crc = self.crc.clone().finalize();
        let header = render_header(&self.id, &self.envelope, size, crc, self.eight_bit, true);
        let written = match self.file.take() {
            // Written whole: the real header at once, one write.
            None => {
                let file = self.create_file(&header, tail)?;
                self.file = Some(file);
                Ok(())
            }
            Some(mut file) => {
                use std::os::unix::fs::FileExt;
                let written = file
                    .write_all(tail)
                    .and_then(|()| file.write_all_at(header.as_bytes(), 0));
                // `Drop` must see the file again to remove it if this fails.
                self.file = Some(file);
                written
            }
        };
        written.map_err(io_error(&self.path))?;
        if let Some(file) = &self.file {
            file.sync_all().map_err(io_error(&self.path))?;
        }
        fsync_held(&self.spool.dirs.msg_fd, &self.spool.dirs.msg)?;
        self.committed = true;
        self.spool.dirs.receiving().remove(&self.id);
        Ok(self.id.clone())
    }
}

/// Writes `a` then `b` with as few system calls as the kernel allows.
fn write_all_vectored(file: &mut File, a: &[u8], b: &[u8]) -> io::Result<()> {
    let mut skip = 0usize;
    let total = a.len() + b.len();
    while skip < total {
        let (a_rest, b_rest) = if skip < a.len() {
            (&a[skip..], b)
        } else {
            (&a[a.len()..], &b[skip - a.len()..])
        };
        let n = file.write_vectored(&[io::IoSlice::new(a_rest), io::IoSlice::new(b_rest)])?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        skip += n;
    }
    Ok(())
}

/// A message that was not committed leaves no file behind.
impl Drop for SpoolFile {
    fn drop(&mut self) {
        if !self.committed {
            if self.file.is_some() {
                let _ = unlink_in(&self.spool.dirs.msg_fd, self.id.as_str());
            }
            self.spool.dirs.receiving().remove(&self.id);
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
        // A receipt a crash cut off: its file still says so.
        // (Through an unlocked handle, leaked as a crash leaves it.)
        let mut cut = Spool::attach(dir.path())
            .unwrap()
            .create(QueueId::generate(), envelope());
        cut.append(b"half a message").unwrap();
        std::mem::forget(cut);

        drop(spool); // as a crash or restart does
        let (spool, recovery) = Spool::open(dir.path()).unwrap();
        let mut queued = vec![good, flipped.clone()];
        queued.sort();
        // The flipped byte is not read at start: the length matches.
        assert_eq!(recovery.queued, queued);
        assert_eq!(
            (recovery.partial, recovery.corrupt, recovery.stray_states),
            (2, 2, 1)
        );
        let corrupt: Vec<_> = fs::read_dir(dir.path().join("corrupt")).unwrap().collect();
        assert_eq!(corrupt.len(), 2);
        assert_eq!(fs::read_dir(dir.path().join("partial")).unwrap().count(), 2);
        assert_eq!(spool.list().unwrap().len(), 2);
        // It is found when it is sent, before the end of data.
        let mut content = spool.open_content(&flipped).unwrap();
        let mut piece = Vec::new();
        let sent = loop {
            match content.next_piece(&mut piece) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        assert!(matches!(sent, Err(SpoolError::Corrupt { .. })), "{sent:?}");
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
        // Written in place, but not a queued message until committed.
        assert_eq!(fs::read_dir(dir.path().join("msg")).unwrap().count(), 2);
        assert_eq!(spool.list().unwrap(), vec![whole.clone()]);
        let attached = Spool::attach(dir.path()).unwrap();
        assert!(matches!(
            attached.load_envelope(&id),
            Err(SpoolError::Receiving { .. })
        ));
        assert_eq!(crate::queue::list(&attached).unwrap().len(), 1);
        file.commit(&data[data.len() - 10..]).unwrap();
        assert_eq!(spool.list().unwrap().len(), 2);
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
        assert_eq!(fs::read_dir(dir.path().join("msg")).unwrap().count(), 2);
        assert_eq!(spool.list().unwrap().len(), 2);
        // An id in use is refused, and the other file is left alone.
        let taken = spool.create(id.clone(), envelope()).commit(b"again");
        assert!(
            matches!(taken, Err(SpoolError::Corrupt { .. })),
            "{taken:?}"
        );
        assert_eq!(spool.load(&id).unwrap().1, data);
    }

    /// A removal left to the spool's thread hides the message at once and
    /// removes its files (and only its state file when it has one).
    #[test]
    fn removals_later_hide_at_once_and_remove_soon() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let ids: Vec<QueueId> = (0..50)
            .map(|_| {
                spool
                    .store_blocking(QueueId::generate(), &envelope(), DATA)
                    .unwrap()
            })
            .collect();
        let with_state = &ids[0];
        spool
            .save_state(with_state, &DeliveryState::new(1, 0))
            .unwrap();
        for (i, id) in ids.iter().enumerate() {
            spool.remove_later(id.clone(), i == 0);
        }
        assert!(spool.list().unwrap().is_empty(), "hidden at once");
        spool.wait_removals();
        assert_eq!(fs::read_dir(dir.path().join("msg")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join("state")).unwrap().count(), 0);
        // The last handle gone, the thread ends; a new spool starts its own.
        drop(spool);
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let id = spool
            .store_blocking(QueueId::generate(), &envelope(), DATA)
            .unwrap();
        spool.remove_later(id, false);
        spool.wait_removals();
        assert_eq!(fs::read_dir(dir.path().join("msg")).unwrap().count(), 0);
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
