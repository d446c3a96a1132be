//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in
//! TCP mode opens each connection with a header that names the client it
//! stands for. Behind one, that address is the client everywhere
//! (connection limits, throttle, logs, Received); the header is believed
//! only from [`TrustedProxies`], and a connection that does not start with
//! a whole, valid header within [`HEADER_TIMEOUT`] is closed.
//!
//! The parser is a small one of our own rather than a crate: the format
//! is two pages of HAProxy's spec, we need only the addresses (no TLV
//! interpretation), and the reader must take exactly the header's bytes
//! from the socket and not one more (the TLS ClientHello or the client's
//! first command follows in the same segment), which is easiest when the
//! parser says how many bytes it needs next ([`Progress`]). It is pure
//! (no IO) and has a fuzz target (`fuzz/fuzz_targets/proxy_header.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a proxy has to send the whole header. HAProxy sends it with
/// the connection's first segment; anything slower is not a proxy we know.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The version 2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The shortest header of either version: `PROXY UNKNOWN\r\n` is 15 octets,
/// version 2's fixed part 16. Reading this many first never takes a byte
/// past the header.
const FIRST_READ: usize = 15;
/// Version 1's longest line, CRLF included (the spec's 107).
const V1_MAX: usize = 107;
/// The most address and TLV octets a version 2 header may carry here.
/// Addresses take at most 216 (AF_UNIX); HAProxy's optional TLVs (unique
/// id, TLS facts) fit well inside. A larger length is refused, so a
/// connection cannot make the listener buffer 64 KiB before its session.
pub const V2_MAX_PAYLOAD: usize = 1024;

/// What a header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client and the address it connected to, as the proxy saw
    /// them; `None` for a `LOCAL` (v2) or `UNKNOWN` (v1) header, the
    /// proxy's own connection (a health check): the connection's own
    /// addresses stand.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// The header's length in octets.
    pub length: usize,
}

/// How far the parser got with the octets it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The header needs exactly this many more octets to be judged (never
    /// more than the header has).
    Need(usize),
    /// The whole header.
    Done(ProxyHeader),
}

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Neither signature: the peer is not speaking the PROXY protocol.
    #[error("no PROXY protocol header")]
    Missing,
    /// A version 1 line that is not `PROXY TCP4|TCP6|UNKNOWN …` with valid
    /// addresses and ports.
    #[error("malformed PROXY v1 header")]
    BadV1,
    /// A version 1 line longer than 107 octets.
    #[error("PROXY v1 header too long")]
    V1TooLong,
    /// A version 2 header with a wrong version, command, family or
    /// transport, or addresses that do not fit its length.
    #[error("malformed PROXY v2 header")]
    BadV2,
    /// A version 2 header longer than [`V2_MAX_PAYLOAD`].
    #[error("PROXY v2 header too long")]
    V2TooLong,
}

impl ProxyError {
    /// The log line's words for it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "no PROXY header",
            Self::BadV1 => "malformed PROXY v1 header",
            Self::V1TooLong => "PROXY v1 header too long",
            Self::BadV2 => "malformed PROXY v2 header",
            Self::V2TooLong => "PROXY v2 header too long",
        }
    }
}

/// Judges `octets`, the first octets of a connection: how many more the
/// header needs, the whole header, or why it is refused. Feed it what it
/// asked for until it says `Done`.
pub fn parse(octets: &[u8]) -> Result<Progress, ProxyError> {
    if octets.len() < FIRST_READ {
        let prefix_ok = V2_SIGNATURE.starts_with(&octets[..octets.len().min(12)])
            || b"PROXY ".starts_with(&octets[..octets.len().min(6)]);
        return if prefix_ok {
            Ok(Progress::Need(FIRST_READ - octets.len()))
        } else {
            Err(ProxyError::Missing)
        };
    }
    if octets.starts_with(V2_SIGNATURE) {
        parse_v2(octets)
    } else if octets.starts_with(b"PROXY ") {
        parse_v1(octets)
    } else {
        Err(ProxyError::Missing)
    }
}

