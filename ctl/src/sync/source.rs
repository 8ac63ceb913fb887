//! Reading a sync directory as one consistent revision, and watching it for changes.
//!
//! A revision is read from the directory's resolved target (so a git-sync style
//! `current -> rev-N` symlink swapped in the middle of a read cannot mix two revisions),
//! and it is only accepted once two consecutive reads hash the same: a file that an
//! editor or a slow writer is still writing is never taken mid-way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Result};
use calico_schema::{Diagnostic, Diagnostics, Loaded};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How long the files must stay the same between the two reads of a revision.
pub const SETTLE: Duration = Duration::from_millis(100);
/// Reads of a directory that keeps changing before a pass gives up (and the next event
/// or interval tries again).
const MAX_READS: usize = 50;

/// One read of the directory: every YAML file's bytes, by path relative to the directory.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// What it resolved to for this read (the git-sync worktree).
    pub root: PathBuf,
    /// (relative path with `/` separators, content), sorted by path.
    pub files: Vec<(String, Vec<u8>)>,
    /// Files refused without being read, with why (relative path, message): larger
    /// than the limit, or a symlink that leads outside the directory. Reported as
    /// errors of the revision, like an invalid document.
    pub refused: Vec<(String, String)>,
    /// sha256 over every path and content (and every refusal).
    pub hash: String,
}

impl Snapshot {
    /// `sha256:` and the first 12 hex digits: the content revision shown to users.
    pub fn content_id(&self) -> String {
        format!("sha256:{}", &self.hash[..12])
    }

    /// Every document of every file, each file named by its relative path. All problems
    /// of all files are reported together.
    pub fn load(&self) -> Result<Vec<Loaded>, Diagnostics> {
        let mut out = Vec::new();
        let mut diags: Vec<Diagnostic> = self
            .refused
            .iter()
            .map(|(rel, message)| Diagnostic {
                file: rel.clone(),
                line: 0,
                col: 0,
                path: String::new(),
                message: message.clone(),
            })
            .collect();
        for (rel, bytes) in &self.files {
            let text = match std::str::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => {
                    diags.push(Diagnostic {
                        file: rel.clone(),
                        line: 0,
                        col: 0,
                        path: String::new(),
                        message: format!("not UTF-8 text: {e}"),
                    });
                    continue;
                }
            };
            match calico_schema::load_str(rel, text) {
                Ok(mut l) => out.append(&mut l),
                Err(mut d) => diags.append(&mut d.0),
            }
        }
        if diags.is_empty() {
            Ok(out)
        } else {
            Err(Diagnostics(diags))
        }
    }

    /// The git commit checked out at the directory, when it is inside a git work tree.
    pub fn git_commit(&self) -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.root)
            .args(["rev-parse", "--verify", "-q", "HEAD"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let c = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (c.len() >= 7 && c.chars().all(|ch| ch.is_ascii_hexdigit())).then_some(c)
    }
}

/// Why a read failed: the directory is missing or unreadable (reported to the user), or
/// it changed under the read (tried again).
enum ReadError {
    Changing,
    Fatal(anyhow::Error),
}

