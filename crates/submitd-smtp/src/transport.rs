//! How a connection is protected: how TLS starts on it, or why it has
//! none. One name for both machines, the listeners, the upstreams and the
//! config file (`mode = "implicit" | "starttls"`, `tls = ...`).

/// How TLS starts on a connection, or why it has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TLS from the first byte (port 465, RFC 8314).
    ImplicitTls,
    /// Plain TCP upgraded with STARTTLS (port 587, RFC 3207). The server
    /// offers it and refuses everything that matters before it; the client
    /// requires it and fails the session if the server does not offer it.
    StartTls,
    /// Plain TCP with no way to TLS. The server allows only EHLO, HELO,
    /// NOOP, RSET and QUIT, so nothing can be submitted; the client refuses
    /// to talk at all.
    Plaintext,
    /// A local socket of this machine whose peer the caller has identified
    /// (a unix socket and the peer's uid): no TLS is needed or offered, nor
    /// AUTH. The server's caller names the user with
    /// [`ServerSession::authenticate_local`](crate::ServerSession::authenticate_local)
    /// before feeding input; the client (`submitd sendmail`) skips STARTTLS
    /// and AUTH.
    Local,
}

impl Transport {
    /// Whether TLS is up before the first SMTP byte.
    pub fn is_implicit_tls(self) -> bool {
        self == Self::ImplicitTls
    }
}