fn parse_v1(octets: &[u8]) -> Result<Progress, ProxyError> {
    let Some(end) = octets.windows(2).position(|w| w == b"\r\n") else {
        if octets.len() >= V1_MAX {
            return Err(ProxyError::V1TooLong);
        }
        // A lone CR or LF anywhere but the end is already wrong.
        if octets[..octets.len() - 1].contains(&b'\r') || octets.contains(&b'\n') {
            return Err(ProxyError::BadV1);
        }
        // One octet at a time: the line's end is not known before it comes.
        return Ok(Progress::Need(1));
    };
    let length = end + 2;
    if length != octets.len() {
        // Only reachable when the caller gave more than was asked for.
        return Err(ProxyError::BadV1);
    }
    let line = std::str::from_utf8(&octets[..end]).map_err(|_| ProxyError::BadV1)?;
    let mut words = line.split(' ');
    let (Some("PROXY"), Some(family)) = (words.next(), words.next()) else {
        return Err(ProxyError::BadV1);
    };
    let addresses = match family {
        // The rest of an UNKNOWN line is to be ignored (the spec).
        "UNKNOWN" => None,
        "TCP4" | "TCP6" => {
            let v4 = family == "TCP4";
            let ip = |word: Option<&str>| -> Result<IpAddr, ProxyError> {
                let word = word.ok_or(ProxyError::BadV1)?;
                if v4 {
                    Ipv4Addr::from_str(word).map(IpAddr::V4)
                } else {
                    Ipv6Addr::from_str(word).map(IpAddr::V6)
                }
                .map_err(|_| ProxyError::BadV1)
            };
            let (source, destination) = (ip(words.next())?, ip(words.next())?);
            let (source_port, destination_port) = (port(words.next())?, port(words.next())?);
            if words.next().is_some() {
                return Err(ProxyError::BadV1);
            }
            Some((
                SocketAddr::new(source, source_port),
                SocketAddr::new(destination, destination_port),
            ))
        }
        _ => return Err(ProxyError::BadV1),
    };
    Ok(Progress::Done(ProxyHeader { addresses, length }))
}

/// A version 1 port: decimal digits only (Rust's parser would take "+25"),
/// no leading zero, at most 65535.
fn port(word: Option<&str>) -> Result<u16, ProxyError> {
    let word = word.ok_or(ProxyError::BadV1)?;
    let digits_only = !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (word.len() > 1 && word.starts_with('0')) {
        return Err(ProxyError::BadV1);
    }
    word.parse().map_err(|_| ProxyError::BadV1)
}

fn parse_v2(octets: &[u8]) -> Result<Progress, ProxyError> {
    if octets.len() < 16 {
        return Ok(Progress::Need(16 - octets.len()));
    }
    let (version_command, family) = (octets[12], octets[13]);
    let payload = usize::from(u16::from_be_bytes([octets[14], octets[15]]));
    if version_command >> 4 != 2 {
        return Err(ProxyError::BadV2);
    }
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong);
    }
    let length = 16 + payload;
    if octets.len() < length {
        return Ok(Progress::Need(length - octets.len()));
    }
    if octets.len() > length {
        return Err(ProxyError::BadV2);
    }
    let body = &octets[16..];
    let addresses = match version_command & 0x0f {
        // LOCAL: the proxy's own connection; the addresses are ignored.
        0x0 => None,
        0x1 => match family {
            // UNSPEC and AF_UNIX clients: nothing we can use as an address;
            // the connection's own stands, as for LOCAL.
            0x00 | 0x31 | 0x32 => None,
            // TCP over IPv4.
            0x11 => {
                let a = body.get(..12).ok_or(ProxyError::BadV2)?;
                let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
                Some((
                    SocketAddr::new(ip(0), u16::from_be_bytes([a[8], a[9]])),
                    SocketAddr::new(ip(4), u16::from_be_bytes([a[10], a[11]])),
                ))
            }
            // TCP over IPv6.
            0x21 => {
                let a = body.get(..36).ok_or(ProxyError::BadV2)?;
                let ip = |i: usize| {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&a[i..i + 16]);
                    IpAddr::V6(Ipv6Addr::from(o))
                };
                Some((
                    SocketAddr::new(ip(0), u16::from_be_bytes([a[32], a[33]])),
                    SocketAddr::new(ip(16), u16::from_be_bytes([a[34], a[35]])),
                ))
            }
            // UDP, or a family this version does not define.
            _ => return Err(ProxyError::BadV2),
        },
        _ => return Err(ProxyError::BadV2),
    };
    Ok(Progress::Done(ProxyHeader { addresses, length }))
}

