//! Password hashing and checking with argon2id.
//!
//! Every login attempt costs exactly one argon2 verification with the
//! default parameters, whoever it names:
//!
//! * a known user: the main password's hash, or, when the password has the
//!   form of an app password whose id the user has, that app password's hash;
//! * an unknown user, or a user with no main password: a dummy hash made at
//!   start with the same parameters.
//!
//! So an unknown user and a wrong password cost the same time and give the
//! same answer. That is why app passwords carry a public id: trying a
//! password against every one of a user's hashes would make users with
//! more devices slower to refuse, and so tell them apart.
//!
//! Verification runs on `max_concurrent` threads of its own (about 20 ms
//! of CPU each), each reusing one argon2 memory buffer (19 MiB with the
//! default parameters) for every check. On tokio's blocking pool every
//! check allocated its buffer afresh on whichever thread ran it, and glibc
//! kept each thread's freed buffer in that thread's arena: the daemon grew
//! by 19 MiB per arena used, to 200 MiB on two cores. Now the memory is
//! at most `max_concurrent` buffers, shared by the threads. After
//! [`IDLE_RELEASE`] without a check they are dropped, so a quiet daemon
//! goes back to its idle size. With glibc's default dynamic mmap threshold the freed
//! buffer stayed in the arena (the threshold rises to the size of the
//! first freed block, and later buffers come from the heap): the unit
//! therefore fixes the threshold (`MALLOC_MMAP_THRESHOLD_`), which makes
//! every large block an mmap that is returned on free (`docs/daemon.md`,
//! "Memory").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use argon2::password_hash::phc::Output;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};
use tokio::sync::{oneshot, Semaphore};
use zeroize::Zeroizing;

use crate::store::Users;

/// Letters of generated app passwords: RFC 4648 base32, lower case, which
/// has no 0/O or 1/l to mistype on a phone keyboard.
const APP_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// App passwords are six groups of four letters: an id and 100 random bits.
const APP_GROUPS: usize = 6;
const APP_GROUP_LEN: usize = 4;

/// Why hashing or generating failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// argon2 refused the input or parameters.
    #[error("argon2: {0}")]
    Argon2(String),
    /// The operating system gave no random bytes.
    #[error("no random bytes from the operating system: {0}")]
    Random(String),
}

/// Hashes a password with argon2id and the default parameters (m=19456 KiB,
/// t=2, p=1: the OWASP recommendation), as a PHC string for the file.
pub fn hash_password(password: &[u8]) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError::Argon2(e.to_string()))
}

/// Checks that a PHC string is a usable argon2id hash.
pub(crate) fn check_phc(hash: &str) -> Result<(), String> {
    let expected = "expected an argon2id hash from `submitd hash-password`";
    let parsed = PasswordHash::new(hash).map_err(|e| format!("invalid hash ({e}); {expected}"))?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return Err(format!(
            "hash algorithm is {}; {expected}",
            parsed.algorithm
        ));
    }
    let params =
        Params::try_from(&parsed).map_err(|e| format!("invalid argon2 parameters ({e})"))?;
    if params.m_cost() > MAX_M_COST || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST
    {
        return Err(format!(
            "argon2 parameters m={},t={},p={} exceed what one login may cost here (m<={MAX_M_COST},t<={MAX_T_COST},p<={MAX_P_COST}); {expected}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(format!("hash has no salt or no output; {expected}"));
    }
    Ok(())
}

/// Bounds on a stored hash's argon2 parameters: every login runs them, so
/// a hash with m=4 GiB would cost 4 GiB per attempt.
const MAX_M_COST: u32 = 256 * 1024; // KiB: 256 MiB
const MAX_T_COST: u32 = 16;
const MAX_P_COST: u32 = 8;

/// Verifies `password` against the PHC string `phc` in `memory`, which
/// grows to the hash's size if needed and is kept for the next check.
/// The comparison of outputs is constant-time (`Output`'s equality).
fn verify_in(memory: &mut Vec<Block>, password: &[u8], phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm.as_str()),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = Zeroizing::new(vec![0u8; expected.len()]);
    let argon2 = Argon2::new(algorithm, version, params);
    argon2
        .hash_password_into_with_memory(password, salt.as_ref(), &mut out, &mut memory[..blocks])
        .is_ok()
        && Output::new(&out).is_ok_and(|computed| computed == *expected)
}

