//! The seed's request in a container's environment: `CALICO_IP=<ip[,ip]|auto>` and
//! `CALICO_GROUP=<g[,g]>` (or the older `CALICO_PROFILE`), parsed and checked once
//! here so the event consumer only sees a valid [`CalicoRequest`] or the reason why not.

use std::collections::HashMap;
use std::net::IpAddr;

/// The seed's environment: `CALICO_IP=<ip[,ip]|auto>`.
pub const ENV_IP: &str = "CALICO_IP";
/// `CALICO_GROUP=<g[,g]>`: the groups the container joins.
pub const ENV_GROUP: &str = "CALICO_GROUP";
/// The seed's older name for a group (calico-docker called security groups profiles).
pub const ENV_PROFILE: &str = "CALICO_PROFILE";

/// The seed's request, from a container's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalicoRequest {
    pub ip: CalicoIp,
    /// CALICO_GROUP then CALICO_PROFILE entries, in order, without duplicates.
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalicoIp {
    /// `CALICO_IP=auto`: IPAM assigns.
    Auto,
    /// Explicit addresses (one, or a comma-separated v4 and v6).
    Addresses(Vec<IpAddr>),
}

/// A container's CALICO_* environment that cannot be honoured; the message says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

/// Parse the seed's variables out of `KEY=VALUE` entries (Docker's `Config.Env`).
/// `Ok(None)`: the container did not ask for Calico networking.
pub fn parse_calico_env<S: AsRef<str>>(env: &[S]) -> Result<Option<CalicoRequest>, EnvError> {
    // Later entries win, as in a process environment.
    let mut vars: HashMap<&str, &str> = HashMap::new();
    for entry in env {
        let entry = entry.as_ref();
        if let Some((k, v)) = entry.split_once('=') {
            vars.insert(k, v);
        }
    }
    let mut groups: Vec<String> = Vec::new();
    for key in [ENV_GROUP, ENV_PROFILE] {
        let Some(value) = vars.get(key) else { continue };
        for g in value.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            if !calico_schema::validate::is_valid_name(g) {
                return Err(EnvError(format!(
                    "{key}: {g:?} is not a valid group name (1-63 of A-Z a-z 0-9 _ . -, starting and ending alphanumeric)"
                )));
            }
            if !groups.iter().any(|have| have == g) {
                groups.push(g.to_string());
            }
        }
    }
    let Some(raw_ip) = vars.get(ENV_IP) else {
        if !groups.is_empty() {
            return Err(EnvError(format!(
                "{ENV_GROUP}/{ENV_PROFILE} is set but {ENV_IP} is not; add -e {ENV_IP}=auto"
            )));
        }
        return Ok(None);
    };
    let raw_ip = raw_ip.trim();
    if raw_ip.is_empty() {
        return Err(EnvError(format!("{ENV_IP} is empty; use {ENV_IP}=auto or an address")));
    }
    let ip = if raw_ip.eq_ignore_ascii_case("auto") {
        CalicoIp::Auto
    } else {
        let mut addrs: Vec<IpAddr> = Vec::new();
        for part in raw_ip.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let addr: IpAddr = part
                .parse()
                .map_err(|_| EnvError(format!("{ENV_IP}: {part:?} is not an IP address (nor \"auto\")")))?;
            if addrs.iter().any(|a| a.is_ipv4() == addr.is_ipv4()) {
                return Err(EnvError(format!(
                    "{ENV_IP}: at most one IPv4 and one IPv6 address, got {raw_ip:?}"
                )));
            }
            addrs.push(addr);
        }
        // "CALICO_IP=," would otherwise ask for a Container with no address at all.
        if addrs.is_empty() {
            return Err(EnvError(format!(
                "{ENV_IP}: {raw_ip:?} names no address; use {ENV_IP}=auto or an address"
            )));
        }
        CalicoIp::Addresses(addrs)
    };
    Ok(Some(CalicoRequest { ip, groups }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &[&str]) -> Result<Option<CalicoRequest>, EnvError> {
        parse_calico_env(v)
    }

    #[test]
    fn no_calico_env_means_not_requested() {
        assert_eq!(env(&["PATH=/bin", "HOME=/"]), Ok(None));
    }

    #[test]
    fn auto_and_explicit_addresses() {
        let r = env(&["CALICO_IP=auto"]).unwrap().unwrap();
        assert_eq!(r.ip, CalicoIp::Auto);
        assert!(r.groups.is_empty());
        let r = env(&["CALICO_IP=AUTO", "CALICO_GROUP=web"]).unwrap().unwrap();
        assert_eq!(r.ip, CalicoIp::Auto);
        assert_eq!(r.groups, vec!["web"]);
        let r = env(&["CALICO_IP= 10.65.0.5 , fd00::5"]).unwrap().unwrap();
        assert_eq!(
            r.ip,
            CalicoIp::Addresses(vec!["10.65.0.5".parse().unwrap(), "fd00::5".parse().unwrap()])
        );
    }

    #[test]
    fn groups_merge_profile_alias_in_order_without_duplicates() {
        let r = env(&["CALICO_IP=auto", "CALICO_PROFILE=db,web", "CALICO_GROUP=web, ops"])
            .unwrap()
            .unwrap();
        assert_eq!(r.groups, vec!["web", "ops", "db"]);
    }

    #[test]
    fn later_entries_win() {
        let r = env(&["CALICO_IP=10.0.0.1", "CALICO_IP=auto"]).unwrap().unwrap();
        assert_eq!(r.ip, CalicoIp::Auto);
    }

    #[test]
    fn bad_values_are_explained() {
        let e = env(&["CALICO_IP=10.0.0.300"]).unwrap_err();
        assert!(e.0.contains("not an IP address"), "{e}");
        let e = env(&["CALICO_IP="]).unwrap_err();
        assert!(e.0.contains("is empty"), "{e}");
        let e = env(&["CALICO_IP=10.0.0.1,10.0.0.2"]).unwrap_err();
        assert!(e.0.contains("at most one IPv4"), "{e}");
        let e = env(&["CALICO_IP= , ,"]).unwrap_err();
        assert!(e.0.contains("names no address"), "{e}");
        let e = env(&["CALICO_GROUP=web"]).unwrap_err();
        assert!(e.0.contains("CALICO_IP=auto"), "{e}");
        let e = env(&["CALICO_IP=auto", "CALICO_GROUP=-bad"]).unwrap_err();
        assert!(e.0.contains("not a valid group name"), "{e}");
    }

    #[test]
    fn entries_without_equals_are_ignored() {
        assert_eq!(env(&["CALICO_IP"]), Ok(None));
    }
}
