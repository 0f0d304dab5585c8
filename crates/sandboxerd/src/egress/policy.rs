//! A profile's `network: {mode: egress, allow, deny}` as rules, and the
//! decision for one destination.
//!
//! A rule is a name (`pypi.org`), a wildcard (`*.pythonhosted.org`: any
//! name below it, not the name itself), an address or a CIDR
//! (`10.1.0.0/16`, `2001:db8::/32`), each optionally with `:port`
//! (`[2001:db8::1]:443` for an IPv6 address with a port). Names compare
//! case-insensitively and without a trailing dot.
//!
//! The decision, deny first:
//! - a name: denied when a `deny` name rule matches it; allowed when an
//!   `allow` name rule matches it, or when the operator's `resolve` table
//!   maps it into an `allow` CIDR (a name no name rule allows is never
//!   looked up in DNS). Its addresses are then checked as below, and only
//!   those that pass are connected to; an address inside the host's own or
//!   private ranges (loopback, RFC 1918, link-local, CGNAT, ULA, NAT64 of
//!   those, ...) passes only when an `allow` CIDR holds it or the
//!   operator's `resolve` table gave it for a name a name rule allows: a
//!   public name never leads inside (DNS rebinding).
//! - an address: denied when a `deny` CIDR holds it; allowed only when an
//!   `allow` CIDR holds it (a raw IP is refused otherwise).
//! - never, whatever the rules: the daemon's own listening addresses (its
//!   API and SSH gateway), see [`Protected`].

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use sandboxer_api::{normalize_name, NetworkPolicy};

/// What a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Exactly this name (lower case, no trailing dot).
    Name(String),
    /// Any name ending in `.` + this.
    Below(String),
    Net(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    target: Target,
    port: Option<u16>,
}