/// One check for a checker thread.
struct Job {
    hash: String,
    password: Zeroizing<String>,
    answer: oneshot::Sender<bool>,
}

/// How long a checker thread keeps its argon2 buffer without a check.
pub const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_secs(10);

/// The checkers' argon2 buffers not in use: one per check running at
/// most, so never more than there are threads.
type Buffers = Arc<Mutex<Vec<Vec<Block>>>>;

/// A checker thread: takes jobs until the checker is dropped. The thread
/// that waits for jobs and sees none for [`IDLE_RELEASE`] drops every
/// buffer not in use (the others wait for the receiver, not for jobs).
fn checker_thread(jobs: Arc<Mutex<mpsc::Receiver<Job>>>, buffers: Buffers) {
    let pool = || buffers.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let job = {
            let receiver = jobs.lock().unwrap_or_else(|p| p.into_inner());
            receiver.recv_timeout(IDLE_RELEASE)
        };
        let job = match job {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                pool().clear();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut memory = pool().pop().unwrap_or_default();
        let verified = verify_in(&mut memory, job.password.as_bytes(), &job.hash);
        pool().push(memory);
        let _ = job.answer.send(verified);
    }
}

/// Whether `id` has the form of an app password id.
pub(crate) fn is_app_id(id: &str) -> bool {
    id.len() == APP_GROUP_LEN && id.bytes().all(|b| APP_ALPHABET.contains(&b))
}

/// The id of a password that has the app password form.
fn app_id_of(password: &str) -> Option<&str> {
    let groups: Vec<&str> = password.split('-').collect();
    (groups.len() == APP_GROUPS && groups.iter().all(|g| is_app_id(g))).then(|| groups[0])
}

/// A new app password: returns its id and the password to show once.
pub fn generate_app_password() -> Result<(String, Zeroizing<String>), PasswordError> {
    let mut random = Zeroizing::new([0u8; APP_GROUPS * APP_GROUP_LEN]);
    getrandom::fill(random.as_mut()).map_err(|e| PasswordError::Random(e.to_string()))?;
    let mut password = Zeroizing::new(String::with_capacity(APP_GROUPS * (APP_GROUP_LEN + 1)));
    for (i, byte) in random.iter().enumerate() {
        if i > 0 && i % APP_GROUP_LEN == 0 {
            password.push('-');
        }
        password.push(APP_ALPHABET[usize::from(byte % 32)] as char);
    }
    let id = password[..APP_GROUP_LEN].to_owned();
    Ok((id, password))
}

/// The result of a password check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The password is right.
    Authenticated {
        /// The user's name as written in the credential file.
        user: String,
        /// The label of the app password used, if one was.
        app_password: Option<String>,
    },
    /// Unknown user or wrong password: one answer for both.
    Rejected,
    /// The check could not run (the runtime is shutting down).
    Unavailable,
}

/// Which hash one attempt is checked against.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    hash: Option<&'a str>,
    user: Option<&'a str>,
    app_password: Option<&'a str>,
}

fn select<'a>(users: &'a Users, login: &str, password: &str) -> Target<'a> {
    let Some(user) = users.get(login) else {
        return Target {
            hash: None,
            user: None,
            app_password: None,
        };
    };
    let app = app_id_of(password).and_then(|id| user.app_passwords.iter().find(|a| a.id == id));
    match app {
        Some(app) => Target {
            hash: Some(&app.hash),
            user: Some(&user.name),
            app_password: Some(&app.label),
        },
        None => Target {
            hash: user.password_hash.as_deref(),
            user: Some(&user.name),
            app_password: None,
        },
    }
}

/// The hash a login with `password` is checked against, if the user
/// exists and has one (the app password its id names, else the main one).
pub(crate) fn stored_hash<'a>(users: &'a Users, login: &str, password: &str) -> Option<&'a str> {
    select(users, login, password).hash
}

/// Checks passwords off the async threads, on threads of its own, a
/// bounded number at once.
pub struct PasswordChecker {
    permits: Arc<Semaphore>,
    jobs: Mutex<mpsc::Sender<Job>>,
    dummy_hash: String,
    verifications: AtomicU64,
}

impl std::fmt::Debug for PasswordChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChecker")
            .field("threads", &self.permits.available_permits())
            .field("verifications", &self.verifications)
            .finish_non_exhaustive()
    }
}

