//! Parsers for command-line values that more than one command takes (a kind as typed:
//! `get`, `delete`; a duration: `sync`, `master`), so that no command borrows another's.

use std::time::Duration;

use anyhow::Result;
use calico_schema::Kind;

/// Parses a kind as typed on the command line, with the accepted forms in the error.
/// A KIND argument as clap checks it, so an unknown kind is a usage error (exit 2) like
/// any other bad argument; `all` too where `allow_all`.
fn kind_arg(s: &str, allow_all: bool) -> std::result::Result<String, String> {
    if allow_all && s == "all" {
        return Ok(s.to_string());
    }
    parse_kind(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

/// clap value parser for `get`'s KIND (a kind or `all`).
pub fn kind_or_all(s: &str) -> std::result::Result<String, String> {
    kind_arg(s, true)
}

/// clap value parser for `delete`'s KIND.
pub fn kind_only(s: &str) -> std::result::Result<String, String> {
    kind_arg(s, false)
}

pub fn parse_kind(s: &str) -> Result<Kind> {
    Kind::parse_cli(s).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown kind '{s}' (expected one of: {})",
            Kind::ALL
                .iter()
                .map(|k| k.as_str().to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// `500ms`, `30s`, `5m`, `1h`, or a plain number of seconds (`2.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (like 500ms, 30s, 5m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0 * 365.0) {
        return Err(format!("'{s}' must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("x").is_err());
    }
}
