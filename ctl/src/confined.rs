//! Reading the YAML files of a directory that someone else writes (`sync --dir`,
//! `master --sync-dir`, and every `-f DIR`), never outside it.
//!
//! A symlink inside the directory may lead anywhere on this host (`x.yaml ->
//! /etc/shadow`), so every file is opened first and then checked by what was opened:
//! it is opened with `O_PATH` (which follows links but reads nothing and has no side
//! effect, even on a device), the opened file's real path is read back from
//! `/proc/self/fd/N` and must lie under the directory's resolved root, `fstat` of the
//! same descriptor must say a regular file of at most [`MAX_FILE_BYTES`], and only then
//! is that very descriptor reopened (through `/proc/self/fd/N`) for reading. A path
//! component swapped for a symlink between the check and the read therefore cannot
//! redirect the read: there is no second lookup by name.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use calico_schema::limits::{MAX_DIR_BYTES, MAX_DIR_FILES, MAX_FILE_BYTES};

/// What a read of a directory found.
#[derive(Debug, Clone)]
pub struct DirFiles {
    /// The directory's resolved path for this read.
    pub root: PathBuf,
    /// (path relative to the directory with `/` separators, content), sorted by path.
    pub files: Vec<(String, Vec<u8>)>,
    /// Entries refused without being read, with why, sorted by path: a symlink out of
    /// the directory, not a regular file, too large; `.` when the files are too large in
    /// all (then none is read).
    pub refused: Vec<(String, String)>,
}

#[derive(Debug)]
pub enum DirError {
    /// `path` could not be listed, opened or read.
    Io(PathBuf, std::io::Error),
    /// More than [`MAX_DIR_FILES`] YAML files or directories.
    TooMany,
}

