//! The checks a set of files gets against what is stored before it is written: shared by
//! `apply` (and `create`, `replace`) and the sync's plan, so each writes what the other
//! would accept.

use std::collections::HashMap;

use calico_schema::validate::{At, Existing, Issue};
use calico_schema::{check_loaded_set, Kind, Loaded, Resource};
use calico_store::{Listing, WriteMode};

use crate::input::InputErrors;

/// Cross-resource validation of the loaded set against the stored state, plus the
/// mode's own precondition (create: must not exist; replace: must exist), all located
/// in the files.
pub fn check_against(loaded: &[Loaded], listing: &Listing, mode: WriteMode) -> Result<(), InputErrors> {
    let mut diags = match check_loaded_set(
        loaded,
        &Existing {
            resources: &listing.resources,
            complete: true,
        },
    ) {
        Ok(()) => Vec::new(),
        Err(d) => d.0,
    };
    let stored: HashMap<(Kind, &str), &Resource> =
        listing.resources.iter().map(|r| ((r.kind(), r.name()), r)).collect();
    for l in loaded {
        let r = &l.resource;
        let exists = stored.contains_key(&(r.kind(), r.name()));
        let message = match mode {
            WriteMode::Create if exists => format!("{} already exists (use apply or replace)", r.id()),
            WriteMode::Replace if !exists => format!("{} does not exist (use apply or create)", r.id()),
            _ => continue,
        };
        diags.push(l.diagnostic(&Issue {
            path: "metadata.name".into(),
            at: At::Value,
            message,
        }));
    }
    if diags.is_empty() {
        Ok(())
    } else {
        Err(InputErrors(diags))
    }
}
