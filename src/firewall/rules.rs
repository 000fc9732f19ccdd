//! Pure rule rendering: which chain, which rule lines, for IPv4 and IPv6. No I/O here; the
//! runner ([`super::iptables`]) and the merge ([`super::persist`]) take their argument lists and
//! `iptables-save` lines from this module, so both always agree on what "our rule" is.

use serde::Serialize;

/// The DROP target for IPv4 (the instance metadata service).
pub(crate) const IMDS_V4: &str = "169.254.169.254/32";
/// The DROP target for IPv6 (IMDS on Nitro instances with IPv6 enabled).
pub(crate) const IMDS_V6: &str = "fd00:ec2::254/128";
/// The chain dockerd never rewrites and keeps jumped to first from FORWARD.
pub(crate) const DOCKER_USER: &str = "DOCKER-USER";
pub(crate) const FORWARD: &str = "FORWARD";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn imds(self) -> &'static str {
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
#[cfg_attr(test, derive(schemars::JsonSchema))]
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

/// The comment our rules carry (`-m comment --comment ecs-bootstrap`): it makes them ours
/// beyond doubt, so a change of `--interface` or `--chain`, or `block-imds --remove`, removes
/// exactly what we added. The comment match works alike on iptables-nft and iptables-legacy.
pub(crate) const COMMENT: &str = "ecs-bootstrap";
/// The comment of a temporary copy that holds the block while a rule is moved one command at a
/// time (deleting by rule spec deletes the first match, so the copy must differ).
pub(crate) const MOVING_COMMENT: &str = "ecs-bootstrap-moving";

/// Everything one family needs: chain, interfaces, destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub family: Family,
    pub placement: Placement,
    pub interfaces: Vec<String>,
}

/// What a rule line (from `iptables -S` or a rules file) is to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A DROP of the family's IMDS address for `iface` with our comment: ours.
    Ours { chain: String, iface: String },
    /// The same DROP with the comment of a copy made while moving: ours, left by a killed run.
    Moving { chain: String, iface: String },
    /// The same DROP without a comment: the AWS documentation's seed rule
    /// (`-I FORWARD 1 -i docker+ -d 169.254.169.254/32 -j DROP`, any spelling), or an earlier
    /// rendering of ours.
    Plain { chain: String, iface: String },
    /// `-j DOCKER-USER` in FORWARD with no match: the jump (Docker's and ours alike).
    Jump,
    /// A copy of the jump made while moving it.
    MovingJump,
    /// Anything else: another tool's rule.
    Other,
}

/// `-A`/`-I` (any spelling) and the chain of a rule line; None for anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Append,
    /// `-I CHAIN [POS]`
    Insert(usize),
}

/// A rule line split into its operation, chain and the simple options we care about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Parsed {
    dest: Option<String>,
    iface: Option<String>,
    target: Option<String>,
    comment: Option<String>,
    /// Any other option, a negation or a stray token: never ours.
    extra: bool,
}

