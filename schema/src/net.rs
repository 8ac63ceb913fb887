//! Network value types with strict parsing.
//!
//! They deserialize from the strings users write and serialize back to the same text,
//! so `get -o yaml | apply -f -` round-trips. Strictness lives here (not in later
//! checks) so that every consumer of a parsed resource can trust the value.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A network in CIDR form whose host bits are all zero (`10.65.0.0/16`, `fd00::/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(pub IpNet);

impl Cidr {
    pub fn net(&self) -> IpNet {
        self.0
    }
    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }
    pub fn version(&self) -> u8 {
        if self.is_ipv4() {
            4
        } else {
            6
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // A bare address is a host network: accept it as /32 or /128, which is what
        // users mean in `nets: [10.0.0.5]`.
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Cidr(IpNet::from(ip)));
        }
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("'{s}' is not a CIDR (expected e.g. 10.65.0.0/16 or fd00::/64)"))?;
        if net.trunc() != net {
            return Err(format!("'{s}' has host bits set; the network is {}", net.trunc()));
        }
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An interface address with its prefix (`10.0.0.1/24`): host bits are expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceAddr(pub IpNet);

impl IfaceAddr {
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }
}

impl FromStr for IfaceAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(IfaceAddr(IpNet::from(ip)));
        }
        s.parse::<IpNet>()
            .map(IfaceAddr)
            .map_err(|_| format!("'{s}' is not an IP address (expected e.g. 10.0.0.1 or 10.0.0.1/24)"))
    }
}

impl fmt::Display for IfaceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

macro_rules! string_serde {
    ($ty:ident, $schema_name:literal, $desc:literal, $pattern:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Cow::<str>::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $schema_name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({"type": "string", "description": $desc, "pattern": $pattern})
            }
        }
    };
}

string_serde!(
    Cidr,
    "Cidr",
    "An IPv4 or IPv6 network in CIDR form with no host bits set, or a bare address.",
    "^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"
);
string_serde!(
    IfaceAddr,
    "IfaceAddr",
    "An IPv4 or IPv6 interface address with its prefix length, e.g. 10.0.0.1/24.",
    "^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"
);

/// A port or an inclusive port range: `80` or `"8000:8080"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    Single(u16),
    Range(u16, u16),
}

impl Port {
    pub fn first(&self) -> u16 {
        match *self {
            Port::Single(p) | Port::Range(p, _) => p,
        }
    }
    pub fn last(&self) -> u16 {
        match *self {
            Port::Single(p) | Port::Range(_, p) => p,
        }
    }
    pub fn contains(&self, port: u16) -> bool {
        self.first() <= port && port <= self.last()
    }
}

fn parse_port_number(s: &str) -> Result<u16, String> {
    let n: u64 = s.trim().parse().map_err(|_| format!("'{s}' is not a port number"))?;
    u16::try_from(n).map_err(|_| format!("port {n} is out of range (0-65535)"))
}

impl FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None => parse_port_number(s).map(Port::Single),
            Some((a, b)) => {
                let (a, b) = (parse_port_number(a)?, parse_port_number(b)?);
                if a > b {
                    return Err(format!("port range '{s}' is reversed (first > last)"));
                }
                Ok(if a == b { Port::Single(a) } else { Port::Range(a, b) })
            }
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Single(p) => write!(f, "{p}"),
            Port::Range(a, b) => write!(f, "{a}:{b}"),
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Port::Single(p) => s.serialize_u16(*p),
            Port::Range(..) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number or a \"first:last\" range")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                u16::try_from(v)
                    .map(Port::Single)
                    .map_err(|_| E::custom(format!("port {v} is out of range (0-65535)")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                if v < 0 {
                    return Err(E::custom(format!("port {v} is out of range (0-65535)")));
                }
                self.visit_u64(v as u64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Port, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Port {
    fn schema_name() -> Cow<'static, str> {
        "Port".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A port (0-65535) or an inclusive range \"first:last\".",
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 65535},
                {"type": "string", "pattern": "^[0-9]+(:[0-9]+)?$"}
            ]
        })
    }
}

/// An IP protocol, by name or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    IcmpV6,
    Sctp,
    UdpLite,
    Number(u8),
}

