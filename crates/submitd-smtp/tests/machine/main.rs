//! Tests of the server session machine through its public API, built as one
//! test binary: transcripts, properties, and targeted cases.

// Test code: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cases;
mod client;
mod properties;
mod transcript;

/// Writes the client side of every transcript as a fuzz seed into the
/// folder named by `SUBMITD_FUZZ_SEEDS` (used by `fuzz/run`). Seed format:
/// transport byte, split byte, then the client octets, as the fuzz target
/// reads them.
#[test]
#[ignore = "writes files; run by fuzz/run"]
fn write_fuzz_seeds() {
    use submitd_smtp::Transport;
    let dir = std::env::var("SUBMITD_FUZZ_SEEDS").expect("SUBMITD_FUZZ_SEEDS names a folder");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, transport, bytes) in transcript::client_streams() {
        let transport_byte = match transport {
            Transport::ImplicitTls => 0u8,
            Transport::StartTls => 1,
            Transport::Plaintext => 2,
            Transport::Local => 3,
        };
        for split in [0u8, 7] {
            let mut seed = vec![transport_byte, split];
            seed.extend_from_slice(&bytes);
            std::fs::write(format!("{dir}/{name}-{split}"), seed).unwrap();
        }
    }
}
