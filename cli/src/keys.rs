//! Keys on the command line: passphrases from the environment, a command
//! or a prompt; unlocking a protected store; `hoard init --encryption`'s
//! first key; and `hoard key`.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hoard_engine::{
    key_slots, key_slots::Slot, key_wrap, key_wrap::unlock_time, key_wrap::KdfCost, key_wrap::KeyError,
    recovery, CheckedKeyFile, KeyFor, MasterKey, Protection, Store,
};

use crate::open::StoreArgs;
use hoard_engine::server::remote_store::RemoteStore;
use serde_json::json;

/// The argon2id cost of a new key file.
#[derive(Args, Clone, Copy)]
pub(crate) struct KdfArgs {
    /// argon2id memory per unlock, KiB (64 MiB by default).
    #[arg(long, default_value_t = KdfCost::STANDARD.memory_kib, value_name = "KIB")]
    kdf_memory_kib: u32,
    /// argon2id passes.
    #[arg(long, default_value_t = KdfCost::STANDARD.iterations, value_name = "N")]
    kdf_iterations: u32,
}

impl KdfArgs {
    fn cost(self) -> KdfCost {
        KdfCost {
            memory_kib: self.kdf_memory_kib,
            iterations: self.kdf_iterations,
            parallelism: 1,
        }
    }
}

/// A passphrase, wiped when dropped.
pub(crate) struct Passphrase(Vec<u8>);

impl Drop for Passphrase {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

/// Where the current passphrase comes from, in order, before the terminal.
const PASSPHRASE_VARS: [&str; 3] = ["HOARD_PASSWORD_FILE", "HOARD_PASSWORD_COMMAND", "HOARD_PASSWORD"];

/// Whether this run was given a way to unlock without asking.
pub(crate) fn key_source_given(keyfile: Option<&Path>) -> bool {
    !key_sources(keyfile).is_empty()
}

/// The key sources this run was given, by name.
fn key_sources(keyfile: Option<&Path>) -> Vec<String> {
    let mut given: Vec<String> = keyfile
        .map(|p| format!("--keyfile {}", p.display()))
        .into_iter()
        .collect();
    for v in PASSPHRASE_VARS {
        if std::env::var_os(v).is_some() {
            given.push(v.to_string());
        }
    }
    given
}

/// The current passphrase: `HOARD_PASSWORD_FILE`, `HOARD_PASSWORD_COMMAND`,
/// `HOARD_PASSWORD`, or asked on the terminal.
fn passphrase(what: &str) -> Result<Passphrase> {
    if let Some(p) = std::env::var_os("HOARD_PASSWORD_FILE") {
        return read_passphrase_file(Path::new(&p));
    }
    if let Some(cmd) = std::env::var_os("HOARD_PASSWORD_COMMAND") {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running HOARD_PASSWORD_COMMAND {cmd:?}"))?;
        if !out.status.success() {
            bail!("HOARD_PASSWORD_COMMAND {cmd:?} failed ({})", out.status);
        }
        return Ok(trimmed(out.stdout));
    }
    if let Some(p) = std::env::var_os("HOARD_PASSWORD") {
        return Ok(Passphrase(p.into_encoded_bytes()));
    }
    prompt(&format!("passphrase for {what}: "))
}

/// The passphrase of a first key (a new store's, `key create`): as a new
/// one, or, as restic and borg take it, from the current-passphrase
/// sources (`HOARD_PASSWORD_FILE`, `HOARD_PASSWORD_COMMAND`,
/// `HOARD_PASSWORD`), since there is no old one to tell apart.
fn first_passphrase(what: &str) -> Result<Passphrase> {
    let current = PASSPHRASE_VARS.iter().any(|v| std::env::var_os(v).is_some());
    if std::env::var_os("HOARD_NEW_PASSWORD_FILE").is_some() || !current {
        return new_passphrase(what);
    }
    nonempty(passphrase(what)?)
}

/// A new passphrase: `HOARD_NEW_PASSWORD_FILE`, or asked twice.
fn new_passphrase(what: &str) -> Result<Passphrase> {
    let p = match std::env::var_os("HOARD_NEW_PASSWORD_FILE") {
        Some(p) => read_passphrase_file(Path::new(&p))?,
        None => {
            let first = prompt(&format!("new passphrase for {what}: "))?;
            let again = prompt("the same again: ")?;
            if first.0 != again.0 {
                bail!("the two passphrases differ; nothing was changed");
            }
            first
        }
    };
    nonempty(p)
}

fn nonempty(p: Passphrase) -> Result<Passphrase> {
    if p.0.is_empty() {
        bail!("an empty passphrase protects nothing; nothing was changed");
    }
    Ok(p)
}

fn prompt(text: &str) -> Result<Passphrase> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "no terminal to ask for the {}: set HOARD_PASSWORD_FILE or HOARD_PASSWORD_COMMAND (a new store or key file takes its passphrase from them too; a new passphrase beside an old one, for key add/passwd, from HOARD_NEW_PASSWORD_FILE)",
            text.trim_end_matches(": ")
        );
    }
    let p = rpassword::prompt_password(text).context("reading the passphrase")?;
    Ok(Passphrase(p.into_bytes()))
}