impl Rule {
    fn port_ok(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    fn matches_name(&self, name: &str, port: u16) -> bool {
        self.port_ok(port)
            && match &self.target {
                Target::Name(n) => n == name,
                Target::Below(suffix) => name
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                Target::Net(_) => false,
            }
    }

    fn holds(&self, ip: IpAddr, port: u16) -> bool {
        self.port_ok(port)
            && match &self.target {
                Target::Net(net) => net.contains(&canonical(ip)),
                _ => false,
            }
    }
}

/// The rules of one sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

/// Why a destination is refused, as written into the network log.
pub type Refusal = String;

impl Policy {
    /// The rules of `network` (its `mode` is not looked at). The error
    /// names the field and entry at fault, e.g. ``field `network.allow[2]`: ...``.
    pub fn parse(network: &NetworkPolicy) -> Result<Policy, String> {
        let list = |field: &str, entries: &[String]| {
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    parse_rule(e)
                        .map_err(|why| format!("field `network.{field}[{i}]`: `{e}` {why}"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Policy {
            allow: list("allow", &network.allow)?,
            deny: list("deny", &network.deny)?,
        })
    }

    /// The first decision on a name: `Ok` when the rules let it be
    /// resolved (the addresses are checked by [`Policy::check_address`]).
    /// A name no name rule allows is `IfAddressesAllowed` when a range
    /// might hold it; the proxy then looks it up only in the operator's
    /// `resolve` table, never in DNS (a lookup of any name would be a way
    /// out through DNS).
    pub fn check_name(&self, name: &str, port: u16) -> Result<NameVerdict, Refusal> {
        if let Some(r) = self.deny.iter().find(|r| r.matches_name(name, port)) {
            return Err(format!("`{name}` is denied by `{}`", show(r)));
        }
        if let Some(r) = self.allow.iter().find(|r| r.matches_name(name, port)) {
            return Ok(NameVerdict::ByName(show(r)));
        }
        if self
            .allow
            .iter()
            .any(|r| matches!(r.target, Target::Net(_)) && r.port_ok(port))
        {
            return Ok(NameVerdict::IfAddressesAllowed);
        }
        Err(format!("`{name}` is not in the allow list"))
    }

    /// Whether `ip:port` may be connected to, and why. `by_name`: the
    /// destination was named and a name rule allows the name; `trusted`:
    /// the operator's `resolve` table gave the address.
    pub fn check_address(
        &self,
        ip: IpAddr,
        port: u16,
        by_name: bool,
        trusted: bool,
        protected: &Protected,
    ) -> Result<String, Refusal> {
        let ip = canonical(ip);
        if protected.covers(ip, port) {
            return Err(format!(
                "{} is sand-boxer's own endpoint",
                SocketAddr::new(ip, port)
            ));
        }
        if let Some(r) = self.deny.iter().find(|r| r.holds(ip, port)) {
            return Err(format!("{ip} is denied by `{}`", show(r)));
        }
        if let Some(r) = self.allow.iter().find(|r| r.holds(ip, port)) {
            return Ok(format!("{ip} is in `{}`", show(r)));
        }
        if !by_name {
            return Err(format!("{ip} is not in an allowed range"));
        }
        // The operator's table vouches for its addresses, but only for
        // a name a name rule allows.
        if trusted {
            return Ok(format!("{ip} is the operator's `[egress] resolve` entry"));
        }
        if is_internal(ip) {
            return Err(format!(
                "the name resolved to {ip}, an internal address no `allow` range names"
            ));
        }
        Ok(format!("{ip} is a public address"))
    }
}

/// How a name passed [`Policy::check_name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameVerdict {
    /// A name rule allows it (the rule, as written back).
    ByName(String),
    /// No name rule does: its addresses must all be in allowed ranges.
    IfAddressesAllowed,
}

/// The daemon's own endpoints, which no sandbox reaches whatever its rules.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    /// Listening addresses; an unspecified one (`0.0.0.0:7443`) stands for
    /// its port on every address of this host.
    pub listen: Vec<SocketAddr>,
    /// This host's own addresses (for unspecified listeners).
    pub local: Vec<IpAddr>,
}

impl Protected {
    fn covers(&self, ip: IpAddr, port: u16) -> bool {
        self.listen.iter().any(|l| {
            let own = canonical(l.ip());
            l.port() == port
                && (own == ip
                    // 0.0.0.0 and :: are this host.
                    || ip.is_unspecified()
                    // A loopback listener answers on every loopback address.
                    || (own.is_loopback() && ip.is_loopback())
                    || (own.is_unspecified() && (ip.is_loopback() || self.local.contains(&ip))))
        })
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses of this host or of private networks (also when embedded in
/// an IPv6 address that translates to them: NAT64, 6to4, v4-compatible),
/// and cloud platforms' own endpoints.
pub fn is_internal(ip: IpAddr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        if is_internal(IpAddr::V4(v4)) {
            return true;
        }
    }
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                // CGNAT 100.64.0.0/10
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                // 198.18.0.0/15 (benchmarking), 240.0.0.0/4 (reserved)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
                // Azure's WireServer (169.254.169.254 is link-local above)
                || o == [168, 63, 129, 16]
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // 64:ff9b:1::/48, local-use NAT64
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
        }
    }
}

/// The IPv4 address an IPv6 one stands for through NAT64 (`64:ff9b::/96`),
/// 6to4 (`2002::/16`) or the old IPv4-compatible form (`::a.b.c.d`).
fn embedded_v4(ip: IpAddr) -> Option<std::net::Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let o = v6.octets();
    let v4 = |a: usize| std::net::Ipv4Addr::new(o[a], o[a + 1], o[a + 2], o[a + 3]);
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(v4(12))
    } else if s[0] == 0x2002 {
        Some(v4(2))
    } else if s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
        Some(v4(12))
    } else {
        None
    }
}

fn show(r: &Rule) -> String {
    let target = match &r.target {
        Target::Name(n) => n.clone(),
        Target::Below(s) => format!("*.{s}"),
        Target::Net(n) => n.to_string(),
    };
    match r.port {
        Some(p) if target.contains(':') => format!("[{target}]:{p}"),
        Some(p) => format!("{target}:{p}"),
        None => target,
    }
}

