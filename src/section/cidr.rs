//! Address blocks in config (`10.0.0.0/8`, `2001:db8::/32`, a bare address): the trusted
//! proxies of `client_ip` and the balancers a PROXY protocol listener takes headers from.

use std::net::IpAddr;

use ipnet::IpNet;

/// An address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Host bits are allowed and ignored (`10.1.2.3/8` is `10.0.0.0/8`), as in most configs
    /// that list proxies. The address and the length are read apart, so that each gets its
    /// own message.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let ip: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an address or a block like 10.0.0.0/8"))?;
        let Some(len) = len else {
            return Ok(Cidr(IpNet::from(ip)));
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        len.trim()
            .parse::<u8>()
            .ok()
            .and_then(|len| IpNet::new(ip, len).ok())
            .map(|net| Cidr(net.trunc()))
            .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))
    }

    /// An IPv4 address mapped into IPv6 (a dual-stack listener's view of an IPv4 peer) is
    /// matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}