fn read_passphrase_file(path: &Path) -> Result<Passphrase> {
    let bytes = std::fs::read(path).with_context(|| format!("reading passphrase file {}", path.display()))?;
    Ok(trimmed(bytes))
}

/// Without one trailing newline, as `echo pw > file` writes it.
fn trimmed(mut bytes: Vec<u8>) -> Passphrase {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Passphrase(bytes)
}

/// Where a secret came from, or goes.
enum Opened {
    Slot(String),
    File(PathBuf),
}

impl std::fmt::Display for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opened::Slot(s) => write!(f, "key slot {s}"),
            Opened::File(p) => write!(f, "key file {}", p.display()),
        }
    }
}

/// The store's secret, from `--keyfile` or whichever slot the passphrase
/// opens; another store's key is refused here, before anything uses it.
fn load_key(store: &Store, keyfile: Option<&Path>) -> Result<(MasterKey, Opened)> {
    let (key, opened) = find_key(store, keyfile)?;
    store.check_key(&key).with_context(|| opened.to_string())?;
    Ok((key, opened))
}

fn find_key(store: &Store, keyfile: Option<&Path>) -> Result<(MasterKey, Opened)> {
    let first = crate::known::last_slot(store);
    let (key, opened) = find_key_at(
        store.root(),
        first.as_deref(),
        key_slots::key_for(store.config()),
        keyfile,
    )?;
    if let Opened::Slot(slot) = &opened {
        if first.as_deref() != Some(slot.as_str()) {
            crate::known::opened_with_slot(store, slot);
        }
    }
    Ok((key, opened))
}

/// The keys of the protected store at `root` from its config alone, for an
/// index rebuild (which runs before there is an index to open the store
/// with); None for a plain store or when no key source was given.
pub(crate) fn config_keys(
    root: &Path,
    keyfile: Option<&Path>,
) -> Result<Option<std::sync::Arc<hoard_engine::StoreKeys>>> {
    let config = hoard_engine::read_config(root)?;
    if config.encryption == Protection::None || !key_source_given(keyfile) {
        return Ok(None);
    }
    let (key, opened) = find_key_at(root, None, key_slots::key_for(&config), keyfile)?;
    let keys = hoard_engine::config_keys(root, &config, &key).with_context(|| opened.to_string())?;
    Ok(Some(keys))
}

/// The secret of the store at `root`, a `store` by its config: `--keyfile`,
/// or the slot the passphrase opens (slot `first` tried first). A key
/// file that names another kind of store is refused.
fn find_key_at(
    root: &Path,
    first: Option<&str>,
    store: KeyFor,
    keyfile: Option<&Path>,
) -> Result<(MasterKey, Opened)> {
    let what = format!("store {}", root.display());
    if let Some(path) = keyfile {
        let file = key_slots::read_key_file(path)?;
        let key = key_wrap::unwrap(&file, &passphrase(&format!("key file {}", path.display()))?.0).map_err(
            |e| match e {
                KeyError::WrongPassphrase => anyhow::anyhow!(
                    "{}: wrong passphrase (or the key file was changed)",
                    path.display()
                ),
                e => anyhow::anyhow!("{}: {e}", path.display()),
            },
        )?;
        key_slots::check_store(&file, path, store)?;
        return Ok((key, Opened::File(path.to_path_buf())));
    }
    let (slots, unusable) = key_slots::list_usable(root)?;
    for (name, e) in &unusable {
        eprintln!("hoard: warning: key slot {name} skipped: {e}");
    }
    if slots.is_empty() {
        let usable = if unusable.is_empty() { "" } else { "usable " };
        bail!("{what} keeps no {usable}key slot: give its key file with --keyfile (or HOARD_KEYFILE)");
    }
    let (key, slot) = key_slots::unlock(&slots, &passphrase(&what)?.0, first, store)?;
    Ok((key, Opened::Slot(slot)))
}

