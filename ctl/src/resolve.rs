//! Finding the Container resource a user means by CONTAINER in the seed's group
//! commands.
//!
//! API.md: CONTAINER is a Docker name, ID or ID prefix on this node, or a Container
//! resource name. Resource names and the Docker names/IDs recorded in specs are resolved
//! here from etcd alone; asking the local Docker daemon (IDs, ID prefixes, names of
//! containers whose spec records another form) is a [`DockerLookup`] plugged in with
//! [`Resolver::with_docker`] (crate::docker_lookup). Containers the Docker integration
//! made record the container ID in `spec.container` (the `CALICO_IP` path) or in the
//! `calico/docker-container` annotation (the network plugin).

use anyhow::{bail, Result};
use calico_schema::Container;
use calico_schema::{OWNER_ANNOTATION, OWNER_DOCKER};
use futures::future::BoxFuture;

/// What Docker knows about a container the user named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerIdentity {
    /// The full 64-hex ID.
    pub id: String,
    /// Its name, without Docker's leading '/'.
    pub name: String,
    /// It has CALICO_IP in its environment: the agent networks it (and writes its
    /// Container) once it sees the container start.
    pub calico_ip: bool,
}

/// A running Docker container that asks for Calico networking (CALICO_IP) whose
/// Container resource the agent has not written yet: worth waiting for, since the agent
/// networks it a moment after `docker run` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotNetworkedYet {
    pub name: String,
    pub id: String,
}

impl std::fmt::Display for NotNetworkedYet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Docker container '{}' ({}) has CALICO_IP set but no Container resource yet (is this node's agent running?)",
            self.name,
            short_id(&self.id)
        )
    }
}

impl std::error::Error for NotNetworkedYet {}

/// Asks a Docker daemon which container `query` (name, ID or ID prefix) is.
/// `Ok(None)`: Docker has no such container.
pub trait DockerLookup: Send + Sync {
    fn inspect<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Option<DockerIdentity>>>;
}

#[derive(Default)]
pub struct Resolver {
    docker: Option<Box<dyn DockerLookup>>,
}

impl Resolver {
    pub fn new() -> Self {
        Resolver::default()
    }

    pub fn with_docker(mut self, d: Box<dyn DockerLookup>) -> Self {
        self.docker = Some(d);
        self
    }

    /// The name of the Container resource `query` stands for, among `containers`.
    pub async fn resolve(&self, query: &str, containers: &[Container]) -> Result<String> {
        // 1. A Container resource name always wins.
        if containers.iter().any(|c| c.metadata.name == query) {
            return Ok(query.to_string());
        }
        // 2. The Docker name or ID recorded in a spec, exactly.
        let by_spec = |key: &str| -> Vec<String> {
            containers
                .iter()
                .filter(|c| c.spec.container.as_deref() == Some(key))
                .map(|c| c.metadata.name.clone())
                .collect()
        };
        if let Some(name) = one(query, by_spec(query))? {
            return Ok(name);
        }
        // 3. Docker: what the daemon calls it (ID prefix, the other of name/ID).
        if let Some(d) = &self.docker {
            let ident = match d.inspect(query).await {
                Ok(i) => i,
                Err(e) => bail!(
                    "no Container named '{query}' (nor one whose spec.container is '{query}'), and Docker could not be asked: {e:#}"
                ),
            };
            if let Some(ident) = ident {
                let mut hits = by_spec(&ident.id);
                hits.extend(by_spec(&ident.name));
                // Docker-owned Containers of the network plugin carry the ID in an annotation.
                hits.extend(
                    containers
                        .iter()
                        .filter(|c| {
                            c.metadata.annotations.get(OWNER_ANNOTATION).map(String::as_str) == Some(OWNER_DOCKER)
                                && c.metadata.annotations.get(DOCKER_CONTAINER_ANNOTATION) == Some(&ident.id)
                        })
                        .map(|c| c.metadata.name.clone()),
                );
                // A spec may record an ID prefix; accept it when it is a prefix of the full ID.
                hits.extend(
                    containers
                        .iter()
                        .filter(|c| {
                            c.spec
                                .container
                                .as_deref()
                                .is_some_and(|s| s.len() >= 12 && ident.id.starts_with(s))
                        })
                        .map(|c| c.metadata.name.clone()),
                );
                hits.sort();
                hits.dedup();
                if let Some(name) = one(query, hits)? {
                    return Ok(name);
                }
                if ident.calico_ip {
                    return Err(NotNetworkedYet {
                        name: ident.name,
                        id: ident.id,
                    }
                    .into());
                }
                bail!(
                    "Docker container '{}' ({}) has no Container resource (is it networked by Calico?)",
                    ident.name,
                    short_id(&ident.id)
                );
            }
        }
        bail!("no Container named '{query}' (nor one whose spec.container is '{query}')")
    }
}

/// The Docker container ID of a Container the Docker integration made (both paths).
pub const DOCKER_CONTAINER_ANNOTATION: &str = "calico/docker-container";

