//! The IPAM key codec: block, handle and affinity keys, and the escaping that makes a
//! handle or node name one key segment.

use etcd_client::KeyValue;
use ipnet::IpNet;

use super::{IpamError, AFFINITY_PREFIX, BLOCKS_PREFIX, HANDLES_PREFIX};

pub(super) fn block_suffix(cidr: &IpNet) -> String {
    cidr.to_string().replace('/', "_")
}

pub(super) fn parse_block_suffix(s: &str) -> Option<IpNet> {
    s.replace('_', "/").parse().ok()
}

pub fn block_key(cidr: &IpNet) -> String {
    format!("{BLOCKS_PREFIX}{}", block_suffix(cidr))
}

pub fn handle_key(handle: &str) -> String {
    format!("{HANDLES_PREFIX}{}", escape(handle))
}

pub(super) fn affinity_node_prefix(node: &str) -> String {
    format!("{AFFINITY_PREFIX}{}/", escape(node))
}

pub(super) fn affinity_key(node: &str, cidr: &IpNet) -> String {
    format!("{}{}", affinity_node_prefix(node), block_suffix(cidr))
}

/// Percent-escapes `%` and `/`, so a handle or node name is one key segment.
pub(super) fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

pub(super) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(r) = tail.strip_prefix("%25") {
            out.push('%');
            rest = r;
        } else if let Some(r) = tail.strip_prefix("%2F").or_else(|| tail.strip_prefix("%2f")) {
            out.push('/');
            rest = r;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

pub(super) fn key_string(kv: &KeyValue) -> Result<String, IpamError> {
    kv.key_str().map(str::to_string).map_err(|e| IpamError::Invalid {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        detail: format!("key is not UTF-8: {e}"),
    })
}

/// The cidrs named by a listing of block keys.
pub(super) fn cidrs_of(kvs: &[KeyValue]) -> Result<Vec<IpNet>, IpamError> {
    kvs.iter()
        .map(|kv| {
            let key = key_string(kv)?;
            parse_block_suffix(key.strip_prefix(BLOCKS_PREFIX).unwrap_or(&key)).ok_or_else(|| IpamError::Invalid {
                key: key.clone(),
                detail: "the key does not name a cidr".into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        for s in ["container/web", "a%2Fb", "%", "x/y/z%25", "plain"] {
            let e = escape(s);
            assert!(!e.contains('/'), "{e}");
            assert_eq!(unescape(&e), s);
        }
        assert_eq!(handle_key("container/web"), "/calico/v1/ipam/handles/container%2Fweb");
    }

    #[test]
    fn block_keys() {
        let v4: IpNet = "10.65.0.64/26".parse().unwrap();
        let v6: IpNet = "fd00::40/122".parse().unwrap();
        assert_eq!(block_key(&v4), "/calico/v1/ipam/blocks/10.65.0.64_26");
        assert_eq!(parse_block_suffix("10.65.0.64_26"), Some(v4));
        assert_eq!(parse_block_suffix(&block_suffix(&v6)), Some(v6));
    }
}