/// Unlocks a protected store. A plain store is left as it is, unless this
/// run was given a key: then someone expects it to be protected, and the
/// store (or its config, changed by whoever holds it) says otherwise.
pub(crate) fn unlock(store: &mut Store, keyfile: Option<&Path>) -> Result<()> {
    if store.protection() == Protection::None {
        if key_source_given(keyfile) {
            bail!(
                "store {} is not encrypted or signed, but a key was given ({}): refusing to write or read it in plaintext. If the store is plain on purpose, run without a key (unset HOARD_PASSWORD_FILE, HOARD_PASSWORD_COMMAND, HOARD_PASSWORD and --keyfile)",
                store.location(),
                key_sources(keyfile).join(", ")
            );
        }
        return Ok(());
    }
    let (key, _) = load_key(store, keyfile)?;
    store.unlock(&key)?;
    Ok(())
}

/// Unlocks a server repository's store here, on the client, with its key
/// slots (copied from the server) or `--keyfile`: the server never sees
/// the passphrase or the key.
pub(crate) fn unlock_remote(store: &mut RemoteStore, keyfile: Option<&Path>) -> Result<()> {
    if store.protection() == Protection::None {
        if key_source_given(keyfile) {
            bail!(
                "the server's store is not encrypted or signed, but a key was given ({}): refusing to write or read it in plaintext",
                key_sources(keyfile).join(", ")
            );
        }
        return Ok(());
    }
    let (key, opened) = find_key_at(store.root(), None, key_slots::key_for(store.config()), keyfile)?;
    store.unlock(&key).with_context(|| opened.to_string())?;
    Ok(())
}

/// The first key of a new `protection` store: an existing `--keyfile`,
/// a new one written there, or a new slot in the store. Returns the
/// secret, the slot to write (if any) and what to tell the user.
pub(crate) fn first_key(
    protection: Protection,
    kdf: KdfArgs,
    store: &Path,
    keyfile: Option<&Path>,
) -> Result<(MasterKey, Option<CheckedKeyFile>, String)> {
    let cost = kdf.cost();
    if let Some(path) = keyfile.filter(|p| p.exists()) {
        let file = key_slots::read_key_file(path)?;
        let key = key_wrap::unwrap(&file, &passphrase(&format!("key file {}", path.display()))?.0)
            .with_context(|| path.display().to_string())?;
        if let Some(other) = file
            .for_store
            .filter(|k| *k != key_slots::new_store_key_for(protection))
        {
            bail!(
                "{} is the key of a {other}, not of a new {protection} store: make one for this store with `hoard key create --encryption {protection}`",
                path.display(),
            );
        }
        return Ok((
            key,
            None,
            format!("key in {} (no slot in the store)", path.display()),
        ));
    }
    let key = MasterKey::generate()?;
    let pass = first_passphrase(&format!("{protection} store {}", store.display()))?;
    let file = key_slots::wrap(&key, &pass.0, cost, key_slots::new_store_key_for(protection))?;
    let timing = unlock_time(cost)
        .map(|t| format!("{} ms", t.as_millis()))
        .unwrap_or_else(|e| e.to_string());
    match keyfile {
        Some(path) => {
            write_new_file(path, &file.to_bytes())?;
            Ok((
                key,
                None,
                format!(
                    "key written to {} only (no slot in the store; unlock takes {timing})",
                    path.display()
                ),
            ))
        }
        None => Ok((key, Some(file), format!("key slot key-1 (unlock takes {timing})"))),
    }
}

