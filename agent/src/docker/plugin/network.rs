//! The `calico` network driver's methods (`NetworkDriver.*`): each decodes Docker's
//! request, checks what the wire types cannot express, turns it into the parsed
//! request of [`Backend`], and turns the backend's answer into Docker's response.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use serde_json::{json, Value};

use super::call::{backend_call, decode, done, endpoint_ids, parse_cidr, require, to_value, Fault, Outcome};
use super::wire::{
    CapabilitiesResponse, CreateEndpointRequest, CreateEndpointResponse, CreateNetworkRequest, EndpointInterfaceWire,
    EndpointOperInfoResponse, ExternalConnectivityRequest, InterfaceName, IpamData, JoinRequestWire, JoinResponse,
    NetworkIdRequest, StaticRouteWire, ROUTE_TYPE_CONNECTED, ROUTE_TYPE_NEXTHOP,
};
use super::{GLOBAL_ADDRESS_SPACE, IPAM_DRIVER_NAME, LOCAL_ADDRESS_SPACE};
use crate::docker::backend::{Backend, EndpointCreate, JoinInfo, JoinRequest, NetworkCreate, PoolData, GROUP_OPTION};

/// The option key Docker uses for the `-o` options of `docker network create`.
const GENERIC_OPTIONS: &str = "com.docker.network.generic";

pub(super) async fn activate<B>(_backend: Arc<B>, _method: &'static str, _body: Bytes) -> Outcome {
    Ok(json!({ "Implements": ["NetworkDriver"] }))
}

pub(super) async fn get_capabilities<B>(_backend: Arc<B>, _method: &'static str, _body: Bytes) -> Outcome {
    to_value(CapabilitiesResponse {
        scope: "local".into(),
        connectivity_scope: "local".into(),
    })
}

pub(super) async fn create_network<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let req: CreateNetworkRequest = decode(method, &body)?;
    let create = network_create(req)?;
    backend_call(method, b.create_network(create)).await?;
    done()
}

pub(super) async fn delete_network<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let req: NetworkIdRequest = decode(method, &body)?;
    require(method, "NetworkID", &req.network_id)?;
    backend_call(method, b.delete_network(req.network_id)).await?;
    done()
}

pub(super) async fn create_endpoint<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let req: CreateEndpointRequest = decode(method, &body)?;
    let create = endpoint_create(method, req)?;
    let given_mac = create.mac.is_some();
    let iface = backend_call(method, b.create_endpoint(create)).await?;
    let mut wire = EndpointInterfaceWire::default();
    if !given_mac {
        wire.mac_address = iface.mac.unwrap_or_default();
    }
    to_value(CreateEndpointResponse {
        interface: (!wire.is_empty()).then_some(wire),
    })
}

pub(super) async fn delete_endpoint<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let (nid, eid) = endpoint_ids(method, &body)?;
    backend_call(method, b.delete_endpoint(nid, eid)).await?;
    done()
}

pub(super) async fn endpoint_oper_info<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let (nid, eid) = endpoint_ids(method, &body)?;
    let value = backend_call(method, b.endpoint_oper_info(nid, eid)).await?;
    to_value(EndpointOperInfoResponse { value })
}

pub(super) async fn join<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let req: JoinRequestWire = decode(method, &body)?;
    require(method, "NetworkID", &req.network_id)?;
    require(method, "EndpointID", &req.endpoint_id)?;
    require(method, "SandboxKey", &req.sandbox_key)?;
    let join = JoinRequest {
        network_id: req.network_id,
        endpoint_id: req.endpoint_id,
        sandbox_key: req.sandbox_key,
        options: req.options,
    };
    let info = backend_call(method, b.join(join)).await?;
    to_value(join_response(method, info)?)
}

pub(super) async fn leave<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let (nid, eid) = endpoint_ids(method, &body)?;
    backend_call(method, b.leave(nid, eid)).await?;
    done()
}

pub(super) async fn program_external_connectivity<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let req: ExternalConnectivityRequest = decode(method, &body)?;
    require(method, "NetworkID", &req.network_id)?;
    require(method, "EndpointID", &req.endpoint_id)?;
    backend_call(method, b.program_external_connectivity(req.network_id, req.endpoint_id)).await?;
    done()
}

pub(super) async fn revoke_external_connectivity<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let (nid, eid) = endpoint_ids(method, &body)?;
    backend_call(method, b.revoke_external_connectivity(nid, eid)).await?;
    done()
}

pub(super) async fn allocate_network<B>(_backend: Arc<B>, _method: &'static str, _body: Bytes) -> Outcome {
    Err(Fault::failed(
        "swarm-scoped networks are not supported; create the network on each Docker host instead",
    ))
}

