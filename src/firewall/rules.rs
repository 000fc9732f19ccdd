//! Pure rule rendering: which chain, which rule lines, for IPv4 and IPv6. No I/O here; the
//! runner ([`super::iptables`]) and the merge ([`super::persist`]) take their argument lists and
//! `iptables-save` lines from this module, so both always agree on what "our rule" is.

use serde::Serialize;

/// The DROP target for IPv4 (the instance metadata service).
pub const IMDS_V4: &str = "169.254.169.254/32";
/// The DROP target for IPv6 (IMDS on Nitro instances with IPv6 enabled).
pub const IMDS_V6: &str = "fd00:ec2::254/128";
/// The chain dockerd never rewrites and keeps jumped to first from FORWARD.
pub const DOCKER_USER: &str = "DOCKER-USER";
pub const FORWARD: &str = "FORWARD";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn imds(self) -> &'static str {
        match self {
            Family::V4 => IMDS_V4,
            Family::V6 => IMDS_V6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The prefix length `iptables-save` appends to a bare host address.
    fn host_prefix(self) -> &'static str {
        match self {
            Family::V4 => "/32",
            Family::V6 => "/128",
        }
    }
}

/// Where the DROP rule goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Placement {
    /// Top of DOCKER-USER, with `-j DOCKER-USER` first in FORWARD (the default).
    #[serde(rename = "DOCKER-USER")]
    DockerUser,
    /// Top of FORWARD, as the AWS documentation does; bypassed after dockerd (re)starts.
    #[serde(rename = "FORWARD")]
    Forward,
}

impl Placement {
    pub fn chain(self) -> &'static str {
        match self {
            Placement::DockerUser => DOCKER_USER,
            Placement::Forward => FORWARD,
        }
    }
}

/// Everything one family needs: chain, interfaces, destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub family: Family,
    pub placement: Placement,
    pub interfaces: Vec<String>,
}

impl RuleSet {
    pub fn chain(&self) -> &'static str {
        self.placement.chain()
    }

    /// The rule specification (after `-C/-I/-D CHAIN [N]`) for one interface.
    pub fn spec(&self, iface: &str) -> Vec<String> {
        ["-d", self.family.imds(), "-i", iface, "-j", "DROP"]
            .map(str::to_owned)
            .to_vec()
    }

    /// The rule as `iptables-save` and `iptables -S` print it.
    pub fn save_line(&self, iface: &str) -> String {
        format!("-A {} {}", self.chain(), self.spec(iface).join(" "))
    }

    /// `-A FORWARD -j DOCKER-USER` in the default placement.
    pub fn jump_line(&self) -> Option<String> {
        (self.placement == Placement::DockerUser).then(|| format!("-A {FORWARD} -j {DOCKER_USER}"))
    }

    /// `:DOCKER-USER - [0:0]` in the default placement.
    pub fn chain_decl(&self) -> Option<String> {
        (self.placement == Placement::DockerUser).then(|| format!(":{DOCKER_USER} - [0:0]"))
    }

    /// Whether `line` (from a rules file or `iptables -S`) is our DROP rule for `iface`, in any
    /// option order and in short or long option spelling, with or without the host prefix.
    pub fn is_rule_for(&self, line: &str, iface: &str) -> bool {
        let want = self.normalize(&self.save_line(iface));
        want.is_some() && self.normalize(line) == want
    }

    /// Whether `line` is our DROP rule for any of our interfaces.
    pub fn is_our_rule(&self, line: &str) -> bool {
        self.interfaces.iter().any(|i| self.is_rule_for(line, i))
    }

    /// `-A CHAIN` followed by simple `-x value` pairs, as a sorted list; None for anything with
    /// a negation, a match module or a stray token (never ours).
    fn normalize(&self, line: &str) -> Option<(String, Vec<(String, String)>)> {
        let mut t = line.split_whitespace();
        if t.next()? != "-A" {
            return None;
        }
        let chain = t.next()?.to_owned();
        let mut pairs = vec![];
        while let Some(flag) = t.next() {
            let flag = match flag {
                "--destination" | "--dst" => "-d",
                "--in-interface" => "-i",
                "--jump" => "-j",
                "-d" | "-i" | "-j" => flag,
                _ => return None,
            };
            let mut value = t.next()?.to_owned();
            if flag == "-d" && !value.contains('/') {
                value.push_str(self.family.host_prefix());
            }
            pairs.push((flag.to_owned(), value));
        }
        pairs.sort();
        Some((chain, pairs))
    }
}