impl Protocol {
    pub const NAMES: [&'static str; 6] = ["TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite"];

    /// The IANA protocol number.
    pub fn number(&self) -> u8 {
        match *self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
            Protocol::IcmpV6 => 58,
            Protocol::Sctp => 132,
            Protocol::UdpLite => 136,
            Protocol::Number(n) => n,
        }
    }
    /// Whether rules may match ports for this protocol.
    pub fn has_ports(&self) -> bool {
        matches!(self.number(), 6 | 17 | 132 | 136)
    }
    pub fn is_icmp(&self) -> bool {
        matches!(self.number(), 1 | 58)
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "TCP" | "tcp" => Protocol::Tcp,
            "UDP" | "udp" => Protocol::Udp,
            "ICMP" | "icmp" => Protocol::Icmp,
            "ICMPv6" | "icmpv6" => Protocol::IcmpV6,
            "SCTP" | "sctp" => Protocol::Sctp,
            "UDPLite" | "udplite" => Protocol::UdpLite,
            other => match other.parse::<u64>() {
                Ok(n) => u8::try_from(n)
                    .map(Protocol::Number)
                    .map_err(|_| format!("protocol number {n} is out of range (0-255)"))?,
                Err(_) => {
                    return Err(format!(
                        "unknown protocol '{other}' (expected one of {} or 0-255)",
                        Self::NAMES.join(", ")
                    ))
                }
            },
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Icmp => f.write_str("ICMP"),
            Protocol::IcmpV6 => f.write_str("ICMPv6"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::UdpLite => f.write_str("UDPLite"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Protocol::Number(n) => s.serialize_u8(*n),
            _ => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Protocol;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a protocol name or number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Protocol, E> {
                u8::try_from(v)
                    .map(Protocol::Number)
                    .map_err(|_| E::custom(format!("protocol number {v} is out of range (0-255)")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Protocol, E> {
                if v < 0 {
                    return Err(E::custom(format!("protocol number {v} is out of range (0-255)")));
                }
                self.visit_u64(v as u64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Protocol, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Protocol {
    fn schema_name() -> Cow<'static, str> {
        "Protocol".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An IP protocol: a name (upper or lower case, as the seed wrote them) or a number 0-255.",
            "anyOf": [
                {"type": "string", "enum": ["TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite",
                                            "tcp", "udp", "icmp", "icmpv6", "sctp", "udplite"]},
                {"type": "integer", "minimum": 0, "maximum": 255}
            ]
        })
    }
}

/// What is wrong with a value that fits none of the forms of a port or a protocol, in
/// the decoder's own words; by the field it stands in (`path` as in diagnostics).
pub(crate) fn explain_any_of(path: &str, value: &serde_json::Value) -> Option<String> {
    let field = path.rsplit('.').next().map(|f| f.split('[').next().unwrap_or(f))?;
    let err = match field {
        "protocol" | "notProtocol" => serde_json::from_value::<Protocol>(value.clone()).err(),
        "ports" | "notPorts" => serde_json::from_value::<Port>(value.clone()).err(),
        _ => None,
    }?;
    // serde_json appends " at line 1 column N" to errors from text; from a Value it
    // does not, but keep only the message either way.
    let text = err.to_string();
    Some(text.split(" at line ").next().unwrap_or(&text).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_strict() {
        assert_eq!("10.0.0.0/8".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
        assert!("10.0.0.1/8".parse::<Cidr>().unwrap_err().contains("host bits"));
        assert_eq!("10.0.0.5".parse::<Cidr>().unwrap().to_string(), "10.0.0.5/32");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/64".parse::<Cidr>().is_ok());
    }

    #[test]
    fn ports() {
        assert_eq!("80".parse::<Port>().unwrap(), Port::Single(80));
        assert_eq!("8000:8080".parse::<Port>().unwrap(), Port::Range(8000, 8080));
        assert!("65536".parse::<Port>().unwrap_err().contains("out of range"));
        assert!("9:8".parse::<Port>().unwrap_err().contains("reversed"));
        let p: Port = serde_json::from_str("443").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "443");
        let p: Port = serde_json::from_str("\"1:2\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"1:2\"");
    }

    #[test]
    fn protocols() {
        let p: Protocol = serde_json::from_str("\"TCP\"").unwrap();
        assert!(p.has_ports());
        let p: Protocol = serde_json::from_str("17").unwrap();
        assert!(p.has_ports());
        assert!(serde_json::from_str::<Protocol>("256").is_err());
        assert!(serde_json::from_str::<Protocol>("\"FOO\"").is_err());
    }
}
