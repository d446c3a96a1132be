//! The command line: every subcommand and option, as clap reads them.
//! (`submitd(8)` is generated from these definitions.)

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "submitd", version, about = "A submission-only mail server")]
pub(crate) struct Cli {
    /// The config file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/submitd/submitd.toml"
    )]
    pub(crate) config: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the server.
    Serve,
    /// Check the config, certificates, credential file, queue folder and
    /// upstreams; exit status 2 if anything would stop the server.
    Check {
        /// Also connect to each upstream: TLS with a verified certificate,
        /// EHLO and AUTH, then QUIT.
        #[arg(long)]
        connect: bool,
    },
    /// Print the argon2id hash of a password read from the terminal (or,
    /// with --password-stdin, from one line of standard input).
    HashPassword {
        /// Read the password from the first line of standard input (for
        /// scripts; refused when standard input is a terminal).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Send a message read on standard input, as sendmail does, through
    /// the running daemon's local socket (`[local] socket`); also what
    /// `submitd` does when run as `sendmail`.
    Sendmail {
        /// Take the recipients from To:, Cc: and Bcc: too.
        #[arg(short = 't')]
        from_headers: bool,
        /// The envelope sender (default: you@[local] domain).
        #[arg(short = 'f', value_name = "SENDER")]
        sender: Option<String>,
        /// A line with a single dot is content, not the end.
        #[arg(short = 'i')]
        ignore_dots: bool,
        /// sendmail options (`-oi` is `-i`; others are ignored).
        #[arg(short = 'o', value_name = "OPTION")]
        options: Vec<String>,
        /// The sender's full name (ignored).
        #[arg(short = 'F', value_name = "NAME")]
        full_name: Option<String>,
        /// Body type (ignored: 8-bit is passed as it is).
        #[arg(short = 'B', value_name = "TYPE")]
        body: Option<String>,
        /// Recipients.
        recipients: Vec<String>,
    },
    /// Write a submitd config from a Postfix setup (main.cf, master.cf and
    /// the maps they name), and list what could not be carried over.
    ImportPostfix {
        /// The Postfix config folder (main.cf, master.cf; maps under
        /// /etc/postfix are read from here).
        #[arg(long, default_value = "/etc/postfix")]
        postfix_dir: PathBuf,
        /// Where to write submitd.toml, users and upstream password files.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Print what mail clients need to find this server: a Thunderbird
    /// autoconfig file, DNS SRV records (RFC 6186) and an Apple
    /// configuration profile, from the hostname and listeners.
    ClientConfig {
        /// The mail domain (default: the hostname without its first label).
        #[arg(long)]
        domain: Option<String>,
        /// The IMAP server the Apple profile names (default: the hostname).
        #[arg(long)]
        imap_host: Option<String>,
        /// Print only this one, for a file or a zone.
        #[arg(long, value_enum)]
        only: Option<crate::client_config::Kind>,
    },
    /// Manage users in the credential file.
    #[command(subcommand)]
    User(UserCommand),
    /// Write the manual pages and shell completions under OUT (for
    /// packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Where man/ and completions/ go.
        #[arg(long)]
        out: PathBuf,
    },
    /// Look at and act on the queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// OAuth2 for the upstream (XOAUTH2).
    #[command(subcommand)]
    Oauth2(OAuth2Command),
}

#[derive(Subcommand)]
pub(crate) enum OAuth2Command {
    /// Authorize a route's mailbox: with the device grant (RFC 8628), print
    /// an address and a code to enter there; with --browser, an address to
    /// sign in at. Waits, then writes the refresh token to the route's
    /// refresh_token_file.
    Authorize {
        /// `default` for [[relay.upstream]], or a sender route's name (its
        /// `name`, else its first sender).
        route: String,
        /// The authorization code grant with a loopback redirect instead
        /// (needed for Gmail): open the address in a browser; on a server
        /// without one, paste the address the browser failed to load.
        #[arg(long)]
        browser: bool,
    },
    /// Get an access token for each OAuth2 upstream now and say how long it
    /// lives (the token itself is never shown).
    Token,
}

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user; the password is read from the terminal.
    Add {
        /// Login name.
        name: String,
        /// An address (user@example.org) or domain (@example.org) the user may send as; repeatable.
        #[arg(long = "send-as")]
        send_as: Vec<String>,
        /// Read the password from the first line of standard input (for
        /// scripts; refused when standard input is a terminal).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password.
    Passwd {
        /// Login name.
        name: String,
        /// Read the password from the first line of standard input (for
        /// scripts; refused when standard input is a terminal).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    Del {
        /// Login name.
        name: String,
    },
    /// List users.
    List {
        /// One JSON array of objects (name, password, send_as,
        /// app_passwords) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Add an app password (printed once) for one device.
    AppPassword {
        /// Login name.
        name: String,
        /// The device's label, such as "phone".
        label: String,
        /// Revoke it instead.
        #[arg(long)]
        revoke: bool,
        /// Print only the password, for scripts.
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum QueueCommand {
    /// List queued messages with counts per state.
    List,
    /// Show one message's envelope and state.
    Show {
        /// Queue id.
        id: String,
    },
    /// Make one message (or all) due now.
    Flush {
        /// Queue id; all if left out.
        id: Option<String>,
    },
    /// Delete a message without delivering or bouncing it.
    Delete {
        /// Queue id.
        id: String,
    },
}