/// Reads one header from `stream`, taking exactly its octets (what
/// follows stays in the socket for TLS or SMTP). Not bounded in time
/// here: the caller wraps it in [`HEADER_TIMEOUT`].
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxyHeader, ReadError> {
    let mut octets = Vec::with_capacity(64);
    loop {
        match parse(&octets)? {
            Progress::Done(header) => return Ok(header),
            Progress::Need(n) => {
                let start = octets.len();
                octets.resize(start + n, 0);
                stream
                    .read_exact(&mut octets[start..])
                    .await
                    .map_err(ReadError::Io)?;
            }
        }
    }
}

/// Why no header could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The octets were not a valid header.
    #[error(transparent)]
    Header(#[from] ProxyError),
    /// The connection ended or failed before the header did.
    #[error("connection closed before the PROXY header ended: {0}")]
    Io(std::io::Error),
}

/// The networks whose PROXY headers are believed (`trusted_proxies`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Network>);

impl TrustedProxies {
    /// Trusts `networks`.
    pub fn new(networks: Vec<Network>) -> Self {
        Self(networks)
    }

    /// Whether a connection from `ip` may carry a header. An IPv4 peer on
    /// a dual-stack socket (`::ffff:a.b.c.d`) is judged as IPv4.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The networks.
    pub fn networks(&self) -> &[Network] {
        &self.0
    }
}

/// An address block: `192.0.2.0/24`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Why a network was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address or a network such as \"10.0.0.0/8\" or \"fd00::/8\"")]
pub struct NetworkError(String);

impl FromStr for Network {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetworkError(s.to_owned());
        let (address, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let address = IpAddr::from_str(address).map_err(|_| bad())?.to_canonical();
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(Self { address, prefix })
    }
}

