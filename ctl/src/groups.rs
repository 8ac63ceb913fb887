//! The seed's security-group commands, on top of Group and Container resources:
//! `addgroup`, `removegroup`, `showgroups`, `addtogroup`, `removefromgroup`.
//!
//! Membership lives in each Container's `spec.groups`; the membership commands change
//! it with a compare-and-swap read-modify-write (retried by the store), so concurrent
//! calls on one Container all land.

use anyhow::{bail, Result};
use calico_schema::validate::{check_delete, is_valid_name};
use calico_schema::{object, Container, Group, GroupSpec, Kind, Resource};
use calico_store::{Change, Changes, Step, WriteMode};

use crate::cli::GlobalOpts;
use crate::conn::{store_error, Ctx};
use crate::observed;
use crate::output::{self, sync_owner};
use crate::resolve::{NotNetworkedYet, Resolver};

fn check_group_name(g: &str) -> Result<()> {
    if !is_valid_name(g) {
        bail!("'{g}' is not a valid group name (1-63 of A-Z a-z 0-9 _ . -, starting and ending alphanumeric)");
    }
    Ok(())
}

/// A Group with the seed's default rules: accept from its own members, send anywhere.
pub fn default_group(name: &str) -> Resource {
    Resource::Group(object(Kind::Group, name, GroupSpec::default()))
}