impl DirError {
    /// Something vanished mid-read: the directory is changing (git-sync removing an old
    /// worktree, an editor renaming).
    pub fn is_not_found(&self) -> bool {
        matches!(self, DirError::Io(_, e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

impl std::fmt::Display for DirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            DirError::TooMany => write!(
                f,
                "more than {MAX_DIR_FILES} YAML files (or directories); at most {MAX_DIR_FILES} are read"
            ),
        }
    }
}

/// Reads every YAML file under `dir` (dot entries skipped). `what` names the directory
/// in refusals ("the sync directory", "the directory examples"). Every file is checked
/// and sized before any is read, so a directory too large in all is refused unread.
pub fn read_yaml_files(dir: &Path, what: &str) -> Result<DirFiles, DirError> {
    let root = std::fs::canonicalize(dir).map_err(|e| DirError::Io(dir.to_path_buf(), e))?;
    let walk = walk(&root, what)?;
    let rel_of = |p: &Path| {
        p.strip_prefix(&root)
            .unwrap_or(p)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut refused: Vec<(String, String)> = walk.refused.iter().map(|(p, m)| (rel_of(p), m.clone())).collect();
    let mut accepted = Vec::with_capacity(walk.files.len());
    let mut total: u64 = 0;
    for p in walk.files {
        match open_confined(&root, &p, what)? {
            Err(why) => refused.push((rel_of(&p), why)),
            Ok((_, size)) => {
                total += size;
                accepted.push(p);
            }
        }
    }
    let mut files = Vec::with_capacity(accepted.len());
    if total > MAX_DIR_BYTES {
        refused.push((
            ".".to_string(),
            format!(
                "the directory's YAML files add up to {total} bytes; at most {MAX_DIR_BYTES} are read, so none was"
            ),
        ));
    } else {
        // Opened and checked again, and read from that descriptor: what the first pass
        // sized may have been swapped since.
        let mut read_total: u64 = 0;
        for p in accepted {
            match open_confined(&root, &p, what)? {
                Err(why) => refused.push((rel_of(&p), why)),
                Ok((f, _)) => {
                    let bytes = read_bounded(f).map_err(|e| DirError::Io(p.clone(), e))?;
                    match bytes {
                        None => refused.push((
                            rel_of(&p),
                            format!("the file grew past {MAX_FILE_BYTES} bytes while it was read; at most {MAX_FILE_BYTES} are read"),
                        )),
                        Some(b) => {
                            read_total += b.len() as u64;
                            files.push((rel_of(&p), b));
                        }
                    }
                }
            }
        }
        if read_total > MAX_DIR_BYTES {
            files.clear();
            refused.push((
                ".".to_string(),
                format!("the directory's YAML files grew past {MAX_DIR_BYTES} bytes in all while they were read; none is used"),
            ));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    refused.sort();
    Ok(DirFiles { root, files, refused })
}

/// Opens `path` (under `root`, itself canonical) for reading if what it leads to is a
/// regular file inside `root` of at most [`MAX_FILE_BYTES`]: `Ok(Ok((file, size)))`;
/// `Ok(Err(why))` when it is refused unread. The check is made on the opened file, not
/// on the name (see the module comment).
fn open_confined(root: &Path, path: &Path, what: &str) -> Result<Result<(File, u64), String>, DirError> {
    let io = |e| DirError::Io(path.to_path_buf(), e);
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
    let real = std::fs::read_link(&fd_path).map_err(|e| {
        DirError::Io(
            path.to_path_buf(),
            std::io::Error::other(format!(
                "cannot tell where the opened file is ({}: {e}); is /proc mounted?",
                fd_path.display()
            )),
        )
    })?;
    if !real.starts_with(root) {
        return Ok(Err(format!(
            "a symlink to {}, outside {what}; refused, not read",
            real.display()
        )));
    }
    let meta = handle.metadata().map_err(io)?;
    if !meta.is_file() {
        // A FIFO or a device would block the read or never end it.
        return Ok(Err("not a regular file; refused, not read".to_string()));
    }
    let size = meta.len();
    if size > MAX_FILE_BYTES {
        return Ok(Err(format!(
            "the file is {size} bytes; at most {MAX_FILE_BYTES} are read"
        )));
    }
    // Reopening the descriptor's /proc entry opens that same file, whatever its name
    // leads to by now.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOCTTY)
        .open(&fd_path)
        .map_err(io)?;
    Ok(Ok((file, size)))
}

/// The file's bytes, or `None` when it holds more than [`MAX_FILE_BYTES`].
fn read_bounded(f: File) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= MAX_FILE_BYTES).then_some(out))
}

/// What a walk found: its YAML files (by path under the root, not yet checked), and
/// directories it refused to enter, with why.
struct Walk {
    files: Vec<PathBuf>,
    refused: Vec<(PathBuf, String)>,
}

/// Lists the YAML files under `root` (itself canonical), skipping dot entries: a
/// symlinked directory is entered only when it resolves inside `root` (so a git-sync
/// `current -> .worktrees/X` link works) and only once (a `loop -> .` link would
/// otherwise list the tree again at every depth, 2^40 paths with two such links), and
/// the walk stops at [`MAX_DIR_FILES`] files or directories instead of listing a tree
/// of any size first. A symlink to a directory outside `root` is refused, not listed.
/// (A directory swapped for a link after this check only changes the names listed:
/// every file is checked again when it is opened.)
fn walk(root: &Path, what: &str) -> Result<Walk, DirError> {
    let mut out = Walk {
        files: Vec::new(),
        refused: Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    seen.insert(root.to_path_buf());
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        // Sorted, so that which of two names of one directory is walked is the same on
        // every read (a sync revision's hash includes the names).
        let mut entries = std::fs::read_dir(&d)
            .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect::<Result<Vec<_>, _>>())
            .map_err(|e| DirError::Io(d.clone(), e))?;
        entries.sort();
        for name in entries {
            let path = d.join(&name);
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let meta = std::fs::metadata(&path).map_err(|e| DirError::Io(path.clone(), e))?;
            if meta.is_dir() {
                let real = std::fs::canonicalize(&path).map_err(|e| DirError::Io(path.clone(), e))?;
                if !real.starts_with(root) {
                    out.refused.push((
                        path,
                        format!(
                            "a symlink to the directory {}, outside {what}; refused, not read",
                            real.display()
                        ),
                    ));
                } else if seen.insert(real) {
                    if seen.len() > MAX_DIR_FILES {
                        return Err(DirError::TooMany);
                    }
                    stack.push(path);
                }
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.files.push(path);
                if out.files.len() > MAX_DIR_FILES {
                    return Err(DirError::TooMany);
                }
            }
        }
    }
    out.files.sort();
    out.refused.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path component swapped between a directory inside and a symlink out of the
    /// directory, as fast as possible while the directory is read over and over: no
    /// read ever returns the outside file's bytes, and the inside file is read whenever
    /// the swap leaves it in place.
    #[test]
    fn a_component_swapped_for_a_symlink_never_redirects_the_read() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("repo");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/x.yaml"), "inside").unwrap();
        std::fs::create_dir(d.path().join("outside")).unwrap();
        std::fs::write(d.path().join("outside/x.yaml"), "SECRET").unwrap();
        // Kept out of the walk (a dot name) while the swapped-in link stands at `sub`.
        let stash = dir.join(".stash");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (dir, outside, stop) = (dir.clone(), d.path().join("outside"), stop.clone());
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::fs::rename(dir.join("sub"), &stash).unwrap();
                    std::os::unix::fs::symlink(&outside, dir.join("sub")).unwrap();
                    std::fs::remove_file(dir.join("sub")).unwrap();
                    std::fs::rename(&stash, dir.join("sub")).unwrap();
                    swaps += 1;
                }
                swaps
            })
        };
        let (mut inside, mut refused, mut vanished) = (0, 0, 0);
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(3) {
            match read_yaml_files(&dir, "the directory") {
                Ok(r) => {
                    assert!(r.files.iter().all(|(_, b)| b != b"SECRET"), "read outside: {r:?}");
                    if r.files.iter().any(|(n, b)| n == "sub/x.yaml" && b == b"inside") {
                        inside += 1;
                    }
                    if r.refused
                        .iter()
                        .any(|(n, m)| n.starts_with("sub") && m.contains("outside the directory"))
                    {
                        refused += 1;
                    }
                }
                Err(e) if e.is_not_found() => vanished += 1,
                Err(e) => panic!("{e}"),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert!(swaps > 100, "only {swaps} swaps");
        assert!(
            inside > 0,
            "the inside file was never read ({refused} refused, {vanished} vanished)"
        );
        eprintln!("{swaps} swaps; reads: {inside} inside, {refused} refused, {vanished} mid-swap");
    }

    /// A file swapped between a symlink out of the directory and a regular file, and
    /// back: each read returns the file or refuses the link, never the target's bytes.
    #[test]
    fn a_file_swapped_between_a_link_and_a_file_is_read_or_refused_never_followed_out() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("repo");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(d.path().join("secret.yaml"), "SECRET").unwrap();
        for round in 0..200 {
            let f = dir.join("f.yaml");
            let _ = std::fs::remove_file(&f);
            if round % 2 == 0 {
                std::os::unix::fs::symlink(d.path().join("secret.yaml"), &f).unwrap();
            } else {
                std::fs::write(&f, "plain").unwrap();
            }
            let r = read_yaml_files(&dir, "the directory").unwrap();
            if round % 2 == 0 {
                assert!(r.files.is_empty(), "{r:?}");
                assert_eq!(r.refused.len(), 1, "{r:?}");
                assert!(
                    r.refused[0]
                        .1
                        .contains("secret.yaml, outside the directory; refused, not read"),
                    "{r:?}"
                );
            } else {
                assert_eq!(r.files, [("f.yaml".to_string(), b"plain".to_vec())]);
                assert!(r.refused.is_empty(), "{r:?}");
            }
        }
    }
}
