//! `hoard serve`, its tokens (`hoard token`), and `hoard whoami` to check a
//! client's repository, fingerprint and token against a server
//! (engine `serve::api`, format-spec/server.md).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use hoard_engine::server::{http, Role, ServerDir};
use hoard_engine::ServeConfig;

use crate::open::{open_store, StoreArgs};

/// The server's directory: `--server-dir`, HOARD_SERVER_DIR, or
/// /var/lib/hoard/server.
#[derive(Args)]
pub(crate) struct ServerDirArg {
    /// The server's directory: its TLS certificate and key (made on first
    /// start) and its tokens.
    #[arg(long, env = "HOARD_SERVER_DIR", value_name = "DIR", default_value_os_t = ServerDir::default_path())]
    server_dir: PathBuf,
}

impl ServerDirArg {
    fn dir(&self) -> ServerDir {
        ServerDir::new(&self.server_dir)
    }
}

/// Serve the store (--store) to many hosts: HTTP/2 over TLS on --listen.
/// On first start it makes a self-signed certificate in the server
/// directory; it prints the certificate's SHA-256 fingerprint, which
/// clients pin with --fingerprint. Clients authenticate with tokens
/// (`hoard token create`). Runs until SIGTERM or SIGINT. The systemd unit
/// hoard-serve.service runs it with --config /etc/hoard/serve.toml.
#[derive(Args)]
pub(crate) struct Serve {
    /// A configuration file (format-spec/server.md, "Configuration file"):
    /// listen, store, server_dir, cert_names. Options given here win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address and port to listen on [default: 0.0.0.0:8007, Proxmox
    /// Backup Server's port].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Names the certificate made on first start is valid for (default:
    /// this host's name and localhost).
    #[arg(long = "cert-name", value_name = "NAME")]
    cert_names: Vec<String>,
    /// The server's directory: its TLS certificate and key (made on first
    /// start) and its tokens [default: /var/lib/hoard/server].
    #[arg(long, env = "HOARD_SERVER_DIR", value_name = "DIR")]
    server_dir: Option<PathBuf>,
    /// How the log on standard error is written: text lines, or one JSON
    /// object per event (`timestamp`, `level`, and `fields`: `message`,
    /// `peer`, `status`, `method`, `path`, `reason`, ...).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Seconds a client may be silent (clients ping four times as often
    /// while they run) before it is forgotten and its unpublished backups
    /// aborted.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    idle_timeout: u64,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Where the server's events go: stderr, which journald keeps for the unit.
fn start_log(format: LogFormat) {
    let log = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    match format {
        LogFormat::Text => log.init(),
        LogFormat::Json => log.json().init(),
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum RoleArg {
    /// Adds snapshots to its namespace; never deletes.
    Backup,
    /// Lists and restores in its namespace.
    Reader,
    /// Maintenance and tokens.
    Admin,
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token; its secret is printed once (NAME:SECRET, for
    /// HOARD_TOKEN or a token file) and only its hash is kept.
    Create {
        /// 1 to 64 of A-Z a-z 0-9 . _ - (not starting with - or .).
        name: String,
        /// What the token may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The namespace it is confined to, a/b/c (up to 8 levels); default
        /// the root, which holds every namespace.
        #[arg(long, default_value = "")]
        namespace: String,
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: ServerDirArg,
    },
    /// Every token: name, role, namespace, when it was made.
    List {
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: ServerDirArg,
    },
    /// Revoke a token: the server refuses it from its next request on.
    Revoke {
        /// The token's name, as `list` shows it.
        name: String,
        #[command(flatten)]
        dir: ServerDirArg,
    },
}

/// Ask a server who it takes this client's token for: checks the
/// repository address, the pinned fingerprint and the token in one call.
#[derive(Args)]
pub(crate) struct Whoami {
    /// Print JSON instead of text (format-spec/json.md).
    #[arg(long)]
    json: bool,
}

pub(crate) fn serve(at: &StoreArgs, args: Serve) -> Result<()> {
    start_log(args.log_format);
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            ServeConfig::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?
        }
        None => ServeConfig::default(),
    };
    let mut at = at.clone();
    if at.store.is_none() && !config.store.is_empty() {
        at.store = Some(PathBuf::from(&config.store));
    }
    let store = open_store(&at)?;
    let listen_text = args
        .listen
        .or(config.listen)
        .unwrap_or_else(|| "0.0.0.0:8007".into());
    let listen: SocketAddr = listen_text
        .to_socket_addrs()
        .with_context(|| format!("listen address {listen_text}"))?
        .next()
        .ok_or_else(|| anyhow!("listen address {listen_text}: no address"))?;
    let names = [args.cert_names, config.cert_names]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or_else(|| vec![hoard_engine::host_name(), "localhost".into()]);
    let dir = ServerDir::new(
        &args
            .server_dir
            .or(config.server_dir.map(PathBuf::from))
            .unwrap_or_else(ServerDir::default_path),
    );
    let identity = dir.identity(&names)?;
    let fingerprint = identity.fingerprint.clone();
    let tls = http::tls_config(identity)?;
    // The server owns its store for as long as it runs.
    let label = store.location();
    let opts = http::ServeOptions {
        dir,
        store: Box::leak(Box::new(store)),
        label,
        listen,
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout.max(1)),
    };
    http::run(opts, tls, |addr| {
        // One line a script can wait for, then the fingerprint to pin.
        println!("hoard serve: listening on {addr}");
        println!("fingerprint {fingerprint}");
    })?;
    Ok(())
}

pub(crate) fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create {
            name,
            role,
            namespace,
            json,
            dir,
        } => {
            let role = match role {
                RoleArg::Backup => Role::Backup,
                RoleArg::Reader => Role::Reader,
                RoleArg::Admin => Role::Admin,
            };
            let made = dir.dir().create_token(&name, role, &namespace)?;
            if json {
                crate::output::print_json(serde_json::json!({"token": made.token, "secret": made.secret}))?;
            } else {
                println!("{}", made.secret);
                eprintln!(
                    "hoard: token {name} ({}, namespace {:?}) made; the line above is its secret, shown only now",
                    role.name(),
                    made.token.namespace
                );
            }
            Ok(())
        }
        TokenCommand::List { json, dir } => {
            let list = dir.dir().tokens()?;
            if json {
                return crate::output::print_json(serde_json::json!({"tokens": list.tokens}));
            }
            for t in &list.tokens {
                let ns = if t.namespace.is_empty() { "/" } else { &t.namespace };
                println!("{}  {}  {}  made {}", t.name, t.role.name(), ns, t.created);
            }
            Ok(())
        }
        TokenCommand::Revoke { name, dir } => {
            dir.dir().revoke_token(&name)?;
            println!("revoked token {name}: the server refuses it from its next request on");
            Ok(())
        }
    }
}

pub(crate) fn whoami(at: &StoreArgs, args: Whoami) -> Result<()> {
    let me = crate::open::client(at)?.whoami()?;
    if args.json {
        return crate::output::print_json(me);
    }
    println!(
        "token {} ({}, namespace {:?}) on a server of store {}",
        me["name"].as_str().unwrap_or("?"),
        me["role"].as_str().unwrap_or("?"),
        me["namespace"].as_str().unwrap_or(""),
        me["store"].as_str().unwrap_or("?")
    );
    Ok(())
}
