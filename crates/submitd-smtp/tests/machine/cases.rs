//! Targeted cases that read better as code than as transcripts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use submitd_smtp::testing::{Driver, Event, Item};
use submitd_smtp::{
    AnswerError, AuthAnswer, CloseReason, Output, ServerConfig, ServerSession, Transport, Verdict,
};

pub(crate) const LOGIN: &[u8] = b"EHLO client.example\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n";
pub(crate) const ENVELOPE: &[u8] =
    b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n";

fn implicit() -> ServerConfig {
    ServerConfig::new("mx.test", Transport::ImplicitTls)
}

fn closes(items: &[Item]) -> Vec<CloseReason> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Event(Event::Close(r)) => Some(*r),
            _ => None,
        })
        .collect()
}

/// The four smuggling end-of-data forms, each followed by a second
/// transaction in the same write, at every split point: no message is ever
/// stored and the session is closed for a bare line end.
#[test]
fn smuggled_end_of_data_never_yields_a_message() {
    for end in [&b"\n.\n"[..], b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"] {
        let mut stream = Vec::new();
        stream.extend_from_slice(LOGIN);
        stream.extend_from_slice(ENVELOPE);
        stream.extend_from_slice(b"Subject: first\r\n\r\nbody");
        stream.extend_from_slice(end);
        stream
            .extend_from_slice(b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<victim@example.net>\r\n");
        stream.extend_from_slice(b"DATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\nQUIT\r\n");
        for split in 0..=stream.len() {
            let mut driver = Driver::new(implicit());
            driver.feed(&stream[..split]);
            driver.feed(&stream[split..]);
            assert_eq!(driver.stored_messages().count(), 0, "{end:?} split {split}");
            assert_eq!(
                closes(&driver.items),
                vec![CloseReason::BareLineEnd],
                "{end:?} split {split}"
            );
        }
    }
}

/// A message exactly at the size limit is taken; one octet more is not.
#[test]
fn size_limit_is_exact() {
    for (body_len, stored) in [(1000usize, true), (1001, false)] {
        let mut config = implicit();
        config.limits.message_size = 1000;
        config.limits.data_line = 2000;
        let mut driver = Driver::new(config);
        driver.feed(LOGIN);
        driver.feed(ENVELOPE);
        let mut body = vec![b'a'; body_len - 2];
        body.extend_from_slice(b"\r\n.\r\n");
        driver.feed(&body);
        assert_eq!(driver.stored_messages().count() == 1, stored, "{body_len}");
        let sizes: Vec<usize> = driver.stored_messages().map(|m| m.data.len()).collect();
        assert!(sizes.iter().all(|&n| n == 1000), "{sizes:?}");
    }
}

/// A very long line arriving in pieces is refused once and skipped; the
/// command after it works.
#[test]
fn overlong_line_in_pieces_is_refused_once() {
    let mut driver = Driver::new(implicit());
    driver.take_items();
    for _ in 0..10 {
        driver.feed(&[b'x'; 4096]);
    }
    driver.feed(b"\r\nNOOP\r\n");
    assert_eq!(
        driver.take_items(),
        vec![
            Item::Line("500 5.5.2 Line too long".into()),
            Item::Line("250 2.0.0 Ok".into())
        ]
    );
}

/// A large message in one DATA, fed in uneven reads, arrives byte-exact.
#[test]
fn large_message_arrives_byte_exact() {
    let mut message = Vec::new();
    for i in 0..20_000u32 {
        let line = format!(
            "{}line {i} with 8-bit \u{20ac}\r\n",
            if i % 7 == 0 { "." } else { "" }
        );
        message.extend_from_slice(line.as_bytes());
    }
    let mut wire = Vec::new();
    submitd_smtp::dot_stuff(&message, &mut wire);
    let mut driver = Driver::new(implicit());
    driver.feed(LOGIN);
    driver.feed(ENVELOPE);
    for piece in wire.chunks(1361) {
        driver.feed(piece);
    }
    let stored: Vec<_> = driver.stored_messages().collect();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].data == message, "content differs");
}

