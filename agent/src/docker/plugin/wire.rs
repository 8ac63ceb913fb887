//! The JSON bodies of Docker's legacy (v1) network and IPAM plugin protocol, as
//! libnetwork's Go client encodes them (docs/remote.md and docs/ipam.md there).
//!
//! Go encodes nil maps and slices as `null` and leaves out nothing, so every
//! collection accepts `null`; unknown fields are ignored because Docker adds fields
//! over time. Required IDs are checked after decoding (in the method handlers) so the
//! message can name the field.

use std::collections::BTreeMap;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Decode `null` as the type's default (Go's nil map / nil slice).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Every response may carry `Err`; empty means success.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapabilitiesResponse {
    /// "local": each Docker host keeps its own network objects (no swarm allocation).
    #[serde(rename = "Scope")]
    pub scope: String,
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: String,
}

/// IPv4Data / IPv6Data entries of CreateNetwork and AllocateNetwork.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IpamData {
    #[serde(rename = "AddressSpace", default, deserialize_with = "null_default")]
    pub address_space: String,
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
    #[serde(rename = "Gateway", default, deserialize_with = "null_default")]
    pub gateway: String,
    #[serde(rename = "AuxAddresses", default, deserialize_with = "null_default")]
    pub aux_addresses: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    /// map[string]interface{}: `-o` options sit under "com.docker.network.generic".
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
    #[serde(rename = "IPv4Data", default, deserialize_with = "null_default")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default, deserialize_with = "null_default")]
    pub ipv6_data: Vec<IpamData>,
}

/// DeleteNetwork and FreeNetwork.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkIdRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
}

/// The interface of CreateEndpoint, both ways: addresses are CIDR strings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointInterfaceWire {
    #[serde(
        rename = "Address",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub address: String,
    #[serde(
        rename = "AddressIPv6",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub address_ipv6: String,
    #[serde(
        rename = "MacAddress",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub mac_address: String,
}

impl EndpointInterfaceWire {
    pub fn is_empty(&self) -> bool {
        self.address.is_empty() && self.address_ipv6.is_empty() && self.mac_address.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default, deserialize_with = "null_default")]
    pub interface: EndpointInterfaceWire,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateEndpointResponse {
    /// Only values Docker did not supply: libnetwork rejects a driver that answers
    /// with a value for a field it already set ("driver modified interface ...").
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterfaceWire>,
}

/// DeleteEndpoint, EndpointOperInfo, Leave and RevokeExternalConnectivity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointOperInfoResponse {
    #[serde(rename = "Value")]
    pub value: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinRequestWire {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey", default, deserialize_with = "null_default")]
    pub sandbox_key: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StaticRouteWire {
    #[serde(rename = "Destination")]
    pub destination: String,
    /// 0: via NextHop; 1: connected (on-link), no NextHop.
    #[serde(rename = "RouteType")]
    pub route_type: u8,
    #[serde(rename = "NextHop", default, skip_serializing_if = "String::is_empty")]
    pub next_hop: String,
}

/// Route types of libnetwork's StaticRoute.
pub const ROUTE_TYPE_NEXTHOP: u8 = 0;
pub const ROUTE_TYPE_CONNECTED: u8 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    #[serde(rename = "Gateway", default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(rename = "GatewayIPv6", default, skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    #[serde(rename = "StaticRoutes", default)]
    pub static_routes: Vec<StaticRouteWire>,
    /// Docker attaches the container to docker_gwbridge only when a driver gives no
    /// gateway; Calico always gives one, so this stays false.
    #[serde(rename = "DisableGatewayService", default)]
    pub disable_gateway_service: bool,
}

/// ProgramExternalConnectivity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExternalConnectivityRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
}

/// DiscoverNew / DiscoverDelete (node discovery; Calico learns nodes from etcd).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryNotification {
    #[serde(rename = "DiscoveryType", default)]
    pub discovery_type: i64,
    #[serde(rename = "DiscoveryData", default)]
    pub discovery_data: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpamCapabilitiesResponse {
    /// false: Docker need not invent a MAC before RequestAddress.
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    /// false: Docker need not replay pool and address requests when it restarts;
    /// calico-ipam keeps its allocations in etcd.
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddressSpacesResponse {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local_default_address_space: String,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global_default_address_space: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace", default, deserialize_with = "null_default")]
    pub address_space: String,
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
    #[serde(rename = "SubPool", default, deserialize_with = "null_default")]
    pub sub_pool: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6", default, deserialize_with = "null_default")]
    pub v6: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
    /// A plain address ("10.65.0.5"), empty for "any".
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestAddressResponse {
    /// CIDR form: "10.65.0.5/32".
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
}