fn containers(rs: &[Resource]) -> Vec<Container> {
    rs.iter()
        .filter_map(|r| match r {
            Resource::Container(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

pub async fn addgroup(g: &GlobalOpts, group: &str) -> Result<()> {
    check_group_name(group)?;
    let ctx = Ctx::connect(g).await?;
    let want = default_group(group);
    // The step's value: whether it creates the group (false: it exists as wanted).
    let done = ctx
        .store
        .transact("creating the group", async || -> Result<Step<bool>> {
            let listing = ctx.call("list", ctx.store.list(Some(Kind::Group))).await?;
            if let Some(have) = listing.resources.iter().find(|r| r.name() == group) {
                if have.without_version() == want {
                    return Ok(Step::Done(false));
                }
                bail!(
                    "Group '{group}' already exists with other rules, labels or annotations; see `calicoctl get group {group} -o yaml`"
                );
            }
            // Created by someone else in between: the guard fails, and the step looks again.
            let changes = Changes::write(vec![want.clone()], WriteMode::Create, Some(listing.revision));
            Ok(Step::Commit(changes, true))
        })
        .await
        .map_err(|e| store_error(&ctx.cfg, e))??;
    if done.value {
        println!("Created group {group}");
    } else {
        println!("Group {group} already exists");
    }
    Ok(())
}

/// Removes a Group. Refused while Containers are in it, unless `force`, which first
/// takes the group out of each of them (as the seed did, where membership lived in the
/// group), then deletes it.
pub async fn removegroup(g: &GlobalOpts, group: &str, force: bool) -> Result<()> {
    let ctx = Ctx::connect(g).await?;
    ctx.store
        .transact("removing the group", async || -> Result<Step<()>> {
            let listing = ctx.call("list", ctx.store.list(None)).await?;
            let Some(stored) = listing
                .resources
                .iter()
                .find(|r| r.kind() == Kind::Group && r.name() == group)
            else {
                bail!("Group '{group}' does not exist");
            };
            if let (false, Some(file)) = (force, sync_owner(stored)) {
                bail!("Group/{group} is owned by a sync directory (file {file}); change it there, or use --force");
            }
            let users = check_delete(Kind::Group, group, &listing.resources);
            if !users.is_empty() {
                if !force {
                    bail!(
                        "Group '{group}' still has members: {}; take them out with removefromgroup, or use --force",
                        users.join(", ")
                    );
                }
                for c in containers(&listing.resources) {
                    if c.spec.groups.iter().any(|x| x == group) {
                        remove_member(&ctx, &c.metadata.name, group).await?;
                        println!("Removed {} from group {group}", c.metadata.name);
                    }
                }
                // Re-list: someone may have added a member meanwhile.
                return Ok(Step::Again);
            }
            let changes = Changes::delete(vec![(Kind::Group, group.to_string(), None)], Some(listing.revision));
            Ok(Step::Commit(changes, ()))
        })
        .await
        .map_err(|e| store_error(&ctx.cfg, e))??;
    println!("Removed group {group}");
    Ok(())
}

pub async fn showgroups(g: &GlobalOpts, detailed: bool) -> Result<()> {
    let ctx = Ctx::connect(g).await?;
    let listing = ctx.call("list", ctx.store.list(None)).await?;
    let mut groups: Vec<&Group> = listing
        .resources
        .iter()
        .filter_map(|r| match r {
            Resource::Group(g) => Some(g),
            _ => None,
        })
        .collect();
    groups.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let all = containers(&listing.resources);
    let members = |g: &str| -> Vec<String> {
        let mut m: Vec<String> = all
            .iter()
            .filter(|c| c.spec.groups.iter().any(|x| x == g))
            .map(|c| c.metadata.name.clone())
            .collect();
        m.sort();
        m
    };
    if groups.is_empty() {
        eprintln!("No groups.");
        return Ok(());
    }
    if detailed {
        // What the agents observed (IPAM-assigned addresses, programmed or not); a
        // status that cannot be read leaves the spec's addresses.
        let observed = observed::container_status(&ctx).await.unwrap_or_default();
        let detail = |g: &str| -> Vec<output::Member> {
            members(g)
                .into_iter()
                .filter_map(|name| all.iter().find(|c| c.metadata.name == name))
                .map(|c| {
                    let st = observed.get(&c.metadata.name);
                    output::Member {
                        name: c.metadata.name.clone(),
                        node: c.spec.node.clone(),
                        ips: st
                            .map(|s| s.ips.clone())
                            .filter(|ips| !ips.is_empty())
                            .or_else(|| c.spec.ips.clone())
                            .unwrap_or_default(),
                        state: match st {
                            Some(s) if s.message.is_empty() => format!("{:?}", s.state),
                            Some(s) => format!("{:?}: {}", s.state, s.message),
                            None => "not yet programmed".into(),
                        },
                    }
                })
                .collect()
        };
        for (i, grp) in groups.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", output::group_detail(grp, &detail(&grp.metadata.name)));
        }
    } else {
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|grp| vec![grp.metadata.name.clone(), members(&grp.metadata.name).len().to_string()])
            .collect();
        print!("{}", output::table(&["NAME", "MEMBERS"], &rows));
    }
    Ok(())
}

/// Resolves CONTAINER and checks that GROUP exists and sync does not own the Container.
async fn target(
    ctx: &Ctx,
    docker_host: Option<&str>,
    query: &str,
    group: &str,
    force: bool,
    need_group: bool,
) -> Result<String> {
    check_group_name(group)?;
    // A CALICO_IP container is networked by the agent a moment after `docker run`
    // returns (the seed did it inside `docker run`): its Container is waited for.
    let deadline = std::time::Instant::now() + NETWORKED_WAIT;
    loop {
        match target_once(ctx, docker_host, query, group, force, need_group).await {
            Err(e) if e.downcast_ref::<NotNetworkedYet>().is_some() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// How long addtogroup/removefromgroup wait for the agent to network a CALICO_IP
/// container.
const NETWORKED_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn target_once(
    ctx: &Ctx,
    docker_host: Option<&str>,
    query: &str,
    group: &str,
    force: bool,
    need_group: bool,
) -> Result<String> {
    let listing = ctx.call("list", ctx.store.list(None)).await?;
    if need_group
        && !listing
            .resources
            .iter()
            .any(|r| r.kind() == Kind::Group && r.name() == group)
    {
        bail!("Group '{group}' does not exist (create it with `calicoctl addgroup {group}`)");
    }
    let all = containers(&listing.resources);
    let docker = crate::docker_lookup::BollardLookup::new(docker_host);
    let name = Resolver::new()
        .with_docker(Box::new(docker))
        .resolve(query, &all)
        .await?;
    if !force {
        if let Some(file) = all
            .iter()
            .find(|c| c.metadata.name == name)
            .and_then(|c| sync_owner(&Resource::Container(c.clone())))
        {
            bail!("Container/{name} is owned by a sync directory (file {file}); change it there, or use --force");
        }
    }
    Ok(name)
}

fn not_a_container(r: &Resource) -> String {
    format!("{} is not a Container", r.id())
}

pub async fn addtogroup(g: &GlobalOpts, query: &str, group: &str, force: bool) -> Result<()> {
    let ctx = Ctx::connect(g).await?;
    let name = target(&ctx, g.docker_host.as_deref(), query, group, force, true).await?;
    let grp = group.to_string();
    let outcome = ctx
        .call(
            "update",
            ctx.store.update(Kind::Container, &name, move |r| match r {
                Resource::Container(c) => {
                    if c.spec.groups.contains(&grp) {
                        Ok(false)
                    } else {
                        c.spec.groups.push(grp.clone());
                        Ok(true)
                    }
                }
                other => Err(not_a_container(other)),
            }),
        )
        .await?;
    match outcome.change {
        Change::Unchanged => println!("{name} is already in group {group}"),
        _ => println!("Added {name} to group {group}"),
    }
    Ok(())
}

/// Takes `group` out of Container `name`; false when it was not in it.
async fn remove_member(ctx: &Ctx, name: &str, group: &str) -> Result<bool> {
    let grp = group.to_string();
    let outcome = ctx
        .call(
            "update",
            ctx.store.update(Kind::Container, name, move |r| match r {
                Resource::Container(c) => {
                    let before = c.spec.groups.len();
                    c.spec.groups.retain(|x| *x != grp);
                    Ok(c.spec.groups.len() != before)
                }
                other => Err(not_a_container(other)),
            }),
        )
        .await?;
    Ok(!matches!(outcome.change, Change::Unchanged))
}

pub async fn removefromgroup(g: &GlobalOpts, query: &str, group: &str, force: bool) -> Result<()> {
    let ctx = Ctx::connect(g).await?;
    let name = target(&ctx, g.docker_host.as_deref(), query, group, force, false).await?;
    if remove_member(&ctx, &name, group).await? {
        println!("Removed {name} from group {group}");
        Ok(())
    } else {
        bail!("{name} is not in group {group}")
    }
}
