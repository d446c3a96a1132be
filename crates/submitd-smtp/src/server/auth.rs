//! AUTH (RFC 4954): the mechanism exchange as the wire sees it. The
//! machine decodes base64 and hands each response to the caller, which
//! runs the mechanism and checks the credentials; the machine only knows
//! whether the answer is a challenge, a success or a failure.

use base64::Engine as _;

use super::{AnswerError, AuthAnswer, Output, Pending, ServerSession, State};
use crate::reply::Reply;
use crate::secret::Secret;
use crate::transport::Transport;

fn base64_engine() -> base64::engine::GeneralPurpose {
    // Accept responses with or without padding: clients differ.
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

impl ServerSession {
    pub(super) fn auth(&mut self, arg: &str) {
        if self.config.transport == Transport::Local {
            // The socket's peer credentials say who this is.
            return self.error(Reply::new(
                503,
                (5, 5, 1),
                "Already authenticated by the local socket",
            ));
        }
        if self.client_name.is_none() || !self.extended {
            return self.error(Reply::new(503, (5, 5, 1), "Send EHLO first"));
        }
        if self.auth_user.is_some() {
            return self.error(Reply::new(503, (5, 5, 1), "Already authenticated"));
        }
        // No transaction check is needed: MAIL needs AUTH first, so during a
        // transaction the client is already authenticated.
        let mut words = arg.split(' ').filter(|w| !w.is_empty());
        let (Some(mechanism), initial, None) = (words.next(), words.next(), words.next()) else {
            return self.error(Reply::new(
                501,
                (5, 5, 4),
                "Syntax: AUTH mechanism [initial-response]",
            ));
        };
        let mechanism = mechanism.to_ascii_uppercase();
        if !self.config.auth_mechanisms.contains(&mechanism) {
            return self.error(Reply::new(
                504,
                (5, 5, 4),
                "Unrecognized authentication mechanism",
            ));
        }
        let initial_response = match initial {
            None => None,
            Some("=") => Some(Secret::new(Vec::new())),
            Some(text) => match base64_engine().decode(text) {
                Ok(bytes) => Some(Secret::new(bytes)),
                Err(_) => {
                    return self.error(Reply::new(
                        501,
                        (5, 5, 2),
                        "Invalid base64 in initial response",
                    ))
                }
            },
        };
        self.state = State::Waiting(Pending::Auth);
        self.outputs.push_back(Output::AuthStart {
            mechanism,
            initial_response,
        });
    }

    /// A line sent in answer to a 334 challenge.
    pub(super) fn auth_continuation(&mut self, line: &[u8]) {
        if line == b"*" {
            self.state = State::Command;
            self.outputs.push_back(Output::AuthCancelled);
            return self.reply(Reply::new(501, (5, 0, 0), "Authentication cancelled"));
        }
        match base64_engine().decode(line) {
            Ok(bytes) => {
                self.state = State::Waiting(Pending::Auth);
                self.outputs
                    .push_back(Output::AuthResponse(Secret::new(bytes)));
            }
            Err(_) => {
                self.state = State::Command;
                self.outputs.push_back(Output::AuthCancelled);
                self.error(Reply::new(501, (5, 5, 2), "Invalid base64 in response"));
            }
        }
    }

    /// Answers [`Output::AuthStart`] or [`Output::AuthResponse`].
    pub fn answer_auth(&mut self, answer: AuthAnswer) -> Result<(), AnswerError> {
        if !matches!(self.state, State::Waiting(Pending::Auth)) {
            return Err(AnswerError::NotAsked);
        }
        self.state = State::Command;
        match answer {
            AuthAnswer::Challenge(challenge) => {
                self.state = State::AuthContinuation;
                let text = base64::engine::general_purpose::STANDARD.encode(challenge);
                self.reply(Reply::continuation(text));
            }
            AuthAnswer::Success { user } => {
                self.auth_user = Some(user);
                self.reply(Reply::new(235, (2, 7, 0), "Authentication successful"));
            }
            AuthAnswer::Failure => self.error(Reply::new(
                535,
                (5, 7, 8),
                "Authentication credentials invalid",
            )),
            AuthAnswer::TempFailure => self.reply(Reply::new(
                454,
                (4, 7, 0),
                "Temporary authentication failure, try again later",
            )),
        }
        self.process();
        Ok(())
    }
}
