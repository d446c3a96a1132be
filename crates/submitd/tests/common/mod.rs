//! Shared by the end-to-end tests: start the real `submitd` binary on a
//! config, read its log until it is ready, learn its ports; stop it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `submitd serve`.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    /// The implicit-TLS port, if it listens on one.
    pub(crate) implicit: Option<u16>,
    /// The STARTTLS port, if it listens on one.
    pub(crate) starttls: Option<u16>,
    /// Lines the demo printed before the log (password and the like).
    pub(crate) said: Vec<String>,
    /// Every log line so far (and from now on).
    pub(crate) log: Arc<Mutex<Vec<String>>>,
}

fn port_of(line: &str) -> Option<u16> {
    line.split("address=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

/// Starts `command` (a prepared `submitd serve ...`), waits for `ready`.
pub(crate) fn start(mut command: Command) -> Daemon {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("submitd starts");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let all = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            all.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    let mut daemon = Daemon {
        child,
        implicit: None,
        starttls: None,
        said: Vec::new(),
        log,
    };
    wait_ready(&mut daemon, &rx);
    daemon
}

fn wait_ready(daemon: &mut Daemon, rx: &Receiver<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "submitd exited with {status} before it was ready:\n{}",
                    daemon.log.lock().unwrap().join("\n")
                );
            }
            continue;
        };
        if line.starts_with("demo: ") {
            daemon.said.push(line.clone());
        }
        if line.contains("listening") {
            if line.contains("mode=implicit") {
                daemon.implicit = port_of(&line);
            } else if line.contains("mode=starttls") {
                daemon.starttls = port_of(&line);
            }
        }
        if line.ends_with(" ready") {
            return;
        }
    }
    panic!(
        "submitd not ready in time:\n{}",
        daemon.log.lock().unwrap().join("\n")
    );
}

impl Daemon {
    /// `submitd serve --config CONFIG` as a command, to add to.
    pub(crate) fn command(config: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_submitd"));
        command.args(["serve", "--config"]).arg(config);
        command
    }

    /// SIGTERM, then waits for the exit; returns whether it was clean.
    pub(crate) fn stop(mut self) -> bool {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a log line contains `text`.
    /// Lines containing every one of `texts`, waiting up to `within` for
    /// there to be `n` of them (log lines reach the log a moment after
    /// the replies: the daemon's log thread writes in batches).
    pub(crate) fn wait_count(&self, texts: &[&str], n: usize, within: Duration) -> usize {
        let count = || {
            let log = self.log.lock().unwrap();
            log.iter()
                .filter(|l| texts.iter().all(|t| l.contains(t)))
                .count()
        };
        let deadline = Instant::now() + within;
        while count() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        count()
    }

    pub(crate) fn wait_log(&self, text: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(text)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal by name with kill(1).
pub(crate) fn signal(pid: u32, name: &str) {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}

/// Runs `command` with `input` on its standard input; what it wrote and
/// how it ended.
pub(crate) fn run_with_input(mut command: Command, input: &str) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Fails the test with the fix when a tool the test drives is missing.
pub(crate) fn require(tool: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("this test drives `{tool}`: install it (`{package}`), or run `bash .ci/run`, which does")
    })
}

/// aiosmtpd (a third-party SMTP server) as the smarthost, over implicit
/// TLS, requiring AUTH as alice/secret; each message lands in `out`.
pub(crate) struct Upstream {
    child: Child,
    pub(crate) port: u16,
    pub(crate) out: PathBuf,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts aiosmtpd over implicit TLS with `cert` and `key`.
pub(crate) fn start_upstream(dir: &Path, cert: &Path, key: &Path) -> Upstream {
    start_upstream_on(dir, cert, key, 0)
}

/// The same on `port` (0: any free one); messages go on numbering from
/// what `dir` already holds, so a restarted upstream adds to them.
pub(crate) fn start_upstream_on(dir: &Path, cert: &Path, key: &Path, port: u16) -> Upstream {
    start_upstream_as(dir, cert, key, port, ("alice", "secret"))
}

/// The same, requiring AUTH as `account` (user, password).
pub(crate) fn start_upstream_as(
    dir: &Path,
    cert: &Path,
    key: &Path,
    port: u16,
    account: (&str, &str),
) -> Upstream {
    let out = dir.join("upstream");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream_smtpd.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg(cert)
        .arg(key)
        .args([account.0, account.1])
        .arg(&out)
        .arg("300")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .strip_prefix("ready ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!("aiosmtpd did not start ({line:?}); install it with `pip install aiosmtpd`")
        });
    Upstream { child, port, out }
}

impl Upstream {
    /// Stops it (SIGKILL), as a crashed or unplugged smarthost.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The messages received so far (raw bytes), in arrival order.
    pub(crate) fn messages(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.out)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p)))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| std::fs::read(p).ok())
            .collect()
    }
}