/// A listener's PROXY protocol setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// Whose headers are believed; a connection from anywhere else is
    /// closed at accept.
    pub trusted: TrustedProxies,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(octets: &[u8]) -> Result<ProxyHeader, ProxyError> {
        // Fed the way the reader feeds it.
        let mut given = 0;
        loop {
            match parse(&octets[..given])? {
                Progress::Done(h) => return Ok(h),
                Progress::Need(n) => {
                    given += n;
                    assert!(given <= octets.len(), "asked past the header");
                }
            }
        }
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn version_1_tcp4_and_tcp6() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 465\r\n";
        let h = whole(line).unwrap();
        assert_eq!(h.length, line.len());
        assert_eq!(
            h.addresses,
            Some((
                "192.0.2.7:56324".parse().unwrap(),
                "198.51.100.1:465".parse().unwrap()
            ))
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 587\r\n";
        let h = whole(line).unwrap();
        assert_eq!(
            h.addresses.unwrap().0,
            "[2001:db8::7]:4000".parse().unwrap()
        );
        let h = whole(b"PROXY UNKNOWN\r\n").unwrap();
        assert_eq!((h.addresses, h.length), (None, 15));
        let h = whole(b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n").unwrap();
        assert_eq!(h.addresses, None);
    }

    #[test]
    fn version_1_refusals() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 465 x\r\n",
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 +1 465\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 01 465\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 465\r\n",
            b"PROXY TCP4  192.0.2.7 198.51.100.1 1 465\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 465\r\n",
            b"PROXY TCP4 192.0.2.7\n198.51.100.1 1 465\r\n",
        ] {
            assert_eq!(
                whole(bad),
                Err(ProxyError::BadV1),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
        assert_eq!(whole(long.as_bytes()), Err(ProxyError::V1TooLong));
        assert_eq!(whole(b"EHLO client.example\r\n"), Err(ProxyError::Missing));
        // A TLS ClientHello is refused at its first octet.
        assert_eq!(parse(&[0x16]), Err(ProxyError::Missing));
    }

    #[test]
    fn version_2_inet_inet6_local() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&465u16.to_be_bytes());
        // A TLV after the addresses (PP2_TYPE_UNIQUE_ID) is skipped.
        body.extend_from_slice(&[0x05, 0x00, 0x02, b'i', b'd']);
        let octets = v2(1, 0x11, &body);
        let h = whole(&octets).unwrap();
        assert_eq!(h.length, octets.len());
        assert_eq!(
            h.addresses,
            Some((
                "192.0.2.7:56324".parse().unwrap(),
                "198.51.100.1:465".parse().unwrap()
            ))
        );
        let mut body = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&[0x0f, 0xa0, 0x02, 0x4b]);
        let h = whole(&v2(1, 0x21, &body)).unwrap();
        assert_eq!(
            h.addresses.unwrap(),
            (
                "[2001:db8::7]:4000".parse().unwrap(),
                "[2001:db8::1]:587".parse().unwrap()
            )
        );
        // LOCAL (health checks), UNSPEC and AF_UNIX: the connection's own.
        assert_eq!(whole(&v2(0, 0x00, &[])).unwrap().addresses, None);
        assert_eq!(whole(&v2(0, 0x11, &[0; 12])).unwrap().addresses, None);
        assert_eq!(whole(&v2(1, 0x31, &[0; 216])).unwrap().addresses, None);
    }

    #[test]
    fn version_2_refusals() {
        // Addresses shorter than the family needs.
        assert_eq!(whole(&v2(1, 0x11, &[0; 11])), Err(ProxyError::BadV2));
        assert_eq!(whole(&v2(1, 0x21, &[0; 35])), Err(ProxyError::BadV2));
        // UDP; unknown command; unknown family.
        assert_eq!(whole(&v2(1, 0x12, &[0; 12])), Err(ProxyError::BadV2));
        assert_eq!(whole(&v2(2, 0x11, &[0; 12])), Err(ProxyError::BadV2));
        assert_eq!(whole(&v2(1, 0x41, &[0; 12])), Err(ProxyError::BadV2));
        // Version 1 in a version 2 signature.
        let mut octets = v2(1, 0x11, &[0; 12]);
        octets[12] = 0x11;
        assert_eq!(whole(&octets), Err(ProxyError::BadV2));
        // Too long to buffer: refused before the payload is read.
        let mut octets = v2(1, 0x11, &[]);
        octets[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(parse(&octets), Err(ProxyError::V2TooLong));
    }

    #[tokio::test]
    async fn the_reader_takes_the_header_and_not_one_octet_more() {
        for header in [
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 465\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(1, 0x11, &[192, 0, 2, 7, 198, 51, 100, 1, 0, 25, 1, 209]),
            v2(0, 0x00, &[]),
        ] {
            let (mut client, mut server) = tokio::io::duplex(4096);
            let mut sent = header.clone();
            sent.extend_from_slice(b"\x16\x03\x01 the client hello");
            tokio::io::AsyncWriteExt::write_all(&mut client, &sent)
                .await
                .unwrap();
            drop(client);
            let h = read_header(&mut server).await.unwrap();
            assert_eq!(h.length, header.len());
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"\x16\x03\x01 the client hello");
        }
        // Closed halfway: an IO error, not a hang.
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4 192.0")
            .await
            .unwrap();
        drop(client);
        assert!(matches!(
            read_header(&mut server).await,
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn networks() {
        let n: Network = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Network = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        let v6: Network = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "fd00::/129",
            "host",
            "",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
        let trusted = TrustedProxies::new(vec![one, v6]);
        assert!(trusted.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!trusted.trusts("127.0.0.2".parse().unwrap()));
    }
}
