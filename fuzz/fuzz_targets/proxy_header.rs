//! Fuzzes the PROXY protocol header parser the way the listener's reader
//! drives it: from nothing, each time reading exactly what it asks for.
//!
//! Beyond "never panics": it always asks for at least one octet and never
//! past a header's bound (107 octets for v1, 16 + 1024 for v2); a header
//! it accepts is exactly the octets it was given, parses the same from
//! those alone, and names addresses of one family; a v1 header rendered
//! back from what it says parses to the same addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use submitd_listener::proxy::{parse, Progress, V2_MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    // Any prefix at all, as a careless caller might pass it.
    let _ = parse(data);
    let mut given = 0;
    let header = loop {
        match parse(&data[..given]) {
            Err(_) => return,
            Ok(Progress::Need(n)) => {
                assert!(n >= 1, "asked for nothing");
                given += n;
                assert!(given <= 16 + V2_MAX_PAYLOAD, "asked for {given} octets");
                if given > data.len() {
                    return;
                }
            }
            Ok(Progress::Done(header)) => break header,
        }
    };
    assert_eq!(header.length, given);
    assert_eq!(parse(&data[..given]), Ok(Progress::Done(header)));
    if data.starts_with(b"PROXY ") {
        assert!(given <= 107 && data[..given].ends_with(b"\r\n"));
    }
    if let Some((source, destination)) = header.addresses {
        assert_eq!(source.is_ipv4(), destination.is_ipv4());
        if data.starts_with(b"PROXY ") {
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            let line = format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            );
            let again = parse(line.as_bytes());
            assert!(
                matches!(again, Ok(Progress::Done(h)) if h.addresses == header.addresses),
                "{line:?}: {again:?}"
            );
        }
    }
});
