//! CIDR ranges for `allowed_ips`. Two ranges either nest or are disjoint, which keeps
//! containment and intersection exact.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    /// The network address, host bits cleared; IPv4 kept as IPv4.
    addr: IpAddr,
    prefix: u8,
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn mask(width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        let all = if width == 32 {
            u32::MAX as u128
        } else {
            u128::MAX
        };
        all & !((1u128 << (width - prefix)) - 1)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 client it stands for.
pub fn canonical_ip(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

/// Who an unauthenticated peer is for a per-peer bound: its address, an IPv6 address by its
/// /64 (one host commonly holds a whole /64).
pub fn peer_key(addr: IpAddr) -> IpAddr {
    match canonical_ip(addr) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

impl IpNet {
    /// Accepts `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a single host).
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let invalid = || {
            format!(
                "invalid CIDR range {:?}: expected an address with an optional /prefix, \
                 such as 10.0.0.0/8 or 2001:db8::/32",
                crate::secret::truncate_for_message(text)
            )
        };
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| invalid())?;
        let (value, width) = bits(addr);
        let prefix = match prefix_text {
            None => width,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| invalid())?
            }
            Some(_) => return Err(invalid()),
        };
        if prefix > width {
            return Err(invalid());
        }
        let network = value & mask(width, prefix);
        Ok(match addr {
            IpAddr::V4(_) => IpNet {
                addr: IpAddr::V4((network as u32).into()),
                prefix,
            },
            // `::ffff:10.0.0.0/104` is the IPv4 range 10.0.0.0/8: clients are matched as IPv4
            // (`canonical_ip`), so a mapped range kept as IPv6 would contain nobody.
            IpAddr::V6(_) => match std::net::Ipv6Addr::from(network).to_ipv4_mapped() {
                Some(v4) => IpNet {
                    addr: IpAddr::V4(v4),
                    prefix: prefix - 96,
                },
                None => IpNet {
                    addr: IpAddr::V6(network.into()),
                    prefix,
                },
            },
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, width) = bits(self.addr);
        let (value, ip_width) = bits(canonical_ip(ip));
        width == ip_width && value & mask(width, self.prefix) == net
    }

    /// `0.0.0.0/32` or `::/128`: no client can connect from there, so the range matches nobody
    /// and lies within every other range.
    pub fn is_unspecified_host(&self) -> bool {
        self.addr.is_unspecified() && self.prefix == bits(self.addr).1
    }

    /// `self ⊆ other`.
    pub fn is_within(&self, other: &IpNet) -> bool {
        other.prefix <= self.prefix && other.contains(self.addr)
    }
}

/// `inner ⊆ outer` where an empty list means every address.
pub fn ranges_within(inner: &[IpNet], outer: &[IpNet]) -> bool {
    if outer.is_empty() {
        return true;
    }
    !inner.is_empty()
        && inner
            .iter()
            .all(|n| n.is_unspecified_host() || outer.iter().any(|o| n.is_within(o)))
}

/// True when `ip` is allowed by `ranges` (empty = any address).
pub fn address_allowed(ranges: &[IpNet], ip: IpAddr) -> bool {
    ranges.is_empty() || ranges.iter().any(|n| n.contains(ip))
}

/// Addresses in both lists (empty = any). `None` when nothing is left, which an empty list
/// cannot express.
pub fn intersect_ranges(a: &[IpNet], b: &[IpNet]) -> Option<Vec<IpNet>> {
    if a.is_empty() {
        return Some(b.to_vec());
    }
    if b.is_empty() {
        return Some(a.to_vec());
    }
    let mut out: Vec<IpNet> = Vec::new();
    for x in a {
        for y in b {
            if x.is_within(y) {
                out.push(*x);
            } else if y.is_within(x) {
                out.push(*y);
            }
        }
    }
    out.sort();
    out.dedup();
    let minimal: Vec<IpNet> = out
        .iter()
        .filter(|n| !out.iter().any(|o| o != *n && n.is_within(o)))
        .copied()
        .collect();
    (!minimal.is_empty()).then_some(minimal)
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl schemars::JsonSchema for IpNet {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IpNet".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A CIDR range, e.g. 10.0.0.0/8 or 2001:db8::/32.",
        })
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        IpNet::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn net(s: &str) -> IpNet {
        IpNet::parse(s).unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("192.168.1.7").to_string(), "192.168.1.7/32");
        assert_eq!(net("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        for bad in [
            "",
            "10.0.0.300/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "::/129",
            "x",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn mapped_ipv6_clients_count_as_ipv4() {
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert!(net("10.0.0.0/8").contains(mapped));
    }

    #[test]
    fn mapped_ipv6_ranges_are_ipv4_ranges() {
        let mapped = net("::ffff:10.0.0.0/104");
        assert_eq!(mapped, net("10.0.0.0/8"));
        assert!(mapped.contains("::ffff:10.0.0.5".parse().unwrap()));
        assert!(mapped.contains("10.200.0.1".parse().unwrap()));
        assert!(ranges_within(&[mapped], &[mapped]));
        // Below /96 the range leaves the mapped block and stays IPv6.
        assert_eq!(net("::ffff:0.0.0.0/95").to_string(), "::fffe:0:0/95");
    }

    fn arb_v4_net() -> impl Strategy<Value = IpNet> {
        // A small space (10.0.0.0/28 and around) so brute force over it is exhaustive.
        (0u32..32, 24u8..=32).prop_map(|(host, prefix)| {
            net(&format!("{}/{prefix}", Ipv4Addr::from(0x0a00_0000 | host)))
        })
    }

    proptest! {
        #[test]
        fn containment_agrees_with_brute_force(a in arb_v4_net(), b in arb_v4_net()) {
            let sample = (0u32..512).map(|h| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | h)));
            let brute = sample.clone().all(|ip| !a.contains(ip) || b.contains(ip));
            prop_assert_eq!(a.is_within(&b), brute);
            if let Some(i) = intersect_ranges(&[a], &[b]) {
                for ip in sample {
                    prop_assert_eq!(address_allowed(&i, ip), a.contains(ip) && b.contains(ip));
                }
            } else {
                prop_assert!(sample.clone().all(|ip| !(a.contains(ip) && b.contains(ip))));
            }
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,60}") {
            let _ = IpNet::parse(&s);
        }
    }
}