pub(super) async fn free_network<B>(_backend: Arc<B>, _method: &'static str, _body: Bytes) -> Outcome {
    done()
}

fn network_create(req: CreateNetworkRequest) -> Result<NetworkCreate, Fault> {
    const M: &str = "NetworkDriver.CreateNetwork";
    require(M, "NetworkID", &req.network_id)?;
    let mut options = BTreeMap::new();
    for (key, value) in &req.options {
        if key == GENERIC_OPTIONS {
            // `-o k=v` arrive as a map of strings (null when there are none).
            let generic = match value {
                Value::Null => continue,
                Value::Object(m) => m,
                other => {
                    return Err(Fault::bad_request(format!(
                        "{M}: {GENERIC_OPTIONS} is not a map: {other}"
                    )))
                }
            };
            for (k, v) in generic {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                options.insert(k.clone(), v);
            }
        } else if !is_harmless_network_option(key, value) {
            return Err(Fault::failed(format!(
                "the calico driver does not support the network option {key}={value} ({})",
                option_hint(key)
            )));
        }
    }
    for key in options.keys() {
        if key != GROUP_OPTION {
            return Err(Fault::failed(format!(
                "unknown option -o {key}; the calico driver supports -o {GROUP_OPTION}=NAME"
            )));
        }
    }
    let group = match options.get(GROUP_OPTION) {
        None => None,
        Some(g) if calico_schema::validate::is_valid_name(g) => Some(g.clone()),
        Some(g) => {
            return Err(Fault::failed(format!(
                "-o {GROUP_OPTION}={g:?} is not a valid group name (1-63 of A-Z a-z 0-9 _ . -, starting and ending alphanumeric)"
            )))
        }
    };
    let ipv4 = pool_data(M, "IPv4Data", &req.ipv4_data)?;
    let ipv6 = pool_data(M, "IPv6Data", &req.ipv6_data)?;
    Ok(NetworkCreate {
        network_id: req.network_id,
        group,
        options,
        ipv4,
        ipv6,
    })
}

/// Options Docker always sends whose default value needs nothing from the driver.
fn is_harmless_network_option(key: &str, value: &Value) -> bool {
    match key {
        // --ipv6: the v6 pool comes through IPv6Data, handled like v4.
        "com.docker.network.enable_ipv6" => true,
        // Booleans Docker sends as false unless a flag asked for a behaviour Calico
        // does not implement (--internal ...).
        _ => matches!(value, Value::Bool(false) | Value::Null),
    }
}

fn option_hint(key: &str) -> &'static str {
    match key {
        "com.docker.network.internal" => "--internal: use a Calico policy that denies egress instead",
        _ => "leave it out",
    }
}

/// Check that CreateNetwork's pools come from calico-ipam: the network driver relies
/// on /32 addresses and on no gateway being reserved in the pool.
fn pool_data(method: &str, field: &str, data: &[IpamData]) -> Result<Vec<PoolData>, Fault> {
    data.iter()
        .map(|d| {
            let pool = parse_cidr(method, &format!("{field}.Pool"), &d.pool)?;
            let ours = d.address_space == LOCAL_ADDRESS_SPACE || d.address_space == GLOBAL_ADDRESS_SPACE;
            let any_gateway = matches!(d.gateway.as_str(), "0.0.0.0/0" | "::/0");
            if !ours && !any_gateway {
                return Err(Fault::failed(format!(
                    "the calico network driver needs the calico-ipam IPAM driver (got address space {:?}); \
                     add --ipam-driver {IPAM_DRIVER_NAME}",
                    d.address_space
                )));
            }
            if !d.aux_addresses.is_empty() {
                return Err(Fault::failed(
                    "--aux-address is not supported: Calico networks reserve no addresses",
                ));
            }
            Ok(PoolData {
                address_space: d.address_space.clone(),
                pool,
            })
        })
        .collect()
}

fn endpoint_create(method: &str, req: CreateEndpointRequest) -> Result<EndpointCreate, Fault> {
    require(method, "NetworkID", &req.network_id)?;
    require(method, "EndpointID", &req.endpoint_id)?;
    let iface = req.interface;
    let ipv4 = match iface.address.trim() {
        "" => None,
        s => Some(parse_cidr(method, "Interface.Address", s)?),
    };
    let ipv6 = match iface.address_ipv6.trim() {
        "" => None,
        s => Some(parse_cidr(method, "Interface.AddressIPv6", s)?),
    };
    if ipv4.is_none() && ipv6.is_none() {
        return Err(Fault::failed(
            "the endpoint has no address; create the network with --ipam-driver calico-ipam so IPAM assigns one",
        ));
    }
    let mac = match iface.mac_address.trim() {
        "" => None,
        s => Some(s.to_string()),
    };
    Ok(EndpointCreate {
        network_id: req.network_id,
        endpoint_id: req.endpoint_id,
        ipv4,
        ipv6,
        mac,
        options: req.options,
    })
}

