//! The generated manual pages and completions (`submitd generate-docs`,
//! what the package installs): every page renders through groff with all
//! warnings on and none given, `submitd(8)` and `submitd.toml(5)` say what
//! they must, and bash loads the completion.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

#[test]
fn pages_render_cleanly_and_completions_load() {
    let groff = common::require("groff", "apt-get install groff-base");
    let dir = tempfile::tempdir().unwrap();
    common::stdout_of(
        Command::new(env!("CARGO_BIN_EXE_submitd"))
            .args(["generate-docs", "--out"])
            .arg(dir.path()),
    );
    let man = dir.path().join("man");
    let mut pages: Vec<_> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "submitd.8",
        "submitd.toml.5",
        "submitd-user-add.8",
        "submitd-client-config.8",
        "submitd-queue-list.8",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    // The hidden generator has no page of its own.
    assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
    for page in &pages {
        let out = Command::new(&groff)
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(page)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let render = |name: &str| {
        let out = Command::new(&groff)
            .args(["-man", "-Tascii", "-P-c", "-P-b", "-P-u"])
            .arg(man.join(name))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let submitd = render("submitd.8");
    for text in ["client-config", "hash-password", "user", "queue", "oauth2"] {
        assert!(submitd.contains(text), "submitd(8) lacks {text}");
    }
    let add = render("submitd-user-add.8");
    assert!(add.contains("--password-stdin"), "{add}");
    let config = render("submitd.toml.5");
    for text in [
        "[limits]",
        "connections_per_client",
        "[cluster]",
        "trusted_proxies",
    ] {
        assert!(config.contains(text), "submitd.toml(5) lacks {text}");
    }

    // bash takes the completion and completes subcommands from it.
    let completions = dir.path().join("completions");
    let script = format!(
        "source {}; COMP_WORDS=(submitd us); COMP_CWORD=1; _submitd submitd us submitd; echo \"${{COMPREPLY[@]}}\"",
        completions.join("submitd.bash").display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "user",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["_submitd", "submitd.fish"] {
        assert!(std::fs::metadata(completions.join(file)).unwrap().len() > 100);
    }
}
