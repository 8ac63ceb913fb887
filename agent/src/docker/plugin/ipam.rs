//! The `calico-ipam` IPAM driver's methods (`IpamDriver.*`): each decodes Docker's
//! request, turns it into the parsed request of [`Backend`], and answers in Docker's
//! terms (pools and addresses as CIDR strings, the gateway entry in RequestPool's
//! `Data`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use ipnet::IpNet;
use serde_json::json;

use super::call::{backend_call, decode, done, parse_cidr, parse_ip, require, to_value, Fault, Outcome};
use super::wire::{
    AddressSpacesResponse, IpamCapabilitiesResponse, ReleaseAddressRequest, ReleasePoolRequest, RequestAddressRequest,
    RequestAddressResponse, RequestPoolRequest, RequestPoolResponse,
};
use super::{GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE};
use crate::docker::backend::{AddressRequest, Backend, PoolRequest};

/// IPAM option key saying what an address is for, and the value meaning "the gateway".
const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
const GATEWAY_LABEL: &str = "com.docker.network.gateway";

pub(super) async fn activate<B>(_backend: Arc<B>, _method: &'static str, _body: Bytes) -> Outcome {
    Ok(json!({ "Implements": ["IpamDriver"] }))
}

pub(super) async fn get_capabilities<B>(_backend: Arc<B>, _method: &'static str, _body: Bytes) -> Outcome {
    to_value(IpamCapabilitiesResponse {
        requires_mac_address: false,
        requires_request_replay: false,
    })
}

pub(super) async fn get_default_address_spaces<B>(_backend: Arc<B>, _method: &'static str, _body: Bytes) -> Outcome {
    to_value(AddressSpacesResponse {
        local_default_address_space: LOCAL_ADDRESS_SPACE.into(),
        global_default_address_space: GLOBAL_ADDRESS_SPACE.into(),
    })
}

pub(super) async fn request_pool<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let req: RequestPoolRequest = decode(method, &body)?;
    let pool_req = pool_request(method, req)?;
    let v6 = pool_req.pool.map_or(pool_req.v6, |p| matches!(p, IpNet::V6(_)));
    let info = backend_call(method, b.request_pool(pool_req)).await?;
    if info.pool_id.is_empty() {
        return Err(Fault::failed(format!(
            "{method}: internal error: the backend named no pool"
        )));
    }
    // The gateway entry stops Docker from asking IPAM for a gateway address of the
    // pool: Calico containers use the link-local 169.254.1.1 instead. The any-address
    // value is also how CreateNetwork recognises calico-ipam pools.
    let gateway = if v6 { "::/0" } else { "0.0.0.0/0" };
    to_value(RequestPoolResponse {
        pool_id: info.pool_id,
        pool: info.pool.to_string(),
        data: BTreeMap::from([(GATEWAY_LABEL.to_string(), gateway.to_string())]),
    })
}

pub(super) async fn release_pool<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let req: ReleasePoolRequest = decode(method, &body)?;
    require(method, "PoolID", &req.pool_id)?;
    backend_call(method, b.release_pool(req.pool_id)).await?;
    done()
}

pub(super) async fn request_address<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let req: RequestAddressRequest = decode(method, &body)?;
    require(method, "PoolID", &req.pool_id)?;
    if req.options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_LABEL) {
        return Err(Fault::failed(
            "calico-ipam does not reserve gateway addresses: Calico containers route through \
             169.254.1.1 on their host; leave out --gateway",
        ));
    }
    let address = if req.address.is_empty() {
        None
    } else {
        Some(parse_ip(method, "Address", &req.address)?)
    };
    let request = AddressRequest {
        pool_id: req.pool_id,
        address,
        options: req.options,
    };
    let ip = backend_call(method, b.request_address(request)).await?;
    if let Some(wanted) = address {
        if wanted != ip {
            return Err(Fault::failed(format!(
                "{method}: internal error: asked for {wanted}, the backend assigned {ip}"
            )));
        }
    }
    // A host route: Calico containers have no subnet, every packet goes via the host.
    to_value(RequestAddressResponse {
        address: IpNet::from(ip).to_string(),
        data: BTreeMap::new(),
    })
}

pub(super) async fn release_address<B: Backend>(b: Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let req: ReleaseAddressRequest = decode(method, &body)?;
    require(method, "PoolID", &req.pool_id)?;
    require(method, "Address", &req.address)?;
    let ip = parse_ip(method, "Address", &req.address)?;
    // Docker "releases" the gateway it took from RequestPool's Data (0.0.0.0/0, ::/0)
    // when a network is removed or its creation rolled back; it was never allocated.
    if ip.is_unspecified() {
        return done();
    }
    backend_call(method, b.release_address(req.pool_id, ip)).await?;
    done()
}

/// A CIDR that must be a network address (`--subnet 10.65.0.0/16`, not `10.65.0.1/16`).
fn parse_network(method: &str, field: &str, s: &str) -> Result<IpNet, Fault> {
    let net = parse_cidr(method, field, s)?;
    if net.trunc() != net {
        return Err(Fault::failed(format!(
            "{field} {net} has host bits set; did you mean {}?",
            net.trunc()
        )));
    }
    Ok(net)
}

fn pool_request(method: &str, req: RequestPoolRequest) -> Result<PoolRequest, Fault> {
    if !req.sub_pool.trim().is_empty() {
        return Err(Fault::failed(
            "--ip-range is not supported: addresses come from the Calico IPPool's per-host blocks; \
             use --subnet with an IPPool's CIDR",
        ));
    }
    let pool = match req.pool.trim() {
        "" => None,
        s => Some(parse_network(method, "--subnet", s)?),
    };
    Ok(PoolRequest {
        address_space: req.address_space,
        pool,
        options: req.options,
        v6: req.v6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_with_host_bits_is_refused() {
        let req = RequestPoolRequest {
            pool: "10.65.0.1/16".into(),
            ..Default::default()
        };
        let err = pool_request("m", req).unwrap_err();
        assert!(err.message.contains("did you mean 10.65.0.0/16"), "{}", err.message);
    }
}
