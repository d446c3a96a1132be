//! `submitd generate-docs --out DIR` (hidden): the manual pages and shell
//! completions, generated, never written by hand, so they cannot drift.
//!
//! * `man/submitd.8` and one page per subcommand (`submitd-user-add.8`,
//!   …) from the command line's definition (`clap_mangen`);
//! * `man/submitd.toml.5` from the shipped example config, the one file
//!   that shows every key: each section with the comment above it, each
//!   key with its type, its example value and the comment that explains
//!   it (a test checks that every key the parser accepts is in both);
//! * `completions/submitd.bash`, `_submitd` (zsh), `submitd.fish`
//!   (`clap_complete`).

use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;

/// The example config, as shipped.
const EXAMPLE: &str = include_str!("../../../config/submitd.example.toml");

/// Writes the pages and completions under `out`.
pub(crate) fn generate(out: &Path) -> Result<(), String> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    man_pages(&cmd, "submitd", &man)?;
    let page = config_page(EXAMPLE);
    let path = man.join("submitd.toml.5");
    std::fs::write(&path, page).map_err(|e| format!("{}: {e}", path.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let mut cmd = Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "submitd", &completions)
            .map_err(|e| format!("{}: {e}", completions.display()))?;
    }
    Ok(())
}

/// `cmd`'s page as `name.8`, then each visible subcommand's as
/// `name-sub.8`.
fn man_pages(cmd: &clap::Command, name: &str, dir: &Path) -> Result<(), String> {
    let bin = cmd.get_bin_name().unwrap_or("submitd").to_owned();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        let sub = sub
            .clone()
            .display_name(sub_name.clone())
            .bin_name(format!("{bin} {}", sub.get_name()));
        man_pages(&sub, &sub_name, dir)?;
    }
    let page = clap_mangen::Man::new(cmd.clone())
        .title(name.to_ascii_uppercase())
        .section("8")
        .source(format!("submitd {}", env!("CARGO_PKG_VERSION")))
        .manual("System Manager's Manual");
    let path = dir.join(format!("{name}.8"));
    let mut text = Vec::new();
    page.render(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// One key of the example config.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ExampleKey {
    /// Its table (`auth`, `relay.upstream.oauth2`; empty at the top).
    pub(crate) section: String,
    /// The key.
    pub(crate) key: String,
    /// The example value, as written.
    pub(crate) value: String,
    /// The comment after it and in the lines before it.
    pub(crate) text: String,
    /// Shown commented out (an option, not part of the demo).
    pub(crate) commented: bool,
}

/// A table of the example config with the prose above it.
#[derive(Debug, Default)]
struct ExampleSection {
    name: String,
    text: String,
    keys: Vec<ExampleKey>,
}

/// `key = value  # comment`, commented out or not.
fn key_line(line: &str) -> Option<(bool, &str, &str, &str)> {
    let (commented, rest) = match line.strip_prefix("# ") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (key, value) = rest.split_once(" = ")?;
    let key = key.trim_end();
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let value = value.trim();
    // A TOML value, not prose that happens to hold " = ".
    let looks_like_value = value.starts_with(['"', '[', '-'])
        || value.starts_with(|c: char| c.is_ascii_digit())
        || value.starts_with("true")
        || value.starts_with("false");
    if !looks_like_value {
        return None;
    }
    // The value ends at its closing quote or bracket, else at a comment.
    let end = if let Some(inner) = value.strip_prefix('"') {
        inner.find('"').map(|i| i + 2)
    } else if value.starts_with('[') {
        value.find(']').map(|i| i + 1)
    } else {
        Some(value.find(" #").unwrap_or(value.len()))
    }?;
    let (value, tail) = value.split_at(end.min(value.len()));
    let comment = tail.trim().strip_prefix('#').unwrap_or("").trim();
    Some((commented, key, value.trim(), comment))
}

/// A key's comment continued on the next line, aligned under it:
/// `#                               # more words`.
fn continued(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('#')?;
    if !rest.starts_with("  ") {
        return None;
    }
    Some(rest.trim_start().strip_prefix('#')?.trim())
}

