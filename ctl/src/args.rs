//! Parsers for command-line values that more than one command takes (a kind as typed:
//! `get`, `delete`), so that no command borrows another's.

use anyhow::Result;
use calico_schema::Kind;

/// Parses a kind as typed on the command line, with the accepted forms in the error.
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