fn join_response(method: &str, info: JoinInfo) -> Result<JoinResponse, Fault> {
    // Docker would fail with an obscure netlink error on a bad name: check it here.
    if info.src_name.is_empty() || info.src_name.len() > 15 || info.dst_prefix.is_empty() {
        return Err(Fault::failed(format!(
            "{method}: internal error: bad interface names {:?} / {:?}",
            info.src_name, info.dst_prefix
        )));
    }
    Ok(JoinResponse {
        interface_name: InterfaceName {
            src_name: info.src_name,
            dst_prefix: info.dst_prefix,
        },
        gateway: info.gateway.map(|g| g.to_string()).unwrap_or_default(),
        gateway_ipv6: info.gateway_v6.map(|g| g.to_string()).unwrap_or_default(),
        static_routes: info
            .static_routes
            .into_iter()
            .map(|r| StaticRouteWire {
                destination: r.destination.to_string(),
                route_type: if r.next_hop.is_some() {
                    ROUTE_TYPE_NEXTHOP
                } else {
                    ROUTE_TYPE_CONNECTED
                },
                next_hop: r.next_hop.map(|h| h.to_string()).unwrap_or_default(),
            })
            .collect(),
        disable_gateway_service: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Map;
    #[test]
    fn go_nulls_decode_as_empty() {
        let body = Bytes::from_static(
            br#"{"NetworkID":"n1","Options":null,"IPv4Data":[{"AddressSpace":"CalicoLocal","Pool":"0.0.0.0/0","Gateway":"0.0.0.0/0","AuxAddresses":null}],"IPv6Data":null}"#,
        );
        let req: CreateNetworkRequest = decode("x", &body).unwrap();
        let create = network_create(req).unwrap();
        assert_eq!(create.ipv4.len(), 1);
        assert!(create.ipv6.is_empty());
        assert_eq!(create.group, None);
    }

    #[test]
    fn group_option_is_parsed_and_validated() {
        let mk = |generic: Value| CreateNetworkRequest {
            network_id: "n".into(),
            options: Map::from_iter([
                (GENERIC_OPTIONS.to_string(), generic),
                ("com.docker.network.enable_ipv6".to_string(), Value::Bool(false)),
            ]),
            ..Default::default()
        };
        assert_eq!(
            network_create(mk(json!({"group": "web"}))).unwrap().group.as_deref(),
            Some("web")
        );
        let bad = network_create(mk(json!({"group": "-x"}))).unwrap_err();
        assert!(bad.message.contains("not a valid group name"), "{}", bad.message);
        let unknown = network_create(mk(json!({"colour": "red"}))).unwrap_err();
        assert!(
            unknown.message.contains("unknown option -o colour"),
            "{}",
            unknown.message
        );
    }

    #[test]
    fn foreign_ipam_is_refused() {
        let req = CreateNetworkRequest {
            network_id: "n".into(),
            ipv4_data: vec![IpamData {
                address_space: "LocalDefault".into(),
                pool: "172.18.0.0/16".into(),
                gateway: "172.18.0.1/16".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = network_create(req).unwrap_err();
        assert!(err.message.contains("--ipam-driver calico-ipam"), "{}", err.message);
    }

    #[test]
    fn join_response_shape() {
        let resp = join_response("m", JoinInfo::calico("tmpabc", false)).unwrap();
        let v = serde_json::to_value(resp).unwrap();
        assert_eq!(
            v,
            json!({
                "InterfaceName": {"SrcName": "tmpabc", "DstPrefix": "eth"},
                "Gateway": "169.254.1.1",
                "StaticRoutes": [{"Destination": "169.254.1.1/32", "RouteType": 1}],
                "DisableGatewayService": false
            })
        );
        let v6 = serde_json::to_value(join_response("m", JoinInfo::calico("tmpabc", true)).unwrap()).unwrap();
        assert_eq!(v6["GatewayIPv6"], "fe80::ecee:eeff:feee:eeee");
        assert_eq!(v6["StaticRoutes"][1]["Destination"], "fe80::ecee:eeff:feee:eeee/128");
    }
}
