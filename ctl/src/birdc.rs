//! Asking this host's BIRD through its control socket (`birdc -s <run-dir>/bird.ctl`).
//! The socket is a file, so this works when the agent runs its dataplane in another
//! network namespace. Used by `status` (the BGP sessions) and `diags` (protocols and
//! routes); the text is parsed by `calico_schema::birdc`.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

/// Runs `birdc -s SOCKET ARGS...` with a deadline; its standard output.
pub async fn birdc(socket: &Path, args: &[&str]) -> Result<String> {
    let run = tokio::process::Command::new("birdc")
        .arg("-s")
        .arg(socket)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .map_err(|_| anyhow!("birdc did not answer within 5s"))?
        .map_err(|e| anyhow!("run birdc: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let msg = format!("{}{}", String::from_utf8_lossy(&out.stderr), stdout);
        bail!("birdc -s {} {}: {}", socket.display(), args.join(" "), msg.trim());
    }
    Ok(stdout)
}
