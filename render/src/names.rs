//! Stable, bounded names for kernel objects.
//!
//! Names must be the same on every render of the same input (so a replaced table diffs
//! cleanly and `calicoctl render` output is comparable across nodes), and short enough
//! for every tool that shows them: interface names have 15 usable bytes, and we keep
//! nftables chain and set names to 31 characters so `nft list` stays readable.

use sha2::{Digest, Sha256};

/// Longest chain or set name we generate.
pub const MAX_NAME: usize = 31;

/// Lower-case hex of the SHA-256 of `data`.
pub fn sha256_hex(data: &str) -> String {
    let d = Sha256::digest(data.as_bytes());
    let mut s = String::with_capacity(64);
    for b in d.iter() {
        s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    s
}

/// The host side of a workload's veth: `<prefix>` + the first 11 hex characters of the
/// SHA-256 of the Container name. Hashing (rather than using the name) keeps it within
/// IFNAMSIZ whatever the name, and stable across agent restarts.
pub fn host_iface_name(prefix: &str, container_name: &str) -> String {
    let h = sha256_hex(container_name);
    format!("{prefix}{}", &h[..11])
}

/// `prefix` + `name`, or, when that exceeds [`MAX_NAME`], `prefix` + as much of `name`
/// as fits + `-` + 8 hex of its hash. The hash keeps truncated names distinct; the kept
/// head keeps them recognisable.
pub fn short_name(prefix: &str, name: &str) -> String {
    let full_len = prefix.len() + name.len();
    if full_len <= MAX_NAME {
        return format!("{prefix}{name}");
    }
    let h = sha256_hex(name);
    let keep = MAX_NAME.saturating_sub(prefix.len() + 9);
    let mut head = String::new();
    for c in name.chars() {
        if head.len() + c.len_utf8() > keep {
            break;
        }
        head.push(c);
    }
    format!("{prefix}{head}-{}", &h[..8])
}

/// `prefix` + 12 hex of the hash of `key`: for objects named by content (selector sets,
/// shared evaluation chains), where the content itself is too long to be a name.
pub fn hashed_name(prefix: &str, key: &str) -> String {
    format!("{prefix}{}", &sha256_hex(key)[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iface_names() {
        let n = host_iface_name("cali", "workload-a");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("cali"));
        assert_eq!(n, host_iface_name("cali", "workload-a"));
        assert_ne!(n, host_iface_name("cali", "workload-b"));
    }

    #[test]
    fn short_names() {
        assert_eq!(short_name("pol-in-", "db"), "pol-in-db");
        let long = "a-very-long-policy-name-that-goes-on-and-on";
        let s = short_name("pol-in-", long);
        assert_eq!(s.len(), MAX_NAME);
        assert!(s.starts_with("pol-in-a-very"));
        assert_ne!(s, short_name("pol-in-", &format!("{long}x")));
        assert_eq!(s, short_name("pol-in-", long));
    }
}