/// `[table]` or `[[array]]`, commented out or not.
fn section_line(line: &str) -> Option<&str> {
    let line = line.strip_prefix("# ").unwrap_or(line).trim_end();
    let name = line
        .strip_prefix("[[")
        .and_then(|l| l.strip_suffix("]]"))
        .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))?;
    name.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        .then_some(name)
}

/// The example's sections and keys, in order.
fn read_example(text: &str) -> Vec<ExampleSection> {
    let mut sections = vec![ExampleSection::default()];
    let mut prose: Vec<String> = Vec::new();
    let mut continuation: Option<usize> = None;
    for line in text.lines() {
        if let Some(name) = section_line(line) {
            sections.push(ExampleSection {
                name: name.to_owned(),
                text: prose.join(" "),
                keys: Vec::new(),
            });
            prose.clear();
            continuation = None;
        } else if let Some((commented, key, value, comment)) = key_line(line) {
            let before = std::mem::take(&mut prose).join(" ");
            let text = [before.as_str(), comment]
                .iter()
                .filter(|t| !t.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            if let Some(section) = sections.last_mut() {
                section.keys.push(ExampleKey {
                    section: section.name.clone(),
                    key: key.to_owned(),
                    value: value.to_owned(),
                    text,
                    commented,
                });
                continuation = Some(section.keys.len() - 1);
            }
        } else if let (Some(i), Some(more)) = (continuation, continued(line)) {
            if let Some(key) = sections.last_mut().and_then(|s| s.keys.get_mut(i)) {
                key.text = format!("{} {more}", key.text).trim().to_owned();
            }
        } else if let Some(text) = line.strip_prefix('#') {
            let text = text.trim();
            continuation = None;
            if text.is_empty() {
                prose.clear();
            } else {
                prose.push(text.to_owned());
            }
        } else {
            prose.clear();
            continuation = None;
        }
    }
    sections
}

/// Every key of the example config (for the drift test).
#[cfg(test)]
pub(crate) fn example_keys(text: &str) -> Vec<ExampleKey> {
    read_example(text)
        .into_iter()
        .flat_map(|s| s.keys)
        .collect()
}

/// The type a value's form shows.
fn value_type(value: &str) -> &'static str {
    let unquoted = value.trim_matches('"');
    if value == "true" || value == "false" {
        "boolean"
    } else if value.starts_with('[') {
        "array of strings"
    } else if value.parse::<i64>().is_ok() {
        "integer"
    } else if value.starts_with('"')
        && unquoted.len() > 1
        && unquoted
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .parse::<u64>()
            .is_ok()
        && ["ms", "s", "m", "h", "d"].iter().any(|u| {
            unquoted.ends_with(u) && unquoted[..unquoted.len() - u.len()].parse::<u64>().is_ok()
        })
    {
        "duration (\"500ms\", \"30s\", \"5m\", \"1h\", \"5d\")"
    } else if value.starts_with('"') && unquoted.ends_with('%') {
        "percentage"
    } else if value.starts_with('"')
        && ["K", "M", "G"]
            .iter()
            .any(|u| unquoted.ends_with(u) && unquoted[..unquoted.len() - 1].parse::<u64>().is_ok())
    {
        "size (\"64K\", \"25M\")"
    } else {
        "string"
    }
}