/// Replies keep their order while a question is open: nothing is answered
/// after a pipelined command until the store answer is in.
#[test]
fn pipelined_replies_wait_for_the_open_question() {
    let config = Arc::new(implicit());
    let now = Instant::now();
    let mut session = ServerSession::new(config, now);
    let mut sent = Vec::new();
    let drain = |session: &mut ServerSession, sent: &mut Vec<u8>| {
        let mut questions = Vec::new();
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(bytes) => sent.extend_from_slice(&bytes),
                other => questions.push(other),
            }
        }
        questions
    };
    drain(&mut session, &mut sent);
    session.handle_input(now, b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    drain(&mut session, &mut sent);
    session
        .answer_auth(AuthAnswer::Success {
            user: "alice".into(),
        })
        .unwrap();
    session.handle_input(now, ENVELOPE);
    assert!(matches!(
        drain(&mut session, &mut sent)[..],
        [Output::CheckSender(_)]
    ));
    session.answer_sender(Verdict::Accept).unwrap();
    assert!(matches!(
        drain(&mut session, &mut sent)[..],
        [Output::CheckRecipient(_)]
    ));
    session.answer_recipient(Verdict::Accept).unwrap();
    drain(&mut session, &mut sent);
    session.handle_input(now, b"body\r\n.\r\nRSET\r\nNOOP\r\n");
    assert!(matches!(
        &drain(&mut session, &mut sent)[..],
        [Output::MessageData(data), Output::StoreMessage] if data == b"body\r\n"
    ));
    let before = String::from_utf8_lossy(&sent).into_owned();
    assert!(
        before.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"),
        "{before}"
    );
    // While the store is open: no timer runs against the client.
    assert_eq!(session.poll_timeout(), None);
    session.answer_store(Ok("Q9".into())).unwrap();
    drain(&mut session, &mut sent);
    let after = String::from_utf8_lossy(&sent[before.len()..]).into_owned();
    assert_eq!(
        after,
        "250 2.0.0 Ok: queued as Q9\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"
    );
}

