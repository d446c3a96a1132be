//! Test support for submitd (not published): a throwaway certificate
//! authority, and a fake smarthost on loopback that speaks SMTP through the
//! project's own server machine over real TLS, with faults on demand.
//!
//! The fake's world is `submitd_smtp::testing`'s: AUTH as `alice` /
//! `secret` is required; recipients whose local part starts with `unknown`
//! are refused (550); a message containing `X-Store: fail` gets 451 and one
//! containing `X-Store: reject` gets 554 after DATA.
//!
//! Dependencies: `rcgen` makes the certificates, `rustls`/`tokio-rustls`
//! serve TLS, `tokio` runs the listener.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use submitd_smtp::testing::{Driver, Event, Item, StoredMessage};
use submitd_smtp::{ServerConfig, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A certificate authority for one test.
#[derive(Debug)]
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA with a fresh key.
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
        let mut params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "submitd test CA");
        let issuer =
            CertifiedIssuer::self_signed(params, key).unwrap_or_else(|e| panic!("CA: {e}"));
        Self { issuer }
    }

    /// The CA certificate, to trust.
    pub fn cert(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA certificate as PEM, for a CA file.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Signs a new certificate for `names`; returns it with its key.
    fn sign(&self, names: &[&str]) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap_or_else(|e| panic!("{e}"));
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("sign: {e}"));
        (cert, key)
    }

    /// A certificate for `names` signed by this CA and its key, as PEM
    /// texts for files a server loads.
    pub fn issue_pem(&self, names: &[&str]) -> (String, String) {
        let (cert, key) = self.sign(names);
        (cert.pem(), key.serialize_pem())
    }

    /// A TLS client configuration that trusts this CA only (TLS 1.2 and
    /// 1.3, rustls' safe defaults).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert()).unwrap_or_else(|e| panic!("CA: {e}"));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A certificate for `names` signed by this CA, with its key.
    pub fn issue(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let (cert, key) = self.sign(names);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A fault the fake smarthost shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// None: a well-behaved smarthost.
    None,
    /// Close the connection after this many octets of message content.
    DropDuringData(usize),
    /// Accept connections and never say anything.
    Stall,
    /// Answer the first this many messages (over all connections) with
    /// 451 after DATA, then accept.
    TempFailFirst(u32),
    /// Read message content slowly: wait this long after each read during
    /// DATA (TCP then slows the sender down).
    SlowData(std::time::Duration),
}

/// What the fake smarthost saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Messages stored, in order.
    pub messages: Vec<StoredMessage>,
    /// Connections accepted.
    pub connections: usize,
    /// Temporary failures still to give (for [`Fault::TempFailFirst`]).
    temp_failures_left: u32,
}

/// A fake smarthost on 127.0.0.1.
#[derive(Debug)]
pub struct FakeSmarthost {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSmarthost {
    /// Starts one with a certificate for `names` from `ca`, on implicit TLS
    /// or STARTTLS (required by the world's AUTH rule either way).
    pub async fn start(ca: &TestCa, names: &[&str], transport: Transport, fault: Fault) -> Self {
        Self::start_with(ca, names, transport, fault, None).await
    }

    /// Starts one that, like a real MTA, writes each message to a file in
    /// `dir` and fsyncs it (and the folder) before its 250: the sink for
    /// benchmarks that compare durable with durable.
    pub async fn start_durable(
        ca: &TestCa,
        names: &[&str],
        transport: Transport,
        dir: std::path::PathBuf,
    ) -> Self {
        Self::start_with(ca, names, transport, Fault::None, Some(Arc::new(dir))).await
    }

    async fn start_with(
        ca: &TestCa,
        names: &[&str],
        transport: Transport,
        fault: Fault,
        durable: Option<Arc<std::path::PathBuf>>,
    ) -> Self {
        let (certs, key) = ca.issue(names);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .unwrap_or_else(|e| panic!("server TLS config: {e}"));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let seen = Arc::new(Mutex::new(Seen::default()));
        if let (Fault::TempFailFirst(n), Ok(mut s)) = (fault, seen.lock()) {
            s.temp_failures_left = n;
        }
        let seen_by_task = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(mut seen) = seen_by_task.lock() {
                    seen.connections += 1;
                }
                let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen_by_task));
                let durable = durable.clone();
                tokio::spawn(async move {
                    let _ = serve(tcp, acceptor, transport, fault, seen, durable).await;
                });
            }
        });
        Self { addr, seen, task }
    }

    /// The messages stored so far.
    pub fn messages(&self) -> Vec<StoredMessage> {
        self.seen
            .lock()
            .map(|s| s.messages.clone())
            .unwrap_or_default()
    }

    /// How many messages were stored so far (without copying them).
    pub fn message_count(&self) -> usize {
        self.seen
            .lock()
            .map(|s| s.messages.len())
            .unwrap_or_default()
    }

    /// Forgets the messages stored so far (long load runs).
    pub fn clear_messages(&self) {
        if let Ok(mut s) = self.seen.lock() {
            s.messages.clear();
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.seen.lock().map(|s| s.connections).unwrap_or_default()
    }
}

