//! Parsers for command-line values that more than one command takes (a kind as typed:
//! `get`, `delete`), so that no command borrows another's.

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
