//! Transcript tests: whole sessions written as `C:`/`S:` lines in
//! `tests/transcripts/*.txt`, run against the machine through the scripted
//! peer in `submitd_smtp::testing`.
//!
//! Format, one directive a line (blank lines and `#` comments ignored):
//!
//! - `!config key=value ...` before the first client line: `transport=`
//!   `implicit|starttls|plaintext`, and limits `recipients`, `errors`,
//!   `message_size`, `data_line`, `command_line`, `auth_line` (numbers),
//!   `idle`, `session` (seconds).
//! - `!splits whole`: run only with one read per client group (for tests
//!   where the split is the point, like STARTTLS injection).
//! - `!time +N`: N seconds pass, then the machine's timeout is run.
//! - `C: text` the client sends `text` and CRLF; `C= text` sends `text`
//!   alone. Both read `\r \n \t \\ \xHH` escapes.
//! - `S: text` one reply line the server must send.
//! - `E: starttls discarded=N`, `E: close Reason`,
//!   `E: stored ID from=<..> to=<..>,<..> data="escaped"`: events.
//!
//! Consecutive `C` lines form one group: in the first mode each group is
//! one read; in the second every octet is its own read; in the third the
//! whole client side is one read (RFC 2920: the replies must not change).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use submitd_smtp::testing::{Driver, Event, Item};
use submitd_smtp::{ServerConfig, Transport};

#[derive(Debug)]
enum Step {
    Client(Vec<u8>),
    Expect(String),
    Time(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Grouped,
    OctetByOctet,
    AllAtOnce,
}

struct Transcript {
    config: ServerConfig,
    whole_only: bool,
    steps: Vec<Step>,
}

pub(crate) fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    let hex = &text[i + 2..i + 4];
                    out.push(u8::from_str_radix(hex, 16).expect("bad \\x escape"));
                    i += 2;
                }
                other => panic!("unknown escape \\{}", other as char),
            }
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\x22"),
            0x20..=0x7e => out.push(b as char),
            _ => write!(out, "\\x{b:02x}").unwrap(),
        }
    }
    out
}

fn parse(path: &Path) -> Transcript {
    let text = std::fs::read_to_string(path).unwrap();
    let mut config = ServerConfig::new("mx.test", Transport::ImplicitTls);
    let mut whole_only = false;
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let where_ = format!("{}:{}", path.display(), n + 1);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(settings) = line.strip_prefix("!config ") {
            for setting in settings.split_whitespace() {
                let (key, value) = setting.split_once('=').expect(&where_);
                let number = || value.parse::<u64>().expect(&where_);
                let limits = &mut config.limits;
                match key {
                    "transport" => {
                        config.transport = match value {
                            "implicit" => Transport::ImplicitTls,
                            "starttls" => Transport::StartTls,
                            "plaintext" => Transport::Plaintext,
                            _ => panic!("{where_}: transport {value}"),
                        }
                    }
                    "recipients" => limits.recipients = number() as usize,
                    "errors" => limits.errors = number() as u32,
                    "message_size" => limits.message_size = number(),
                    "data_line" => limits.data_line = number() as usize,
                    "command_line" => limits.command_line = number() as usize,
                    "auth_line" => limits.auth_line = number() as usize,
                    "idle" => limits.idle_timeout = Duration::from_secs(number()),
                    "session" => limits.session_duration = Duration::from_secs(number()),
                    "command_deadline" => limits.command_deadline = Duration::from_secs(number()),
                    "min_data_rate" => limits.min_data_rate = number(),
                    _ => panic!("{where_}: unknown config key {key}"),
                }
            }
        } else if line == "!splits whole" {
            whole_only = true;
        } else if let Some(secs) = line.strip_prefix("!time +") {
            steps.push(Step::Time(secs.parse().expect(&where_)));
        } else if let Some(text) = line.strip_prefix("C: ") {
            let mut bytes = unescape(text);
            bytes.extend_from_slice(b"\r\n");
            steps.push(Step::Client(bytes));
        } else if line == "C:" {
            steps.push(Step::Client(b"\r\n".to_vec()));
        } else if let Some(text) = line.strip_prefix("C= ") {
            steps.push(Step::Client(unescape(text)));
        } else if line.starts_with("S: ") || line == "S:" || line.starts_with("E: ") {
            steps.push(Step::Expect(line.to_owned()));
        } else {
            panic!("{where_}: cannot read {line:?}");
        }
    }
    Transcript {
        config,
        whole_only,
        steps,
    }
}