fn read_once(dir: &Path) -> Result<Snapshot, ReadError> {
    let root = std::fs::canonicalize(dir)
        .map_err(|e| ReadError::Fatal(anyhow!("cannot read the sync directory {}: {e}", dir.display())))?;
    if !root.is_dir() {
        return Err(ReadError::Fatal(anyhow!("{} is not a directory", dir.display())));
    }
    // The directory is written by whoever can push to the repository: a symlink in it
    // must not make the sync read (and report, and apply) a file elsewhere on this
    // host, such as /etc/shadow. `confined` opens each file and checks what it opened.
    let read = crate::confined::read_yaml_files(&root, "the sync directory").map_err(|e| {
        if e.is_not_found() {
            // A file or directory vanishing mid-read is git-sync removing an old
            // worktree, or an editor renaming: the directory is changing, read again.
            ReadError::Changing
        } else {
            ReadError::Fatal(anyhow!("cannot read the sync directory {}: {e}", dir.display()))
        }
    })?;
    let mut h = Sha256::new();
    for (rel, message) in &read.refused {
        h.update(b"refused\0");
        h.update(rel.as_bytes());
        h.update(message.as_bytes());
    }
    for (rel, bytes) in &read.files {
        h.update((rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    let hash = h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok(Snapshot {
        root: read.root,
        files: read.files,
        refused: read.refused,
        hash,
    })
}

/// Reads the directory until two consecutive reads, `settle` apart, are the same.
/// Blocking: run it off the async runtime.
pub fn read_settled(dir: &Path, settle: Duration) -> Result<Snapshot> {
    let mut prev: Option<Snapshot> = None;
    for _ in 0..MAX_READS {
        match read_once(dir) {
            Ok(s) => {
                if let Some(p) = &prev {
                    if p.hash == s.hash && p.root == s.root {
                        return Ok(s);
                    }
                    debug!(dir = %dir.display(), "the directory changed while it was read; reading again");
                }
                prev = Some(s);
            }
            Err(ReadError::Changing) => prev = None,
            Err(ReadError::Fatal(e)) => return Err(e),
        }
        std::thread::sleep(settle);
    }
    Err(anyhow!(
        "the sync directory {} kept changing over {MAX_READS} reads; will try again",
        dir.display()
    ))
}

fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Watches a sync directory: its resolved target recursively, and the directory that
/// holds it, so that a symlink swapped by git-sync (or the directory being replaced by a
/// rename) is seen. Events arrive debounced, as one wake-up per quiet period.
pub struct DirWatch {
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    dir: PathBuf,
    target: Option<PathBuf>,
    parent: Option<PathBuf>,
}

impl DirWatch {
    /// Starts watching; wake-ups are sent on the returned channel.
    pub fn start(dir: &Path, debounce: Duration) -> Result<(DirWatch, mpsc::UnboundedReceiver<()>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let debouncer = new_debouncer(debounce, None, move |res: DebounceEventResult| match res {
            Ok(events) => {
                // Opening and reading files (our own reads, git's) changes nothing.
                if events.iter().any(|e| changes_content(&e.kind)) {
                    let _ = tx.send(());
                }
            }
            Err(errors) => {
                for e in errors {
                    warn!(error = %e, "directory watch error");
                }
                // Whatever was missed, a fresh read finds.
                let _ = tx.send(());
            }
        })
        .map_err(|e| anyhow!("cannot watch {}: {e}", dir.display()))?;
        let mut w = DirWatch {
            debouncer,
            dir: dir.to_path_buf(),
            target: None,
            parent: None,
        };
        w.refresh();
        Ok((w, rx))
    }

    /// Re-targets the recursive watch when the directory now resolves elsewhere (after a
    /// symlink swap), and watches the parent once it exists. Cheap when nothing moved.
    pub fn refresh(&mut self) {
        if self.parent.is_none() {
            let abs = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
            if let Some(parent) = abs.parent().map(Path::to_path_buf) {
                match self.debouncer.watch(&parent, RecursiveMode::NonRecursive) {
                    Ok(()) => self.parent = Some(parent),
                    Err(e) => debug!(dir = %parent.display(), error = %e, "cannot watch the parent directory yet"),
                }
            }
        }
        let target = std::fs::canonicalize(&self.dir).ok().filter(|t| t.is_dir());
        if target == self.target {
            return;
        }
        if let Some(old) = self.target.take() {
            // The old worktree may be gone already; nothing to undo then.
            let _ = self.debouncer.unwatch(&old);
        }
        if let Some(t) = target {
            match self.debouncer.watch(&t, RecursiveMode::Recursive) {
                Ok(()) => {
                    debug!(dir = %self.dir.display(), target = %t.display(), "watching");
                    self.target = Some(t);
                }
                Err(e) => {
                    warn!(dir = %t.display(), error = %e, "cannot watch the sync directory; relying on the interval");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_schema::limits::{MAX_DIR_BYTES, MAX_DIR_FILES};

    #[test]
    fn reads_relative_names_and_skips_dot_entries() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::create_dir_all(d.path().join(".git")).unwrap();
        std::fs::write(d.path().join("a/b/x.yaml"), "x").unwrap();
        std::fs::write(d.path().join("top.yml"), "y").unwrap();
        std::fs::write(d.path().join(".hidden.yaml"), "z").unwrap();
        std::fs::write(d.path().join(".git/c.yaml"), "z").unwrap();
        std::fs::write(d.path().join("notes.txt"), "z").unwrap();
        let s = read_settled(d.path(), Duration::from_millis(1)).unwrap();
        let names: Vec<&str> = s.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a/b/x.yaml", "top.yml"]);
        let again = read_settled(d.path(), Duration::from_millis(1)).unwrap();
        assert_eq!(s.hash, again.hash);
        std::fs::write(d.path().join("top.yml"), "changed").unwrap();
        let changed = read_settled(d.path(), Duration::from_millis(1)).unwrap();
        assert_ne!(s.hash, changed.hash);
        assert!(s.content_id().starts_with("sha256:"));
    }

    #[test]
    fn follows_a_swapped_symlink() {
        let d = tempfile::tempdir().unwrap();
        for (rev, text) in [("rev-1", "one"), ("rev-2", "two")] {
            std::fs::create_dir(d.path().join(rev)).unwrap();
            std::fs::write(d.path().join(rev).join("f.yaml"), text).unwrap();
        }
        std::os::unix::fs::symlink("rev-1", d.path().join("current")).unwrap();
        let s1 = read_settled(&d.path().join("current"), Duration::from_millis(1)).unwrap();
        assert_eq!(s1.files[0].1, b"one");
        std::os::unix::fs::symlink("rev-2", d.path().join("tmp")).unwrap();
        std::fs::rename(d.path().join("tmp"), d.path().join("current")).unwrap();
        let s2 = read_settled(&d.path().join("current"), Duration::from_millis(1)).unwrap();
        assert_eq!(s2.files[0].1, b"two");
        assert!(s2.root.ends_with("rev-2"));
    }

    /// Symlinks inside the directory never make it read elsewhere: a file link to
    /// /etc/shadow or out of the directory, and a directory link out of it, are refused
    /// and reported (not read, not listed); a link loop is walked once; a FIFO is
    /// refused instead of blocking the read.
    #[test]
    fn symlinks_never_lead_out_of_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("repo");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/ok.yaml"), "ok").unwrap();
        std::fs::create_dir(d.path().join("outside")).unwrap();
        std::fs::write(d.path().join("outside/secret.yaml"), "SECRET").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.join("shadow.yaml")).unwrap();
        std::os::unix::fs::symlink(d.path().join("outside/secret.yaml"), dir.join("s.yaml")).unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), dir.join("out")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("etc")).unwrap();
        std::os::unix::fs::symlink(".", dir.join("loop1")).unwrap();
        std::os::unix::fs::symlink("..", dir.join("sub/loop2")).unwrap();
        std::os::unix::fs::symlink("sub/ok.yaml", dir.join("inside.yaml")).unwrap();
        let st = Command::new("mkfifo").arg(dir.join("fifo.yaml")).status().unwrap();
        assert!(st.success());

        let s = read_settled(&dir, Duration::from_millis(1)).unwrap();
        let names: Vec<&str> = s.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["inside.yaml", "sub/ok.yaml"], "{:?}", s.refused);
        let refused: std::collections::BTreeMap<&str, &str> =
            s.refused.iter().map(|(r, m)| (r.as_str(), m.as_str())).collect();
        assert_eq!(
            refused.keys().copied().collect::<Vec<_>>(),
            ["etc", "fifo.yaml", "out", "s.yaml", "shadow.yaml"],
            "{refused:?}"
        );
        assert!(refused["shadow.yaml"].contains("a symlink to /etc/shadow, outside the sync directory"));
        assert!(refused["etc"].contains("a symlink to the directory /etc, outside"));
        assert!(refused["out"].contains("outside the sync directory; refused, not read"));
        assert!(refused["fifo.yaml"].contains("not a regular file"));
        assert!(s.files.iter().all(|(_, b)| b != b"SECRET"));
        let e = s.load().unwrap_err().to_string();
        assert!(
            e.contains("shadow.yaml") && e.contains("outside the sync directory"),
            "{e}"
        );
    }

    /// Too many bytes in all: refused whole, before any file is read (five sparse
    /// files of 15 MiB, each under the per-file limit).
    #[test]
    fn a_directory_too_large_in_all_is_refused_unread() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let f = std::fs::File::create(d.path().join(format!("f{i}.yaml"))).unwrap();
            f.set_len(15 * 1024 * 1024).unwrap();
        }
        let started = std::time::Instant::now();
        let s = read_settled(d.path(), Duration::from_millis(1)).unwrap();
        assert!(s.files.is_empty(), "{} files read", s.files.len());
        assert_eq!(s.refused.len(), 1, "{:?}", s.refused);
        assert!(
            s.refused[0].1.contains(&format!("at most {MAX_DIR_BYTES} are read")),
            "{:?}",
            s.refused
        );
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(s.load().is_err());
    }

    #[test]
    fn a_directory_of_too_many_files_is_refused() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..=MAX_DIR_FILES {
            std::fs::write(d.path().join(format!("g{i}.yaml")), "").unwrap();
        }
        let e = read_settled(d.path(), Duration::from_millis(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("more than {MAX_DIR_FILES} YAML files")), "{e}");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = read_settled(&d.path().join("nope"), Duration::from_millis(1)).unwrap_err();
        assert!(e.to_string().contains("cannot read the sync directory"), "{e}");
    }
}
