//! Command-line arguments (clap derive). Only parsing lives here; each command's
//! behaviour is in its own module.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// Where etcd is and how long to wait for it. Shared by every command that talks to etcd.
/// Listed under their own heading in every command's help, apart from its own options.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOpts {
    /// etcd endpoints, HOST:PORT[,HOST:PORT...] (also read from ETCD_ENDPOINTS, or the
    /// seed's ETCD_AUTHORITY) [default: 127.0.0.1:2379]
    #[arg(long, global = true, env = "ETCD_ENDPOINTS", value_name = "HOST:PORT[,...]")]
    pub etcd: Option<String>,
    /// CA certificate to verify etcd's server certificate (enables TLS)
    #[arg(long = "etcd-ca", global = true, env = "ETCD_CA_CERT_FILE", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd (enables TLS; needs --etcd-key)
    #[arg(long = "etcd-cert", global = true, env = "ETCD_CERT_FILE", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key for etcd (enables TLS; needs --etcd-cert)
    #[arg(long = "etcd-key", global = true, env = "ETCD_KEY_FILE", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// Seconds to wait for etcd before giving up
    #[arg(
        long,
        global = true,
        env = "CALICO_TIMEOUT",
        default_value_t = 5.0,
        value_name = "SECONDS"
    )]
    pub timeout: f64,
    /// dockerd's API socket, for CONTAINER given as a Docker name, ID or ID prefix
    /// [default: unix:///var/run/docker.sock]
    #[arg(
        long = "docker-host",
        global = true,
        env = "DOCKER_HOST",
        value_name = "unix:///PATH"
    )]
    pub docker_host: Option<String>,
}

/// The files a declarative command reads.
#[derive(Debug, Clone, Args)]
pub struct FileArgs {
    /// A YAML file, a directory (every *.yaml/*.yml under it, recursively, skipping
    /// dot-files) or `-` for standard input; repeatable
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-", required = true)]
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// Validate against the stored state and report what would change, without writing
    #[arg(long)]
    pub dry_run: bool,
    /// Change resources even when a sync directory owns them
    #[arg(long)]
    pub force: bool,
    /// Return only when every running agent has enforced the change (exit 1 when one
    /// has not within --wait-timeout, naming it and why)
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// How long --wait waits, in seconds
    #[arg(
        long = "wait-timeout",
        value_name = "SECONDS",
        default_value_t = 30.0,
        requires = "wait"
    )]
    pub wait_timeout: f64,
}

#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// Show what `apply --force` would change: a sync-owned resource is otherwise refused
    /// here as apply refuses it
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Columns per kind
    Table,
    /// Table plus status (Containers) and labels
    Wide,
    /// A multi-document YAML stream that `apply -f -` takes back unchanged
    Yaml,
    /// One object for a named get, else {"kind": "List", "items": [...]}
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// group, container, policy, ippool, node, bgppeer, clusterconfig (singular, plural
    /// or short forms), or `all`
    #[arg(value_parser = crate::args::kind_or_all)]
    pub kind: String,
    /// Names to show; none: every resource of the kind
    pub names: Vec<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// Delete the resources these files define
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-", conflicts_with_all = ["kind", "names"])]
    pub files: Vec<String>,
    /// The kind to delete (with NAME...)
    #[arg(required_unless_present = "files", value_parser = crate::args::kind_only)]
    pub kind: Option<String>,
    /// Names of the resources of KIND to delete
    #[arg(requires = "kind")]
    pub names: Vec<String>,
    /// Delete even when Containers still use the Group/Node, or when a sync directory owns it
    #[arg(long)]
    pub force: bool,
    /// Skip resources that do not exist instead of failing
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Check and report, without deleting
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Create or update the resources in the files (all or nothing)
    Apply(WriteArgs),
    /// Create the resources in the files; fails if any already exists
    Create(WriteArgs),
    /// Replace the resources in the files; fails if any does not exist
    Replace(WriteArgs),
    /// Delete resources by file or by KIND NAME...
    Delete(DeleteArgs),
    /// Show resources
    Get(GetArgs),
    /// Show what `apply` would change (exit 0: no changes, 1: changes, 2: error)
    Diff(DiffArgs),
    /// Check files offline, without etcd
    Validate(FileArgs),
    /// Print the JSON Schema of calico/v1 documents
    Schema,
    /// Print the versions of calicoctl, the API, this host's agent and BIRD, and etcd
    Version(crate::version::VersionArgs),
    /// Create a security group with the default rules (members may talk to each other)
    Addgroup { group: String },
    /// Remove a security group
    Removegroup {
        group: String,
        /// Also take the group out of every Container that is in it (and override sync ownership)
        #[arg(long)]
        force: bool,
    },
    /// List security groups
    Showgroups {
        /// Show each group's members and rules
        #[arg(long)]
        detailed: bool,
    },
    /// Add a Container to a group
    Addtogroup {
        /// A Container resource name, or a Docker container name, ID or ID prefix on this node
        container: String,
        group: String,
        /// Change it even when a sync directory owns the Container
        #[arg(long)]
        force: bool,
    },
    /// Remove a Container from a group
    Removefromgroup {
        /// A Container resource name, or a Docker container name, ID or ID prefix on this node
        container: String,
        group: String,
        /// Change it even when a sync directory owns the Container
        #[arg(long)]
        force: bool,
    },
}