/// Checks an interface pattern as iptables accepts it: 1 to 15 bytes, no blank, no `/`, no
/// quote or backslash (for the rules file), no leading `!`, `+` only as the last character. The error says what is wrong and the fix.
pub fn validate_interface(p: &str) -> Result<(), String> {
    let problem = if p.is_empty() {
        Some("it is empty")
    } else if p.len() > 15 {
        Some("it is longer than 15 characters (the kernel's limit for interface names)")
    } else if p
        .chars()
        .any(|c| c.is_whitespace() || "/\0\"'\\".contains(c))
    {
        // Quotes and backslashes are legal in a kernel name, but iptables-restore's tokenizer
        // would read them in the rules file that boots the host.
        Some("it contains a blank, a '/', a quote or a backslash")
    } else if p.starts_with('!') || p.starts_with('-') {
        Some("it starts with '!' or '-'")
    } else if p.trim_end_matches('+').contains('+') || p.ends_with("++") {
        Some("'+' may only end it (docker+ matches every name that starts with docker)")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(why) => Err(format!(
            "--interface {p:?} is not a valid interface pattern: {why}; use a name such as docker0 or a prefix such as docker+ or br-+"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(family: Family, placement: Placement) -> RuleSet {
        RuleSet {
            family,
            placement,
            interfaces: vec!["docker+".into(), "br-+".into()],
        }
    }

    #[test]
    fn renders_like_iptables_save() {
        let v4 = set(Family::V4, Placement::DockerUser);
        assert_eq!(
            v4.save_line("docker+"),
            "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP"
        );
        assert_eq!(v4.jump_line().unwrap(), "-A FORWARD -j DOCKER-USER");
        assert_eq!(v4.chain_decl().unwrap(), ":DOCKER-USER - [0:0]");
        let v6 = set(Family::V6, Placement::Forward);
        assert_eq!(
            v6.save_line("br-+"),
            "-A FORWARD -d fd00:ec2::254/128 -i br-+ -j DROP"
        );
        assert_eq!(v6.jump_line(), None);
        assert_eq!(v6.chain_decl(), None);
        assert_eq!(
            v6.spec("docker+"),
            ["-d", "fd00:ec2::254/128", "-i", "docker+", "-j", "DROP"]
        );
    }

    #[test]
    fn recognizes_our_rule_in_any_spelling() {
        let v4 = set(Family::V4, Placement::DockerUser);
        for l in [
            "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP",
            "-A DOCKER-USER -i docker+ -d 169.254.169.254 -j DROP",
            "-A DOCKER-USER --in-interface docker+ --destination 169.254.169.254/32 --jump DROP",
            "  -A   DOCKER-USER -d 169.254.169.254/32 -i br-+ -j DROP  ",
        ] {
            assert!(v4.is_our_rule(l), "{l}");
        }
        for l in [
            "-A FORWARD -d 169.254.169.254/32 -i docker+ -j DROP",
            "-A DOCKER-USER -d 169.254.169.254/32 -i docker0 -j DROP",
            "-A DOCKER-USER -d 169.254.169.254/32 ! -i docker+ -j DROP",
            "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -p tcp -j DROP",
            "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j REJECT",
            "-I DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP",
            "# -A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP",
            "-A DOCKER-USER -j RETURN",
            "",
        ] {
            assert!(!v4.is_our_rule(l), "{l}");
        }
        let v6 = set(Family::V6, Placement::DockerUser);
        assert!(v6.is_our_rule("-A DOCKER-USER -i docker+ -d fd00:ec2::254 -j DROP"));
        assert!(!v6.is_our_rule("-A DOCKER-USER -i docker+ -d 169.254.169.254/32 -j DROP"));
    }

    #[test]
    fn interface_patterns_are_checked() {
        for ok in ["docker+", "docker0", "br-+", "br-0123456789ab", "+", "eth0"] {
            validate_interface(ok).unwrap();
        }
        for bad in [
            "",
            "a-very-long-interface-name",
            "dock er",
            "a/b",
            "!docker0",
            "do+cker",
            "-x",
            "br-\"x",
            "br-'x",
            "br-\\x",
        ] {
            let e = validate_interface(bad).unwrap_err();
            assert!(e.contains("not a valid interface pattern"), "{e}");
        }
    }
}