fn render(item: &Item) -> String {
    match item {
        Item::Line(line) if line.is_empty() => "S:".to_owned(),
        Item::Line(line) => format!("S: {line}"),
        Item::Event(Event::StartTls { discarded }) => {
            format!("E: starttls discarded={discarded}")
        }
        Item::Event(Event::Close(reason)) => format!("E: close {reason:?}"),
        Item::Event(Event::Aborted) => "E: aborted".to_owned(),
        Item::Event(Event::Stored { queue_id, message }) => {
            let from = match &message.mail_from.reverse_path {
                Some(m) => m.to_string(),
                None => String::new(),
            };
            let to: Vec<String> = message
                .recipients
                .iter()
                .map(|r| format!("<{}>", r.forward_path))
                .collect();
            format!(
                "E: stored {queue_id} from=<{from}> to={} data=\"{}\"",
                to.join(","),
                escape(&message.data)
            )
        }
    }
}

/// Runs one transcript in one mode; returns the first mismatch.
fn run(transcript: &Transcript, mode: Mode) -> Result<(), String> {
    let mut driver = Driver::new(transcript.config.clone());
    let mut expected: Vec<String> = Vec::new();
    let mut actual: Vec<String> = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let flush = |driver: &mut Driver, pending: &mut Vec<u8>, actual: &mut Vec<String>| {
        match mode {
            Mode::OctetByOctet => {
                for b in pending.iter() {
                    driver.feed(std::slice::from_ref(b));
                }
            }
            _ => driver.feed(pending),
        }
        pending.clear();
        actual.extend(driver.take_items().iter().map(render));
    };
    actual.extend(driver.take_items().iter().map(render));
    for step in &transcript.steps {
        match step {
            Step::Client(bytes) => pending.extend_from_slice(bytes),
            Step::Expect(line) => {
                if mode != Mode::AllAtOnce && !pending.is_empty() {
                    flush(&mut driver, &mut pending, &mut actual);
                }
                expected.push(line.clone());
            }
            Step::Time(secs) => {
                flush(&mut driver, &mut pending, &mut actual);
                driver.advance(Duration::from_secs(*secs));
                actual.extend(driver.take_items().iter().map(render));
            }
        }
    }
    flush(&mut driver, &mut pending, &mut actual);
    if expected == actual {
        return Ok(());
    }
    let mut report = format!("mode {mode:?}\n");
    let width = expected.len().max(actual.len());
    for i in 0..width {
        let e = expected.get(i).map_or("<nothing>", String::as_str);
        let a = actual.get(i).map_or("<nothing>", String::as_str);
        if e != a {
            writeln!(report, "  item {i}\n    expected {e}\n    actual   {a}").unwrap();
        }
    }
    Err(report)
}

#[test]
fn transcripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 20,
        "transcripts missing from {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for path in &paths {
        let transcript = parse(path);
        let has_time = transcript.steps.iter().any(|s| matches!(s, Step::Time(_)));
        // After STARTTLS the client waits for the handshake: one read for
        // the whole session would be an injection, which other tests cover.
        let has_starttls = transcript
            .steps
            .iter()
            .any(|s| matches!(s, Step::Expect(e) if e.starts_with("E: starttls")));
        let mut modes = vec![Mode::Grouped];
        if !transcript.whole_only {
            modes.push(Mode::OctetByOctet);
            if !has_time && !has_starttls {
                modes.push(Mode::AllAtOnce);
            }
        }
        for mode in modes {
            if let Err(report) = run(&transcript, mode) {
                failures.push(format!("{}: {report}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The client side of every transcript, for seeding the fuzzer's corpus.
pub(crate) fn client_streams() -> Vec<(String, Transport, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "txt") {
            continue;
        }
        let transcript = parse(&path);
        let bytes: Vec<u8> = transcript
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Client(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        out.push((name, transcript.config.transport, bytes));
    }
    out
}
