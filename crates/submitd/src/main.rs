//! The `submitd` binary: the command line, the commands, the daemon and
//! the wiring of the crates. It knows no protocol details.
//!
//! | module | what |
//! | --- | --- |
//! | `cli` | the command line (clap) |
//! | `commands` | `check`, `hash-password`, `user`, `queue`, `import-postfix`, `sendmail` |
//! | `daemon` | `serve`: start, signals, reload, graceful stop, systemd notify |
//! | `wiring` | settings into the libraries' objects |
//! | `check` | what `check` looks at |
//! | `sendmail` | the sendmail-compatible client of the local socket |
//! | `import` | reading a Postfix setup |
//! | `sockets`, `demo` | socket activation; the demo's first run |
//! | `memory`, `logwriter` | the memory budget; log lines written in batches by a thread of their own |
//!
//! Dependencies: `clap` for the command line, `submitd-config` for the
//! config file, `humantime` for durations in log lines, `rcgen` for the
//! demo's self-signed certificate, `tracing-subscriber` for log output,
//! `tokio`/`tokio-util` for the runtime, signals and shutdown, `sd-notify`
//! for systemd's Type=notify, `listenfd` for sockets passed by systemd
//! (socket activation).

mod check;
mod cli;
mod client_config;
mod commands;
mod daemon;
mod demo;
mod docs;
mod import;
mod logwriter;
mod memory;
mod sendmail;
mod sockets;
mod wiring;

use std::process::ExitCode;

use clap::Parser;
use submitd_config::Settings;

use cli::{Cli, Command};

fn main() -> ExitCode {
    // Run as `sendmail` (a symlink), behave as `submitd sendmail`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "sendmail");
    if invoked {
        args.insert(1, "sendmail".into());
    }
    let cli = Cli::parse_from(args);
    let result = match &cli.command {
        // sendmail has exit statuses of its own (sysexits).
        Command::Sendmail { .. } => return commands::sendmail(&cli),
        Command::HashPassword { password_stdin } => commands::hash_password(*password_stdin),
        Command::ImportPostfix {
            postfix_dir,
            out,
            force,
        } => commands::import_postfix(postfix_dir, out, *force),
        Command::Serve => Settings::load(&cli.config)
            .map_err(|e| e.to_string())
            .and_then(daemon::serve),
        Command::Check { connect } => Settings::load(&cli.config)
            .map_err(|e| e.to_string())
            .and_then(|s| commands::check(&s, *connect)),
        Command::ClientConfig {
            domain,
            imap_host,
            only,
        } => Settings::load(&cli.config)
            .map_err(|e| e.to_string())
            .and_then(|s| client_config::print(&s, domain.as_deref(), imap_host.as_deref(), *only)),
        Command::GenerateDocs { out } => docs::generate(out),
        Command::User(user) => Settings::load(&cli.config)
            .map_err(|e| e.to_string())
            .and_then(|s| commands::user_command(&s, user)),
        Command::Queue(queue) => Settings::load(&cli.config)
            .map_err(|e| e.to_string())
            .and_then(|s| commands::queue_command(&s, queue)),
        Command::Oauth2(command) => Settings::load(&cli.config)
            .map_err(|e| e.to_string())
            .and_then(|s| commands::oauth2_command(&s, command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("submitd: {message}");
            ExitCode::from(2)
        }
    }
}
