//! Throughput of the server machine on a pipelined submission with a 1 MB
//! body, by DATA and by BDAT, fed in 16 KiB reads as a TLS reader would.
//! The questions are answered at once, so the figure is the machine's own
//! cost: parsing, dot-unstuffing, line checks and copying.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use submitd_smtp::{AuthAnswer, Output, ServerConfig, ServerSession, Transport, Verdict};

const BODY_SIZE: usize = 1024 * 1024;
const READ_SIZE: usize = 16 * 1024;

/// A 1 MB message of 76-character lines, some starting with a dot.
fn message() -> Vec<u8> {
    let mut out = b"From: alice@example.org\r\nSubject: bench\r\n\r\n".to_vec();
    let mut i = 0u32;
    while out.len() < BODY_SIZE {
        let lead = if i.is_multiple_of(50) { "." } else { "" };
        out.extend_from_slice(format!("{lead}{:075}\r\n", i).as_bytes());
        i += 1;
    }
    out
}

const PREFIX: &[u8] = b"EHLO client.example\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n\
MAIL FROM:<alice@example.org> BODY=8BITMIME\r\nRCPT TO:<bob@example.net>\r\n";

fn data_stream(message: &[u8]) -> Vec<u8> {
    let mut out = PREFIX.to_vec();
    out.extend_from_slice(b"DATA\r\n");
    submitd_smtp::dot_stuff(message, &mut out);
    out.extend_from_slice(b"QUIT\r\n");
    out
}

fn bdat_stream(message: &[u8]) -> Vec<u8> {
    let mut out = PREFIX.to_vec();
    let chunks: Vec<&[u8]> = message.chunks(64 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { " LAST" } else { "" };
        out.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(b"QUIT\r\n");
    out
}

/// Runs one session over `stream`; returns the stored message's size.
fn run(config: &Arc<ServerConfig>, stream: &[u8]) -> usize {
    let now = Instant::now();
    let mut session = ServerSession::new(Arc::clone(config), now);
    let mut stored = 0;
    let mut written = 0;
    for read in stream.chunks(READ_SIZE) {
        session.handle_input(now, read);
        while let Some(output) = session.poll_output() {
            let _ = match output {
                Output::Send(bytes) => {
                    written += bytes.len();
                    Ok(())
                }
                Output::AuthStart { .. } | Output::AuthResponse(_) => {
                    session.answer_auth(AuthAnswer::Success {
                        user: "alice".into(),
                    })
                }
                Output::CheckSender(_) => session.answer_sender(Verdict::Accept),
                Output::CheckRecipient(_) => session.answer_recipient(Verdict::Accept),
                Output::MessageData(piece) => {
                    stored += black_box(piece).len();
                    Ok(())
                }
                Output::StoreMessage => session.answer_store(Ok("Q1".into())),
                Output::StartTls { .. }
                | Output::AuthCancelled
                | Output::MessageStart(_)
                | Output::MessageAborted
                | Output::Close(_) => Ok(()),
            };
        }
    }
    black_box(written);
    assert!(session.is_closed());
    stored
}

fn bench(c: &mut Criterion) {
    let config = Arc::new(ServerConfig::new("mx.test", Transport::ImplicitTls));
    let message = message();
    let mut group = c.benchmark_group("server_session");
    for (name, stream) in [
        ("pipelined_1MB_data", data_stream(&message)),
        ("pipelined_1MB_bdat", bdat_stream(&message)),
    ] {
        assert_eq!(run(&config, &stream), message.len(), "{name}");
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(name, |b| b.iter(|| run(&config, black_box(&stream))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
