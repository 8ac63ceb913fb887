//! What one directory revision changes in etcd, decided against one consistent listing,
//! and the single guarded transaction that makes it so.
//!
//! Ownership: every resource the sync writes carries `calico/owner: sync:<id>` and
//! `calico/source: <file relative to the directory>`. A document may only land on a name
//! that is free or already owned by this sync. Anything else (Docker's Containers,
//! another sync's resources, resources made imperatively) is refused as an error of the
//! revision, unless `--adopt` is given, which takes over unowned (never otherwise-owned)
//! resources.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use calico_schema::validate::{check_delete, At, Issue};
use calico_schema::{Diagnostic, Kind, Loaded, Resource, OWNER_ANNOTATION, OWNER_DOCKER, SOURCE_ANNOTATION};
use calico_store::{Changes, Listing, WriteMode};

use crate::checks::check_against;

pub type Id = (Kind, String);

pub fn id_of(r: &Resource) -> Id {
    (r.kind(), r.name().to_string())
}

pub fn show(id: &Id) -> String {
    format!("{}/{}", id.0, id.1)
}

/// How a revision is applied.
#[derive(Debug, Clone)]
pub struct PlanOpts {
    /// `sync:<id>`.
    pub owner: String,
    pub prune: bool,
    /// Take over unowned resources that a document names.
    pub adopt: bool,
}

/// One resource to write.
#[derive(Debug, Clone)]
pub struct Put {
    /// As it will be stored: annotations set, no resourceVersion.
    pub resource: Resource,
    /// What is stored now (None: it does not exist).
    pub before: Option<Resource>,
    /// The file it comes from, relative to the directory.
    pub source: String,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Only resources whose stored content differs (or that are missing).
    pub puts: Vec<Put>,
    /// Owned resources whose documents are gone (with --prune), as stored.
    pub deletes: Vec<Resource>,
    /// Prunes held back because other resources still use them (id: reason).
    pub prune_blocked: Vec<String>,
    /// Owned resources whose documents are gone, left alone without --prune.
    pub orphaned: Vec<String>,
    /// How many resources the revision declares.
    pub declared: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

fn owner_of(r: &Resource) -> Option<&str> {
    r.metadata().annotations.get(OWNER_ANNOTATION).map(String::as_str)
}

/// Who owns a stored resource, in words, for refusals.
fn describe_owner(r: &Resource) -> String {
    match owner_of(r) {
        None => "was created outside this sync (it has no calico/owner annotation)".into(),
        Some(OWNER_DOCKER) => "is owned by Docker (made by the Docker integration)".into(),
        Some(o) => match o.strip_prefix("sync:") {
            Some(other) => {
                let file = r
                    .metadata()
                    .annotations
                    .get(SOURCE_ANNOTATION)
                    .map(|f| format!(", file {f}"))
                    .unwrap_or_default();
                format!("is owned by another sync directory (sync '{other}'{file})")
            }
            None => format!("is owned by '{o}'"),
        },
    }
}

fn issue(l: &Loaded, path: &str, message: String) -> Diagnostic {
    l.diagnostic(&Issue {
        path: path.into(),
        at: At::Value,
        message,
    })
}

/// Decides what a revision changes. `docs` are the revision's documents (files named
/// relative to the directory); `claimed` are resources this sync wrote in its last good
/// revision (re-claimed even if someone stripped their owner annotation). Errors are
/// located in the files; any error means nothing of the revision is applied.
pub fn plan(
    docs: &[Loaded],
    listing: &Listing,
    opts: &PlanOpts,
    claimed: &BTreeSet<Id>,
) -> Result<Plan, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let stored: BTreeMap<Id, &Resource> = listing.resources.iter().map(|r| (id_of(r), r)).collect();

