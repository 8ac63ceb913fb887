//! Applying our nftables table.
//!
//! The agent's batches are nft's own syntax, loaded with `nft -f -` (nft parses it
//! faster than JSON: docs/render.md), which the kernel commits as one transaction, or,
//! on any error, leaves the table exactly as it was; JSON (`nft -j -f -`) stays for
//! callers that build typed rulesets. A whole load
//! starts `add table; delete table; add table` and swaps the old table for the new
//! one; a delta (`calico_render::Delta`) changes only what differs. Only our table
//! is ever listed or changed; Docker's and anyone else's tables are not read.
//!
//! The `nftables` crate's own helpers lose nft's error text, which is the one
//! thing an operator needs, so the process is run here with stderr captured.

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::Output;

use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables, Table};
use nftables::types::NfFamily;
use tracing::debug;

use super::command::{run_piped, CommandError};

/// Our table: `table inet calico`.
pub const TABLE_FAMILY: NfFamily = NfFamily::INet;
pub const TABLE_NAME: &str = "calico";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("serialize nftables JSON: {0}")]
    Serialize(#[from] serde_json::Error),
    /// Running `nft` failed; [`CommandError::Failed`] carries nft's own error text.
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// What the reconcile loop needs from nftables, so it can run on a fake.
/// Blocking: call from `spawn_blocking` in async code.
pub trait NftApplier: Send + Sync {
    /// Loads `ruleset` as one transaction.
    fn apply(&self, ruleset: &Nftables) -> Result<(), NftError> {
        self.load(&serde_json::to_vec(ruleset)?)
    }
    /// Loads a batch already in nft's JSON (`calico_render::Batch::to_json_bytes`) as
    /// one transaction.
    fn load(&self, json: &[u8]) -> Result<(), NftError>;
    /// Loads commands in nft's own syntax (`calico_render::NftTable::to_load_text`,
    /// `calico_render::Patch::to_text`) as one transaction: `nft -f -`, which nft
    /// parses faster than the same batch as JSON.
    fn load_text(&self, text: &[u8]) -> Result<(), NftError>;
    /// `nft list table FAMILY NAME` (text, what `calico_render::NftTable::to_text`
    /// prints); `None` if the table does not exist.
    fn list_table_text(&self, family: NfFamily, name: &str) -> Result<Option<String>, NftError>;
    /// Checks `ruleset` against the kernel without committing (`nft -c`).
    fn check(&self, ruleset: &Nftables) -> Result<(), NftError>;
    /// `nft -j list table FAMILY NAME`; `None` if the table does not exist.
    fn list_table(&self, family: NfFamily, name: &str) -> Result<Option<String>, NftError>;
}

/// The `nft` command, optionally run inside another network namespace.
#[derive(Clone, Debug)]
pub struct NftCommand {
    program: PathBuf,
    netns: Option<PathBuf>,
}

impl Default for NftCommand {
    fn default() -> Self {
        NftCommand {
            program: PathBuf::from("nft"),
            netns: None,
        }
    }
}

impl NftCommand {
    /// `nft` from `PATH`, in the agent's own namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `nft` inside `netns` (the child inherits the namespace of the
    /// thread that spawns it).
    pub fn in_netns(mut self, netns: impl Into<PathBuf>) -> Self {
        self.netns = Some(netns.into());
        self
    }

    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, NftError> {
        Ok(run_piped(self.netns.as_deref(), &self.program, args, stdin)?)
    }
}

impl NftApplier for NftCommand {
    fn load(&self, json: &[u8]) -> Result<(), NftError> {
        self.run(&["-j", "-f", "-"], Some(json))?;
        debug!(bytes = json.len(), "nftables batch committed");
        Ok(())
    }

    fn load_text(&self, text: &[u8]) -> Result<(), NftError> {
        self.run(&["-f", "-"], Some(text))?;
        debug!(bytes = text.len(), "nftables commands committed");
        Ok(())
    }

    fn list_table_text(&self, family: NfFamily, name: &str) -> Result<Option<String>, NftError> {
        match self.run(&["list", "table", family_name(family), name], None) {
            Ok(out) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
            Err(NftError::Command(CommandError::Failed { stderr, .. }))
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn check(&self, ruleset: &Nftables) -> Result<(), NftError> {
        let json = serde_json::to_vec(ruleset)?;
        self.run(&["-c", "-j", "-f", "-"], Some(&json))?;
        debug!(objects = ruleset.objects.len(), "nftables ruleset checked");
        Ok(())
    }

    fn list_table(&self, family: NfFamily, name: &str) -> Result<Option<String>, NftError> {
        match self.run(&["-j", "list", "table", family_name(family), name], None) {
            Ok(out) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
            // nft reports a missing table as ENOENT.
            Err(NftError::Command(CommandError::Failed { stderr, .. }))
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// nft's keyword for a family.
pub fn family_name(family: NfFamily) -> &'static str {
    match family {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

/// A batch that replaces table `family name` with `body` in one transaction:
/// `add table` (so the delete cannot fail on a first run), `delete table`
/// (dropping every old chain, set and rule), `add table`, then `body`.
pub fn replace_table<'a>(family: NfFamily, name: &str, body: Vec<NfObject<'a>>) -> Nftables<'a> {
    let table = || Table {
        family,
        name: Cow::Owned(name.to_string()),
        handle: None,
    };
    let mut objects = Vec::with_capacity(body.len() + 3);
    objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))));
    objects.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))));
    objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))));
    objects.extend(body);
    Nftables {
        objects: Cow::Owned(objects),
    }
}