/// Creates `path` (never overwriting, never following a planted link), 0600.
fn write_new_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_o_nofollow())
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Replaces `path` whole: a new file beside it (created as
/// [`write_new_file`] does, under a random name), fsynced, renamed over it.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .context("a key file path names a file")?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4()));
    write_new_file(&tmp, bytes)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// `--encryption` of `key create`: a mode that has a key.
fn parse_key_mode(s: &str) -> Result<Protection, String> {
    match s.parse()? {
        Protection::None => Err("a plain store has no key: use sign or encrypt".into()),
        m => Ok(m),
    }
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Make a new secret in a key file outside any store, for
    /// `hoard init --encryption MODE --keyfile FILE`.
    Create {
        /// The key file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// The mode of the store it is for (sign or encrypt): the key file
        /// names it under its tag, and a store of another mode refuses it
        #[arg(long, default_value = "encrypt", value_parser = parse_key_mode)]
        encryption: Protection,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Add a key slot with a new passphrase (needs a current one), or with
    /// --out write that key file outside the store instead.
    Add {
        #[command(flatten)]
        to: NewKey,
    },
    /// Change the passphrase of the slot (or --keyfile) it opens.
    Passwd {
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// List the key slots (no key needed).
    List {
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Show the store's protection, key fingerprint and slots, and what an
    /// unlock of the default cost takes here.
    Show {
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Remove a key slot. The passphrase given must open another slot (or
    /// --keyfile), so that the store never locks out the last key holder.
    Remove {
        /// The slot's name (see `hoard key list`).
        name: String,
    },
    /// A recovery copy of the secret: sealed to an age X25519 recipient
    /// (`age-keygen` makes one; `age -d` opens the copy too), or --paper.
    Export {
        /// age1... public key.
        #[arg(long, required_unless_present = "paper")]
        recipient: Option<String>,
        /// Print the secret as four checked lines of hex, to keep on paper.
        #[arg(long, conflicts_with = "recipient")]
        paper: bool,
        /// Write the copy here (0600, must not exist) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Regain access from a recovery copy: a new slot (or --out key file)
    /// with a new passphrase.
    Recover {
        /// The recovery copy: `key export` output, or the typed paper lines.
        copy: PathBuf,
        /// age identity file (AGE-SECRET-KEY-1...) for a sealed copy.
        #[arg(long, required_unless_present = "paper")]
        identity: Option<PathBuf>,
        /// The copy is paper text.
        #[arg(long)]
        paper: bool,
        #[command(flatten)]
        to: NewKey,
    },
}

/// Where a new wrapping of the secret goes, and at what cost.
#[derive(Args)]
pub(crate) struct NewKey {
    /// Slot name (default key-N).
    #[arg(long)]
    name: Option<String>,
    /// Write a key file here (0600, must not exist) instead of a slot.
    #[arg(long, conflicts_with = "name")]
    out: Option<PathBuf>,
    #[command(flatten)]
    kdf: KdfArgs,
}

pub(crate) fn run(at: &StoreArgs, command: KeyCommand) -> Result<()> {
    if let KeyCommand::Create { out, encryption, kdf } = command {
        let key = MasterKey::generate()?;
        let pass = first_passphrase(&format!("key file {}", out.display()))?;
        write_new_file(
            &out,
            &key_slots::wrap(
                &key,
                &pass.0,
                kdf.cost(),
                key_slots::new_store_key_for(encryption),
            )?
            .to_bytes(),
        )?;
        println!(
            "created key file {} (fingerprint {})",
            out.display(),
            key.fingerprint_hex()
        );
        return Ok(());
    }
    let store = crate::open::open_store(at)?;
    if store.protection() == Protection::None {
        bail!(
            "store {} is not encrypted or signed: it has no keys",
            store.root().display()
        );
    }
    let root = store.root().to_path_buf();
    match command {
        KeyCommand::Create { .. } => unreachable!("handled above"),
        KeyCommand::List { json } => print_slots(&key_slots::list(&root)?, json),
        KeyCommand::Show { json } => show(&store, json),
        KeyCommand::Add { to } => add_key(
            &root,
            &load_key(&store, at.keyfile())?.0,
            to,
            key_slots::key_for(store.config()),
        ),
        KeyCommand::Passwd { kdf } => {
            let (key, opened) = load_key(&store, at.keyfile())?;
            let file = key_slots::wrap(
                &key,
                &new_passphrase(&opened.to_string())?.0,
                kdf.cost(),
                key_slots::key_for(store.config()),
            )?;
            match &opened {
                Opened::Slot(name) => {
                    key_slots::write(&root, name, &file, true)?;
                }
                Opened::File(path) => replace_file(path, &file.to_bytes())?,
            }
            println!("changed the passphrase of {opened}");
            Ok(())
        }
        KeyCommand::Remove { name } => {
            let slots = key_slots::list(&root)?;
            if !slots.iter().any(|s| s.name == name) {
                return Err(hoard_engine::StoreError::NoSuchSlot(name).into());
            }
            let others: Vec<Slot> = slots.into_iter().filter(|s| s.name != name).collect();
            if at.keyfile().is_some() {
                load_key(&store, at.keyfile())?;
            } else if others.is_empty() {
                bail!("{name} is the store's last key slot; add another (`hoard key add`) or keep a key file before removing it");
            } else {
                key_slots::unlock(
                    &others,
                    &passphrase(&format!("a key slot other than {name}"))?.0,
                    None,
                    key_slots::key_for(store.config()),
                )?;
            }
            key_slots::remove(&root, &name)?;
            println!("removed key slot {name}");
            Ok(())
        }
        KeyCommand::Export {
            recipient,
            paper,
            out,
        } => {
            let (key, _) = load_key(&store, at.keyfile())?;
            let text = match recipient {
                Some(r) => zeroize::Zeroizing::new(recovery::seal(&key, &r)?),
                None if paper => recovery::paper(&key),
                None => bail!("give --recipient age1... or --paper"),
            };
            match out {
                Some(path) => {
                    write_new_file(&path, text.as_bytes())?;
                    eprintln!(
                        "wrote a recovery copy of store {} to {}",
                        root.display(),
                        path.display()
                    );
                }
                None => print!("{}", text.as_str()),
            }
            Ok(())
        }
        KeyCommand::Recover {
            copy,
            identity,
            paper,
            to,
        } => {
            let bytes = std::fs::read(&copy).with_context(|| format!("reading {}", copy.display()))?;
            let key = if paper {
                recovery::from_paper(&String::from_utf8_lossy(&bytes))
            } else {
                let id_path = identity.context("give --identity FILE for a sealed copy")?;
                let id = std::fs::read_to_string(&id_path)
                    .with_context(|| format!("reading {}", id_path.display()))?;
                recovery::open(&bytes, &id)
            }
            .with_context(|| copy.display().to_string())?;
            store
                .check_key(&key)
                .with_context(|| copy.display().to_string())?;
            add_key(&root, &key, to, key_slots::key_for(store.config()))
        }
    }
}

/// Wraps `key` of a `store` under a new passphrase into a new slot or key
/// file.
fn add_key(root: &Path, key: &MasterKey, to: NewKey, store: KeyFor) -> Result<()> {
    let dest = match (to.out, to.name) {
        (Some(path), _) => Opened::File(path),
        (None, Some(name)) => Opened::Slot(name),
        (None, None) => Opened::Slot(key_slots::free_name(root)?),
    };
    let file = key_slots::wrap(key, &new_passphrase(&dest.to_string())?.0, to.kdf.cost(), store)?;
    match &dest {
        Opened::File(path) => write_new_file(path, &file.to_bytes())?,
        Opened::Slot(name) => {
            key_slots::write(root, name, &file, false)?;
        }
    }
    println!("added {dest}");
    Ok(())
}

fn slot_json(s: &Slot) -> serde_json::Value {
    let k = &s.file.file.kdf;
    json!({
        "name": s.name,
        "created": s.file.file.created,
        "fingerprint": s.file.file.fingerprint,
        "kdf": { "name": k.name, "memory_kib": k.memory_kib, "iterations": k.iterations, "parallelism": k.parallelism },
    })
}

fn print_slots(slots: &[Slot], json: bool) -> Result<()> {
    if json {
        let v: Vec<_> = slots.iter().map(slot_json).collect();
        crate::output::print_json(json!({"slots": v}))?;
        return Ok(());
    }
    if slots.is_empty() {
        println!("no key slots: the key is kept outside the store (--keyfile)");
    }
    for s in slots {
        let k = &s.file.file.kdf;
        println!(
            "{:12} created {}  {} {} MiB, {} passes",
            s.name,
            s.file.file.created,
            k.name,
            k.memory_kib / 1024,
            k.iterations
        );
    }
    Ok(())
}

fn show(store: &Store, json: bool) -> Result<()> {
    let slots = key_slots::list(store.root())?;
    let cost = KdfCost::STANDARD;
    let unlock = unlock_time(cost)?.as_secs_f64();
    let fingerprint = store.config().key_fingerprint.clone().unwrap_or_default();
    if json {
        let v = json!({
            "encryption": store.protection().as_str(),
            "fingerprint": fingerprint,
            "slots": slots.iter().map(slot_json).collect::<Vec<_>>(),
            "default_unlock_secs": unlock,
        });
        crate::output::print_json(v)?;
        return Ok(());
    }
    println!("encryption:  {}", store.protection());
    println!("fingerprint: {fingerprint}");
    println!(
        "unlock:      {:.0} ms here at the default cost (argon2id {} MiB, {} passes)",
        unlock * 1000.0,
        cost.memory_kib / 1024,
        cost.iterations
    );
    print_slots(&slots, false)
}