impl PasswordChecker {
    /// Verifications at once when the config file does not say: one per
    /// core, since each is pure CPU.
    pub fn default_concurrency() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    /// A checker running at most `max_concurrent` verifications at once.
    /// Makes the dummy hash (one argon2 run).
    pub fn new(max_concurrent: usize) -> Result<Self, PasswordError> {
        let (_, random) = generate_app_password()?;
        let threads = max_concurrent.max(1);
        let (sender, receiver) = mpsc::channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let buffers: Buffers = Arc::default();
        for i in 0..threads {
            let (receiver, buffers) = (Arc::clone(&receiver), Arc::clone(&buffers));
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || checker_thread(receiver, buffers))
                .map_err(|e| {
                    PasswordError::Argon2(format!("cannot start a checker thread: {e}"))
                })?;
        }
        Ok(Self {
            permits: Arc::new(Semaphore::new(threads)),
            jobs: Mutex::new(sender),
            dummy_hash: hash_password(random.as_bytes())?,
            verifications: AtomicU64::new(0),
        })
    }

    /// Checks `password` for `login` against the users in force.
    pub async fn check(&self, users: &Users, login: &str, password: &str) -> CheckOutcome {
        let target = select(users, login, password);
        let hash = target.hash.unwrap_or(&self.dummy_hash).to_owned();
        let known = target.hash.is_some();
        let Ok(_permit) = self.permits.acquire().await else {
            return CheckOutcome::Unavailable;
        };
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let (answer, verified) = oneshot::channel();
        let job = Job {
            hash,
            password: Zeroizing::new(password.to_owned()),
            answer,
        };
        let sent = self
            .jobs
            .lock()
            .map(|jobs| jobs.send(job).is_ok())
            .unwrap_or(false);
        if !sent {
            return CheckOutcome::Unavailable;
        }
        let verified = verified.await;
        match (verified, target.user) {
            (Ok(true), Some(user)) if known => CheckOutcome::Authenticated {
                user: user.to_owned(),
                app_password: target.app_password.map(str::to_owned),
            },
            (Ok(_), _) => CheckOutcome::Rejected,
            (Err(_), _) => CheckOutcome::Unavailable,
        }
    }

    /// How many argon2 verifications have run: one per check, always.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// The parameters every check costs, as in a PHC string (`m=..,t=..,p=..`).
    pub fn dummy_params(&self) -> String {
        PasswordHash::new(&self.dummy_hash)
            .map(|h| h.params.to_string())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn users(text: &str) -> Users {
        let (users, errors) = Users::parse(Path::new("t"), text);
        assert!(errors.is_empty(), "{errors:?}");
        users
    }

    #[test]
    fn app_passwords_have_the_documented_form() {
        let (id, password) = generate_app_password().unwrap();
        assert_eq!(password.len(), 29);
        assert_eq!(app_id_of(&password), Some(id.as_str()));
        let (_, other) = generate_app_password().unwrap();
        assert_ne!(*password, *other);
        for not_app in [
            "secret",
            "abcd-abcd",
            "abcd-abcd-abcd-abcd-abcd-abc1",
            "ABCD-abcd-abcd-abcd-abcd-abcd",
        ] {
            assert_eq!(app_id_of(not_app), None, "{not_app}");
        }
    }

    #[test]
    fn phc_checks() {
        let good = hash_password(b"pw").unwrap();
        assert!(
            good.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{good}"
        );
        assert_eq!(check_phc(&good), Ok(()));
        let argon2i = good.replacen("argon2id", "argon2i", 1);
        assert!(check_phc(&argon2i).unwrap_err().contains("argon2i"));
        assert!(check_phc("$6$salt$crypt").is_err());
        assert!(check_phc("plaintext").is_err());
        let costly = good.replacen("m=19456", "m=4194304", 1);
        assert!(
            check_phc(&costly)
                .unwrap_err()
                .contains("exceed what one login may cost"),
            "a hash that costs 4 GiB a login is refused"
        );
    }

    #[test]
    fn verification_reuses_its_memory_and_compares_the_output() {
        let hash = hash_password(b"right").unwrap();
        let mut memory = Vec::new();
        assert!(verify_in(&mut memory, b"right", &hash));
        let size = memory.len();
        assert_eq!(size, 19456, "one block per KiB of m_cost");
        assert!(!verify_in(&mut memory, b"wrong", &hash));
        assert!(!verify_in(&mut memory, b"righ", &hash));
        assert_eq!(memory.len(), size, "no new buffer per check");
        // Same password, other salt: the output differs.
        let other = hash_password(b"right").unwrap();
        assert!(verify_in(&mut memory, b"right", &other));
        // Damaged strings never verify.
        assert!(!verify_in(
            &mut memory,
            b"right",
            &hash.replacen("argon2id", "argon2x", 1)
        ));
        assert!(!verify_in(&mut memory, b"right", &hash[..hash.len() - 4]));
        // Smaller parameters use the front of the same buffer.
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"small")
        .unwrap()
        .to_string();
        assert!(verify_in(&mut memory, b"small", &small));
        assert_eq!(memory.len(), size);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_checks_than_threads_all_get_their_answer() {
        let users = users(&format!("alice {}\n", hash_password(b"pw").unwrap()));
        let users = Arc::new(users);
        let checker = Arc::new(PasswordChecker::new(2).unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (users, checker) = (Arc::clone(&users), Arc::clone(&checker));
                tokio::spawn(async move {
                    let password = if i % 2 == 0 { "pw" } else { "nope" };
                    checker.check(&users, "alice", password).await
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let outcome = task.await.unwrap();
            assert_eq!(
                matches!(outcome, CheckOutcome::Authenticated { .. }),
                i % 2 == 0,
                "{i}: {outcome:?}"
            );
        }
        assert_eq!(checker.verifications(), 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn main_and_app_passwords() {
        let main = hash_password(b"correct horse").unwrap();
        let (id, app) = generate_app_password().unwrap();
        let app_hash = hash_password(app.as_bytes()).unwrap();
        let users = users(&format!(
            "Alice {main} app:phone={id}:{app_hash}\nbob - app:tab={id}:{app_hash}\n"
        ));
        let checker = PasswordChecker::new(2).unwrap();
        assert_eq!(
            checker.check(&users, "alice", "correct horse").await,
            CheckOutcome::Authenticated {
                user: "Alice".into(),
                app_password: None
            }
        );
        assert_eq!(
            checker.check(&users, "ALICE", &app).await,
            CheckOutcome::Authenticated {
                user: "Alice".into(),
                app_password: Some("phone".into())
            }
        );
        assert_eq!(
            checker.check(&users, "alice", "wrong").await,
            CheckOutcome::Rejected
        );
        // No main password: only app passwords log in.
        assert_eq!(
            checker.check(&users, "bob", "").await,
            CheckOutcome::Rejected
        );
        assert_eq!(
            checker.check(&users, "bob", &app).await,
            CheckOutcome::Authenticated {
                user: "bob".into(),
                app_password: Some("tab".into())
            }
        );
        assert_eq!(checker.verifications(), 5);
    }

    /// Unknown user and wrong password do the same work: exactly one argon2
    /// verification, with the same parameters. (Counting work, not timing
    /// it, keeps the test deterministic; the bench measures the time.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_user_and_wrong_password_cost_the_same() {
        let main = hash_password(b"right").unwrap();
        let (id, app) = generate_app_password().unwrap();
        let app_hash = hash_password(app.as_bytes()).unwrap();
        let users = users(&format!(
            "alice {main} app:a={id}:{app_hash} app:b=bbbb:{app_hash} app:c=cccc:{app_hash}\n"
        ));
        let checker = PasswordChecker::new(1).unwrap();
        let params_of = |hash: &str| PasswordHash::new(hash).unwrap().params.to_string();
        for (login, password) in [
            ("alice", "wrong"),
            ("mallory", "wrong"),
            ("alice", "zzzz-zzzz-zzzz-zzzz-zzzz-zzzz"),
            ("mallory", app.as_str()),
        ] {
            let before = checker.verifications();
            assert_eq!(
                checker.check(&users, login, password).await,
                CheckOutcome::Rejected
            );
            assert_eq!(checker.verifications() - before, 1, "{login}");
            let target = select(&users, login, password);
            let hash = target.hash.unwrap_or(&checker.dummy_hash);
            assert_eq!(params_of(hash), checker.dummy_params(), "{login}");
        }
    }
}