fn parse_rule(text: &str) -> Result<Rule, &'static str> {
    let text = text.trim();
    if text.is_empty() {
        return Err("is empty");
    }
    // `[v6]:port`, `[v6]`, `v6`, `v6/len`, `v4/len:port`, `name:port`, ...
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("has `[` without `]`")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("has text after `]`")?),
        };
        (inside, port)
    } else if text.matches(':').count() == 1 {
        let (h, p) = text.split_once(':').ok_or("is not a rule")?;
        (h, Some(p))
    } else {
        (text, None)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err("has a port that is not from 1 to 65535"),
            Ok(p) => Some(p),
        },
    };
    let target = if let Ok(ip) = host.parse::<IpAddr>() {
        Target::Net(IpNet::from(canonical(ip)))
    } else if let Ok(net) = host.parse::<IpNet>() {
        if net != net.trunc() {
            return Err("has host bits set after its prefix (write the network address)");
        }
        Target::Net(net)
    } else if host == "*" || host == "*." {
        return Err("would allow every name: use `mode: open`, or list the domains");
    } else if let Some(suffix) = host.strip_prefix("*.") {
        Target::Below(normalize_name(suffix).ok_or(
            "is not a domain, `*.domain`, an IP address or a CIDR (optionally with `:port`)",
        )?)
    } else {
        Target::Name(normalize_name(host).ok_or(
            "is not a domain, `*.domain`, an IP address or a CIDR (optionally with `:port`)",
        )?)
    };
    Ok(Rule { target, port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandboxer_api::NetworkMode;

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        Policy::parse(&NetworkPolicy {
            mode: NetworkMode::Egress,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn none() -> Protected {
        Protected::default()
    }

    #[test]
    fn names_and_wildcards() {
        let p = policy(&["pypi.org", "*.pythonhosted.org", "git.test:443"], &[]);
        assert_eq!(
            p.check_name("pypi.org", 443),
            Ok(NameVerdict::ByName("pypi.org".into()))
        );
        assert!(p.check_name("evil.pypi.org", 443).is_err());
        assert!(
            p.check_name("pythonhosted.org", 443).is_err(),
            "wildcard is below only"
        );
        assert!(p.check_name("files.pythonhosted.org", 80).is_ok());
        assert!(p.check_name("a.b.pythonhosted.org", 80).is_ok());
        assert!(p.check_name("xpythonhosted.org", 80).is_err());
        assert!(p.check_name("git.test", 443).is_ok());
        assert!(p.check_name("git.test", 80).is_err(), "port bound");
        // Callers normalise before asking.
        assert_eq!(normalize_name("PyPI.org."), Some("pypi.org".into()));
        assert_eq!(normalize_name("a..b"), None);
        assert_eq!(normalize_name("-a.b"), None);
        assert_eq!(normalize_name("a b"), None);
        assert_eq!(normalize_name(&"a".repeat(64)), None);
    }

    #[test]
    fn deny_wins() {
        let p = policy(&["*.corp.test"], &["secret.corp.test", "10.0.0.0/8"]);
        assert!(p.check_name("wiki.corp.test", 443).is_ok());
        assert!(p
            .check_name("secret.corp.test", 443)
            .unwrap_err()
            .contains("denied by `secret.corp.test`"));
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        assert!(p.check_address(public, 443, true, false, &none()).is_ok());
        let ten: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(p
            .check_address(ten, 443, true, true, &none())
            .unwrap_err()
            .contains("denied"));
    }

    #[test]
    fn raw_addresses_need_a_range() {
        let p = policy(
            &["example.test", "203.0.113.0/24", "[2001:db8::1]:443"],
            &[],
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p
            .check_address(ip("203.0.113.9"), 80, false, false, &none())
            .is_ok());
        assert!(p
            .check_address(ip("198.51.100.1"), 80, false, false, &none())
            .is_err());
        assert!(p
            .check_address(ip("2001:db8::1"), 443, false, false, &none())
            .is_ok());
        assert!(p
            .check_address(ip("2001:db8::1"), 80, false, false, &none())
            .is_err());
        // A mapped address is the IPv4 address it is.
        assert!(p
            .check_address(ip("::ffff:203.0.113.9"), 80, false, false, &none())
            .is_ok());
    }

    #[test]
    fn a_public_name_never_leads_inside() {
        let p = policy(&["rebind.test"], &[]);
        for inside in [
            "127.0.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:5",
            "64:ff9b::7f00:1",
            "2002:a00:1::1",
            "::10.0.0.1",
            "64:ff9b:1::1",
            "168.63.129.16",
        ] {
            let ip: IpAddr = inside.parse().unwrap();
            assert!(
                p.check_address(ip, 80, true, false, &none()).is_err(),
                "{inside}"
            );
            // ... unless the operator's table gave it.
            assert!(
                p.check_address(ip, 80, true, true, &none()).is_ok(),
                "{inside}"
            );
        }
        // A public address behind NAT64 or 6to4 is public.
        for public in ["64:ff9b::5db8:d822", "2002:5db8:d822::1"] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(
                p.check_address(ip, 80, true, false, &none()).is_ok(),
                "{public}"
            );
        }
    }

    #[test]
    fn the_operators_table_vouches_only_for_names_a_name_rule_allows() {
        // A range rule makes every name `IfAddressesAllowed`: an internal
        // address from the table must still be in a range.
        let p = policy(&["10.20.0.0/16"], &[]);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(p.check_address(ip, 80, false, true, &none()).is_err());
        let ip: IpAddr = "10.20.0.5".parse().unwrap();
        assert!(p.check_address(ip, 80, false, true, &none()).is_ok());
    }

    #[test]
    fn names_by_ranges() {
        let p = policy(&["10.20.0.0/16"], &[]);
        assert_eq!(
            p.check_name("db.internal", 5432),
            Ok(NameVerdict::IfAddressesAllowed)
        );
        let ip: IpAddr = "10.20.1.1".parse().unwrap();
        assert!(p.check_address(ip, 5432, false, false, &none()).is_ok());
        let ip: IpAddr = "10.21.1.1".parse().unwrap();
        assert!(p.check_address(ip, 5432, false, false, &none()).is_err());
        assert!(policy(&["pypi.org"], &[])
            .check_name("db.internal", 1)
            .is_err());
    }

    #[test]
    fn own_endpoints_are_never_reached() {
        let p = policy(&["0.0.0.0/0", "::/0", "api.test"], &[]);
        let protected = Protected {
            listen: vec![
                "127.0.0.1:7443".parse().unwrap(),
                "0.0.0.0:2222".parse().unwrap(),
            ],
            local: vec!["192.0.2.10".parse().unwrap()],
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (addr, port) in [
            ("127.0.0.1", 7443),
            ("127.0.0.2", 7443),
            ("::ffff:127.0.0.1", 7443),
            ("127.0.0.1", 2222),
            ("192.0.2.10", 2222),
            ("0.0.0.0", 2222),
        ] {
            assert!(
                p.check_address(ip(addr), port, true, true, &protected)
                    .unwrap_err()
                    .contains("own endpoint"),
                "{addr}:{port}"
            );
        }
        assert!(p
            .check_address(ip("127.0.0.1"), 7444, false, false, &protected)
            .is_ok());
        assert!(p
            .check_address(ip("192.0.2.10"), 7443, false, false, &protected)
            .is_ok());
    }

    #[test]
    fn bad_rules_name_their_entry() {
        for (bad, why) in [
            ("", "empty"),
            ("*", "every name"),
            ("a b.test", "not a domain"),
            ("pypi.org:0", "port"),
            ("pypi.org:99999", "port"),
            ("10.0.0.1/8", "host bits"),
            ("[::1", "without `]`"),
            ("[::1]x", "after `]`"),
        ] {
            let e = Policy::parse(&NetworkPolicy {
                mode: NetworkMode::Egress,
                allow: vec!["ok.test".into(), bad.into()],
                deny: vec![],
            })
            .unwrap_err();
            assert!(
                e.contains("network.allow[1]") && e.contains(why),
                "{bad}: {e}"
            );
        }
        let e = Policy::parse(&NetworkPolicy {
            mode: NetworkMode::Egress,
            allow: vec![],
            deny: vec!["nope nope".into()],
        })
        .unwrap_err();
        assert!(e.contains("network.deny[0]"), "{e}");
    }
}
