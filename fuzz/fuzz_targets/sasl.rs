//! Fuzzes the SASL exchanges (PLAIN, LOGIN) with arbitrary client
//! responses, as the SMTP machine hands them over after base64 decoding.
//!
//! Input: one byte choosing the mechanism and whether an initial response
//! is given, then responses separated by 0xFF. Beyond "never panics": an
//! exchange ends at most once, LOGIN asks for at most two things, a
//! finished exchange never yields credentials with an empty user name or
//! with a NUL in the user name or password, and the Debug form of the
//! credentials never shows the password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use submitd_auth::{Mechanism, SaslExchange, SaslStep};

fn check(step: &SaslStep) -> bool {
    match step {
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
    let mechanism = if selector & 1 == 0 {
        Mechanism::Plain
    } else {
        Mechanism::Login
    };
    let mut responses = rest.split(|&b| b == 0xFF);
    let initial = if selector & 2 != 0 {
        responses.next()
    } else {
        None
    };
    let (mut exchange, step) = SaslExchange::start(mechanism, initial);
    let mut ended = check(&step);
    let mut challenges = usize::from(!ended);
    for response in responses {
        if ended {
            break;
        }
        let step = exchange.respond(response);
        ended = check(&step);
        challenges += usize::from(!ended);
        assert!(challenges <= 2, "more than two challenges");
    }
});
