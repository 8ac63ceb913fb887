//! Asking a running BIRD through its control socket: `birdc -s SOCK ...`.

use std::path::Path;

use super::{combined, run_tool, BirdError};

/// Runs `birdc -s SOCK ARGS...` and returns its output; fails on a non-zero
/// exit (e.g. the socket is not there, or `configure` found an error).
pub async fn birdc(birdc: &Path, socket: &Path, args: &[&str]) -> Result<String, BirdError> {
    let command = format!("{} -s {} {}", birdc.display(), socket.display(), args.join(" "));
    let argv: Vec<&std::ffi::OsStr> = ["-s".as_ref(), socket.as_os_str()]
        .into_iter()
        .chain(args.iter().map(AsRef::as_ref))
        .collect();
    let out = run_tool(birdc, &argv, &command).await?;
    if !out.status.success() {
        return Err(BirdError::Birdc {
            command,
            status: out.status,
            output: combined(&out.stdout, &out.stderr),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