/// Splits a line as iptables-restore does: on blanks, with double quotes grouping.
pub(crate) fn tokens(line: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The operation, chain and the rest of a rule line (`-A CHAIN ...`, `--insert CHAIN 2 ...`).
pub(crate) fn split_rule(line: &str) -> Option<(Op, String, Vec<String>)> {
    let mut t = tokens(line);
    // `iptables-save -c` puts the counters first: `[5:300] -A CHAIN ...`.
    if t.first()
        .is_some_and(|w| w.starts_with('[') && w.ends_with(']'))
    {
        t.remove(0);
    }
    let mut it = t.into_iter();
    let op = it.next()?;
    let chain = it.next()?;
    let mut rest: Vec<String> = it.collect();
    let op = match op.as_str() {
        "-A" | "--append" => Op::Append,
        "-I" | "--insert" => {
            let pos = match rest.first().and_then(|p| p.parse::<usize>().ok()) {
                Some(p) => {
                    rest.remove(0);
                    p
                }
                None => 1,
            };
            Op::Insert(pos)
        }
        _ => return None,
    };
    Some((op, chain, rest))
}

fn parse_spec(rest: &[String]) -> Parsed {
    let mut p = Parsed::default();
    let mut t = rest.iter();
    while let Some(flag) = t.next() {
        let Some(value) = t.next() else {
            p.extra = true;
            break;
        };
        let slot = match flag.as_str() {
            "-d" | "--destination" | "--dst" => &mut p.dest,
            "-i" | "--in-interface" => &mut p.iface,
            "-j" | "--jump" => &mut p.target,
            "--comment" => &mut p.comment,
            "-m" | "--match" if value == "comment" => continue,
            _ => {
                p.extra = true;
                break;
            }
        };
        if slot.replace(value.clone()).is_some() {
            p.extra = true;
            break;
        }
    }
    p
}

impl RuleSet {
    pub fn chain(&self) -> &'static str {
        self.placement.chain()
    }

    /// The rule specification (after `-C/-I/-D CHAIN [N]`) for one interface, with our comment.
    pub(crate) fn spec(&self, iface: &str) -> Vec<String> {
        self.spec_with(iface, Some(COMMENT))
    }

    /// The rule specification with another comment, or none (the seed rule's spelling).
    pub(crate) fn spec_with(&self, iface: &str, comment: Option<&str>) -> Vec<String> {
        let mut s: Vec<String> = ["-d", self.family.imds(), "-i", iface]
            .map(str::to_owned)
            .to_vec();
        if let Some(c) = comment {
            s.extend(["-m", "comment", "--comment", c].map(str::to_owned));
        }
        s.extend(["-j", "DROP"].map(str::to_owned));
        s
    }

    /// The rule as `iptables-save` and `iptables -S` print it.
    pub fn save_line(&self, iface: &str) -> String {
        format!("-A {} {}", self.chain(), self.spec(iface).join(" "))
    }

    /// The rule as a rules file holds it: inserted at the top, so that it comes first after a
    /// restore whatever the file's other lines do.
    pub(crate) fn insert_line(&self, iface: &str) -> String {
        format!("-I {} 1 {}", self.chain(), self.spec(iface).join(" "))
    }

    /// `-A FORWARD -j DOCKER-USER` in the default placement.
    pub fn jump_line(&self) -> Option<String> {
        (self.placement == Placement::DockerUser).then(|| format!("-A {FORWARD} -j {DOCKER_USER}"))
    }

    /// `:DOCKER-USER - [0:0]` in the default placement.
    pub fn chain_decl(&self) -> Option<String> {
        (self.placement == Placement::DockerUser).then(|| format!(":{DOCKER_USER} - [0:0]"))
    }

    /// What `line` (`-A`/`-I` in any spelling, from `iptables -S` or a rules file) is to us.
    pub fn classify(&self, line: &str) -> Line {
        let Some((_, chain, rest)) = split_rule(line) else {
            return Line::Other;
        };
        let p = parse_spec(&rest);
        if p.extra {
            return Line::Other;
        }
        if chain == FORWARD
            && p.target.as_deref() == Some(DOCKER_USER)
            && p.dest.is_none()
            && p.iface.is_none()
        {
            return match p.comment.as_deref() {
                None => Line::Jump,
                Some(MOVING_COMMENT) => Line::MovingJump,
                Some(_) => Line::Other,
            };
        }
        let dest = p.dest.map(|d| {
            if d.contains('/') {
                d
            } else {
                format!("{d}{}", self.family.host_prefix())
            }
        });
        let (Some(iface), Some("DROP")) = (p.iface, p.target.as_deref()) else {
            return Line::Other;
        };
        if dest.as_deref() != Some(self.family.imds()) || (chain != FORWARD && chain != DOCKER_USER)
        {
            return Line::Other;
        }
        match p.comment.as_deref() {
            Some(COMMENT) => Line::Ours { chain, iface },
            Some(MOVING_COMMENT) => Line::Moving { chain, iface },
            None => Line::Plain { chain, iface },
            Some(_) => Line::Other,
        }
    }

    /// Whether `line` is our DROP rule for `iface` in our chain, in any option order and in
    /// short or long option spelling, with or without the host prefix.
    pub(crate) fn is_rule_for(&self, line: &str, iface: &str) -> bool {
        matches!(self.classify(line), Line::Ours { chain, iface: i } if chain == self.chain() && i == iface)
    }

    /// Whether `line` is our DROP rule for any of our interfaces, in our chain.
    pub fn is_our_rule(&self, line: &str) -> bool {
        self.interfaces.iter().any(|i| self.is_rule_for(line, i))
    }

    /// Whether `iface` is one of the interfaces we block.
    pub(crate) fn wants(&self, iface: &str) -> bool {
        self.interfaces.iter().any(|i| i == iface)
    }
}

