//! Fuzzes the SASL exchanges (PLAIN, LOGIN, OAUTHBEARER, XOAUTH2) with
//! arbitrary client responses, as the SMTP machine hands them over after
//! base64 decoding.
//!
//! Input: one byte choosing the mechanism (bits 0-1), whether an initial
//! response is given (bit 2) and whether a token is refused (bit 3), then
//! responses separated by 0xFF. Beyond "never panics": an exchange ends at
//! most once, asks for at most two things, a finished exchange never
//! yields credentials with an empty user name or with a NUL in the user
//! name or password, a token is never empty nor holds a space or a control
//! character, a refused token's exchange ends with the next response, and
//! the Debug forms never show the password or the token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use submitd_auth::{Mechanism, SaslError, SaslExchange, SaslStep};

fn check(step: &SaslStep) -> bool {
    match step {
        SaslStep::Token(token) => {
            assert!(!token.token.is_empty());
            assert!(!token.token.chars().any(|c| c == ' ' || c.is_control()));
            if let Some(name) = &token.username {
                assert!(!name.is_empty() && !name.chars().any(char::is_control));
            }
            assert!(format!("{token:?}").ends_with("token: \"[redacted]\" }"));
            true
        }
        SaslStep::Challenge(_) => false,
        SaslStep::Done(credentials) => {
            assert!(!credentials.username.is_empty());
            assert!(!credentials.username.contains('\0'));
            assert!(!credentials.password.contains('\0'));
            let shown = format!("{credentials:?}");
            let password_field = shown.rsplit("password: ").next().unwrap_or_default();
            assert_eq!(password_field, "\"[redacted]\" }", "{shown}");
            true
        }
        SaslStep::Failed(_) => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let [selector, rest @ ..] = data else {
        return;
    };
    let mechanism = match selector & 3 {
        0 => Mechanism::Plain,
        1 => Mechanism::Login,
        2 => Mechanism::OAuthBearer,
        _ => Mechanism::XOAuth2,
    };
    let refuse = selector & 8 != 0;
    let mut responses = rest.split(|&b| b == 0xFF);
    let initial = if selector & 4 != 0 {
        responses.next()
    } else {
        None
    };
    let (mut exchange, step) = SaslExchange::start(mechanism, initial);
    let mut ended = check(&step);
    if refuse && matches!(step, SaslStep::Token(_)) {
        // The error challenge went out: the next response ends it.
        exchange.token_refused();
        if let Some(response) = responses.next() {
            assert!(matches!(
                exchange.respond(response),
                SaslStep::Failed(SaslError::TokenRefused)
            ));
        }
        return;
    }
    let mut challenges = usize::from(!ended);
    for response in responses {
        if ended {
            break;
        }
        let step = exchange.respond(response);
        if refuse && matches!(step, SaslStep::Token(_)) {
            check(&step);
            exchange.token_refused();
            assert!(matches!(
                exchange.respond(b"\x01"),
                SaslStep::Failed(SaslError::TokenRefused)
            ));
            return;
        }
        ended = check(&step);
        challenges += usize::from(!ended);
        assert!(challenges <= 2, "more than two challenges");
    }
});