/// What leaving a key out means, for submitd.toml(5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Absent {
    /// This value (as TOML); a test checks that writing it changes nothing.
    Default(&'static str),
    /// A default that is not one value.
    Described(&'static str),
    /// The key must be there whenever its table is.
    Required,
    /// Not used unless set; what that means.
    Optional(&'static str),
}

/// Every key's default, by its dotted name (a sender route's keys are an
/// upstream's). A test fails if the parser takes a key this does not name.
pub(crate) fn absent(key: &str) -> Option<Absent> {
    use Absent::*;
    let key = match key.strip_prefix("relay.sender_upstream.") {
        Some("senders") => return Some(Required),
        Some("name") => return Some(Described("its first sender")),
        Some(rest) => format!("relay.upstream.{rest}"),
        None => key.to_owned(),
    };
    Some(match key.as_str() {
        "hostname"
        | "listen.address"
        | "listen.mode"
        | "tls.certificate"
        | "tls.key"
        | "tls.additional.certificate"
        | "tls.additional.key"
        | "auth.users"
        | "queue.directory"
        | "relay.upstream.host"
        | "relay.upstream.port"
        | "relay.upstream.tls"
        | "relay.upstream.oauth2.client_id"
        | "relay.upstream.oauth2.grant"
        | "auth.oauth2.issuer"
        | "auth.oauth2.audience"
        | "metrics.listen"
        | "cluster.redis"
        | "local.socket" => Required,
        "demo"
        | "privacy"
        | "listen.proxy_protocol"
        | "auth.dovecot_cache"
        | "metrics.per_user" => Default("false"),
        "listen.trusted_proxies" => Optional("required with proxy_protocol = true"),
        "listen.max_connections" => Described("[limits] connections"),
        "auth.backend" => Default("\"file\""),
        "auth.cache_ttl" => Default("\"1h\""),
        "auth.dovecot_socket" => Optional("required with backend = \"dovecot\""),
        "auth.dovecot_timeout" => Default("\"30s\""),
        "auth.failure_delay" => Default("\"1s\""),
        "auth.max_concurrent_checks" => Described("the number of CPUs"),
        "auth.reload_max_drop" => Default("\"50%\""),
        "auth.oauth2.algorithms" => Described("every asymmetric algorithm (never none or an HMAC)"),
        "auth.oauth2.ca_file"
        | "cluster.ca_file"
        | "relay.upstream.ca_file"
        | "relay.upstream.oauth2.ca_file" => Optional("the system's CA roots"),
        "auth.oauth2.leeway" => Default("\"60s\""),
        "auth.oauth2.login_claim" => Default("\"email\""),
        "auth.oauth2.timeout" => Default("\"10s\""),
        "cluster.prefix" => Default("\"submitd\""),
        "cluster.timeout" => Default("\"500ms\""),
        "limits.message_size" => Default("\"25M\""),
        "limits.recipients" => Default("1000"),
        "limits.idle_timeout" => Default("\"5m\""),
        "limits.session_duration" => Default("\"1h\""),
        "limits.connections" => Default("200"),
        "limits.connections_per_client" => Default("64"),
        "limits.unauthenticated_connections" => Default("100"),
        "limits.connection_rate" => Default("10"),
        "limits.handshake_timeout" => Default("\"10s\""),
        "limits.command_deadline" => Default("\"60s\""),
        "limits.min_data_rate" => Default("\"1K\""),
        "limits.shutdown_grace" => Default("\"30s\""),
        "limits.memory_budget" => {
            Described("80% of the cgroup's memory limit, else half the machine's memory")
        }
        "local.domain" => Described("the hostname"),
        "log.format" => Default("\"text\""),
        "queue.in_flow_delay" => Default("\"1s\""),
        "queue.lifetime" => Default("\"5d\""),
        "queue.min_free" => Described("5% of the queue's disk, at most 1G"),
        "relay.connections" => Default("4"),
        "relay.idle_connection" => Default("\"5s\""),
        "relay.maildir" => Optional(
            "deliver into this Maildir instead of [[relay.upstream]]: one of the two is required",
        ),
        "relay.upstream.username" => Optional("no AUTH to the upstream"),
        "relay.upstream.password_file" => {
            Optional("required with username and auth = \"password\"")
        }
        "relay.upstream.auth" => Described("\"password\" with a username, else \"none\""),
        "relay.upstream.mechanisms" => Described("the best the upstream offers"),
        "relay.upstream.oauth2.preset" => Optional("the endpoints and scope are set one by one"),
        "relay.upstream.oauth2.tenant" => Optional("required with preset = \"microsoft365\""),
        "relay.upstream.oauth2.token_url" => Described("the preset's"),
        "relay.upstream.oauth2.device_url" | "relay.upstream.oauth2.auth_url" => {
            Described("the preset's; needed only by `submitd oauth2 authorize`")
        }
        "relay.upstream.oauth2.scope" => Described("the preset's"),
        "relay.upstream.oauth2.client_secret_file"
        | "relay.upstream.oauth2.client_certificate"
        | "relay.upstream.oauth2.client_key" => Optional(
            "a secret file or a certificate with its key; one is required for client_credentials",
        ),
        "relay.upstream.oauth2.refresh_token_file" => {
            Optional("required with grant = \"refresh_token\"")
        }
        "relay.upstream.oauth2.timeout" => Default("\"30s\""),
        _ => return None,
    })
}

/// Escapes text for roff: backslashes, and a leading dot or quote.
fn roff(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| match c {
            '\\' => "\\e".to_owned(),
            '-' => "\\-".to_owned(),
            // Outside ASCII: groff's own escape, so no input encoding is
            // assumed.
            c if !c.is_ascii() => format!("\\[u{:04X}]", u32::from(c)),
            c => c.to_string(),
        })
        .collect();
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}

/// `submitd.toml(5)` from the example config.
pub(crate) fn config_page(example: &str) -> String {
    let mut out = format!(
        ".TH SUBMITD.TOML 5 \"\" \"submitd {}\" \"File Formats Manual\"\n\
         .SH NAME\nsubmitd.toml \\- configuration of the submitd mail submission server\n\
         .SH SYNOPSIS\n/etc/submitd/submitd.toml\n\
         .SH DESCRIPTION\n\
         A TOML file, read by \\fBsubmitd serve\\fR and every other command (\\fB\\-\\-config\\fR).\n\
         Unknown keys are errors. Relative paths are relative to the file's folder.\n\
         \\fBsubmitd check\\fR reads it and says what is wrong, naming the key.\n\
         Reloaded on SIGHUP: the users file and the certificates; other keys need a restart.\n\
         .PP\n\
         Below, every section and key, with its type, the value the shipped example\n\
         (/usr/share/doc/submitd/examples/submitd.example.toml) gives it, and what it does.\n\
         Keys the example shows commented out are optional; unless a key says otherwise,\n\
         leaving it out takes the default it names.\n",
        env!("CARGO_PKG_VERSION")
    );
    // A table the example shows twice ([[listen]] for each port) is one
    // section here, each key once.
    let mut merged: Vec<ExampleSection> = Vec::new();
    for section in read_example(example) {
        match merged.iter_mut().find(|m| m.name == section.name) {
            Some(m) => {
                for key in section.keys {
                    if !m.keys.iter().any(|k| k.key == key.key) {
                        m.keys.push(key);
                    }
                }
            }
            None => merged.push(section),
        }
    }
    for section in merged {
        if section.keys.is_empty() && section.name.is_empty() {
            continue;
        }
        let title = if section.name.is_empty() {
            "TOP-LEVEL KEYS".to_owned()
        } else {
            format!("[{}]", section.name)
        };
        out.push_str(&format!(".SH \"{}\"\n", roff(&title)));
        if !section.text.is_empty() {
            out.push_str(&format!("{}\n", roff(&section.text)));
        }
        for key in &section.keys {
            let dotted = if section.name.is_empty() {
                key.key.clone()
            } else {
                format!("{}.{}", section.name, key.key)
            };
            let when_absent = match absent(&dotted) {
                Some(Absent::Default(value)) => format!("default: {value}"),
                Some(Absent::Described(text)) => format!("default: {text}"),
                Some(Absent::Required) => "required".to_owned(),
                Some(Absent::Optional(text)) => format!("optional: {text}"),
                None => "optional".to_owned(),
            };
            out.push_str(&format!(
                ".TP\n.B {}\n{}; {}; example: {}\n",
                roff(&key.key),
                value_type(&key.value),
                roff(&when_absent),
                roff(&key.value)
            ));
            if !key.text.is_empty() {
                out.push_str(&format!(".br\n{}\n", roff(&key.text)));
            }
        }
    }
    out.push_str(
        ".SH FILES\n/etc/submitd/submitd.toml\n\
         .SH SEE ALSO\n\\fBsubmitd\\fR(8), the documentation in /usr/share/doc/submitd\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    #[test]
    fn lines_of_the_example_are_read_as_written() {
        assert_eq!(
            key_line("connections = 200               # per listener, at once; past it: 421"),
            Some((
                false,
                "connections",
                "200",
                "per listener, at once; past it: 421"
            ))
        );
        assert_eq!(
            key_line("# redis = \"redis://10.0.0.9:6379/0\"   # rediss://… for TLS"),
            Some((
                true,
                "redis",
                "\"redis://10.0.0.9:6379/0\"",
                "rediss://… for TLS"
            ))
        );
        assert_eq!(
            key_line("# mechanisms = [\"XOAUTH2\"]  # pinned"),
            Some((true, "mechanisms", "[\"XOAUTH2\"]", "pinned"))
        );
        assert_eq!(key_line("# Leave the client's name out."), None);
        assert_eq!(
            key_line("# smtpd_sasl_type = dovecot); the users file"),
            None
        );
        assert_eq!(
            section_line("# [[relay.sender_upstream]]"),
            Some("relay.sender_upstream")
        );
        assert_eq!(section_line("[auth]"), Some("auth"));
        assert_eq!(section_line("# [see docs]"), None);
        assert_eq!(
            value_type("\"30s\""),
            "duration (\"500ms\", \"30s\", \"5m\", \"1h\", \"5d\")"
        );
        assert_eq!(value_type("\"25M\""), "size (\"64K\", \"25M\")");
        assert_eq!(value_type("64"), "integer");
        assert_eq!(value_type("\"5%\""), "percentage");
        assert_eq!(value_type("\"localhost\""), "string");
    }

    /// Every key the parser accepts, as `section.key`, read from the
    /// config crate's serde structs (`file.rs`): a table is a field whose
    /// type is one of those structs (in `Option`/`Vec` or not); a flattened
    /// field adds its struct's keys to the same table.
    pub(super) fn parser_keys() -> BTreeSet<String> {
        let source = include_str!("../../submitd-config/src/file.rs");
        let mut structs: HashMap<String, Vec<(String, String, bool)>> = HashMap::new();
        let mut current: Option<String> = None;
        let mut flatten = false;
        for line in source.lines() {
            let t = line.trim();
            let opened = t
                .strip_prefix("pub(crate) struct ")
                .or_else(|| t.strip_prefix("pub struct "))
                .and_then(|rest| rest.strip_suffix(" {"));
            if let Some(name) = opened {
                current = Some(name.to_owned());
                structs.insert(name.to_owned(), Vec::new());
                continue;
            }
            if t == "}" {
                current = None;
                continue;
            }
            if t == "#[serde(flatten)]" {
                flatten = true;
                continue;
            }
            let Some(name) = &current else { continue };
            let Some((field, ty)) = t
                .strip_prefix("pub(crate) ")
                .and_then(|f| f.split_once(": "))
            else {
                continue;
            };
            let mut inner = ty.trim_end_matches(',').to_owned();
            while let Some(unwrapped) = ["Option<", "Vec<", "Box<"].iter().find_map(|w| {
                inner
                    .strip_prefix(w)
                    .and_then(|i| i.strip_suffix('>'))
                    .map(str::to_owned)
            }) {
                inner = unwrapped;
            }
            if let Some(fields) = structs.get_mut(name) {
                fields.push((field.to_owned(), inner, flatten));
            }
            flatten = false;
        }
        fn walk(
            structs: &HashMap<String, Vec<(String, String, bool)>>,
            name: &str,
            path: &str,
            out: &mut BTreeSet<String>,
        ) {
            for (field, ty, flatten) in structs.get(name).into_iter().flatten() {
                let sub = dotted(path, field);
                match (structs.contains_key(ty), flatten) {
                    (true, true) => walk(structs, ty, path, out),
                    (true, false) => walk(structs, ty, &sub, out),
                    _ => {
                        out.insert(sub);
                    }
                }
            }
        }
        let mut keys = BTreeSet::new();
        walk(&structs, "File", "", &mut keys);
        keys
    }

    fn dotted(section: &str, key: &str) -> String {
        if section.is_empty() {
            key.to_owned()
        } else {
            format!("{section}.{key}")
        }
    }

    #[test]
    fn every_key_the_parser_takes_is_in_the_example_and_the_page() {
        let parser = parser_keys();
        for key in [
            "hostname",
            "auth.oauth2.issuer",
            "relay.sender_upstream.host",
            "relay.upstream.oauth2.client_id",
            "cluster.redis",
        ] {
            assert!(
                parser.contains(key),
                "{key} not found in file.rs: {parser:?}"
            );
        }
        let example: BTreeSet<String> = example_keys(EXAMPLE)
            .iter()
            .map(|k| dotted(&k.section, &k.key))
            .collect();
        // A sender route takes every key of an upstream (flattened), as
        // the example says once rather than repeating them.
        let shown = |key: &String| {
            example.contains(key)
                || key
                    .strip_prefix("relay.sender_upstream.")
                    .is_some_and(|rest| example.contains(&format!("relay.upstream.{rest}")))
        };
        let missing: Vec<_> = parser.iter().filter(|k| !shown(k)).collect();
        assert!(
            missing.is_empty(),
            "keys the example config does not show: {missing:?}"
        );
        let stale: Vec<_> = example.difference(&parser).collect();
        assert!(
            stale.is_empty(),
            "keys in the example the parser does not take: {stale:?}"
        );
        let page = config_page(EXAMPLE);
        let mut section = String::new();
        let mut in_page = BTreeSet::new();
        for line in page.lines() {
            if let Some(title) = line
                .strip_prefix(".SH \"[")
                .and_then(|l| l.strip_suffix("]\""))
            {
                section = title.replace("\\-", "-");
            } else if line.starts_with(".SH ") {
                section.clear();
            } else if let Some(key) = line.strip_prefix(".B ") {
                in_page.insert(dotted(&section, &key.replace("\\-", "-")));
            }
        }
        let missing: Vec<_> = example.difference(&in_page).collect();
        assert!(
            missing.is_empty(),
            "keys submitd.toml(5) does not show: {missing:?}"
        );
    }

    /// A minimal config with `extra` lines in the table that holds `key`
    /// (the table made, with its required keys, where the minimal config
    /// has none).
    fn with_key_in_table(key: &str, extra: &str) -> String {
        let (section, _) = key.rsplit_once('.').unwrap_or(("", key));
        let mut top = String::from("hostname = \"mail.example.org\"\n");
        let mut listen =
            String::from("[[listen]]\naddress = \"127.0.0.1:4650\"\nmode = \"implicit\"\n");
        let mut auth = String::from("[auth]\nusers = \"users\"\n");
        let mut queue = String::from("[queue]\ndirectory = \"queue\"\n");
        let mut relay = String::from("[relay]\nmaildir = \"Maildir\"\n");
        let mut rest = String::new();
        let line = format!("{extra}\n");
        match section {
            "" => top.push_str(&line),
            "listen" => listen.push_str(&line),
            "auth" if key.starts_with("auth.dovecot_") => {
                auth.push_str("backend = \"dovecot\"\ndovecot_socket = \"/run/dovecot/auth\"\n");
                auth.push_str(&line);
            }
            "auth" => auth.push_str(&line),
            "auth.oauth2" => rest.push_str(&format!(
                "[auth.oauth2]\nissuer = \"https://id.example.org\"\naudience = \"submitd\"\n{line}"
            )),
            "queue" => queue.push_str(&line),
            "relay" => relay.push_str(&line),
            "relay.upstream.oauth2" => {
                relay = format!(
                    "[[relay.upstream]]\nhost = \"smtp.example.net\"\nport = 465\ntls = \"implicit\"\n\
                     auth = \"xoauth2\"\nusername = \"u@example.net\"\n\
                     [relay.upstream.oauth2]\ntoken_url = \"https://login.example.net/token\"\n\
                     client_id = \"c\"\nclient_secret_file = \"secret\"\nscope = \"smtp\"\n\
                     grant = \"client_credentials\"\n{line}"
                )
            }
            "relay.upstream" => {
                relay = format!(
                    "[[relay.upstream]]\nhost = \"smtp.example.net\"\nport = 465\ntls = \"implicit\"\n{line}"
                )
            }
            "metrics" => rest.push_str(&format!("[metrics]\nlisten = \"127.0.0.1:9465\"\n{line}")),
            "cluster" => rest.push_str(&format!("[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\n{line}")),
            other => rest.push_str(&format!("[{other}]\n{line}")),
        }
        format!(
            "{top}{listen}[tls]\ncertificate = \"cert.pem\"\nkey = \"key.pem\"\n{auth}{queue}{relay}{rest}"
        )
    }

    /// A valid value of the same kind as `value`, but not it.
    fn other_value(value: &str) -> String {
        let unquoted = value.trim_matches('"');
        if value == "false" {
            return "true".into();
        }
        if let Ok(n) = value.parse::<u64>() {
            return (n + 1).to_string();
        }
        for (from, to) in [
            ("1s", "2s"),
            ("5s", "2s"),
            ("10s", "2s"),
            ("30s", "2s"),
            ("60s", "2s"),
            ("500ms", "200ms"),
            ("1h", "2h"),
            ("5m", "2m"),
            ("5d", "2d"),
            ("50%", "40%"),
            ("5%", "4%"),
            ("25M", "24M"),
            ("1K", "2K"),
            ("file", "dovecot"),
            ("text", "json"),
        ] {
            if unquoted == from {
                return format!("\"{to}\"");
            }
        }
        format!("\"other-{unquoted}\"")
    }

    #[test]
    fn every_key_has_its_default_and_each_stated_default_is_the_default() {
        let path = Path::new("/etc/submitd/submitd.toml");
        let mut checked = 0;
        for key in parser_keys() {
            let Some(when_absent) = absent(&key) else {
                panic!("{key}: no default, required or optional stated (docs.rs `absent`)");
            };
            let Absent::Default(value) = when_absent else {
                continue;
            };
            if key.starts_with("relay.sender_upstream.") {
                continue; // checked as the upstream's own key
            }
            let name = key.rsplit('.').next().unwrap_or(&key);
            let without = with_key_in_table(&key, "");
            let with = with_key_in_table(&key, &format!("{name} = {value}"));
            let a = submitd_config::Settings::parse(path, &without)
                .unwrap_or_else(|e| panic!("{key}: {e}\n{without}"));
            let b = submitd_config::Settings::parse(path, &with)
                .unwrap_or_else(|e| panic!("{key}: {e}\n{with}"));
            assert!(
                a == b,
                "{key}: writing the stated default {value} changed the settings"
            );
            // And another value does change them (or is refused): the key
            // is read, so the check above can fail.
            let other = with_key_in_table(&key, &format!("{name} = {}", other_value(value)));
            let c = submitd_config::Settings::parse(path, &other);
            assert!(
                c.map_or(true, |c| c != a),
                "{key}: another value than {value} changed nothing"
            );
            checked += 1;
        }
        assert!(checked >= 30, "{checked}");
    }

    #[test]
    fn the_shipped_example_makes_a_page() {
        let keys = example_keys(EXAMPLE);
        assert!(keys
            .iter()
            .any(|k| k.section == "limits" && k.key == "connections"));
        assert!(keys
            .iter()
            .any(|k| k.section.is_empty() && k.key == "hostname"));
        let page = config_page(EXAMPLE);
        assert!(page.starts_with(".TH SUBMITD.TOML 5"));
        assert!(page.contains(".SH \"[limits]\"\n"));
        assert!(page.contains(".TP\n.B connections_per_client\n"));
    }
}
