//! The resource kinds of API.md section 1.
//!
//! Every optional field the user may leave out is an `Option` (or an empty collection
//! skipped on output), so a resource read back from etcd serializes to what the user
//! wrote, minus noise: the system never rewrites a user's spec. Defaults are applied by
//! accessor methods at the point of use.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::net::{Cidr, IfaceAddr, Port, Protocol};

pub const API_VERSION: &str = "calico/v1";
/// The seed's AS number, used when neither the Node nor ClusterConfig gives one.
pub const DEFAULT_AS_NUMBER: u32 = 64511;
/// Annotation marking who owns a resource (`sync:<id>` or `docker`).
pub const OWNER_ANNOTATION: &str = "calico/owner";
/// Annotation naming the file a sync-owned resource came from.
pub const SOURCE_ANNOTATION: &str = "calico/source";
pub const OWNER_DOCKER: &str = "docker";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "calico/v1")]
    V1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    Group,
    Container,
    Policy,
    IPPool,
    Node,
    BGPPeer,
    ClusterConfig,
}

impl Kind {
    /// Kinds whose spec fields are all optional: `spec` may be left out or empty (null)
    /// and means every default, as `calicoctl addgroup G` writes it.
    pub fn spec_optional(self) -> bool {
        matches!(self, Kind::Group | Kind::ClusterConfig)
    }

    pub const ALL: [Kind; 7] = [
        Kind::Group,
        Kind::Container,
        Kind::Policy,
        Kind::IPPool,
        Kind::Node,
        Kind::BGPPeer,
        Kind::ClusterConfig,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Group => "Group",
            Kind::Container => "Container",
            Kind::Policy => "Policy",
            Kind::IPPool => "IPPool",
            Kind::Node => "Node",
            Kind::BGPPeer => "BGPPeer",
            Kind::ClusterConfig => "ClusterConfig",
        }
    }

    /// The lower-case segment used in etcd keys and accepted on the command line.
    pub fn key_segment(&self) -> &'static str {
        match self {
            Kind::Group => "groups",
            Kind::Container => "containers",
            Kind::Policy => "policies",
            Kind::IPPool => "ippools",
            Kind::Node => "nodes",
            Kind::BGPPeer => "bgppeers",
            Kind::ClusterConfig => "clusterconfigs",
        }
    }

    /// Parses a kind as users type it on the command line: `group`, `groups`, `IPPool`, `pool`...
    pub fn parse_cli(s: &str) -> Option<Kind> {
        let l = s.to_ascii_lowercase();
        let k = match l.trim_end_matches('s') {
            "group" | "grp" => Kind::Group,
            "container" | "workload" | "endpoint" => Kind::Container,
            "policy" | "policie" | "pol" => Kind::Policy,
            "ippool" | "pool" => Kind::IPPool,
            "node" => Kind::Node,
            "bgppeer" | "peer" => Kind::BGPPeer,
            "clusterconfig" | "config" => Kind::ClusterConfig,
            _ => return None,
        };
        Some(k)
    }

    /// Order in which kinds are applied/listed so that referenced kinds come first.
    pub fn rank(&self) -> u8 {
        match self {
            Kind::ClusterConfig => 0,
            Kind::IPPool => 1,
            Kind::Node => 2,
            Kind::BGPPeer => 3,
            Kind::Group => 4,
            Kind::Policy => 5,
            Kind::Container => 6,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// 1-63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
    )]
    pub name: String,
    /// What selectors match: keys 1-253 of [A-Za-z0-9_./-], values at most 63 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form notes; `calico/owner` and `calico/source` mark who manages the resource.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Output: the etcd revision the resource was last written at. On input, when
    /// non-empty, a compare-and-swap precondition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

impl Metadata {
    pub fn named(name: impl Into<String>) -> Self {
        Metadata {
            name: name.into(),
            ..Default::default()
        }
    }
    pub fn owner(&self) -> Option<&str> {
        self.annotations.get(OWNER_ANNOTATION).map(String::as_str)
    }
}