impl Drop for FakeSmarthost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the server machine over one stream until it closes or asks for TLS.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    driver: &mut Driver,
    seen: &Mutex<Seen>,
    fault: Fault,
    data_octets: &mut Option<usize>,
    durable: Option<&Arc<std::path::PathBuf>>,
) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut out = Vec::new();
        let mut start_tls = false;
        let mut close = false;
        for item in driver.take_items() {
            match item {
                Item::Line(line) => {
                    if line.starts_with("354 ") {
                        *data_octets = Some(0);
                    }
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                Item::Event(Event::StartTls { .. }) => start_tls = true,
                Item::Event(Event::Stored { message, .. }) => {
                    *data_octets = None;
                    if let Some(dir) = durable {
                        // Durable before the 250 that `out` holds goes out.
                        let (dir, data) = (Arc::clone(dir), message.data.clone());
                        tokio::task::spawn_blocking(move || store_durably(&dir, &data))
                            .await
                            .map_err(std::io::Error::other)??;
                    }
                    if let Ok(mut seen) = seen.lock() {
                        seen.messages.push(*message);
                    }
                }
                Item::Event(Event::Aborted) => *data_octets = None,
                Item::Event(Event::Close(_)) => close = true,
            }
        }
        stream.write_all(&out).await?;
        stream.flush().await?;
        if close {
            return Ok(false);
        }
        if start_tls {
            return Ok(true);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        if let (Fault::SlowData(wait), Some(_)) = (fault, data_octets.as_ref()) {
            tokio::time::sleep(wait).await;
        }
        if let (Fault::DropDuringData(limit), Some(count)) = (fault, data_octets.as_mut()) {
            *count += n;
            if *count > limit {
                return Ok(false); // drop the connection mid-DATA
            }
        }
        if matches!(fault, Fault::TempFailFirst(_)) {
            // Hand the shared count to this connection's world for this read.
            if let Ok(mut s) = seen.lock() {
                driver.fail_next_stores = s.temp_failures_left;
                driver.feed(&buf[..n]);
                s.temp_failures_left = driver.fail_next_stores;
                continue;
            }
        }
        driver.feed(&buf[..n]);
    }
}

/// Writes `data` to a new file in `dir`, fsyncs it and the folder.
fn store_durably(dir: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{}-{n}.eml", std::process::id()));
    let mut file = std::fs::File::create(&path)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

async fn serve(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    transport: Transport,
    fault: Fault,
    seen: Arc<Mutex<Seen>>,
    durable: Option<Arc<std::path::PathBuf>>,
) -> std::io::Result<()> {
    let durable = durable.as_ref();
    if fault == Fault::Stall {
        let mut tcp = tcp;
        let mut buf = [0u8; 1024];
        while tcp.read(&mut buf).await? > 0 {}
        return Ok(());
    }
    let mut driver = Driver::new(ServerConfig::new("smarthost.test", transport));
    let mut data_octets = None;
    match transport {
        Transport::ImplicitTls => {
            let mut tls = acceptor.accept(tcp).await?;
            run(
                &mut tls,
                &mut driver,
                &seen,
                fault,
                &mut data_octets,
                durable,
            )
            .await?;
        }
        _ => {
            let mut tcp = tcp;
            if run(
                &mut tcp,
                &mut driver,
                &seen,
                fault,
                &mut data_octets,
                durable,
            )
            .await?
            {
                let mut tls = acceptor.accept(tcp).await?;
                run(
                    &mut tls,
                    &mut driver,
                    &seen,
                    fault,
                    &mut data_octets,
                    durable,
                )
                .await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fake greets over TLS whose certificate verifies against the CA
    /// for the name it was issued for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fake_smarthost_greets_over_verified_tls() {
        let ca = TestCa::new();
        let fake =
            FakeSmarthost::start(&ca, &["localhost"], Transport::ImplicitTls, Fault::None).await;
        let config = ca.client_config();
        let tcp = TcpStream::connect(fake.addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let name =
            rustls_pki_types::ServerName::try_from("localhost").unwrap_or_else(|e| panic!("{e}"));
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut greeting = [0u8; 64];
        let n = tls
            .read(&mut greeting)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&greeting[..n], b"220 smarthost.test ESMTP ready\r\n");
        assert_eq!(fake.connections(), 1);
    }
}
