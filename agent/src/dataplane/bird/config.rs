//! Writing BIRD's configuration safely: to a temp file beside the live one, checked by
//! `bird -p`, synced, then renamed over it, so BIRD never reads a half-written or
//! rejected file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::debug;

use super::{combined, io_err, run_tool, BirdError};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces the config file at `path` with `text`, but only if `bird -p`
/// accepts it: written to a temp file in the same directory (so the rename is
/// atomic), checked, synced, renamed over. On rejection the old file is
/// untouched and the error carries BIRD's message.
pub async fn write_config(path: &Path, text: &str) -> Result<(), BirdError> {
    write_config_with(Path::new("bird"), path, text).await
}

/// [`write_config`] with an explicit `bird` binary.
pub async fn write_config_with(bird: &Path, path: &Path, text: &str) -> Result<(), BirdError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bird.conf".to_string());
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let result = async {
        {
            let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
            f.write_all(text.as_bytes()).map_err(io_err("write", &tmp))?;
            // Durable before it becomes the live name.
            f.sync_all().map_err(io_err("sync", &tmp))?;
        }
        let command = format!("{} -p -c {}", bird.display(), tmp.display());
        let out = run_tool(bird, &["-p".as_ref(), "-c".as_ref(), tmp.as_os_str()], &command).await?;
        if !out.status.success() {
            return Err(BirdError::Check {
                command,
                output: combined(&out.stdout, &out.stderr),
            });
        }
        fs::rename(&tmp, path).map_err(io_err("rename config into", path))
    }
    .await;
    if result.is_err() {
        // Best effort: a leftover temp file is harmless but untidy.
        let _ = fs::remove_file(&tmp);
    } else {
        debug!(path = %path.display(), "bird config written");
    }
    result
}