/// One resource of one kind: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Object<S> {
    pub api_version: ApiVersion,
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: S,
}

pub type Group = Object<GroupSpec>;
pub type Container = Object<ContainerSpec>;
pub type Policy = Object<PolicySpec>;
pub type IpPool = Object<IpPoolSpec>;
pub type Node = Object<NodeSpec>;
pub type BgpPeer = Object<BgpPeerSpec>;
pub type ClusterConfig = Object<ClusterConfigSpec>;

// ---------------------------------------------------------------- rules

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    Allow,
    Deny,
    Log,
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "u8", into = "u8")]
#[schemars(with = "IpVersionSchema")]
pub enum IpVersion {
    V4,
    V6,
}

/// Only for the schema: ipVersion is the number 4 or 6.
#[derive(JsonSchema)]
#[schemars(rename = "IpVersion")]
#[allow(dead_code)]
struct IpVersionSchema(#[schemars(range(min = 4, max = 6))] u8);

impl TryFrom<u8> for IpVersion {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            4 => Ok(IpVersion::V4),
            6 => Ok(IpVersion::V6),
            _ => Err(format!("ipVersion must be 4 or 6, not {v}")),
        }
    }
}

impl From<IpVersion> for u8 {
    fn from(v: IpVersion) -> u8 {
        match v {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IcmpMatch {
    /// The ICMP or ICMPv6 type, e.g. 8 (echo request).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// The code within the type; only with `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// What a rule's `source` or `destination` must match. All given fields must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EntityRule {
    /// Members of any of these groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Containers whose labels match this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Containers whose labels do not match this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<String>,
    /// Addresses in any of these networks (a bare address is one host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_NETS_PER_LIST))]
    pub nets: Vec<Cidr>,
    /// Addresses in none of these networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_NETS_PER_LIST))]
    pub not_nets: Vec<Cidr>,
    /// Ports or ranges ("first:last"); needs a port protocol (TCP, UDP, SCTP, UDPLite).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_PORTS_PER_LIST))]
    pub ports: Vec<Port>,
    /// Ports or ranges not matched; needs a port protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_PORTS_PER_LIST))]
    pub not_ports: Vec<Port>,
}

impl EntityRule {
    pub fn is_empty(&self) -> bool {
        self == &EntityRule::default()
    }
    /// Whether this side matches on workload identity (groups or selectors), which
    /// restricts it to Calico workloads' addresses.
    pub fn has_endpoint_match(&self) -> bool {
        !self.groups.is_empty() || self.selector.is_some() || self.not_selector.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Allow or Deny decide; Pass skips the remaining policies to the groups; Log logs
    /// and goes on.
    pub action: Action,
    /// Matches only this protocol; absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Matches every protocol but this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,
    /// Matches only IPv4 (4) or IPv6 (6); absent: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<IpVersion>,
    /// ICMP type and code; only with protocol ICMP or ICMPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpMatch>,
    /// What the sender must match; absent: anyone.
    #[serde(default, skip_serializing_if = "EntityRule::is_empty")]
    pub source: EntityRule,
    /// What the receiver must match; absent: anyone.
    #[serde(default, skip_serializing_if = "EntityRule::is_empty")]
    pub destination: EntityRule,
}

impl Rule {
    pub fn allow() -> Rule {
        Rule {
            action: Action::Allow,
            protocol: None,
            not_protocol: None,
            ip_version: None,
            icmp: None,
            source: EntityRule::default(),
            destination: EntityRule::default(),
        }
    }
}

// ---------------------------------------------------------------- Group

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GroupSpec {
    /// Absent: accept only from this group's own members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::limits::MAX_RULES_PER_DIRECTION))]
    pub ingress: Option<Vec<Rule>>,
    /// Absent: allow everything out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::limits::MAX_RULES_PER_DIRECTION))]
    pub egress: Option<Vec<Rule>>,
}

impl Group {
    /// The effective ingress rules, with the seed's default filled in.
    pub fn ingress_rules(&self) -> Vec<Rule> {
        match &self.spec.ingress {
            Some(r) => r.clone(),
            None => vec![Rule {
                source: EntityRule {
                    groups: vec![self.metadata.name.clone()],
                    ..Default::default()
                },
                ..Rule::allow()
            }],
        }
    }
    pub fn egress_rules(&self) -> Vec<Rule> {
        match &self.spec.egress {
            Some(r) => r.clone(),
            None => vec![Rule::allow()],
        }
    }
}

// ---------------------------------------------------------------- Container

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerSpec {
    /// The Node this workload runs on.
    pub node: String,
    /// A Docker container name or ID on that node (exclusive with `netns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// A network namespace path (exclusive with `container`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The interface name inside the workload (1-15 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "eth0"))]
    pub interface: Option<String>,
    /// Explicit addresses (at most one IPv4 and one IPv6, each in an enabled IPPool);
    /// absent: IPAM assigns one per enabled pool's IP version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<IpAddr>>,
    /// The Groups it is in (each must exist); its rules are the union of theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Container {
    pub fn interface_name(&self) -> &str {
        self.spec.interface.as_deref().unwrap_or("eth0")
    }

    /// The labels selectors see: its own, `group` (one value per group) and `node`.
    pub fn selector_labels(&self) -> crate::selector::LabelSet {
        let mut l: crate::selector::LabelSet = self
            .metadata
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), vec![v.clone()]))
            .collect();
        // The built-ins win over user labels of the same name: they are what the API
        // promises selectors see.
        l.insert("group".into(), self.spec.groups.clone());
        l.insert("node".into(), vec![self.spec.node.clone()]);
        if self.spec.groups.is_empty() {
            l.remove("group");
        }
        l
    }
}

// ---------------------------------------------------------------- Policy

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PolicyType {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// Lower first; absent: after all ordered policies; ties broken by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<i64>,
    /// Which Containers it applies to; absent or empty: all().
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The directions it governs; absent: Ingress, plus Egress when egress rules are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<PolicyType>>,
    /// Rules for traffic into the selected Containers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_RULES_PER_DIRECTION))]
    pub ingress: Vec<Rule>,
    /// Rules for traffic out of the selected Containers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_RULES_PER_DIRECTION))]
    pub egress: Vec<Rule>,
}

impl Policy {
    /// Effective types: given, or Ingress plus Egress when egress rules exist.
    pub fn applies_to(&self, t: PolicyType) -> bool {
        match &self.spec.types {
            Some(ts) => ts.contains(&t),
            None => t == PolicyType::Ingress || !self.spec.egress.is_empty(),
        }
    }
    /// Sort key implementing "lower first; absent after all ordered; ties by name".
    pub fn sort_key(&self) -> (bool, i64, String) {
        (
            self.spec.order.is_none(),
            self.spec.order.unwrap_or(0),
            self.metadata.name.clone(),
        )
    }
}

// ---------------------------------------------------------------- IPPool

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpPoolSpec {
    /// The pool's network, no host bits set; immutable. Must not overlap another pool,
    /// 127/8, 169.254/16, 224/4, ::1, fe80::/10 or ff00::/8.
    pub cidr: Cidr,
    /// The prefix length of the blocks handed to nodes: 20-32 for IPv4 (default 26),
    /// 116-128 for IPv6 (default 122), not larger than the pool; immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// Masquerade traffic from the pool to destinations outside every pool.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nat_outgoing: bool,
    /// Assign no new addresses from it; addresses already held stay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

impl IpPool {
    pub fn block_size(&self) -> u8 {
        self.spec
            .block_size
            .unwrap_or(if self.spec.cidr.is_ipv4() { 26 } else { 122 })
    }
}

// ---------------------------------------------------------------- Node

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// This node's IPv4 address with its prefix length (BGP sessions and router ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<IfaceAddr>,
    /// This node's IPv6 address with its prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<IfaceAddr>,
    /// This node's AS number (1-4294967295); absent: the ClusterConfig's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Makes this node a route reflector for the given cluster ID.
    #[serde(default, rename = "routeReflectorClusterID", skip_serializing_if = "Option::is_none")]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
}

// ---------------------------------------------------------------- BGPPeer

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpPeerSpec {
    /// The peer's address.
    #[serde(rename = "peerIP")]
    pub peer_ip: IpAddr,
    /// The peer's AS number (1-4294967295).
    pub as_number: u32,
    /// Peer from this node only (exclusive with nodeSelector); neither: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Peer from the nodes whose labels match this selector (exclusive with node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
}

// ---------------------------------------------------------------- ClusterConfig

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EndpointToHostAction {
    Drop,
    Accept,
    Return,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The name as YAML spells it, which is also a tracing filter directive.
    pub fn as_str(&self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfigSpec {
    /// The AS number of every node that sets none (the seed's 64511).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 64511))]
    pub as_number: Option<u32>,
    /// Every node peers with every other; false: only the BGPPeers given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub node_to_node_mesh: Option<bool>,
    /// What happens to traffic from a workload to its own host: Drop, Accept, or Return
    /// (to the host's own rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Drop"))]
    pub endpoint_to_host_action: Option<EndpointToHostAction>,
    /// The prefix of the host-side interface names (the rest is a hash of the Container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9]{0,3}$"), extend("default" = "cali"))]
    pub interface_prefix: Option<String>,
    /// The MTU of the workloads' interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9000), extend("default" = 1500))]
    pub mtu: Option<u32>,
    /// The agents' log level, applied at their next reconcile; an agent started with `--log` (or `CALICO_LOG`) keeps that instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "info"))]
    pub log_level: Option<LogLevel>,
}

impl ClusterConfigSpec {
    pub fn as_number(&self) -> u32 {
        self.as_number.unwrap_or(DEFAULT_AS_NUMBER)
    }
    pub fn node_to_node_mesh(&self) -> bool {
        self.node_to_node_mesh.unwrap_or(true)
    }
    pub fn endpoint_to_host_action(&self) -> EndpointToHostAction {
        self.endpoint_to_host_action.unwrap_or(EndpointToHostAction::Drop)
    }
    pub fn interface_prefix(&self) -> &str {
        self.interface_prefix.as_deref().unwrap_or("cali")
    }
    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(1500)
    }
}

// ---------------------------------------------------------------- any resource

/// A resource of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Group(Group),
    Container(Container),
    Policy(Policy),
    IpPool(IpPool),
    Node(Node),
    BgpPeer(BgpPeer),
    ClusterConfig(ClusterConfig),
}

macro_rules! each {
    ($self:expr, $o:ident => $e:expr) => {
        match $self {
            Resource::Group($o) => $e,
            Resource::Container($o) => $e,
            Resource::Policy($o) => $e,
            Resource::IpPool($o) => $e,
            Resource::Node($o) => $e,
            Resource::BgpPeer($o) => $e,
            Resource::ClusterConfig($o) => $e,
        }
    };
}

impl Resource {
    pub fn kind(&self) -> Kind {
        each!(self, o => o.kind)
    }
    pub fn name(&self) -> &str {
        each!(self, o => &o.metadata.name)
    }
    pub fn metadata(&self) -> &Metadata {
        each!(self, o => &o.metadata)
    }
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        each!(self, o => &mut o.metadata)
    }
    /// `Kind/name`, how resources are named in messages.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    pub fn to_json(&self) -> serde_json::Value {
        // Serializing these plain data types cannot fail; Null is unreachable.
        each!(self, o => serde_json::to_value(o).unwrap_or(serde_json::Value::Null))
    }

    /// Decodes a resource of a known kind from JSON, with the failing field path.
    pub fn from_json_kind(kind: Kind, v: serde_json::Value) -> Result<Resource, (String, String)> {
        fn de<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, (String, String)> {
            serde_path_to_error::deserialize(v).map_err(|e| (e.path().to_string(), e.inner().to_string()))
        }
        let r = match kind {
            Kind::Group => Resource::Group(de(v)?),
            Kind::Container => Resource::Container(de(v)?),
            Kind::Policy => Resource::Policy(de(v)?),
            Kind::IPPool => Resource::IpPool(de(v)?),
            Kind::Node => Resource::Node(de(v)?),
            Kind::BGPPeer => Resource::BgpPeer(de(v)?),
            Kind::ClusterConfig => Resource::ClusterConfig(de(v)?),
        };
        if r.kind() != kind {
            return Err(("kind".into(), format!("expected kind {kind}, found {}", r.kind())));
        }
        Ok(r)
    }

    /// Decodes a resource from JSON, dispatching on its `kind` field.
    pub fn from_json(v: serde_json::Value) -> Result<Resource, (String, String)> {
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(|| ("kind".to_string(), "missing field `kind`".to_string()))?;
        let kind: Kind = serde_json::from_value(serde_json::Value::String(kind.to_string())).map_err(|_| {
            (
                "kind".to_string(),
                format!(
                    "unknown kind '{kind}' (expected one of {})",
                    Kind::ALL.iter().map(Kind::as_str).collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        Resource::from_json_kind(kind, v)
    }

    /// The same resource with output-only fields cleared, for comparing content.
    pub fn without_version(&self) -> Resource {
        let mut r = self.clone();
        r.metadata_mut().resource_version = None;
        r
    }
}

macro_rules! from_obj {
    ($t:ty, $v:ident) => {
        impl From<$t> for Resource {
            fn from(o: $t) -> Resource {
                Resource::$v(o)
            }
        }
    };
}
from_obj!(Group, Group);
from_obj!(Container, Container);
from_obj!(Policy, Policy);
from_obj!(IpPool, IpPool);
from_obj!(Node, Node);
from_obj!(BgpPeer, BgpPeer);
from_obj!(ClusterConfig, ClusterConfig);

/// Builds an object of the given kind, for code that creates resources (CLI seed
/// commands, the Docker path, tests).
pub fn object<S>(kind: Kind, name: impl Into<String>, spec: S) -> Object<S> {
    Object {
        api_version: ApiVersion::V1,
        kind,
        metadata: Metadata::named(name),
        spec,
    }
}

// ---------------------------------------------------------------- status

/// Observed state of a Container, written by the node agent, kept apart from spec.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub node: String,
    #[serde(default)]
    pub host_interface: String,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    pub state: EndpointState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Seconds since the Unix epoch.
    #[serde(default)]
    pub updated: u64,
}

/// What a node agent reports about itself under `status/nodes/<name>`. Written by the
/// agent, read by `calicoctl status`; read leniently (missing fields default) so an
/// older or newer agent's record still shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentStatus {
    pub node: String,
    pub pid: u32,
    pub version: String,
    pub ready: bool,
    /// Seconds since the Unix epoch.
    pub last_reconcile: u64,
    pub endpoints_programmed: usize,
    pub endpoints_failed: usize,
    pub errors: Vec<String>,
    /// Keys in etcd whose values are invalid and ignored.
    pub invalid_data: Vec<String>,
    pub bird_restarts: u64,
    /// BIRD's pid, and whether it was adopted from a previous agent run.
    pub bird_pid: Option<u32>,
    pub bird_adopted: bool,
    /// Whether the last status write reached etcd (false: running fail-static).
    pub datastore_ok: bool,
    /// When this agent process started (Unix seconds).
    pub started: u64,
    pub run_dir: String,
    pub http: Option<String>,
    /// The etcd revision whose desired state the dataplane enforces: that of the last
    /// reconcile that ended without errors (`calicoctl apply --wait` waits for it).
    pub enforced_revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum EndpointState {
    #[default]
    Pending,
    Programmed,
    Error,
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointState::Pending => "Pending",
            EndpointState::Programmed => "Programmed",
            EndpointState::Error => "Error",
        })
    }
}
