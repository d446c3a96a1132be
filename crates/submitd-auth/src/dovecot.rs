//! Passwords checked by a running Dovecot, over its auth socket: the
//! protocol Postfix speaks with `smtpd_sasl_type = dovecot` (Dovecot's
//! "auth protocol" 1.x), so the users and passwords Dovecot knows keep
//! working unchanged, whatever its passdb (passwd-file, SQL, LDAP, PAM).
//!
//! One connection per check (a local socket: cheap, and nothing to keep
//! in step): `VERSION`/`CPID` out, the server's handshake in up to `DONE`,
//! one `AUTH` with the PLAIN response, one `OK` or `FAIL` back. Every step
//! is bounded by a timeout; a dead socket, a timeout, a protocol error or
//! an unexpected answer is `Unavailable` (454 4.7.0 on the wire), never an
//! accepted login.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::password::CheckOutcome;

/// Longest line accepted from Dovecot.
const MAX_LINE: usize = 16 * 1024;

/// A Dovecot auth socket (`service auth { unix_listener … }`).
#[derive(Clone, Debug)]
pub struct DovecotAuth {
    /// The socket, such as `/var/spool/postfix/private/auth` or
    /// `/run/dovecot/auth-client`.
    pub socket: PathBuf,
    /// Bound on the whole exchange. Dovecot's own failure delay (2 s by
    /// default) and its per-address penalty (up to 15 s more) are inside
    /// it, so it should be 20 s or more; the default is
    /// [`DovecotAuth::DEFAULT_TIMEOUT`].
    pub timeout: Duration,
}

impl DovecotAuth {
    /// The bound on one exchange when the config file sets none: Dovecot's
    /// failure delay and its per-address penalty both fit.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
}

/// Why a check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DovecotError {
    /// The socket could not be reached or the exchange broke.
    #[error("{socket}: {reason}")]
    Unreachable {
        /// The socket.
        socket: String,
        /// What happened.
        reason: String,
    },
}

/// What one attempt gave.
#[derive(Debug, PartialEq, Eq)]
pub enum DovecotAnswer {
    /// Dovecot accepted the login; its name for the user (`user=`).
    Ok(String),
    /// Wrong password or unknown user.
    Fail,
}

impl DovecotAuth {
    /// Checks `login`/`password` for a client at `client` over TLS.
    pub async fn check(&self, login: &str, password: &str, client: IpAddr) -> CheckOutcome {
        self.bounded(self.exchange(login, password, client)).await
    }