/// Writes `bytes` to `path` whole: a temporary file beside it, then a rename, so a
/// reader sees the old file or the new one, never a part.
pub fn write_file_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Keeps `nft.json` equal to the table last committed, off the reconcile's path: a
/// thread of its own takes each committed table as the reconcile hands it over, skips
/// to the newest when several wait (each write replaces the whole file, so only the
/// last one matters), prints it as JSON and writes it by temporary file and rename,
/// and frees the tables it replaces. A reader sees the file of some committed table,
/// and of the last one shortly after the commit (the time of one JSON print and
/// write: about 10 ms at 1k endpoints, 100 ms at 10k).
pub struct NftFileWriter {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<FileJob>>,
}

type Committed = std::sync::Arc<calico_render::NftTable>;

enum FileJob {
    Write(Committed, Option<Committed>),
    /// Answers once everything handed over before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

impl NftFileWriter {
    pub fn start(path: std::path::PathBuf) -> NftFileWriter {
        let (tx, rx) = std::sync::mpsc::channel::<FileJob>();
        let spawned = std::thread::Builder::new()
            .name("nft-file".into())
            .spawn(move || file_writer(&path, &rx));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the nftables file writer; nft.json is not kept");
        }
        NftFileWriter {
            tx: std::sync::Mutex::new(tx),
        }
    }

    /// Hands `table` over to be written, and `retired` to be freed; returns at once.
    pub fn write(&self, table: Committed, retired: Option<Committed>) {
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(FileJob::Write(table, retired));
        }
    }

    /// Waits until what was handed over is written (at shutdown).
    pub async fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        let sent = self
            .tx
            .lock()
            .map(|tx| tx.send(FileJob::Flush(done)).is_ok())
            .unwrap_or(false);
        if sent {
            let _ = tokio::task::spawn_blocking(move || wait.recv_timeout(std::time::Duration::from_secs(10))).await;
        }
    }
}

fn file_writer(path: &std::path::Path, rx: &std::sync::mpsc::Receiver<FileJob>) {
    while let Ok(job) = rx.recv() {
        let mut newest = None;
        let mut flushes = Vec::new();
        let mut take = |job: FileJob, newest: &mut Option<Committed>| match job {
            // A newer table replaces one not written yet; both retired ones are freed
            // here, as the loop ends.
            FileJob::Write(table, retired) => {
                drop(retired);
                *newest = Some(table);
            }
            FileJob::Flush(done) => flushes.push(done),
        };
        take(job, &mut newest);
        while let Ok(job) = rx.try_recv() {
            take(job, &mut newest);
        }
        if let Some(table) = newest {
            let json = table.to_batch().to_json_bytes();
            drop(table);
            if let Err(e) = write_file_atomic(path, &json) {
                tracing::warn!(error = %e, path = %path.display(), "could not write the nftables file");
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// A batch that removes the table if it exists (`add` then `delete`).
pub fn delete_table(family: NfFamily, name: &str) -> Nftables<'static> {
    let table = || Table {
        family,
        name: Cow::Owned(name.to_string()),
        handle: None,
    };
    Nftables {
        objects: Cow::Owned(vec![
            NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))),
            NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_table_prefix() {
        let batch = replace_table(TABLE_FAMILY, TABLE_NAME, vec![]);
        let json = serde_json::to_string(&batch).unwrap();
        assert_eq!(
            json,
            r#"{"nftables":[{"add":{"table":{"family":"inet","name":"calico"}}},{"delete":{"table":{"family":"inet","name":"calico"}}},{"add":{"table":{"family":"inet","name":"calico"}}}]}"#
        );
    }

    #[test]
    fn family_names_match_serde() {
        for f in [
            NfFamily::IP,
            NfFamily::IP6,
            NfFamily::INet,
            NfFamily::ARP,
            NfFamily::Bridge,
            NfFamily::NetDev,
        ] {
            assert_eq!(serde_json::to_value(f).unwrap(), family_name(f));
        }
    }
}
