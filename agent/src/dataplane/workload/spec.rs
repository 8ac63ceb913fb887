//! What one workload's plumbing should look like, and the fixed addresses every
//! workload sees: the host-side MAC, the gateways, the host interface's name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::WorkloadError;

/// MAC of every host-side veth: the workload's gateway is always this address.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The workload's IPv4 gateway; link-local, so it never collides with a real host.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The workload's IPv6 gateway: the EUI-64 link-local that the kernel derives
/// from [`HOST_MAC`] on the host side, so the host really owns it too.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Name of the host-side interface of a Container: `prefix` plus as many hex
/// digits of SHA-256(container name) as fit in 15 bytes (11 for `cali`).
/// Deterministic, so a restarted agent finds the interfaces it made.
pub fn host_ifname(prefix: &str, container_name: &str) -> String {
    let digest = Sha256::digest(container_name.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let room = MAX_IFNAME_LEN.saturating_sub(prefix.len());
    format!("{prefix}{}", &hex[..room.min(hex.len())])
}

/// What one workload's plumbing should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// Host-side interface name, e.g. from [`host_ifname`].
    pub host_ifname: String,
    /// The workload's network namespace (`/var/run/netns/X`, `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// Interface name inside the workload.
    pub ifname: String,
    /// The workload's addresses; each is installed as /32 or /128.
    pub ips: Vec<IpAddr>,
    /// MTU of both ends; `None` leaves the kernel's default.
    pub mtu: Option<u32>,
}

impl WorkloadSpec {
    /// A spec with the default inside name `eth0` and the kernel's MTU.
    pub fn new(host_ifname: impl Into<String>, netns: impl Into<PathBuf>, ips: Vec<IpAddr>) -> Self {
        WorkloadSpec {
            host_ifname: host_ifname.into(),
            netns: netns.into(),
            ifname: "eth0".to_string(),
            ips,
            mtu: None,
        }
    }

    pub(super) fn has_v4(&self) -> bool {
        self.ips.iter().any(IpAddr::is_ipv4)
    }

    pub(super) fn has_v6(&self) -> bool {
        self.ips.iter().any(IpAddr::is_ipv6)
    }

    pub fn validate(&self) -> Result<(), WorkloadError> {
        for (what, name) in [("host interface", &self.host_ifname), ("interface", &self.ifname)] {
            if !valid_ifname(name) {
                return Err(WorkloadError::InvalidSpec(format!(
                    "{what} name {name:?} must be 1-{MAX_IFNAME_LEN} bytes without '/', ':' or whitespace"
                )));
            }
        }
        for ip in &self.ips {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(WorkloadError::InvalidSpec(format!("{ip} cannot be a workload address")));
            }
        }
        if let Some(mtu) = self.mtu {
            // 68 is IPv4's minimum; IPv6 needs 1280, checked only when it is used.
            let min = if self.has_v6() { 1280 } else { 68 };
            if !(min..=65535).contains(&mtu) {
                return Err(WorkloadError::InvalidSpec(format!("MTU {mtu} outside {min}-65535")));
            }
        }
        Ok(())
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn host_ifname_fits_ifnamsiz() {
        let name = host_ifname("cali", "web-1");
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("cali"));
        assert_eq!(name, host_ifname("cali", "web-1"));
        assert_ne!(name, host_ifname("cali", "web-2"));
        assert_eq!(
            host_ifname("averyverylongprefix", "x").len(),
            "averyverylongprefix".len()
        );
    }

    #[test]
    fn gateway_v6_is_eui64_of_host_mac() {
        // EUI-64: flip the U/L bit of the first byte, insert ff:fe in the middle.
        let mut eui = [0u8; 8];
        eui[..3].copy_from_slice(&HOST_MAC[..3]);
        eui[3] = 0xff;
        eui[4] = 0xfe;
        eui[5..].copy_from_slice(&HOST_MAC[3..]);
        eui[0] ^= 0x02;
        let mut octets = [0u8; 16];
        octets[0] = 0xfe;
        octets[1] = 0x80;
        octets[8..].copy_from_slice(&eui);
        assert_eq!(Ipv6Addr::from(octets), GATEWAY_V6);
    }

    #[test]
    fn spec_validation() {
        let ok = WorkloadSpec::new(
            "cali0123456789a",
            "/var/run/netns/x",
            vec!["10.65.0.5".parse().unwrap()],
        );
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.host_ifname = "cali0123456789ab".into();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.ifname = "eth 0".into();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.ips = vec!["224.0.0.1".parse().unwrap()];
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.ips.push("fd00::5".parse().unwrap());
        bad.mtu = Some(1000);
        assert!(bad.validate().is_err());
    }
}
