//! Property tests: what holds for every input, not just the written ones.

use proptest::prelude::*;
use submitd_smtp::testing::{Driver, Item};
use submitd_smtp::{ServerConfig, Transport};

use crate::cases::{ENVELOPE, LOGIN};

/// Pieces of client talk, valid and not, from which sessions are built.
const VOCABULARY: &[&[u8]] = &[
    b"EHLO c.example\r\n",
    b"HELO c\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"YWxpY2U=\r\n",
    b"c2VjcmV0\r\n",
    b"AGFsaWNlAHNlY3JldA==\r\n",
    b"*\r\n",
    b"MAIL FROM:<alice@example.org>\r\n",
    b"MAIL FROM:<spoof@example.org>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME\r\n",
    b"RCPT TO:<bob@example.net> NOTIFY=FAILURE\r\n",
    b"RCPT TO:<unknown@example.net>\r\n",
    b"DATA\r\n",
    b"Subject: x\r\n",
    b"..dotted\r\n",
    b".\r\n",
    b"X-Store: fail\r\n",
    b"BDAT 4\r\nab\r\n",
    b"BDAT 3 LAST\r\nxyz",
    b"BDAT 0 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY bob\r\n",
    b"STARTTLS\r\n",
    b"FOO\r\n",
    b"\r\n",
    b"bare\n",
    b"QUIT\r\n",
];

fn session_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(VOCABULARY), 1..40)
        .prop_map(|pieces| pieces.concat())
}

fn run(transport: Transport, stream: &[u8], cuts: &[usize]) -> Vec<Item> {
    let mut driver = Driver::new(ServerConfig::new("mx.test", transport));
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut start = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        driver.feed(&stream[start..cut]);
        start = cut;
    }
    driver.take_items()
}

/// Message lines without CR or LF, often starting with dots.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        prop::collection::vec(
            any::<u8>().prop_filter("no line ends", |b| *b != b'\r' && *b != b'\n'),
            0..80
        ),
        "\\.{1,3}[a-z.]{0,5}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(line, 0..30).prop_map(|lines| {
        let mut out = Vec::new();
        for line in lines {
            out.extend_from_slice(&line);
            out.extend_from_slice(b"\r\n");
        }
        out
    })
}

proptest! {
    /// RFC 2920: however the client's octets are split into reads, the
    /// machine says the same things in the same order. (STARTTLS is the one
    /// deliberate exception, so it is left out on the STARTTLS port.)
    #[test]
    fn same_replies_however_the_input_is_split(
        stream in session_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = run(Transport::ImplicitTls, &stream, &[]);
        prop_assert_eq!(&whole, &run(Transport::ImplicitTls, &stream, &cuts));
        let octets: Vec<usize> = (0..stream.len()).collect();
        prop_assert_eq!(&whole, &run(Transport::ImplicitTls, &stream, &octets));
    }

    #[test]
    fn same_replies_however_split_before_tls(
        stream in session_bytes().prop_filter("no STARTTLS", |s| !s.windows(8).any(|w| w == b"STARTTLS")),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        prop_assert_eq!(
            run(Transport::StartTls, &stream, &[]),
            run(Transport::StartTls, &stream, &cuts)
        );
    }

    /// Dot-stuffing then reading DATA gives back the message exactly.
    #[test]
    fn dot_stuffing_round_trips_through_the_machine(
        message in message(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut config = ServerConfig::new("mx.test", Transport::ImplicitTls);
        config.limits.data_line = 1000;
        let mut driver = Driver::new(config);
        driver.feed(LOGIN);
        driver.feed(ENVELOPE);
        let mut wire = Vec::new();
        submitd_smtp::dot_stuff(&message, &mut wire);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.sort_unstable();
        let mut start = 0;
        for cut in cuts.into_iter().chain([wire.len()]) {
            driver.feed(&wire[start..cut]);
            start = cut;
        }
        let stored: Vec<_> = driver.stored_messages().collect();
        prop_assert_eq!(stored.len(), 1);
        prop_assert!(stored[0].data == message);
    }

    /// Whatever follows DATA, a stored message holds only CRLF line ends:
    /// nothing with a stray CR or LF can reach the relay.
    #[test]
    fn stored_content_never_has_bare_line_ends(
        body in prop::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a'), any::<u8>()],
            0..400,
        ),
    ) {
        let mut driver = Driver::new(ServerConfig::new("mx.test", Transport::ImplicitTls));
        driver.feed(LOGIN);
        driver.feed(ENVELOPE);
        driver.feed(&body);
        driver.feed(b"\r\n.\r\n");
        for message in driver.stored_messages() {
            let data = &message.data;
            for (i, &b) in data.iter().enumerate() {
                if b == b'\r' {
                    prop_assert_eq!(data.get(i + 1), Some(&b'\n'));
                }
                if b == b'\n' {
                    prop_assert!(i > 0 && data[i - 1] == b'\r');
                }
            }
        }
    }
}