fn one(query: &str, mut hits: Vec<String>) -> Result<Option<String>> {
    match hits.len() {
        0 => Ok(None),
        1 => Ok(hits.pop()),
        _ => bail!(
            "'{query}' is ambiguous: it matches Containers {}; use the resource name",
            hits.join(", ")
        ),
    }
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_schema::{object, ContainerSpec, Kind};

    fn c(name: &str, docker: Option<&str>) -> Container {
        object(
            Kind::Container,
            name,
            ContainerSpec {
                node: "n".into(),
                container: docker.map(str::to_string),
                netns: docker.is_none().then(|| "/x".into()),
                ..Default::default()
            },
        )
    }

    struct FakeDocker;
    impl DockerLookup for FakeDocker {
        fn inspect<'a>(&'a self, q: &'a str) -> BoxFuture<'a, Result<Option<DockerIdentity>>> {
            Box::pin(async move {
                Ok(
                    ("0123456789abcdef".starts_with(q) || q == "web-1").then(|| DockerIdentity {
                        id: "0123456789abcdef".into(),
                        name: "web-1".into(),
                        calico_ip: false,
                    }),
                )
            })
        }
    }

    #[tokio::test]
    async fn resource_name_then_spec_then_docker() {
        let cs = vec![c("a", Some("web-1")), c("b", None)];
        let r = Resolver::new();
        assert_eq!(r.resolve("a", &cs).await.unwrap(), "a");
        assert_eq!(r.resolve("web-1", &cs).await.unwrap(), "a");
        assert!(r.resolve("0123", &cs).await.is_err());
        let r = Resolver::new().with_docker(Box::new(FakeDocker));
        assert_eq!(r.resolve("0123", &cs).await.unwrap(), "a");
        let err = r.resolve("nope", &cs).await.unwrap_err().to_string();
        assert!(err.contains("no Container named 'nope'"), "{err}");
    }

    #[tokio::test]
    async fn docker_plugin_containers_by_annotation() {
        let mut plugin = c("docker-0123456789abcdef", None);
        plugin
            .metadata
            .annotations
            .insert(OWNER_ANNOTATION.into(), OWNER_DOCKER.into());
        plugin
            .metadata
            .annotations
            .insert(DOCKER_CONTAINER_ANNOTATION.into(), "0123456789abcdef".into());
        let cs = vec![plugin, c("b", None)];
        let r = Resolver::new().with_docker(Box::new(FakeDocker));
        assert_eq!(r.resolve("web-1", &cs).await.unwrap(), "docker-0123456789abcdef");
        assert_eq!(r.resolve("0123", &cs).await.unwrap(), "docker-0123456789abcdef");
    }

    /// A CALICO_IP container the agent has not networked yet is told apart from one
    /// Calico will never network: addtogroup waits for the first only.
    #[tokio::test]
    async fn calico_ip_container_not_networked_yet() {
        struct SeedDocker(bool);
        impl DockerLookup for SeedDocker {
            fn inspect<'a>(&'a self, _q: &'a str) -> BoxFuture<'a, Result<Option<DockerIdentity>>> {
                let calico_ip = self.0;
                Box::pin(async move {
                    Ok(Some(DockerIdentity {
                        id: "fedcba9876543210fedcba".into(),
                        name: "workload-E".into(),
                        calico_ip,
                    }))
                })
            }
        }
        let cs = vec![c("b", None)];
        let err = Resolver::new()
            .with_docker(Box::new(SeedDocker(true)))
            .resolve("workload-E", &cs)
            .await
            .unwrap_err();
        let pending = err.downcast_ref::<NotNetworkedYet>().expect("NotNetworkedYet");
        assert_eq!(pending.name, "workload-E");
        assert!(
            err.to_string()
                .contains("has CALICO_IP set but no Container resource yet"),
            "{err}"
        );
        let err = Resolver::new()
            .with_docker(Box::new(SeedDocker(false)))
            .resolve("workload-E", &cs)
            .await
            .unwrap_err();
        assert!(err.downcast_ref::<NotNetworkedYet>().is_none(), "{err}");
        assert!(err.to_string().contains("is it networked by Calico?"), "{err}");
    }

    struct DownDocker;
    impl DockerLookup for DownDocker {
        fn inspect<'a>(&'a self, _q: &'a str) -> BoxFuture<'a, Result<Option<DockerIdentity>>> {
            Box::pin(async { bail!("connection refused") })
        }
    }

    #[tokio::test]
    async fn unreachable_docker_still_resolves_resource_names() {
        let cs = vec![c("a", Some("web-1"))];
        let r = Resolver::new().with_docker(Box::new(DownDocker));
        assert_eq!(r.resolve("a", &cs).await.unwrap(), "a");
        let err = r.resolve("nope", &cs).await.unwrap_err().to_string();
        assert!(
            err.contains("no Container named 'nope'") && err.contains("connection refused"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn ambiguity_is_an_error() {
        let cs = vec![c("a", Some("x")), c("b", Some("x"))];
        let err = Resolver::new().resolve("x", &cs).await.unwrap_err().to_string();
        assert!(err.contains("ambiguous"), "{err}");
    }
}