/// A real Dovecot with only its auth service.
pub(crate) struct Dovecot {
    child: Child,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Dovecot with a passwd-file passdb at `dir/passwd`, its auth
/// socket at `dir/auth-client`.
pub(crate) fn start_dovecot(dir: &Path) -> Dovecot {
    start_dovecot_with(dir, None)
}

/// The same; with `oauth2`, also XOAUTH2 and OAUTHBEARER, decided by an
/// oauth2 passdb with that settings file (passwords stay passwd-file's).
pub(crate) fn start_dovecot_with(dir: &Path, oauth2: Option<&Path>) -> Dovecot {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let _ = std::fs::remove_file(dir.join("auth-client"));
    let (mechanisms, passwd_only, oauth2_passdb) = match oauth2 {
        None => ("plain login", String::new(), String::new()),
        Some(args) => (
            "plain login xoauth2 oauthbearer",
            "  mechanisms = plain login\n".to_owned(),
            format!(
                "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}\n}}\n",
                args.display()
            ),
        ),
    };
    std::fs::write(
        dir.join("dovecot.conf"),
        format!(
            "protocols =\nlisten = 127.0.0.1\nbase_dir = {run}\nstate_dir = {run}\n\
             log_path = /dev/stderr\nssl = no\nauth_mechanisms = {mechanisms}\n\
             disable_plaintext_auth = no\n\
             passdb {{\n  driver = passwd-file\n  args = {passwd}\n{passwd_only}}}\n{oauth2_passdb}\
             userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home=/nonexistent\n}}\n\
             service auth {{\n  unix_listener {socket} {{\n    mode = 0666\n  }}\n}}\n\
             service anvil {{\n  chroot =\n}}\n",
            run = run.display(),
            passwd = dir.join("passwd").display(),
            socket = dir.join("auth-client").display(),
        ),
    )
    .unwrap();
    let child = Command::new("dovecot")
        .args(["-F", "-c"])
        .arg(dir.join("dovecot.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dovecot starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("auth-client").exists() {
        assert!(
            Instant::now() < deadline,
            "Dovecot's auth socket did not appear"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Dovecot { child }
}

/// Runs `command` to its end; what it printed, after it succeeded (the
/// test fails with what it said on standard error otherwise).
pub(crate) fn stdout_of(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A password hash as `doveadm pw` makes it.
pub(crate) fn doveadm_hash(scheme: &str, password: &str) -> String {
    stdout_of(Command::new("doveadm").args(["pw", "-s", scheme, "-p", password]))
        .trim()
        .to_owned()
}

/// A test CA in `dir/ca.pem` and, for each stem, a certificate for
/// `localhost` signed by it in `dir/STEM.crt` with its key in `STEM.key`.
pub(crate) fn certificates(dir: &Path, stems: &[&str]) -> submitd_testkit::TestCa {
    let ca = submitd_testkit::TestCa::new();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for stem in stems {
        let (cert, key) = ca.issue_pem(&["localhost"]);
        std::fs::write(dir.join(format!("{stem}.crt")), cert).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key).unwrap();
    }
    ca
}

/// An upstream password file (mode 0600, as submitd insists).
pub(crate) fn password_file(path: &Path, password: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A users file `dir/users` with `alice`, password `pw`, who may send as
/// alice@example.org.
pub(crate) fn alice(dir: &Path) {
    let hash = submitd_auth::hash_password(b"pw").unwrap();
    std::fs::write(
        dir.join("users"),
        format!("alice {hash} send-as=alice@example.org\n"),
    )
    .unwrap();
}

/// `dir/submitd.toml`: one implicit-TLS listener on a free port with
/// `dir/submitd.crt` (from [`certificates`]), `dir/users`, the queue in
/// `queue`, then `rest` (the relay and any limits) as given.
pub(crate) fn config(dir: &Path, queue: &str, rest: &str) -> PathBuf {
    let path = dir.join("submitd.toml");
    std::fs::write(
        &path,
        format!(
            "hostname = \"localhost\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nmode = \"implicit\"\n\
             [tls]\ncertificate = \"submitd.crt\"\nkey = \"submitd.key\"\n[auth]\nusers = \"users\"\n\
             [queue]\ndirectory = \"{queue}\"\n{rest}"
        ),
    )
    .unwrap();
    path
}

/// The `[[relay.upstream]]` section for aiosmtpd on `port` (as alice, with
/// `upstream.pass` and `ca.pem` in the config's folder).
pub(crate) fn upstream_section(port: u16) -> String {
    format!(
        "[[relay.upstream]]\nhost = \"localhost\"\nport = {port}\ntls = \"implicit\"\n\
         username = \"alice\"\npassword_file = \"upstream.pass\"\nca_file = \"ca.pem\"\n"
    )
}

/// A number from the environment, or `default`.
pub(crate) fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A loopback port free now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon with the default limits in `dir`: [`certificates`],
/// [`alice`], delivering into `dir/Maildir`.
pub(crate) fn start_maildir(dir: &Path) -> Daemon {
    certificates(dir, &["submitd"]);
    alice(dir);
    let config = config(dir, "queue", "[relay]\nmaildir = \"Maildir\"\n");
    start(Daemon::command(&config))
}