    // 1. The documents as they will be stored, and who may write them.
    let mut marked: Vec<Loaded> = Vec::with_capacity(docs.len());
    for l in docs {
        let mut m = l.clone();
        let meta = m.resource.metadata_mut();
        for (key, want) in [
            (OWNER_ANNOTATION, opts.owner.as_str()),
            (SOURCE_ANNOTATION, l.file.as_str()),
        ] {
            match meta.annotations.get(key) {
                Some(v) if v != want => diags.push(issue(
                    l,
                    &format!("metadata.annotations.{key}"),
                    format!("{key} is set by the sync itself (it would be '{want}'); remove it from the document"),
                )),
                _ => {}
            }
            meta.annotations.insert(key.to_string(), want.to_string());
        }
        // A resourceVersion copied from `get -o yaml` would be a compare-and-swap that
        // fails forever after the first apply: a synced document states content only.
        meta.resource_version = None;
        let id = id_of(&m.resource);
        if let Some(s) = stored.get(&id) {
            let ours = owner_of(s) == Some(opts.owner.as_str());
            let unowned = owner_of(s).is_none();
            if !ours && !(unowned && (opts.adopt || claimed.contains(&id))) {
                let hint = if unowned {
                    "; delete it, rename the document, or run the sync with --adopt to take it over"
                } else {
                    "; this sync never changes what it does not own"
                };
                diags.push(issue(
                    l,
                    "metadata.name",
                    format!("{} already exists and {}{hint}", show(&id), describe_owner(s)),
                ));
            }
        }
        marked.push(m);
    }
    let declared: BTreeSet<Id> = marked.iter().map(|l| id_of(&l.resource)).collect();

    // 2. Owned resources whose documents are gone.
    let gone: Vec<&Resource> = listing
        .resources
        .iter()
        .filter(|r| owner_of(r) == Some(opts.owner.as_str()) && !declared.contains(&id_of(r)))
        .collect();
    let mut out = Plan {
        declared: marked.len(),
        ..Default::default()
    };
    if opts.prune {
        // The world after the revision, to see what would still use a pruned resource.
        let gone_ids: BTreeSet<Id> = gone.iter().map(|r| id_of(r)).collect();
        let mut after: BTreeMap<Id, Resource> = listing
            .resources
            .iter()
            .filter(|r| !gone_ids.contains(&id_of(r)))
            .map(|r| (id_of(r), r.clone()))
            .collect();
        for l in &marked {
            after.insert(id_of(&l.resource), l.resource.clone());
        }
        let remaining: Vec<Resource> = after.into_values().collect();
        for r in gone {
            let users = check_delete(r.kind(), r.name(), &remaining);
            if users.is_empty() {
                out.deletes.push(r.clone());
            } else {
                out.prune_blocked.push(format!(
                    "{}: not pruned while {} still use it",
                    r.id(),
                    users.join(", ")
                ));
            }
        }
    } else {
        out.orphaned = gone.iter().map(|r| r.id()).collect();
    }

    // 3. The same cross-resource checks as `apply`, against what will be stored.
    let deleted: BTreeSet<Id> = out.deletes.iter().map(id_of).collect();
    let after_listing = Listing {
        resources: listing
            .resources
            .iter()
            .filter(|r| !deleted.contains(&id_of(r)))
            .cloned()
            .collect(),
        invalid: Vec::new(),
        revision: listing.revision,
    };
    if let Err(e) = check_against(&marked, &after_listing, WriteMode::Apply) {
        diags.extend(e.0);
    }
    if !diags.is_empty() {
        diags.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        diags.dedup();
        return Err(diags);
    }

    // 4. Only what differs is written.
    for l in marked {
        let id = id_of(&l.resource);
        let before = stored.get(&id).map(|r| r.without_version());
        if before.as_ref() == Some(&l.resource) {
            continue;
        }
        out.puts.push(Put {
            resource: l.resource,
            before,
            source: l.file,
        });
    }
    Ok(out)
}