/// Checks an interface pattern as iptables accepts it: 1 to 15 bytes, no blank, no `/`, no
/// quote or backslash (for the rules file), no leading `!`, `+` only as the last character,
/// no `:` and not `.` or `..` (the kernel never names an interface so). Shell-glob characters
/// (`*`, `?`, `[`, `]`) are refused: iptables would match them literally, so `docker*` blocks
/// nothing. The error says what is wrong and the fix.
pub(crate) fn validate_interface(p: &str) -> Result<(), String> {
    if let Some(at) = p.find(['*', '?', '[', ']']) {
        let stem = p[..at].trim_end_matches('+');
        return Err(format!(
            "--interface {p:?} is not a valid interface pattern: iptables matches '{}' literally, so it would block nothing; iptables' wildcard is +: did you mean {stem}+?",
            &p[at..=at]
        ));
    }
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
    } else if p.contains(':') || p == "." || p == ".." {
        Some("the kernel never names an interface with a ':' or '.' or '..'")
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
            "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP"
        );
        assert_eq!(
            v4.insert_line("docker+"),
            "-I DOCKER-USER 1 -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP"
        );
        assert_eq!(v4.jump_line().unwrap(), "-A FORWARD -j DOCKER-USER");
        assert_eq!(v4.chain_decl().unwrap(), ":DOCKER-USER - [0:0]");
        let v6 = set(Family::V6, Placement::Forward);
        assert_eq!(
            v6.save_line("br-+"),
            "-A FORWARD -d fd00:ec2::254/128 -i br-+ -m comment --comment ecs-bootstrap -j DROP"
        );
        assert_eq!(v6.jump_line(), None);
        assert_eq!(v6.chain_decl(), None);
        assert_eq!(
            v6.spec_with("docker+", None),
            ["-d", "fd00:ec2::254/128", "-i", "docker+", "-j", "DROP"]
        );
    }

    #[test]
    fn recognizes_our_rule_in_any_spelling() {
        let v4 = set(Family::V4, Placement::DockerUser);
        for l in [
            "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
            "-A DOCKER-USER -i docker+ -m comment --comment \"ecs-bootstrap\" -d 169.254.169.254 -j DROP",
            "--append DOCKER-USER --in-interface docker+ --destination 169.254.169.254/32 --match comment --comment ecs-bootstrap --jump DROP",
            "-I DOCKER-USER 1 -d 169.254.169.254/32 -i br-+ -m comment --comment ecs-bootstrap -j DROP",
            "  -A   DOCKER-USER -d 169.254.169.254/32 -i br-+ -m comment --comment ecs-bootstrap -j DROP  ",
        ] {
            assert!(v4.is_our_rule(l), "{l}");
        }
        for l in [
            "-A FORWARD -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
            "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP",
            "-A DOCKER-USER -d 169.254.169.254/32 -i docker0 -m comment --comment ecs-bootstrap -j DROP",
            "-A DOCKER-USER -d 169.254.169.254/32 ! -i docker+ -m comment --comment ecs-bootstrap -j DROP",
            "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -p tcp -m comment --comment ecs-bootstrap -j DROP",
            "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j REJECT",
            "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment other -j DROP",
            "# -A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
            "-A DOCKER-USER -j RETURN",
            "",
        ] {
            assert!(!v4.is_our_rule(l), "{l}");
        }
        let v6 = set(Family::V6, Placement::DockerUser);
        assert!(v6.is_our_rule(
            "-A DOCKER-USER -i docker+ -d fd00:ec2::254 -m comment --comment ecs-bootstrap -j DROP"
        ));
        assert!(!v6.is_our_rule(
            "-A DOCKER-USER -i docker+ -d 169.254.169.254/32 -m comment --comment ecs-bootstrap -j DROP"
        ));
    }

    #[test]
    fn classifies_seed_jump_and_others() {
        let v4 = set(Family::V4, Placement::DockerUser);
        let plain = |c: &str, i: &str| Line::Plain {
            chain: c.into(),
            iface: i.into(),
        };
        // The documented seed rule, in the spellings of the documentation and of iptables -S.
        assert_eq!(
            v4.classify("--insert FORWARD 1 --in-interface docker+ --destination 169.254.169.254/32 --jump DROP"),
            plain("FORWARD", "docker+")
        );
        assert_eq!(
            v4.classify("-A FORWARD -d 169.254.169.254/32 -i docker+ -j DROP"),
            plain("FORWARD", "docker+")
        );
        assert_eq!(v4.classify("-A FORWARD -j DOCKER-USER"), Line::Jump);
        assert_eq!(v4.classify("-I FORWARD -j DOCKER-USER"), Line::Jump);
        assert_eq!(
            v4.classify("[12:720] -A FORWARD -j DOCKER-USER"),
            Line::Jump
        );
        assert_eq!(
            v4.classify("-A FORWARD -m comment --comment ecs-bootstrap-moving -j DOCKER-USER"),
            Line::MovingJump
        );
        assert_eq!(
            v4.classify("-A FORWARD -i eth0 -j DOCKER-USER"),
            Line::Other
        );
        assert_eq!(
            v4.classify("-A DOCKER-USER -i docker0 -m comment --comment \"admin rule\" -j ACCEPT"),
            Line::Other
        );
        assert_eq!(
            v4.classify("-A INPUT -d 169.254.169.254/32 -i docker+ -j DROP"),
            Line::Other
        );
        assert_eq!(
            tokens("-A X -m comment --comment \"a b\" -j ACCEPT"),
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                "a b",
                "-j",
                "ACCEPT"
            ]
        );
        assert_eq!(
            split_rule("-I FORWARD 3 -j DOCKER-USER").unwrap().0,
            Op::Insert(3)
        );
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
            "eth0:1",
            ".",
            "..",
        ] {
            let e = validate_interface(bad).unwrap_err();
            assert!(e.contains("not a valid interface pattern"), "{e}");
        }
        for (glob, fix) in [
            ("docker*", "docker+"),
            ("br-*", "br-+"),
            ("*", "+"),
            ("veth?", "veth+"),
            ("br-[0-9]*", "br-+"),
        ] {
            let e = validate_interface(glob).unwrap_err();
            assert!(
                e.contains("iptables' wildcard is +")
                    && e.contains(&format!("did you mean {fix}?")),
                "{e}"
            );
        }
    }
}
