//! Parsing what BIRD's control client prints (`birdc show protocols [all]`): one parser
//! for the agent (its status report) and calicoctl (`status`, `diags`), which must not
//! depend on each other.

use std::net::IpAddr;

use serde::Serialize;

/// One row of `show protocols all`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BirdProtocol {
    pub name: String,
    /// `BGP`, `Kernel`, `Device`, ...
    pub proto: String,
    pub table: String,
    /// `up`, `start`, `down`, ...
    pub state: String,
    pub since: String,
    pub info: String,
    /// The `Description:` line (bird.conf names the Node or BGPPeer there).
    pub description: Option<String>,
    pub bgp: Option<BgpDetails>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BgpDetails {
    /// `Idle`, `Connect`, `Active`, `OpenSent`, `OpenConfirm`, `Established`.
    pub state: String,
    pub neighbor_address: Option<IpAddr>,
    pub neighbor_as: Option<u32>,
    pub local_as: Option<u32>,
    pub neighbor_id: Option<String>,
    pub last_error: Option<String>,
}

/// Parses `birdc show protocols all` (or plain `show protocols`) output.
pub fn parse_protocols(text: &str) -> Vec<BirdProtocol> {
    let mut out: Vec<BirdProtocol> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with("BIRD ") || line.starts_with("Name ") {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            if let Some(p) = parse_protocol_line(line) {
                out.push(p);
            }
            continue;
        }
        let Some(current) = out.last_mut() else { continue };
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key == "Description" {
            current.description = Some(value.to_string());
            continue;
        }
        if key == "BGP state" {
            current.bgp.get_or_insert_with(BgpDetails::default).state = value.to_string();
            continue;
        }
        let Some(bgp) = current.bgp.as_mut() else { continue };
        match key {
            "Neighbor address" => {
                // Link-local neighbours come with a `%iface` scope.
                let addr = value.split_whitespace().next().unwrap_or("");
                bgp.neighbor_address = addr.split('%').next().and_then(|v| v.parse().ok());
            }
            "Neighbor AS" => bgp.neighbor_as = value.parse().ok(),
            "Local AS" => bgp.local_as = value.parse().ok(),
            "Neighbor ID" => bgp.neighbor_id = Some(value.to_string()),
            "Last error" => bgp.last_error = Some(value.to_string()),
            _ => {}
        }
    }
    out
}

/// `name proto table state since info...`; `since` may be a date and a time
/// with some `timeformat` settings, and `info` keeps its inner spacing.
fn parse_protocol_line(line: &str) -> Option<BirdProtocol> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, line.len()));
    }
    if spans.len() < 5 {
        return None;
    }
    let tok = |i: usize| &line[spans[i].0..spans[i].1];
    let mut since_end = 4;
    if spans.len() > 5 {
        let (date, time) = (tok(4), tok(5));
        let looks_date = date.len() >= 8 && date.contains('-') && date.starts_with(|c: char| c.is_ascii_digit());
        let looks_time = time.contains(':') && time.starts_with(|c: char| c.is_ascii_digit());
        if looks_date && looks_time {
            since_end = 5;
        }
    }
    let info = spans
        .get(since_end + 1)
        .map(|(s, _)| line[*s..].trim_end().to_string())
        .unwrap_or_default();
    Some(BirdProtocol {
        name: tok(0).to_string(),
        proto: tok(1).to_string(),
        table: tok(2).to_string(),
        state: tok(3).to_string(),
        since: line[spans[4].0..spans[since_end].1].to_string(),
        info,
        description: None,
        bgp: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     23:39:22.073  

kernel4    Kernel     master4    up     23:39:22.073  
  Channel ipv4
    State:          UP
    Table:          master4
    Preference:     10

peer1      BGP        ---        start  23:39:22.073  Active        Socket: Connection refused
  BGP state:          Active
    Neighbor address: 10.99.0.2
    Neighbor AS:      64513
    Local AS:         64512
    Connect delay:    3.056/5
    Last error:       Socket: Connection refused
  Channel ipv4
    State:          DOWN

Mesh_10_0_0_2 BGP        ---        up     2024-05-01 10:00:00  Established   
  BGP state:          Established
    Neighbor address: fd00::2%eth0
    Neighbor AS:      64511
    Local AS:         64511
    Neighbor ID:      10.0.0.2
";

    #[test]
    fn parses_show_protocols_all() {
        let p = parse_protocols(SAMPLE);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].name, "device1");
        assert_eq!(p[0].proto, "Device");
        assert_eq!(p[0].info, "");
        assert!(p[0].bgp.is_none());
        assert_eq!(p[1].table, "master4");
        assert!(p[1].bgp.is_none());
        assert_eq!(p[2].state, "start");
        assert_eq!(p[2].since, "23:39:22.073");
        assert_eq!(p[2].info, "Active        Socket: Connection refused");
        let bgp = p[2].bgp.as_ref().unwrap();
        assert_eq!(bgp.state, "Active");
        assert_eq!(bgp.neighbor_address, Some("10.99.0.2".parse().unwrap()));
        assert_eq!(bgp.neighbor_as, Some(64513));
        assert_eq!(bgp.local_as, Some(64512));
        assert_eq!(bgp.last_error.as_deref(), Some("Socket: Connection refused"));
        assert_eq!(p[3].name, "Mesh_10_0_0_2");
        assert_eq!(p[3].since, "2024-05-01 10:00:00");
        assert_eq!(p[3].info, "Established");
        let bgp = p[3].bgp.as_ref().unwrap();
        assert_eq!(bgp.neighbor_address, Some("fd00::2".parse().unwrap()));
        assert_eq!(bgp.neighbor_id.as_deref(), Some("10.0.0.2"));
    }
}