/// A plan as one change (one etcd transaction, staged above etcd's limits), guarded
/// like `apply` was before it read only its dependencies: nothing under resources/
/// changed, and nothing was deleted, since the listing at `guard` (else the change is
/// stale: re-list, re-plan, retry).
pub fn changes(plan: &Plan, guard: i64) -> Changes {
    let puts: Vec<Resource> = plan.puts.iter().map(|p| p.resource.clone()).collect();
    let deletes: Vec<(Kind, String, Option<String>)> = plan
        .deletes
        .iter()
        .map(|r| (r.kind(), r.name().to_string(), None))
        .collect();
    Changes {
        deletes,
        ..Changes::write(puts, WriteMode::Apply, Some(guard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_schema::load_str;

    fn opts(prune: bool) -> PlanOpts {
        PlanOpts {
            owner: "sync:t".into(),
            prune,
            adopt: false,
        }
    }

    fn stored(yaml: &str) -> Listing {
        let mut resources: Vec<Resource> = load_str("s", yaml).unwrap().into_iter().map(|l| l.resource).collect();
        for (i, r) in resources.iter_mut().enumerate() {
            r.metadata_mut().resource_version = Some((i + 10).to_string());
        }
        Listing {
            resources,
            invalid: Vec::new(),
            revision: 100,
        }
    }

    const NODE: &str = "apiVersion: calico/v1\nkind: Node\nmetadata: {name: n1}\nspec: {}\n";

    fn group(name: &str, ann: &str) -> String {
        format!("---\napiVersion: calico/v1\nkind: Group\nmetadata:\n  name: {name}\n  annotations: {{{ann}}}\nspec: {{}}\n")
    }

    #[test]
    fn marks_ownership_and_writes_only_differences() {
        let docs = load_str("a.yaml", &format!("{NODE}{}", group("web", ""))).unwrap();
        let p = plan(&docs, &Listing::default(), &opts(false), &BTreeSet::new()).unwrap();
        assert_eq!(p.puts.len(), 2);
        let ann = &p.puts[1].resource.metadata().annotations;
        assert_eq!(ann[OWNER_ANNOTATION], "sync:t");
        assert_eq!(ann[SOURCE_ANNOTATION], "a.yaml");
        // Stored exactly so: nothing to do.
        let listing = Listing {
            resources: p.puts.iter().map(|p| p.resource.clone()).collect(),
            invalid: Vec::new(),
            revision: 5,
        };
        let again = plan(&docs, &listing, &opts(false), &BTreeSet::new()).unwrap();
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn refuses_what_it_does_not_own() {
        let listing = stored(&format!(
            "{}{}{}",
            group("imp", ""),
            group("dock", "calico/owner: docker"),
            group("other", "calico/owner: 'sync:o', calico/source: x.yaml")
        ));
        let docs = load_str(
            "a.yaml",
            &format!("{}{}{}", group("imp", ""), group("dock", ""), group("other", "")),
        )
        .unwrap();
        let e = plan(&docs, &listing, &opts(true), &BTreeSet::new()).unwrap_err();
        let text: Vec<String> = e.iter().map(std::string::ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with("a.yaml:5:9: metadata.name: Group/imp already exists and was created outside"),
            "{text:#?}"
        );
        assert!(text[1].contains("owned by Docker"), "{text:#?}");
        assert!(text[2].contains("sync 'o', file x.yaml"), "{text:#?}");
        // --adopt takes over the unowned one only.
        let mut o = opts(true);
        o.adopt = true;
        let e = plan(&docs, &listing, &o, &BTreeSet::new()).unwrap_err();
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn prunes_only_its_own_and_not_what_is_still_used() {
        let listing = stored(&format!(
            "{NODE}{}{}{}---\napiVersion: calico/v1\nkind: Container\nmetadata:\n  name: d\n  annotations: {{calico/owner: docker}}\nspec: {{node: n1, netns: /x, groups: [used]}}\n",
            group("mine", "calico/owner: 'sync:t', calico/source: g.yaml"),
            group("used", "calico/owner: 'sync:t', calico/source: g.yaml"),
            group("imp", ""),
        ));
        let docs = load_str("n.yaml", NODE).unwrap();
        let without = plan(&docs, &listing, &opts(false), &BTreeSet::new()).unwrap_err();
        // The Node is unowned in etcd: refused.
        assert!(without[0].message.contains("Node/n1 already exists"), "{without:?}");
        let docs: Vec<Loaded> = Vec::new();
        let p = plan(&docs, &listing, &opts(false), &BTreeSet::new()).unwrap();
        assert!(p.deletes.is_empty());
        assert_eq!(p.orphaned, ["Group/mine", "Group/used"]);
        let p = plan(&docs, &listing, &opts(true), &BTreeSet::new()).unwrap();
        let deleted: Vec<String> = p.deletes.iter().map(Resource::id).collect();
        assert_eq!(deleted, ["Group/mine"]);
        assert_eq!(p.prune_blocked.len(), 1, "{:?}", p.prune_blocked);
        assert!(p.prune_blocked[0].contains("Container/d"));
    }

    #[test]
    fn managed_annotations_in_documents_must_agree() {
        let docs = load_str("a.yaml", &group("g", "calico/owner: docker")).unwrap();
        let e = plan(&docs, &Listing::default(), &opts(false), &BTreeSet::new()).unwrap_err();
        assert!(
            e[0].to_string()
                .starts_with("a.yaml:6:31: metadata.annotations.calico/owner:"),
            "{e:?}"
        );
        let docs = load_str("a.yaml", &group("g", "calico/owner: 'sync:t', calico/source: a.yaml")).unwrap();
        assert!(plan(&docs, &Listing::default(), &opts(false), &BTreeSet::new()).is_ok());
    }
}
