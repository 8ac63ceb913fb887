//! Asking the local dockerd which container a name, ID or ID prefix is, for the
//! seed's `addtogroup` / `removefromgroup` (a [`DockerLookup`] for [`crate::resolve`]).

use anyhow::{anyhow, bail, Result};
use bollard::query_parameters::InspectContainerOptions;
use bollard::Docker;
use futures::future::BoxFuture;

use calico_schema::{docker_socket, DEFAULT_DOCKER_HOST};

use crate::resolve::{DockerIdentity, DockerLookup};

/// A lookup through dockerd's API on a unix socket (`--docker-host`, `DOCKER_HOST`).
pub struct BollardLookup {
    host: String,
}

impl BollardLookup {
    pub fn new(host: Option<&str>) -> BollardLookup {
        BollardLookup {
            host: host
                .filter(|h| !h.is_empty())
                .unwrap_or(DEFAULT_DOCKER_HOST)
                .to_string(),
        }
    }

    async fn connect(&self) -> Result<Docker> {
        let path = docker_socket(&self.host)?.to_string_lossy();
        let docker = Docker::connect_with_unix(&path, 10, bollard::API_DEFAULT_VERSION)
            .map_err(|e| anyhow!("Docker at {}: {e}", self.host))?;
        // Debian's dockerd 20.10 speaks API 1.41, older than bollard's default.
        docker
            .negotiate_version()
            .await
            .map_err(|e| anyhow!("Docker at {}: {e}", self.host))
    }
}

impl DockerLookup for BollardLookup {
    fn inspect<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Option<DockerIdentity>>> {
        Box::pin(async move {
            let docker = self.connect().await?;
            match docker.inspect_container(query, None::<InspectContainerOptions>).await {
                Ok(c) => Ok(Some(DockerIdentity {
                    id: c.id.unwrap_or_default(),
                    name: c.name.unwrap_or_default().trim_start_matches('/').to_string(),
                    calico_ip: c
                        .config
                        .and_then(|c| c.env)
                        .is_some_and(|env| env.iter().any(|e| e.starts_with("CALICO_IP="))),
                })),
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                    bail!("Docker at {}: {message}", self.host)
                }
                Err(e) => bail!("Docker at {}: {e}", self.host),
            }
        })
    }
}
