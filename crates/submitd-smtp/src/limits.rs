//! The finite limits of one server session, with their defaults.

use std::time::Duration;

/// Every bound the server session enforces. Each one is finite; the daemon's
/// config file sets them, and `Default` gives the documented defaults
/// (`docs/protocol.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest command line, in octets with CRLF (RFC 5321 §4.5.3.1.4: 512).
    /// MAIL and RCPT get [`Limits::extension_allowance`] on top for their
    /// ESMTP parameters.
    pub command_line: usize,
    /// Extra octets allowed on MAIL and RCPT lines for ESMTP parameters
    /// (SIZE, BODY, RET, ENVID, AUTH=, NOTIFY, ORCPT: RFC 1870 §3, RFC 3461
    /// §4 and §5, RFC 4954 §5 each raise the limit).
    pub extension_allowance: usize,
    /// Longest AUTH command or AUTH continuation line (RFC 4954 §4 asks for
    /// at least 12,288 octets).
    pub auth_line: usize,
    /// Longest line of message data, in octets with CRLF and with any
    /// stuffed dot (RFC 5321 §4.5.3.1.6: 1000).
    pub data_line: usize,
    /// Largest message, in octets after dot-unstuffing; advertised in SIZE.
    pub message_size: u64,
    /// Most recipients in one transaction; further RCPTs get 452 4.5.3.
    pub recipients: usize,
    /// Client errors (syntax, sequence, failed AUTH) before 421 and close.
    pub errors: u32,
    /// How long the server waits for the client to send anything
    /// (RFC 5321 §4.5.3.2.7: at least 5 minutes).
    pub idle_timeout: Duration,
    /// Longest a whole session may last, whatever the client does.
    pub session_duration: Duration,
    /// Longest one command line (or AUTH line) may take to arrive, from
    /// its first octet to its CRLF. The idle timeout alone would let a
    /// client trickle one octet every few minutes and hold the session
    /// (slowloris); this bounds the line as a whole. Also the grace before
    /// message content is held to `min_data_rate`.
    pub command_deadline: Duration,
    /// Slowest message content accepted, in octets per second: DATA or a
    /// BDAT chunk must have arrived by `command_deadline` plus its size at
    /// this rate after it began (Postfix's `smtpd_min_data_rate`).
    pub min_data_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            command_line: 512,
            extension_allowance: 1024,
            auth_line: 12_288,
            data_line: 1000,
            message_size: 25 * 1024 * 1024,
            recipients: 1000,
            errors: 20,
            idle_timeout: Duration::from_secs(300),
            session_duration: Duration::from_secs(3600),
            command_deadline: Duration::from_secs(60),
            min_data_rate: 1024,
        }
    }
}
