//! EHLO and HELO: the client names itself; the reply lists what may be
//! used. Before TLS only what reaches TLS is offered (RFC 3207 §4.2:
//! nothing learnt in plaintext may be trusted later).

use super::ServerSession;
use crate::address::parse_client_name;
use crate::reply::Reply;
use crate::transport::Transport;

impl ServerSession {
    pub(super) fn hello(&mut self, arg: &str, extended: bool) {
        let verb = if extended { "EHLO" } else { "HELO" };
        if arg.is_empty() {
            return self.error(Reply::new(
                501,
                (5, 5, 4),
                format!("Syntax: {verb} hostname"),
            ));
        }
        let name = match parse_client_name(arg) {
            Ok(name) => name,
            Err(e) => {
                return self.error(Reply::new(
                    501,
                    (5, 5, 4),
                    format!("Invalid {verb} argument: {e}"),
                ))
            }
        };
        self.client_name = Some(name);
        self.extended = extended;
        self.end_transaction();
        let host = &self.config.hostname;
        // EHLO response lines are keywords: no enhanced codes (RFC 2034 §3).
        let mut response = Reply::bare(250, host);
        if extended {
            let local = self.config.transport == Transport::Local;
            if self.tls || local {
                let size = self.config.limits.message_size;
                for keyword in [
                    "PIPELINING",
                    &format!("SIZE {size}"),
                    "8BITMIME",
                    "SMTPUTF8",
                    "ENHANCEDSTATUSCODES",
                    "CHUNKING",
                    "DSN",
                ] {
                    response = response.with_line(keyword);
                }
                if !local && !self.config.auth_mechanisms.is_empty() {
                    let mechanisms = self.config.auth_mechanisms.join(" ");
                    response = response.with_line(format!("AUTH {mechanisms}"));
                }
            } else {
                // Before TLS only what is needed to reach it (RFC 3207 §4.2:
                // nothing learnt now may be trusted later).
                response = response.with_line("ENHANCEDSTATUSCODES");
                if self.config.transport == Transport::StartTls {
                    response = response.with_line("STARTTLS");
                }
            }
        }
        self.reply(response);
    }
}
