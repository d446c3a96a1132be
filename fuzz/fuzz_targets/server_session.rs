//! Fuzzes the SMTP server machine with arbitrary client byte streams.
//!
//! Input: one byte choosing the transport (implicit TLS, STARTTLS,
//! plaintext, or a local socket's pre-named session), one byte seeding how the stream
//! is split into reads, then the client's octets. Beyond "never panics", it
//! checks what the machine promises for every input:
//! - replies are well formed (the driver asserts no bare CR/LF in replies),
//! - the split into reads changes nothing (RFC 2920), except at STARTTLS,
//! - no stored message holds a bare CR or LF,
//! - after the session times out nothing more happens.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use submitd_smtp::testing::Driver;
use submitd_smtp::{ServerConfig, Transport};

fn config(selector: u8) -> ServerConfig {
    let transport = match selector % 4 {
        0 => Transport::ImplicitTls,
        1 => Transport::StartTls,
        2 => Transport::Plaintext,
        _ => Transport::Local,
    };
    let mut config = ServerConfig::new("fuzz.test", transport);
    // Small limits so the fuzzer reaches them.
    config.limits.message_size = 2048;
    config.limits.data_line = 200;
    config.limits.recipients = 5;
    config.limits.errors = 40;
    config
}

fuzz_target!(|data: &[u8]| {
    let [selector, split_seed, stream @ ..] = data else {
        return;
    };
    let mut whole = Driver::new(config(*selector));
    let mut split = Driver::new(config(*selector));
    if *selector % 4 == 3 {
        // A local socket's session, named by the caller (`submitd sendmail`).
        let _ = whole.session.authenticate_local("fuzz");
        let _ = split.session.authenticate_local("fuzz");
    }
    whole.feed(stream);

    let mut state = u32::from(*split_seed) | 1;
    let mut rest = stream;
    while !rest.is_empty() {
        // xorshift: cheap, deterministic read sizes from 1 to 64.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % 64 + 1).min(rest.len());
        split.feed(&rest[..n]);
        rest = &rest[n..];
    }

    // On the STARTTLS port the split decides what counts as injected after
    // STARTTLS; everywhere else it must change nothing.
    if *selector % 4 != 1 {
        assert_eq!(
            whole.items, split.items,
            "the split into reads changed the replies"
        );
    }
    for driver in [&whole, &split] {
        for message in driver.stored_messages() {
            let d = &message.data;
            for (i, &b) in d.iter().enumerate() {
                if b == b'\r' {
                    assert_eq!(d.get(i + 1), Some(&b'\n'), "bare CR stored");
                }
                if b == b'\n' {
                    assert!(i > 0 && d[i - 1] == b'\r', "bare LF stored");
                }
            }
        }
    }
    whole.advance(Duration::from_secs(7200));
    assert!(whole.session.is_closed() || whole.session.poll_timeout().is_none());
    let before = whole.items.len();
    whole.feed(b"NOOP\r\n");
    if whole.session.is_closed() {
        assert_eq!(whole.items.len(), before, "output after close");
    }
});
