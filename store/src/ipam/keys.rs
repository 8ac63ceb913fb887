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

/// The inverse of [`escape`], strict: only `%25` and `%2F` are accepted, so that a name
/// has exactly one key (`escape(unescape(s)) == s`). A lenient decoder would read
/// `a%2fb` as `a/b`, whose key is `a%2Fb`: releasing that handle would touch a
/// different key than the one read. `None` for any other `%`, and for a raw `/` (a
/// key nested below a handle's, which no name escapes to).
pub(super) fn unescape(s: &str) -> Option<String> {
    if s.contains('/') {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(r) = tail.strip_prefix("%25") {
            out.push('%');
            rest = r;
        } else if let Some(r) = tail.strip_prefix("%2F") {
            out.push('/');
            rest = r;
        } else {
            return None;
        }
    }
    out.push_str(rest);
    Some(out)
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
            assert_eq!(unescape(&e).as_deref(), Some(s));
        }
        assert_eq!(handle_key("container/web"), "/calico/v1/ipam/handles/container%2Fweb");
    }

    /// Regression: `%2f` was read as `/`, so the handle read from `a%2fb` was `a/b`,
    /// whose key is `a%2Fb`, another key. Every spelling but the canonical one is refused.
    #[test]
    fn only_canonical_escapes_decode() {
        for bad in ["a%2fb", "a%2", "%", "100%", "a%41", "%2F%2f", "x%25%", "a/b", "/"] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
        for good in ["a%2Fb", "%25", "plain", "", "x%252F"] {
            let name = unescape(good).unwrap_or_else(|| panic!("{good} refused"));
            assert_eq!(escape(&name), good);
        }
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