    /// `exchange` within the timeout, as the login gate takes it.
    async fn bounded(
        &self,
        exchange: impl std::future::Future<Output = Result<DovecotAnswer, DovecotError>>,
    ) -> CheckOutcome {
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(DovecotAnswer::Ok(user))) => CheckOutcome::Authenticated {
                user,
                app_password: None,
            },
            Ok(Ok(DovecotAnswer::Fail)) => CheckOutcome::Rejected,
            Ok(Err(e)) => {
                tracing::error!(target: "submitd::auth", error = %e, "Dovecot auth unavailable");
                CheckOutcome::Unavailable
            }
            Err(_) => {
                tracing::error!(target: "submitd::auth", socket = %self.socket.display(), timeout = ?self.timeout, "Dovecot auth did not answer in time");
                CheckOutcome::Unavailable
            }
        }
    }

    fn error(&self, reason: impl Into<String>) -> DovecotError {
        DovecotError::Unreachable {
            socket: self.socket.display().to_string(),
            reason: reason.into(),
        }
    }

    /// Connects and reads the handshake, as `submitd check` does: proves
    /// the socket answers as Dovecot and offers PLAIN.
    pub async fn probe(&self) -> Result<(), DovecotError> {
        tokio::time::timeout(self.timeout, self.connect())
            .await
            .map_err(|_| self.error("no handshake in time"))?
            .map(|_| ())
    }

    /// The mechanisms Dovecot offers, upper case (at start: XOAUTH2 and
    /// OAUTHBEARER are offered to clients when Dovecot has them).
    pub async fn offered_mechanisms(&self) -> Result<Vec<String>, DovecotError> {
        tokio::time::timeout(self.timeout, self.connect())
            .await
            .map_err(|_| self.error("no handshake in time"))?
            .map(|(_, _, mechanisms)| mechanisms)
    }

    /// Checks a bearer-token login by passing the client's SASL message
    /// (`mechanism` XOAUTH2 or OAUTHBEARER) to Dovecot, whose oauth2 passdb
    /// decides. A refusal comes as Dovecot's own error challenge, answered
    /// with the dummy response, then FAIL.
    pub async fn check_token(
        &self,
        mechanism: &str,
        message: &[u8],
        client: IpAddr,
    ) -> CheckOutcome {
        self.bounded(self.token_exchange(mechanism, message, client))
            .await
    }

    async fn token_exchange(
        &self,
        mechanism: &str,
        message: &[u8],
        client: IpAddr,
    ) -> Result<DovecotAnswer, DovecotError> {
        let (mut lines, mut write, _) = self.connect().await?;
        let response =
            zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(message));
        let request = zeroize::Zeroizing::new(format!(
            "AUTH\t1\t{mechanism}\tservice=smtp\tsecured\trip={client}\tresp={}\n",
            response.as_str()
        ));
        write
            .write_all(request.as_bytes())
            .await
            .map_err(|e| self.error(format!("write: {e}")))?;
        let mut continued = false;
        loop {
            let line = self.read_line(&mut lines).await?;
            let mut fields = line.split('\t');
            let (kind, id) = (fields.next(), fields.next());
            if id != Some("1") {
                return Err(self.error(format!("answer for another request: {line:?}")));
            }
            match kind {
                Some("OK") => {
                    let user = fields.find_map(|f| f.strip_prefix("user=")).unwrap_or("");
                    if user.is_empty() {
                        return Err(self.error("OK without a user"));
                    }
                    return Ok(DovecotAnswer::Ok(user.to_owned()));
                }
                Some("FAIL") => return Ok(DovecotAnswer::Fail),
                // The error challenge (RFC 7628 §3.2.3): the dummy answer,
                // once; XOAUTH2's is empty, OAUTHBEARER's is ^A.
                Some("CONT") if !continued => {
                    continued = true;
                    let dummy = if mechanism == "OAUTHBEARER" {
                        "AQ=="
                    } else {
                        ""
                    };
                    write
                        .write_all(format!("CONT\t1\t{dummy}\n").as_bytes())
                        .await
                        .map_err(|e| self.error(format!("write: {e}")))?;
                }
                _ => return Err(self.error(format!("unexpected answer {:?}", kind.unwrap_or("")))),
            }
        }
    }

    /// Connects and reads the handshake up to DONE; also returns the
    /// mechanisms offered.
    async fn connect(
        &self,
    ) -> Result<
        (
            BufReader<tokio::net::unix::OwnedReadHalf>,
            tokio::net::unix::OwnedWriteHalf,
            Vec<String>,
        ),
        DovecotError,
    > {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.error(format!("cannot connect: {e}")))?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        write
            .write_all(format!("VERSION\t1\t2\nCPID\t{}\n", std::process::id()).as_bytes())
            .await
            .map_err(|e| self.error(format!("write: {e}")))?;
        let mut version_ok = false;
        let mut mechanisms = Vec::new();
        loop {
            let line = self.read_line(&mut lines).await?;
            let mut fields = line.split('\t');
            match fields.next() {
                Some("VERSION") => version_ok = fields.next() == Some("1"),
                Some("MECH") => {
                    if let Some(m) = fields.next() {
                        mechanisms.push(m.to_ascii_uppercase());
                    }
                }
                Some("DONE") => break,
                _ => {}
            }
        }
        let plain = mechanisms.iter().any(|m| m == "PLAIN");
        if !version_ok {
            return Err(self.error("not a Dovecot auth protocol 1.x server"));
        }
        if !plain {
            return Err(self.error("Dovecot does not offer PLAIN: add it to auth_mechanisms"));
        }
        Ok((lines, write, mechanisms))
    }

    /// The exchange itself, without the timeout.
    pub async fn exchange(
        &self,
        login: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<DovecotAnswer, DovecotError> {
        let (mut lines, mut write, _) = self.connect().await?;
        // PLAIN: authzid empty, then login and password; base64 keeps any
        // tab or newline in them out of the protocol's own syntax.
        let mut blob =
            zeroize::Zeroizing::new(Vec::with_capacity(login.len() + password.len() + 2));
        blob.push(0);
        blob.extend_from_slice(login.as_bytes());
        blob.push(0);
        blob.extend_from_slice(password.as_bytes());
        let response =
            zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*blob));
        // `secured`: the client is on TLS (submitd never takes AUTH
        // otherwise); `rip`: the client's address, for Dovecot's own
        // logging and penalties.
        let request = zeroize::Zeroizing::new(format!(
            "AUTH\t1\tPLAIN\tservice=smtp\tsecured\trip={client}\tresp={}\n",
            response.as_str()
        ));
        write
            .write_all(request.as_bytes())
            .await
            .map_err(|e| self.error(format!("write: {e}")))?;
        let line = self.read_line(&mut lines).await?;
        let mut fields = line.split('\t');
        let (kind, id) = (fields.next(), fields.next());
        if id != Some("1") {
            return Err(self.error(format!("answer for another request: {line:?}")));
        }
        let user = fields
            .filter_map(|f| f.strip_prefix("user="))
            .next()
            .map(str::to_owned);
        match kind {
            Some("OK") => Ok(DovecotAnswer::Ok(user.unwrap_or_else(|| login.to_owned()))),
            Some("FAIL") => Ok(DovecotAnswer::Fail),
            // PLAIN needs no second round; anything else is out of step.
            _ => Err(self.error(format!("unexpected answer {:?}", kind.unwrap_or("")))),
        }
    }

    async fn read_line(
        &self,
        lines: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    ) -> Result<String, DovecotError> {
        let mut line = Vec::new();
        let n = (&mut *lines)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| self.error(format!("read: {e}")))?;
        if n == 0 {
            return Err(self.error("closed the connection"));
        }
        if line.last() != Some(&b'\n') {
            return Err(self.error("line too long"));
        }
        line.pop();
        String::from_utf8(line).map_err(|_| self.error("answer is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A stand-in that says `handshake` and then `answer` to any request,
    /// recording what it was sent.
    async fn stand_in(
        dir: &std::path::Path,
        handshake: &'static str,
        answer: &'static str,
    ) -> (DovecotAuth, tokio::task::JoinHandle<String>) {
        let path = dir.join("auth");
        let listener = UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(handshake.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&got).contains("AUTH\t") || !got.ends_with(b"\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        let auth = DovecotAuth {
            socket: path,
            timeout: Duration::from_secs(2),
        };
        (auth, task)
    }

    const HANDSHAKE: &str =
        "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t1\nCOOKIE\tx\nDONE\n";
    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn ok_fail_and_what_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, task) = stand_in(dir.path(), HANDSHAKE, "OK\t1\tuser=Carol\n").await;
        assert_eq!(
            auth.check("carol", "tab\tin", IP).await,
            CheckOutcome::Authenticated {
                user: "Carol".into(),
                app_password: None
            }
        );
        let sent = task.await.unwrap();
        assert!(sent.starts_with("VERSION\t1\t2\nCPID\t"), "{sent}");
        let resp = base64::engine::general_purpose::STANDARD.encode(b"\0carol\0tab\tin");
        assert!(
            sent.ends_with(&format!(
                "AUTH\t1\tPLAIN\tservice=smtp\tsecured\trip=127.0.0.1\tresp={resp}\n"
            )),
            "{sent}"
        );

        let dir = tempfile::tempdir().unwrap();
        let (auth, _) = stand_in(dir.path(), HANDSHAKE, "FAIL\t1\tuser=carol\n").await;
        assert_eq!(auth.check("carol", "x", IP).await, CheckOutcome::Rejected);
    }

    #[tokio::test]
    async fn anything_odd_is_unavailable_never_a_login() {
        for (handshake, answer) in [
            (HANDSHAKE, "CONT\t1\t\n"),
            (HANDSHAKE, "OK\t2\tuser=carol\n"),
            (HANDSHAKE, ""),
            ("VERSION\t2\t0\nMECH\tPLAIN\nDONE\n", "OK\t1\n"),
            ("VERSION\t1\t2\nMECH\tLOGIN\nDONE\n", "OK\t1\n"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (auth, _) = stand_in(dir.path(), handshake, answer).await;
            assert_eq!(
                auth.check("carol", "x", IP).await,
                CheckOutcome::Unavailable,
                "{handshake:?} {answer:?}"
            );
        }
        // No socket at all.
        let dir = tempfile::tempdir().unwrap();
        let auth = DovecotAuth {
            socket: dir.path().join("none"),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(
            auth.check("carol", "x", IP).await,
            CheckOutcome::Unavailable
        );
        // A socket that never speaks: bounded by the timeout.
        let listener = UnixListener::bind(dir.path().join("mute")).unwrap();
        let auth = DovecotAuth {
            socket: dir.path().join("mute"),
            timeout: Duration::from_millis(300),
        };
        let start = std::time::Instant::now();
        assert_eq!(
            auth.check("carol", "x", IP).await,
            CheckOutcome::Unavailable
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(listener);
    }
}
