//! The SMTP machine carrying this crate's SASL exchanges, checked against a
//! real credential file: the wire bytes a client sees, with no socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use submitd_auth::{
    hash_password, CheckOutcome, Mechanism, PasswordChecker, SaslExchange, SaslStep, Users,
};
use submitd_smtp::{AuthAnswer, Output, ServerConfig, ServerSession, Transport};

struct Harness {
    session: ServerSession,
    exchange: Option<SaslExchange>,
    checker: PasswordChecker,
    users: Users,
    wire: String,
}

impl Harness {
    fn new() -> Self {
        let hash = hash_password("pässword".as_bytes()).unwrap();
        let (users, errors) = Users::parse(
            Path::new("t"),
            &format!("alice {hash} send-as=alice@example.org\n"),
        );
        assert!(errors.is_empty());
        let config = Arc::new(ServerConfig::new("mx.test", Transport::ImplicitTls));
        Self {
            session: ServerSession::new(config, Instant::now()),
            exchange: None,
            checker: PasswordChecker::new(1).unwrap(),
            users,
            wire: String::new(),
        }
    }

    async fn answer(&mut self, step: SaslStep) -> AuthAnswer {
        match step {
            SaslStep::Challenge(challenge) => AuthAnswer::Challenge(challenge.to_vec()),
            // This machine is configured with PLAIN and LOGIN only.
            SaslStep::Failed(_) | SaslStep::Token(_) => AuthAnswer::Failure,
            SaslStep::Done(credentials) => {
                match self
                    .checker
                    .check(&self.users, &credentials.username, &credentials.password)
                    .await
                {
                    CheckOutcome::Authenticated { user, .. } => AuthAnswer::Success { user },
                    CheckOutcome::Rejected => AuthAnswer::Failure,
                    CheckOutcome::Unavailable => AuthAnswer::TempFailure,
                }
            }
        }
    }

    async fn send(&mut self, line: &str) -> String {
        let start = self.wire.len();
        self.session
            .handle_input(Instant::now(), format!("{line}\r\n").as_bytes());
        while let Some(output) = self.session.poll_output() {
            let answer = match output {
                Output::Send(bytes) => {
                    self.wire.push_str(&String::from_utf8(bytes).unwrap());
                    continue;
                }
                Output::AuthStart {
                    mechanism,
                    initial_response,
                } => {
                    let mechanism = Mechanism::from_name(&mechanism).unwrap();
                    let (exchange, step) = SaslExchange::start(
                        mechanism,
                        initial_response.as_ref().map(|s| s.expose()),
                    );
                    self.exchange = Some(exchange);
                    self.answer(step).await
                }
                Output::AuthResponse(response) => {
                    let step = self.exchange.as_mut().unwrap().respond(response.expose());
                    self.answer(step).await
                }
                Output::AuthCancelled => {
                    self.exchange = None;
                    continue;
                }
                other => panic!("unexpected {other:?}"),
            };
            self.session.answer_auth(answer).unwrap();
        }
        self.wire[start..].to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_prompts_on_the_wire_are_exactly_what_clients_expect() {
    let mut h = Harness::new();
    h.send("EHLO client.example").await;
    assert_eq!(h.send("AUTH LOGIN").await, "334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.send("YWxpY2U=").await, "334 UGFzc3dvcmQ6\r\n");
    // "wrong"
    assert_eq!(
        h.send("d3Jvbmc=").await,
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    assert_eq!(h.send("AUTH LOGIN YWxpY2U=").await, "334 UGFzc3dvcmQ6\r\n");
    // "pässword" in UTF-8
    assert_eq!(
        h.send("cMOkc3N3b3Jk").await,
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(h.session.auth_user(), Some("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_unknown_user_and_wrong_password_look_the_same() {
    let mut h = Harness::new();
    h.send("EHLO client.example").await;
    // \0mallory\0pässword and \0alice\0wrong
    let unknown = h.send("AUTH PLAIN AG1hbGxvcnkAcMOkc3N3b3Jk").await;
    let wrong = h.send("AUTH PLAIN AGFsaWNlAHdyb25n").await;
    assert_eq!(unknown, wrong);
    // Proxy authorization is refused the same way.
    assert_eq!(
        h.send("AUTH PLAIN Ym9iAGFsaWNlAHDDpHNzd29yZA==").await,
        wrong
    );
    assert_eq!(h.send("AUTH PLAIN").await, "334 \r\n");
    assert_eq!(
        h.send("AGFsaWNlAHDDpHNzd29yZA==").await,
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(
        h.checker.verifications(),
        3,
        "a refused authzid needs no argon2 run"
    );
}