/// While a question is open and much input waits, the machine asks the
/// caller to stop reading; after the answer it wants input again.
#[test]
fn backpressure_while_a_question_is_open() {
    let now = Instant::now();
    let mut session = ServerSession::new(Arc::new(implicit()), now);
    session.handle_input(now, b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert!(session.wants_input(), "a little pipelined input is fine");
    session.handle_input(now, &vec![b'N'; 70 * 1024]);
    assert!(!session.wants_input());
    while session.poll_output().is_some() {}
    session
        .answer_auth(AuthAnswer::Success {
            user: "alice".into(),
        })
        .unwrap();
    assert!(session.wants_input());
}

/// Answers to questions that were not asked are refused and change nothing.
#[test]
fn unasked_answers_are_refused() {
    let now = Instant::now();
    let mut session = ServerSession::new(Arc::new(implicit()), now);
    assert_eq!(
        session.answer_sender(Verdict::Accept),
        Err(AnswerError::NotAsked)
    );
    assert_eq!(
        session.answer_recipient(Verdict::Accept),
        Err(AnswerError::NotAsked)
    );
    assert_eq!(
        session.answer_store(Ok("Q".into())),
        Err(AnswerError::NotAsked)
    );
    assert_eq!(
        session.answer_auth(AuthAnswer::Success { user: "x".into() }),
        Err(AnswerError::NotAsked)
    );
    assert_eq!(session.tls_established(), Err(AnswerError::NotAsked));
    assert_eq!(session.auth_user(), None);
    session.handle_input(now, b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n");
    let mut sent = Vec::new();
    while let Some(output) = session.poll_output() {
        if let Output::Send(bytes) = output {
            sent.extend_from_slice(&bytes);
        }
    }
    assert!(String::from_utf8_lossy(&sent).contains("530 5.7.0 Authentication required"));
}

/// AUTH payloads never show in debug output.
#[test]
fn auth_payloads_are_redacted() {
    let now = Instant::now();
    let mut session = ServerSession::new(Arc::new(implicit()), now);
    session.handle_input(now, b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    let mut seen = String::new();
    while let Some(output) = session.poll_output() {
        seen.push_str(&format!("{output:?}"));
    }
    assert!(seen.contains("AuthStart"));
    assert!(
        !seen.contains("secret") && !seen.contains("115, 101, 99"),
        "{seen}"
    );

    // A response pipelined behind an open question sits in the buffer.
    let mut session = ServerSession::new(Arc::new(implicit()), now);
    session.handle_input(now, b"EHLO c\r\nAUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n");
    let debug_session = format!("{session:?}");
    assert!(
        debug_session.contains("buffered_octets: 22"),
        "{debug_session}"
    );
    assert!(!debug_session.contains("65, 71, 70"), "{debug_session}");
    while session.poll_output().is_some() {}
    session
        .answer_auth(AuthAnswer::Challenge(Vec::new()))
        .unwrap();
    let mut seen = String::new();
    while let Some(output) = session.poll_output() {
        seen.push_str(&format!("{output:?}"));
    }
    assert!(seen.contains("AuthResponse(Secret([redacted]))"), "{seen}");
}

/// Input after the session closed is ignored.
#[test]
fn nothing_happens_after_close() {
    let mut driver = Driver::new(implicit());
    driver.feed(b"QUIT\r\n");
    driver.take_items();
    driver.feed(b"EHLO x\r\nNOOP\r\n");
    driver.advance(Duration::from_secs(100_000));
    assert!(driver.take_items().is_empty());
    assert!(driver.session.is_closed());
    assert!(!driver.session.wants_input());
}

/// The Received protocol names of RFC 3848 and RFC 6531.
#[test]
fn received_protocol_names() {
    let mut driver = Driver::new(implicit());
    driver.feed(LOGIN);
    driver.feed(
        b"MAIL FROM:<alice@example.org> SMTPUTF8\r\nRCPT TO:<b@example.net>\r\nDATA\r\nx\r\n.\r\n",
    );
    driver.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nx\r\n.\r\n");
    let names: Vec<_> = driver.stored_messages().map(|m| m.protocol()).collect();
    assert_eq!(names, ["UTF8SMTPSA", "ESMTPSA"]);
    let message = driver.stored_messages().next().unwrap();
    assert_eq!(message.auth_user.as_deref(), Some("alice"));
    assert_eq!(message.client_name.to_string(), "client.example");
    assert!(message.tls && !message.chunked);
}

/// Envelopes in wire form (as the spool stores them) read back unchanged.
#[test]
fn envelope_wire_forms_round_trip() {
    use submitd_smtp::{MailFrom, RcptTo};
    for text in [
        "<alice@example.org>",
        "<>",
        "<alice@example.org> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=a+2Bb AUTH=alice+40example.org",
        "<\"odd name\"@[IPv6:2001:db8::1]> BODY=7BIT",
        "<用户@例子.测试> SMTPUTF8",
    ] {
        let parsed = MailFrom::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(MailFrom::parse(&parsed.to_string()).unwrap(), parsed);
    }
    for text in [
        "<bob@example.net>",
        "<Postmaster>",
        "<bob@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob+40example.net",
        "<bob@example.net> NOTIFY=NEVER",
    ] {
        let parsed = RcptTo::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
    }
    for bad in [
        "",
        "alice@example.org",
        "<Postmaster>",
        "<a@b.example>x",
        "<a@b.example> FOO=1",
    ] {
        assert!(MailFrom::parse(bad).is_err(), "{bad}");
    }
    assert!(RcptTo::parse("<>").is_err());
}

/// Shutdown: an idle session gets 421 at once; one in DATA finishes its
/// message (stored and acknowledged) and then gets 421.
#[test]
fn shutdown_lets_a_message_in_flight_finish() {
    let mut idle = Driver::new(implicit());
    idle.feed(LOGIN);
    idle.take_items();
    idle.session.shutdown();
    idle.drain();
    assert_eq!(
        idle.take_items(),
        vec![
            Item::Line("421 4.3.2 mx.test Service shutting down, try again later".into()),
            Item::Event(Event::Close(CloseReason::Shutdown)),
        ]
    );

    let mut busy = Driver::new(implicit());
    busy.feed(LOGIN);
    busy.feed(ENVELOPE);
    busy.feed(b"Subject: half\r\n");
    busy.take_items();
    busy.session.shutdown();
    busy.drain();
    assert!(
        busy.take_items().is_empty(),
        "nothing said while the message is coming"
    );
    busy.feed(b"body\r\n.\r\nMAIL FROM:<alice@example.org>\r\n");
    let items = busy.take_items();
    assert!(
        matches!(items[0], Item::Event(Event::Stored { .. })),
        "{items:?}"
    );
    assert_eq!(items[1], Item::Line("250 2.0.0 Ok: queued as Q1".into()));
    assert_eq!(
        items[2],
        Item::Line("421 4.3.2 mx.test Service shutting down, try again later".into())
    );
    assert_eq!(items[3], Item::Event(Event::Close(CloseReason::Shutdown)));
    assert_eq!(items.len(), 4, "the pipelined MAIL is not taken");
}

/// Drains a session's replies, answering every question "yes".
fn replies(session: &mut ServerSession) -> String {
    let mut said = String::new();
    while let Some(output) = session.poll_output() {
        match output {
            Output::Send(bytes) => said.push_str(&String::from_utf8_lossy(&bytes)),
            Output::CheckSender(_) => session.answer_sender(Verdict::Accept).unwrap(),
            Output::CheckRecipient(_) => session.answer_recipient(Verdict::Accept).unwrap(),
            Output::MessageStart(m) => {
                assert_eq!(m.auth_user.as_deref(), Some("cron"));
                assert_eq!(m.protocol(), "ESMTPA", "local: authenticated, not TLS");
            }
            Output::StoreMessage => session.answer_store(Ok("id1".into())).unwrap(),
            _ => {}
        }
    }
    said
}

/// A local socket's session: the caller names the user from the peer's
/// credentials; no TLS, no AUTH offered or taken; mail works. Only a Local
/// session can be named so.
#[test]
fn local_sessions_are_named_by_the_caller_not_by_auth() {
    let now = Instant::now();
    let mut local = ServerSession::new(
        Arc::new(ServerConfig::new("mx.test", Transport::Local)),
        now,
    );
    local.authenticate_local("cron").unwrap();
    local.handle_input(now, b"EHLO localhost\r\n");
    let ehlo = replies(&mut local);
    assert!(
        ehlo.contains("250-PIPELINING") && !ehlo.contains("AUTH") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    local.handle_input(now, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert!(replies(&mut local).starts_with("503 5.5.1"));
    local.handle_input(now, ENVELOPE);
    local.handle_input(now, b"Subject: cron\r\n\r\nout\r\n.\r\n");
    let said = replies(&mut local);
    assert!(
        said.ends_with("250 2.0.0 Ok: queued as id1\r\n") || said.contains("250 2.0.0"),
        "{said}"
    );

    // Not on the network transports; and a Local session no one named
    // cannot send.
    for transport in [
        Transport::ImplicitTls,
        Transport::StartTls,
        Transport::Plaintext,
    ] {
        let mut s = ServerSession::new(Arc::new(ServerConfig::new("mx.test", transport)), now);
        assert_eq!(s.authenticate_local("cron"), Err(AnswerError::NotAsked));
    }
    let mut anonymous = ServerSession::new(
        Arc::new(ServerConfig::new("mx.test", Transport::Local)),
        now,
    );
    anonymous.handle_input(now, b"EHLO localhost\r\nMAIL FROM:<a@example.org>\r\n");
    assert!(replies(&mut anonymous).contains("530 5.7.0 Authentication required"));
}

/// The machine never holds a message: a 4 MiB body fed in 16 KiB reads
/// comes out as pieces about the size of a read, and they add up to the body
/// exactly (DATA and BDAT alike).
#[test]
fn content_is_passed_on_in_pieces_the_size_of_the_reads() {
    const READ: usize = 16 * 1024;
    let line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n";
    let mut body = Vec::new();
    while body.len() < 4 << 20 {
        body.extend_from_slice(line);
    }
    for chunked in [false, true] {
        let mut driver = Driver::new(implicit());
        driver.feed(LOGIN);
        let mut stream = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n".to_vec();
        if chunked {
            stream.extend_from_slice(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
            stream.extend_from_slice(&body);
        } else {
            stream.extend_from_slice(b"DATA\r\n");
            stream.extend_from_slice(&body);
            stream.extend_from_slice(b".\r\n");
        }
        for read in stream.chunks(READ) {
            driver.feed(read);
        }
        let stored: Vec<_> = driver.stored_messages().collect();
        assert_eq!(stored.len(), 1, "chunked={chunked}");
        assert!(stored[0].data == body, "content differs, chunked={chunked}");
        assert!(
            stored[0].pieces >= body.len() / READ,
            "{}",
            stored[0].pieces
        );
        // A CR at the end of one read is passed on with its LF in the next.
        assert!(driver.largest_piece <= READ + 2, "{}", driver.largest_piece);
        assert!(
            format!("{:?}", driver.session).contains("buffered_octets: 0"),
            "nothing of the message is kept in the machine"
        );
    }
}

/// A BDAT chunk larger than the whole message may be is refused at once
/// and the session closed: its octets are neither read nor run as
/// commands, however large it says it is.
#[test]
fn a_bdat_chunk_over_the_limit_is_refused_before_it_is_read() {
    for size in [1001u64, 1 << 40, u64::MAX / 2] {
        let mut config = implicit();
        config.limits.message_size = 1000;
        let mut driver = Driver::new(config);
        driver.feed(LOGIN);
        driver.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n");
        driver.take_items();
        driver.feed(format!("BDAT {size} LAST\r\nQUIT\r\n").as_bytes());
        let items = driver.take_items();
        assert_eq!(
            items[0],
            Item::Line(
                "552 5.3.4 Message size exceeds fixed maximum message size of 1000 octets".into()
            ),
            "{size}"
        );
        assert_eq!(closes(&items), vec![CloseReason::ChunkTooBig], "{size}");
        assert_eq!(items.len(), 2, "QUIT is not read: {items:?}");
    }
}

/// RCPTs past the recipient limit count as errors: a client that keeps on
/// is closed after the error limit instead of answered 452 forever.
#[test]
fn recipients_past_the_limit_count_as_errors() {
    let mut config = implicit();
    config.limits.recipients = 2;
    config.limits.errors = 5;
    let mut driver = Driver::new(config);
    driver.feed(LOGIN);
    driver.feed(b"MAIL FROM:<alice@example.org>\r\n");
    for i in 0..100 {
        driver.feed(format!("RCPT TO:<r{i}@example.net>\r\n").as_bytes());
    }
    let items = driver.take_items();
    let refused = items
        .iter()
        .filter(|i| matches!(i, Item::Line(l) if l.starts_with("452 4.5.3")))
        .count();
    assert_eq!(refused, 5);
    assert_eq!(closes(&items), vec![CloseReason::TooManyErrors]);
}

/// RSET, a too-big message and a closed session each abort the message
/// begun; nothing passed on before is stored.
#[test]
fn a_message_begun_is_aborted_by_rset_and_by_close() {
    let mut driver = Driver::new(implicit());
    driver.feed(LOGIN);
    driver.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n");
    driver.feed(b"BDAT 5\r\nab\r\nc");
    driver.feed(b"RSET\r\n");
    driver.feed(ENVELOPE);
    driver.feed(b"part of a message\r\n");
    driver.advance(Duration::from_secs(3600));
    let items = driver.take_items();
    let events: Vec<&Event> = items
        .iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        vec![
            &Event::Aborted,
            &Event::Aborted,
            &Event::Close(CloseReason::SessionTimeLimit)
        ]
    );
    assert_eq!(driver.stored_messages().count(), 0);
}

/// A session that has not logged in can be evicted at once with 421 (an
/// AUTH exchange in progress is cancelled); a logged-in one cannot.
#[test]
fn only_sessions_that_have_not_logged_in_are_evicted() {
    let mut driver = Driver::new(implicit());
    driver.feed(b"EHLO client.example\r\nAUTH LOGIN\r\n");
    driver.take_items();
    assert!(driver.session.evict());
    driver.drain();
    let items = driver.take_items();
    assert_eq!(
        items[0],
        Item::Line(
            "421 4.7.0 mx.test Too many connections waiting to log in; closing the oldest".into()
        )
    );
    assert_eq!(closes(&items), vec![CloseReason::Evicted]);
    assert!(!driver.session.evict(), "closed already");

    let mut driver = Driver::new(implicit());
    driver.feed(LOGIN);
    assert!(!driver.session.evict());
    assert!(!driver.session.is_closed());
}

/// What the driver records (replies, stored messages) is the same however
/// the input is split into reads; the number of pieces a message came in
/// is not part of it. (Found by the fuzzer: `StoredMessage` compared its
/// piece count.)
#[test]
fn the_split_into_reads_changes_nothing_recorded() {
    let mut stream = LOGIN.to_vec();
    stream.extend_from_slice(
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n\
          BDAT 8\r\n12345678BDAT 8\r\n12345678BDAT 2 LAST\r\nxyQUIT\r\n",
    );
    let mut whole = Driver::new(implicit());
    whole.feed(&stream);
    let mut octets = Driver::new(implicit());
    for octet in &stream {
        octets.feed(std::slice::from_ref(octet));
    }
    assert_eq!(whole.items, octets.items);
    let pieces: Vec<usize> = [&whole, &octets]
        .iter()
        .map(|d| d.stored_messages().next().unwrap().pieces)
        .collect();
    assert!(pieces[0] < pieces[1], "{pieces:?}");
}

/// However a session in the middle of an AUTH exchange ends (the idle
/// timeout, the command deadline, shutdown, eviction), the caller is told
/// to drop the mechanism's state.
#[test]
fn a_session_closed_mid_auth_cancels_the_exchange() {
    type End = fn(&mut ServerSession, Instant);
    let ends: [(&str, End); 3] = [
        ("idle", |s, now| {
            s.handle_timeout(now + Duration::from_secs(301))
        }),
        ("shutdown", |s, _| s.shutdown()),
        ("evict", |s, _| {
            s.evict();
        }),
    ];
    for (name, end) in ends {
        let now = Instant::now();
        let mut session = ServerSession::new(Arc::new(implicit()), now);
        session.handle_input(now, b"EHLO c\r\nAUTH LOGIN\r\n");
        while let Some(output) = session.poll_output() {
            if let Output::AuthStart { .. } = output {
                session
                    .answer_auth(AuthAnswer::Challenge(b"Username:".to_vec()))
                    .unwrap();
            }
        }
        end(&mut session, now);
        let mut cancelled = false;
        while let Some(output) = session.poll_output() {
            cancelled |= matches!(output, Output::AuthCancelled);
        }
        assert!(cancelled, "{name}");
        assert!(session.is_closed(), "{name}");
    }
}
