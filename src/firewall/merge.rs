//! The pure merge of our lines into (or out of) an iptables-save rules file, and the
//! recognition of the iptables-services sample file. No I/O here: [`super::persist`] reads,
//! tests and writes the file.
//!
//! After `iptables-restore` of a merged file the block holds, whatever the file held: our
//! lines go at the end of the last `*filter` table (each one replaces the table) as `-I CHAIN
//! 1` lines, which no `-A`, `-I`, RETURN or ACCEPT of the file can precede. Only our lines are
//! ever added, so Docker's and the ECS agent's run-time rules never end up in the file. A
//! missing or empty file becomes a minimal valid one. A file whose restore already yields
//! the block (an `iptables-save` of a blocked host: our rules as `-A` lines, first in their
//! chain) is left byte for byte as it is: the file is judged by what it does. CRLF line ends
//! become LF (iptables-restore rejects `\r`).
//!
//! The sample `/etc/sysconfig/iptables` (and `ip6tables`) that Amazon Linux's and RHEL's
//! `iptables-services` installs REJECTs every forwarded packet and every inbound one but ssh.
//! Restored at boot it cuts every container off from everything (and tasks off from the ECS
//! agent's credential endpoint, which arrives through INPUT). This module recognises it
//! exactly (its header comment and nothing but its sample rules); [`super::persist`] decides
//! what to do with it.

use super::plan::Mode;
use super::rules::{DOCKER_USER, FORWARD, Line, RuleSet};

/// The first lines of a file we write from scratch.
const HEADER: &str = "# Written by ecs-bootstrap: keeps containers on the Docker bridge away from instance metadata.\n\
# Docker and the ECS agent add their own rules at run time; they are not persisted here.\n";

/// The result of a merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub text: String,
    /// What the merge changed, for the report ("added ...", "removed a duplicate ...").
    pub notes: Vec<String>,
    /// Problems in the file we leave alone but the operator should know about.
    pub warnings: Vec<String>,
    /// The file was left as it was because its restore already yields the block, though it is
    /// not in our rendering (an `iptables-save` of a blocked host): nothing of ours checked
    /// that it loads, so the caller tests it before reporting it as holding the block.
    pub held_as_is: bool,
}

impl Merged {
    /// A result with these notes and no warning.
    fn same(text: String, notes: Vec<String>) -> Merged {
        Merged {
            text,
            notes,
            warnings: vec![],
            held_as_is: false,
        }
    }
}

/// The comment line above our lines in a rules file.
pub const MARKER: &str = "# ecs-bootstrap: inserted at the top (-I CHAIN 1) after every other rule of the table, so that they come first after a restore";

/// Our lines at the end of the (last) `*filter` table: each DROP inserted at the top, in
/// reverse so that they end up in the order given, then the jump at the top of FORWARD.
/// Inserted last, they come before anything the file appends or inserts: a RETURN or ACCEPT
/// of the file cannot come first.
fn our_tail(set: &RuleSet) -> Vec<String> {
    let mut t = vec![MARKER.to_owned()];
    for i in set.interfaces.iter().rev() {
        t.push(set.insert_line(i));
    }
    if set.jump_line().is_some() {
        t.push(format!("-I {FORWARD} 1 -j {DOCKER_USER}"));
    }
    t
}

/// The minimal valid file: the built-in chains with ACCEPT policies and our lines.
pub fn minimal(set: &RuleSet) -> String {
    let mut s = String::from(HEADER);
    s.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    if let Some(d) = set.chain_decl() {
        s.push_str(&d);
        s.push('\n');
    }
    for l in our_tail(set) {
        s.push_str(&l);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

fn is_decl(line: &str, chain: &str) -> bool {
    line.trim()
        .strip_prefix(':')
        .and_then(|r| r.split_whitespace().next())
        == Some(chain)
}

/// Whether `--remove` takes the line out: ours, a temporary copy, the jump, or the uncommented
/// DROP in DOCKER-USER for an interface we block (an earlier rendering of ours).
fn removable(set: &RuleSet, line: &str) -> bool {
    match set.classify(line) {
        Line::Ours { .. } | Line::Moving { .. } | Line::MovingJump | Line::Jump => true,
        Line::Plain { chain, iface } => chain == DOCKER_USER && set.wants(&iface),
        Line::Other => false,
    }
}

/// The table a line opens, read as iptables-restore (nft and legacy) reads it: a `*` in the
/// first column, the name up to the first blank, anything after it ignored (`*filter # admin`
/// and `*filter  ` open the filter table; ` *filter` is a rule line iptables-restore rejects).
fn table_header(line: &str) -> Option<&str> {
    line.strip_prefix('*')?.split([' ', '\t']).next()
}

/// Whether a line ends a table: iptables-restore takes only `COMMIT` itself (no blanks).
fn is_commit(line: &str) -> bool {
    line == "COMMIT"
}

/// A `*filter` table without a COMMIT line: iptables-restore cannot load the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "its *filter table (line {line}) has no COMMIT line, so iptables-restore cannot load it; fix the file or remove it"
)]
pub struct NoCommit {
    /// The table's header line, from 1.
    pub line: usize,
}

/// The `*filter` tables of a file: (line of its header, line of its COMMIT).
fn filter_tables(lines: &[String]) -> Result<Vec<(usize, usize)>, NoCommit> {
    let mut out = vec![];
    let mut i = 0;
    while i < lines.len() {
        if table_header(&lines[i]) == Some("filter") {
            let Some(c) = lines[i..].iter().position(|l| is_commit(l)) else {
                return Err(NoCommit { line: i + 1 });
            };
            out.push((i, i + c));
            i += c;
        }
        i += 1;
    }
    Ok(out)
}

/// Merges our lines into an iptables-save file (pure). Errors name the problem in the file.
pub fn merge(old: &str, set: &RuleSet) -> Result<Merged, NoCommit> {
    merge_mode(old, set, Mode::Assert)
}

/// Merges our lines into (or, with [`Mode::Remove`], out of) an iptables-save file (pure).
///
/// After `iptables-restore` of the result the block holds, whatever the file held: only the
/// last `*filter` table counts (each one replaces the table), so our lines go at its end as
/// `-I CHAIN 1` lines, where no `-A`, `-I`, RETURN or ACCEPT of the file can come before them.
/// Ours (in any spelling, anywhere), the uncommented DROP for an interface we block (the
/// documented seed rule, an earlier rendering) and the jump are taken out wherever they are;
/// every other line is kept, in order.
pub(crate) fn merge_mode(old: &str, set: &RuleSet, mode: Mode) -> Result<Merged, NoCommit> {
    let mut notes = vec![];
    if old.trim().is_empty() {
        if mode == Mode::Remove {
            return Ok(Merged::same(old.to_owned(), notes));
        }
        notes.push("wrote a minimal rules file (the file was missing or empty)".into());
        return Ok(Merged::same(minimal(set), notes));
    }
    let text = if old.contains('\r') {
        notes.push("converted CRLF line ends to LF (iptables-restore rejects CR)".into());
        old.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        old.to_owned()
    };
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let tables = filter_tables(&lines)?;
    if mode == Mode::Assert && notes.is_empty() && already_holds(&lines, &tables, set) {
        // Judged by what a restore does, not by the shape of our lines: a file saved with
        // iptables-save holds the block as `-A` lines, and rewriting it would only churn the
        // operator's file (and raise drift at every check).
        return Ok(Merged {
            text,
            notes,
            warnings: forward_warnings(&lines, &tables),
            held_as_is: true,
        });
    }
    let Some(&(last_start, _)) = tables.last() else {
        if mode == Mode::Remove {
            return Ok(Merged::same(text, notes));
        }
        // No filter table: append one with our lines; other tables stay as they are.
        notes.push("added a *filter table holding our rules".into());
        let mut out = lines.join("\n");
        out.push('\n');
        out.push_str(&minimal(set)[HEADER.len()..]);
        return Ok(Merged::same(out, notes));
    };
    let tail = our_tail(set);
    let mut dropped: Vec<String> = vec![];
    let mut added: Vec<String> = vec![];
    // The lines outside the *filter tables stay where they were.
    let mut result: Vec<String> = Vec::with_capacity(lines.len() + tail.len() + 1);
    let mut next = 0;
    for &(start, commit) in &tables {
        let is_last = start == last_start;
        let t = rewrite_table(
            &lines[start + 1..commit],
            set,
            mode,
            is_last.then_some(&tail),
        );
        result.extend(lines[next..=start].iter().cloned());
        result.extend(t.body);
        result.push(lines[commit].clone());
        dropped.extend(t.dropped);
        added.extend(t.added);
        next = commit + 1;
    }
    result.extend(lines[next..].iter().cloned());
    let mut new_text = result.join("\n");
    new_text.push('\n');
    if mode == Mode::Remove
        && let Some(rest) = new_text.strip_prefix(HEADER)
    {
        // Our header would claim a block the file no longer holds.
        new_text = rest.to_owned();
    }
    if new_text != text {
        notes.extend(change_notes(set, mode, &tail, &dropped, added));
    }
    let warnings = match mode {
        Mode::Assert => forward_warnings(&lines, &tables),
        Mode::Remove => vec![],
    };
    Ok(Merged {
        text: new_text,
        notes,
        warnings,
        held_as_is: false,
    })
}

/// The warning for a last `*filter` table that rejects or drops every forwarded packet.
fn forward_warnings(lines: &[String], tables: &[(usize, usize)]) -> Vec<String> {
    let Some(&(start, commit)) = tables.last() else {
        return vec![];
    };
    if lines[start..commit].iter().any(|l| rejects_forward(l)) {
        vec!["the file rejects or drops all forwarded traffic: restored at boot, containers reach nothing until dockerd inserts its own rules".into()]
    } else {
        vec![]
    }
}

/// Whether a restore of the file (its last `*filter` table, as [`replay_filter`] plays it)
/// already yields the block, so that a merge has nothing to do: our DROP rules first in their
/// chain, in order, and nothing else of ours in any chain (no copy, no temporary line, no
/// seed rule for an interface we block, which the merge replaces); in the default placement
/// DOCKER-USER declared once and the jump first in FORWARD, once. Anything else is merged.
fn already_holds(lines: &[String], tables: &[(usize, usize)], set: &RuleSet) -> bool {
    let Some(&(start, commit)) = tables.last() else {
        return false;
    };
    let body = &lines[start + 1..commit];
    if body.iter().any(|l| {
        let t = l.trim();
        // Our own rendering stays in its canonical shape; any command the replay does not
        // model (-F, -D, -X, -N, -P, ...) could undo the block, so such a file is merged.
        t == MARKER
            || !(t.is_empty()
                || t.starts_with('#')
                || t.starts_with(':')
                || super::rules::split_rule(l).is_some())
    }) {
        return false;
    }
    let chains = replay_body(body);
    let own = chains.get(set.chain()).map(Vec::as_slice).unwrap_or(&[]);
    let n = set.interfaces.len();
    if own.len() < n
        || set
            .interfaces
            .iter()
            .zip(own)
            .any(|(i, r)| *r != set.spec(i).join(" "))
    {
        return false;
    }
    // Every rule that is ours, a copy, a temporary or a seed rule for a wanted interface,
    // anywhere: exactly the n leading ones.
    let mut mine = 0;
    let mut jumps = 0;
    for (chain, rules) in &chains {
        for r in rules {
            match set.classify(&format!("-A {chain} {r}")) {
                Line::Ours { .. } | Line::Moving { .. } | Line::MovingJump => mine += 1,
                Line::Plain { iface, .. } if set.wants(&iface) => mine += 1,
                Line::Jump => jumps += 1,
                Line::Plain { .. } | Line::Other => {}
            }
        }
    }
    if mine != n {
        return false;
    }
    if set.jump_line().is_none() {
        return true;
    }
    let decls = body.iter().filter(|l| is_decl(l, DOCKER_USER)).count();
    let fwd = chains.get(FORWARD).map(Vec::as_slice).unwrap_or(&[]);
    decls == 1 && jumps == 1 && fwd.first().map(String::as_str) == Some("-j DOCKER-USER")
}

/// Whether a line of a `*filter` table rejects or drops every forwarded packet.
fn rejects_forward(l: &str) -> bool {
    let t: Vec<&str> = l.split_whitespace().collect();
    t.starts_with(&[":FORWARD", "DROP"])
        || t.starts_with(&["-A", "FORWARD", "-j", "REJECT"])
        || t == ["-A", "FORWARD", "-j", "DROP"]
}

/// One `*filter` table's body, rewritten.
struct TableRewrite {
    body: Vec<String>,
    /// Lines taken out (ours, in any spelling, and the marker).
    dropped: Vec<String>,
    /// Lines added other than our tail (the chain's declaration).
    added: Vec<String>,
}

/// Rewrites the body of one `*filter` table (between its header and its COMMIT): our lines
/// out; in the last table, when asserting, DOCKER-USER declared and `tail` (our lines) at the
/// end.
fn rewrite_table(
    body: &[String],
    set: &RuleSet,
    mode: Mode,
    tail: Option<&Vec<String>>,
) -> TableRewrite {
    let docker_user = set.chain_decl().is_some();
    // On removal, DOCKER-USER and the jump go when nothing else in the table uses them.
    let chain_unused = mode == Mode::Remove && !chain_used_by_others(set, body);
    let mut t = TableRewrite {
        body: vec![],
        dropped: vec![],
        added: vec![],
    };
    let mut seen_decl = false;
    for l in body {
        let keep = if l.trim() == MARKER {
            false
        } else if matches!(
            l.split_whitespace().collect::<Vec<_>>()[..],
            ["-N" | "--new-chain" | "--new", DOCKER_USER]
        ) {
            // Declared by a command instead of a `:` line: a second declaration would make
            // iptables-restore fail.
            seen_decl = true;
            true
        } else if is_decl(l, DOCKER_USER) {
            let dup = std::mem::replace(&mut seen_decl, true);
            !((dup && docker_user) || chain_unused)
        } else {
            !match set.classify(l) {
                Line::Ours { .. } | Line::Moving { .. } | Line::MovingJump => true,
                Line::Plain { chain, iface } => {
                    set.wants(&iface) && (mode == Mode::Assert || chain == DOCKER_USER)
                }
                Line::Jump => (mode == Mode::Assert && docker_user) || chain_unused,
                Line::Other => false,
            }
        };
        if keep {
            t.body.push(l.clone());
        } else {
            t.dropped.push(l.clone());
        }
    }
    if let (Some(tail), Mode::Assert) = (tail, mode) {
        if let Some(decl) = set.chain_decl().filter(|_| !seen_decl) {
            let at = t
                .body
                .iter()
                .rposition(|l| l.trim_start().starts_with(':'))
                .map(|p| p + 1)
                .unwrap_or(0);
            t.body.insert(at, decl.clone());
            t.added.push(decl);
        }
        t.body.extend(tail.iter().cloned());
    }
    t
}

/// Whether a table body uses DOCKER-USER beyond our lines: another rule naming it, or Docker's
/// own chains.
fn chain_used_by_others(set: &RuleSet, body: &[String]) -> bool {
    let others = body
        .iter()
        .any(|l| !removable(set, l) && !is_decl(l, DOCKER_USER) && l.contains(DOCKER_USER));
    let docker = body.iter().any(|l| {
        l.trim()
            .strip_prefix(':')
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|c| c.starts_with("DOCKER") && c != DOCKER_USER)
    });
    others || docker
}

/// What a merge changed, for the report: lines taken out that do not come back the same, lines
/// of ours that are new; else our lines only moved to the end.
fn change_notes(
    set: &RuleSet,
    mode: Mode,
    tail: &[String],
    dropped: &[String],
    mut added: Vec<String>,
) -> Vec<String> {
    let mut notes = vec![];
    let mut back: Vec<&String> = match mode {
        Mode::Assert => tail.iter().filter(|l| *l != MARKER).collect(),
        Mode::Remove => vec![],
    };
    for d in dropped.iter().filter(|d| d.trim() != MARKER) {
        let k = set.classify(d);
        if let Some(p) = back.iter().position(|t| set.classify(t) == k) {
            back.remove(p);
            continue;
        }
        notes.push(match k {
            Line::Plain { chain, .. } if chain == FORWARD && mode == Mode::Assert => format!(
                "removed {} (the documented FORWARD rule: ours covers it)",
                d.trim()
            ),
            _ => format!("removed {}", d.trim()),
        });
    }
    added.extend(back.into_iter().cloned());
    notes.extend(added.iter().map(|a| format!("added {a}")));
    if notes.is_empty() {
        notes.push(
            "moved our lines to the end of the last *filter table, as -I lines, so that no rule of the file comes before them after a restore".into(),
        );
    }
    notes
}

/// What the chains of the filter table hold after `iptables-restore` of `text` (pure, for
/// tests): the last `*filter` table replayed, `-A` appending and `-I CHAIN [N]` inserting, as
/// the rule specs. Other commands are ignored.
pub fn replay_filter(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let Some(&(start, commit)) = filter_tables(&lines)
        .ok()
        .and_then(|t| t.last().copied())
        .as_ref()
    else {
        return std::collections::BTreeMap::new();
    };
    replay_body(&lines[start + 1..commit])
}

/// The chains one `*filter` table body yields: see [`replay_filter`].
fn replay_body(body: &[String]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut chains = std::collections::BTreeMap::new();
    for l in body {
        if let Some(c) = l
            .trim()
            .strip_prefix(':')
            .and_then(|r| r.split_whitespace().next())
        {
            chains.entry(c.to_owned()).or_insert_with(Vec::new);
            continue;
        }
        let Some((op, chain, rest)) = super::rules::split_rule(l) else {
            continue;
        };
        let rules: &mut Vec<String> = chains.entry(chain).or_default();
        let spec = rest.join(" ");
        match op {
            super::rules::Op::Append => rules.push(spec),
            super::rules::Op::Insert(n) => {
                let at = n.saturating_sub(1).min(rules.len());
                rules.insert(at, spec);
            }
        }
    }
    chains
}

const SAMPLE_HEADER_V4: &str = "# sample configuration for iptables service";
const SAMPLE_HEADER_V6: &str = "# sample configuration for ip6tables service";
/// Every line the iptables-services sample files have held across versions.
const SAMPLE_LINES: &[&str] = &[
    "*filter",
    ":INPUT ACCEPT [0:0]",
    ":FORWARD ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT",
    "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A INPUT -p icmp -j ACCEPT",
    "-A INPUT -p ipv6-icmp -j ACCEPT",
    "-A INPUT -i lo -j ACCEPT",
    "-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT",
    "-A INPUT -m state --state NEW -m tcp -p tcp --dport 22 -j ACCEPT",
    "-A INPUT -p tcp -m conntrack --ctstate NEW -m tcp --dport 22 -j ACCEPT",
    "-A INPUT -d fe80::/64 -p udp -m udp --dport 546 -m state --state NEW -j ACCEPT",
    "-A INPUT -m state --state NEW -m udp -p udp --dport 546 -d fe80::/64 -j ACCEPT",
    "-A INPUT -d fe80::/64 -p udp -m udp --dport 546 -m conntrack --ctstate NEW -j ACCEPT",
    "-A INPUT -j REJECT --reject-with icmp-host-prohibited",
    "-A INPUT -j REJECT --reject-with icmp6-adm-prohibited",
    "-A FORWARD -j REJECT --reject-with icmp-host-prohibited",
    "-A FORWARD -j REJECT --reject-with icmp6-adm-prohibited",
    "COMMIT",
];

/// The sample files iptables-services has shipped, byte for byte (Amazon Linux 2, RHEL 7 and 8,
/// and the conntrack spelling of later Fedora-based releases such as Amazon Linux 2023).
pub(crate) const KNOWN_SAMPLES: &[&str] = &[
    "# sample configuration for iptables service\n# you can edit this manually or use system-config-firewall\n# please do not ask us to add additional ports/services to this default configuration\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT\n-A INPUT -p icmp -j ACCEPT\n-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT\n-A INPUT -j REJECT --reject-with icmp-host-prohibited\n-A FORWARD -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n",
    "# sample configuration for ip6tables service\n# you can edit this manually or use system-config-firewall\n# please do not ask us to add additional ports/services to this default configuration\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT\n-A INPUT -p ipv6-icmp -j ACCEPT\n-A INPUT -i lo -j ACCEPT\n-A INPUT -m state --state NEW -m tcp -p tcp --dport 22 -j ACCEPT\n-A INPUT -d fe80::/64 -p udp -m udp --dport 546 -m state --state NEW -j ACCEPT\n-A INPUT -j REJECT --reject-with icmp6-adm-prohibited\n-A FORWARD -j REJECT --reject-with icmp6-adm-prohibited\nCOMMIT\n",
    "# sample configuration for iptables service\n# you can edit this manually or use system-config-firewall\n# please do not ask us to add additional ports/services to this default configuration\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A INPUT -p icmp -j ACCEPT\n-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp -m conntrack --ctstate NEW -m tcp --dport 22 -j ACCEPT\n-A INPUT -j REJECT --reject-with icmp-host-prohibited\n-A FORWARD -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n",
    "# sample configuration for ip6tables service\n# you can edit this manually or use system-config-firewall\n# please do not ask us to add additional ports/services to this default configuration\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A INPUT -p ipv6-icmp -j ACCEPT\n-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp -m conntrack --ctstate NEW -m tcp --dport 22 -j ACCEPT\n-A INPUT -d fe80::/64 -p udp -m udp --dport 546 -m conntrack --ctstate NEW -j ACCEPT\n-A INPUT -j REJECT --reject-with icmp6-adm-prohibited\n-A FORWARD -j REJECT --reject-with icmp6-adm-prohibited\nCOMMIT\n",
];

/// The note that replaces the sample's FORWARD REJECT in a sample we merge.
const REJECT_DISABLED: &str =
    "# ecs-bootstrap: disabled the sample's forwarding REJECT, which cuts every container off: ";

/// Comments out the sample's `-A FORWARD -j REJECT ...` lines (pure), keeping everything else
/// (its INPUT rules above all); returns the text and how many lines it disabled.
pub(crate) fn disable_forward_reject(text: &str) -> (String, usize) {
    let mut n = 0;
    let mut out: Vec<String> = vec![];
    for l in text.lines() {
        if l.trim().starts_with("-A FORWARD -j REJECT") && SAMPLE_LINES.contains(&l.trim()) {
            out.push(format!("{REJECT_DISABLED}{}", l.trim()));
            n += 1;
        } else {
            out.push(l.to_owned());
        }
    }
    let mut s = out.join("\n");
    s.push('\n');
    (s, n)
}

/// Whether `text` starts with the sample's header comment (ignoring blank lines).
pub(crate) fn has_sample_header(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .is_some_and(|l| l == SAMPLE_HEADER_V4 || l == SAMPLE_HEADER_V6)
}

/// Whether `text` is the untouched sample file of iptables-services (v4 or v6): its header,
/// only its sample lines, and the FORWARD REJECT that makes it harmful.
pub(crate) fn is_iptables_services_sample(text: &str) -> bool {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let header = lines
        .first()
        .is_some_and(|l| *l == SAMPLE_HEADER_V4 || *l == SAMPLE_HEADER_V6);
    header
        && lines
            .iter()
            .filter(|l| !l.starts_with('#'))
            .all(|l| SAMPLE_LINES.contains(l))
        && lines.iter().any(|l| l.starts_with("-A FORWARD -j REJECT"))
}

/// Drops `iptables-save` date comments and zeroes chain counters (pure).
pub(crate) fn normalize_save(save: &str) -> String {
    let mut out = String::new();
    for l in save.lines() {
        if l.starts_with("# Generated by")
            || l.starts_with("# Completed on")
            || l.starts_with("# Warning:")
        {
            continue;
        }
        if l.starts_with(':')
            && let Some((head, counters)) = l.rsplit_once(' ')
            && counters.starts_with('[')
            && counters.ends_with(']')
        {
            out.push_str(head);
            out.push_str(" [0:0]\n");
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::rules::{Family, Placement};

    fn v4() -> RuleSet {
        RuleSet {
            family: Family::V4,
            placement: Placement::DockerUser,
            interfaces: vec!["docker+".into()],
        }
    }

    /// Amazon Linux 2's /etc/sysconfig/iptables from iptables-services.
    pub(crate) const AL2_SAMPLE: &str = "# sample configuration for iptables service
# you can edit this manually or use system-config-firewall
# please do not ask us to add additional ports/services to this default configuration
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT
-A INPUT -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -j REJECT --reject-with icmp-host-prohibited
COMMIT
";

    const AL2_SAMPLE_V6: &str = "# sample configuration for ip6tables service
# you can edit this manually or use system-config-firewall
# please do not ask us to add additional ports/services to this default configuration
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p ipv6-icmp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -m state --state NEW -m tcp -p tcp --dport 22 -j ACCEPT
-A INPUT -d fe80::/64 -p udp -m udp --dport 546 -m state --state NEW -j ACCEPT
-A INPUT -j REJECT --reject-with icmp6-adm-prohibited
-A FORWARD -j REJECT --reject-with icmp6-adm-prohibited
COMMIT
";

    /// What `iptables-save` prints on a host where dockerd 24 runs one container with a port.
    const DOCKER_SAVE: &str = "# Generated by iptables-save v1.8.4 on Mon Jan  8 10:00:00 2024
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
COMMIT
# Completed on Mon Jan  8 10:00:00 2024
# Generated by iptables-save v1.8.4 on Mon Jan  8 10:00:00 2024
*filter
:INPUT ACCEPT [120:9000]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [98:8000]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
# Completed on Mon Jan  8 10:00:00 2024
";

    fn filter_lines(text: &str) -> Vec<&str> {
        let s = text.rfind("*filter").unwrap();
        text[s..].lines().take_while(|l| *l != "COMMIT").collect()
    }

    /// Every line of `old` that is not ours is in `new`, in the same order.
    fn keeps_all_but_ours(old: &str, new: &str, set: &RuleSet) {
        let mut it = new.lines();
        for l in old.lines() {
            let l = l.trim_end_matches('\r');
            if !matches!(set.classify(l), Line::Other) {
                continue;
            }
            assert!(
                it.any(|n| n == l),
                "line {l:?} lost or reordered in:\n{new}"
            );
        }
    }

    /// After a restore of `text`, the block holds: our rules first in their chain, in order,
    /// and (default placement) the jump first in FORWARD, once.
    #[track_caller]
    pub(crate) fn holds_after_restore(text: &str, set: &RuleSet) {
        let chains = replay_filter(text);
        let own = chains.get(set.chain()).cloned().unwrap_or_default();
        for (n, i) in set.interfaces.iter().enumerate() {
            assert_eq!(
                own.get(n).map(|r| format!("-A {} {r}", set.chain())),
                Some(set.save_line(i)),
                "rule {n} of {} after a restore of\n{text}",
                set.chain()
            );
        }
        let ours = own
            .iter()
            .filter(|r| set.is_our_rule(&format!("-A {} {r}", set.chain())))
            .count();
        assert_eq!(ours, set.interfaces.len(), "{text}");
        if set.jump_line().is_some() {
            let fwd = &chains["FORWARD"];
            assert_eq!(
                fwd.first().map(String::as_str),
                Some("-j DOCKER-USER"),
                "{text}"
            );
            assert_eq!(
                fwd.iter().filter(|r| *r == "-j DOCKER-USER").count(),
                1,
                "{text}"
            );
        }
    }

    #[test]
    fn empty_and_missing_file_become_minimal() {
        for old in ["", "\n\n", "   "] {
            let m = merge(old, &v4()).unwrap();
            assert_eq!(m.text, minimal(&v4()));
        }
        let t = minimal(&v4());
        assert_eq!(
            filter_lines(&t),
            [
                "*filter",
                ":INPUT ACCEPT [0:0]",
                ":FORWARD ACCEPT [0:0]",
                ":OUTPUT ACCEPT [0:0]",
                ":DOCKER-USER - [0:0]",
                MARKER,
                "-I DOCKER-USER 1 -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
                "-I FORWARD 1 -j DOCKER-USER",
            ]
        );
        holds_after_restore(&t, &v4());
        // Idempotent.
        assert_eq!(merge(&t, &v4()).unwrap().text, t);
        assert!(merge(&t, &v4()).unwrap().notes.is_empty());
    }

    #[test]
    fn al2_sample_is_recognised_exactly() {
        assert!(is_iptables_services_sample(AL2_SAMPLE));
        assert!(is_iptables_services_sample(AL2_SAMPLE_V6));
        assert!(is_iptables_services_sample(
            &AL2_SAMPLE.replace('\n', "\r\n")
        ));
        // Edited by someone: one more rule, or the REJECTs commented out.
        let edited = AL2_SAMPLE.replace(
            "-A INPUT -i lo -j ACCEPT\n",
            "-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp --dport 443 -j ACCEPT\n",
        );
        assert!(!is_iptables_services_sample(&edited));
        let relaxed = AL2_SAMPLE.replace("-A FORWARD -j", "#-A FORWARD -j");
        assert!(!is_iptables_services_sample(&relaxed));
        assert!(!is_iptables_services_sample(DOCKER_SAVE));
        assert!(!is_iptables_services_sample(""));
        assert!(!is_iptables_services_sample(&minimal(&v4())));
    }

    #[test]
    fn edited_sample_is_merged_with_a_warning() {
        let edited = AL2_SAMPLE.replace(
            "-A INPUT -i lo -j ACCEPT\n",
            "-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp --dport 443 -j ACCEPT\n",
        );
        let m = merge(&edited, &v4()).unwrap();
        keeps_all_but_ours(&edited, &m.text, &v4());
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        holds_after_restore(&m.text, &v4());
        let f = filter_lines(&m.text);
        // The declaration comes after the built-in chains, before the first rule.
        let decl = f.iter().position(|l| *l == ":DOCKER-USER - [0:0]").unwrap();
        assert_eq!(f[decl - 1], ":OUTPUT ACCEPT [0:0]");
    }

    #[test]
    fn docker_chains_are_kept_and_never_added() {
        let m = merge(DOCKER_SAVE, &v4()).unwrap();
        keeps_all_but_ours(DOCKER_SAVE, &m.text, &v4());
        holds_after_restore(&m.text, &v4());
        // Our lines replace the jump: the marker, the rule and the jump, one more line each.
        assert_eq!(m.text.lines().count(), DOCKER_SAVE.lines().count() + 2);
        assert_eq!(
            m.notes,
            [
                "added -I DOCKER-USER 1 -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP"
            ]
        );
        // dockerd's RETURN stays, below ours after a restore.
        let du = &replay_filter(&m.text)["DOCKER-USER"];
        assert_eq!(du[1], "-j RETURN");
        // The nat table is untouched.
        assert_eq!(
            m.text[..m.text.find("*filter").unwrap()],
            DOCKER_SAVE[..DOCKER_SAVE.find("*filter").unwrap()]
        );
        // Docker's rules are never added to a file that lacks them.
        let m = merge(AL2_SAMPLE, &v4()).unwrap();
        assert!(!m.text.contains("-A DOCKER "), "{}", m.text);
        assert!(!m.text.contains("ISOLATION"), "{}", m.text);
        // FORWARD DROP policy warns.
        assert!(merge(DOCKER_SAVE, &v4()).unwrap().warnings.len() == 1);
    }

    /// Files that held "our rule" and still let the container through after a restore: a
    /// RETURN or ACCEPT first, `-I` lines, long spellings, two *filter tables, CRLF. After the
    /// merge, the block holds on the replayed table; each file is also restored into a real
    /// kernel by tests/integration/firewall.rs.
    #[test]
    fn whatever_the_file_held_the_block_holds_after_a_restore() {
        let ours_old = "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP";
        let files = [
            format!("*filter\n:FORWARD ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\n{ours_old}\nCOMMIT\n"),
            format!("*filter\n:FORWARD ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n{ours_old}\n-I DOCKER-USER -i docker0 -j ACCEPT\nCOMMIT\n"),
            "*filter\n:FORWARD ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n--append FORWARD --jump DOCKER-USER\n--insert DOCKER-USER 1 --jump RETURN\n--append DOCKER-USER --in-interface docker+ --destination 169.254.169.254 --jump DROP\nCOMMIT\n".to_owned(),
            format!("*filter\n:FORWARD ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n{ours_old}\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -j ACCEPT\nCOMMIT\n"),
            format!("*filter\r\n:FORWARD ACCEPT [0:0]\r\n:DOCKER-USER - [0:0]\r\n-A FORWARD -i eth1 -j ACCEPT\r\n-A DOCKER-USER -j RETURN\r\n{ours_old}\r\n-A FORWARD -j DOCKER-USER\r\nCOMMIT\r\n"),
            "*filter\n:FORWARD ACCEPT [0:0]\n-I FORWARD 1 --in-interface docker+ --destination 169.254.169.254/32 --jump DROP\n-I FORWARD -i docker0 -j ACCEPT\nCOMMIT\n".to_owned(),
        ];
        for f in &files {
            let m = merge(f, &v4()).unwrap();
            holds_after_restore(&m.text, &v4());
            keeps_all_but_ours(f, &m.text, &v4());
            assert!(!m.notes.is_empty(), "{f}");
            let again = merge(&m.text, &v4()).unwrap();
            assert_eq!(again.text, m.text);
            assert!(again.notes.is_empty(), "{:?}", again.notes);
        }
        // A chain declared with -N gets no second declaration.
        let n =
            "*filter\n:FORWARD ACCEPT [0:0]\n-N DOCKER-USER\n-A DOCKER-USER -j RETURN\nCOMMIT\n";
        let m = merge(n, &v4()).unwrap();
        assert!(!m.text.contains(":DOCKER-USER"), "{}", m.text);
        holds_after_restore(&m.text, &v4());
        // The seed rule (the last file) is recognised and moved, with a note.
        let m = merge(&files[5], &v4()).unwrap();
        assert!(!m.text.contains("--jump DROP"), "{}", m.text);
        assert!(
            m.notes
                .iter()
                .any(|n| n.contains("the documented FORWARD rule")),
            "{:?}",
            m.notes
        );
    }

    #[test]
    fn crlf_and_comments() {
        let old = "# my firewall\r\n*filter\r\n:INPUT ACCEPT [0:0]\r\n# keep ssh open\r\n-A INPUT -p tcp --dport 22 -j ACCEPT\r\n# -A FORWARD -j DOCKER-USER\r\nCOMMIT\r\n";
        let m = merge(old, &v4()).unwrap();
        assert!(!m.text.contains('\r'));
        keeps_all_but_ours(old, &m.text, &v4());
        assert!(m.notes.iter().any(|n| n.contains("CRLF")), "{:?}", m.notes);
        // The commented jump does not count as ours.
        assert!(m.text.contains("\n-I FORWARD 1 -j DOCKER-USER\n"));
        holds_after_restore(&m.text, &v4());
        assert_eq!(merge(&m.text, &v4()).unwrap().text, m.text);
    }

    #[test]
    fn duplicates_collapse_and_jump_moves_first() {
        let old = "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -i eth1 -j ACCEPT
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -i docker+ -d 169.254.169.254 -j DROP
-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP
-A FORWARD -j DOCKER-USER
COMMIT
";
        let m = merge(old, &v4()).unwrap();
        let f = filter_lines(&m.text);
        assert_eq!(
            f,
            [
                "*filter",
                ":INPUT ACCEPT [0:0]",
                ":FORWARD ACCEPT [0:0]",
                ":OUTPUT ACCEPT [0:0]",
                ":DOCKER-USER - [0:0]",
                "-A FORWARD -i eth1 -j ACCEPT",
                MARKER,
                "-I DOCKER-USER 1 -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
                "-I FORWARD 1 -j DOCKER-USER",
            ]
        );
        holds_after_restore(&m.text, &v4());
        assert_eq!(merge(&m.text, &v4()).unwrap().text, m.text);
    }

    #[test]
    fn other_tables_only_gain_a_filter_table() {
        let old = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp --dport 80 -j REDIRECT --to-ports 8080\nCOMMIT\n";
        let m = merge(old, &v4()).unwrap();
        assert!(m.text.starts_with(old), "{}", m.text);
        assert!(
            m.text.ends_with("-I FORWARD 1 -j DOCKER-USER\nCOMMIT\n"),
            "{}",
            m.text
        );
        assert_eq!(merge(&m.text, &v4()).unwrap().text, m.text);
    }

    #[test]
    fn table_headers_are_read_as_iptables_restore_reads_them() {
        for (l, t) in [
            ("*filter", Some("filter")),
            ("*filter # admin overrides", Some("filter")),
            ("*filter \t", Some("filter")),
            ("*filter\t# x", Some("filter")),
            ("*nat # x", Some("nat")),
            ("*filter#x", Some("filter#x")),
            (" *filter", None),
            ("# *filter", None),
        ] {
            assert_eq!(table_header(l), t, "{l:?}");
        }
        // Our lines go into the table that wins, whatever its header's tail.
        let old = "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*filter # admin\n:FORWARD ACCEPT [0:0]\n-A FORWARD -i docker0 -j ACCEPT\nCOMMIT\n";
        let m = merge(old, &v4()).unwrap();
        let second = &m.text[m.text.find("*filter # admin").unwrap()..];
        assert!(second.contains(MARKER), "{}", m.text);
        assert!(!m.text[..m.text.find("*filter # admin").unwrap()].contains(MARKER));
    }

    #[test]
    fn broken_filter_table_is_an_error() {
        let e = merge("*filter\n:INPUT ACCEPT [0:0]\n", &v4()).unwrap_err();
        assert!(e.to_string().contains("no COMMIT"), "{e}");
    }

    #[test]
    fn forward_placement_and_v6_and_several_interfaces() {
        let set = RuleSet {
            family: Family::V6,
            placement: Placement::Forward,
            interfaces: vec!["docker+".into(), "br-+".into()],
        };
        let old = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -i eth1 -j ACCEPT\nCOMMIT\n";
        let m = merge(old, &set).unwrap();
        assert_eq!(
            filter_lines(&m.text)[4..],
            [
                "-A FORWARD -i eth1 -j ACCEPT",
                MARKER,
                "-I FORWARD 1 -d fd00:ec2::254/128 -i br-+ -m comment --comment ecs-bootstrap -j DROP",
                "-I FORWARD 1 -d fd00:ec2::254/128 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
            ]
        );
        holds_after_restore(&m.text, &set);
        assert!(!m.text.contains("DOCKER-USER"));
    }

    /// `--remove` takes out every line of ours, and DOCKER-USER with its jump when nothing
    /// else in the table uses them; the minimal file becomes the built-in chains only.
    /// A file saved with iptables-save after a block (`-A` lines, our rule first in
    /// DOCKER-USER, the jump first in FORWARD) already holds the block: left byte for byte.
    /// Anything a restore would not turn into the block is merged as before.
    #[test]
    fn a_saved_file_that_holds_the_block_is_left_alone() {
        let ours = "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP";
        let saved = DOCKER_SAVE.replace(
            "-A DOCKER-USER -j RETURN\n",
            &format!("{ours}\n-A DOCKER-USER -j RETURN\n"),
        );
        let m = merge(&saved, &v4()).unwrap();
        assert_eq!(m.text, saved);
        assert!(m.notes.is_empty(), "{:?}", m.notes);
        assert!(m.held_as_is);
        // Our own rendering is a fixed point of the merge, not a file judged as is.
        assert!(!merge(&minimal(&v4()), &v4()).unwrap().held_as_is);
        holds_after_restore(&saved, &v4());
        // Quoted comment, as iptables-nft-save may print it.
        let quoted = saved.replace("--comment ecs-bootstrap", "--comment \"ecs-bootstrap\"");
        assert_eq!(merge(&quoted, &v4()).unwrap().text, quoted);
        // Warnings still come with a held file.
        assert_eq!(m.warnings, merge(DOCKER_SAVE, &v4()).unwrap().warnings);

        let not_held = [
            // Ours after Docker's RETURN: the RETURN comes first.
            DOCKER_SAVE.replace(
                "-A DOCKER-USER -j RETURN\n",
                &format!("-A DOCKER-USER -j RETURN\n{ours}\n"),
            ),
            // The jump not first in FORWARD.
            saved.replace(
                "-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n",
                "-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n-A FORWARD -j DOCKER-USER\n",
            ),
            // A second copy of ours.
            saved.replace(
                "-A DOCKER-USER -j RETURN\n",
                &format!("-A DOCKER-USER -j RETURN\n{ours}\n"),
            ),
            // The documented seed rule for an interface we block: the merge replaces it.
            saved.replace(
                "-A FORWARD -j DOCKER-USER\n",
                "-I FORWARD 1 -i docker+ -d 169.254.169.254/32 -j DROP\n-A FORWARD -j DOCKER-USER\n",
            ),
            // A command the replay does not model, which would flush our rule.
            saved.replace("COMMIT\n# Completed on Mon Jan  8 10:00:00 2024\n", "-F DOCKER-USER\nCOMMIT\n# Completed on Mon Jan  8 10:00:00 2024\n"),
            // CRLF: iptables-restore rejects it.
            saved.replace('\n', "\r\n"),
        ];
        for old in &not_held {
            let m = merge(old, &v4()).unwrap();
            assert_ne!(&m.text, old, "left alone:\n{old}");
            assert!(!m.notes.is_empty(), "{old}");
            assert!(!m.held_as_is, "{old}");
            holds_after_restore(&m.text, &v4());
        }
    }

    #[test]
    fn remove_takes_our_lines_out() {
        let m = merge_mode(&minimal(&v4()), &v4(), Mode::Remove).unwrap();
        assert!(!m.text.contains("DOCKER-USER"), "{}", m.text);
        assert!(!m.text.contains("Written by ecs-bootstrap"), "{}", m.text);
        assert!(!m.text.contains("ecs-bootstrap -j"), "{}", m.text);
        assert!(m.text.contains(":INPUT ACCEPT [0:0]\n"));
        let merged = merge(DOCKER_SAVE, &v4()).unwrap().text;
        let m = merge_mode(&merged, &v4(), Mode::Remove).unwrap();
        assert!(!m.text.contains("ecs-bootstrap"), "{}", m.text);
        // Docker's chains are there: the chain and the (its) jump stay.
        assert!(m.text.contains(":DOCKER-USER - [0:0]"), "{}", m.text);
        assert!(m.text.contains("-A DOCKER-USER -j RETURN"), "{}", m.text);
        assert_eq!(
            merge_mode(&m.text, &v4(), Mode::Remove).unwrap().text,
            m.text
        );
    }

    #[test]
    fn full_save_normalization_is_stable() {
        let n = normalize_save(DOCKER_SAVE);
        assert!(!n.contains("# Generated"));
        assert!(n.contains(":INPUT ACCEPT [0:0]\n"));
        assert!(n.contains(":DOCKER-USER - [0:0]\n"));
        assert_eq!(normalize_save(&n), n);
    }

    #[test]
    fn known_samples_are_recognised_and_the_reject_can_be_disabled() {
        assert!(KNOWN_SAMPLES.contains(&AL2_SAMPLE));
        assert!(KNOWN_SAMPLES.contains(&AL2_SAMPLE_V6));
        for k in KNOWN_SAMPLES {
            assert!(is_iptables_services_sample(k), "{k}");
            let (t, n) = disable_forward_reject(k);
            assert_eq!(n, 1);
            let m = merge(&t, &v4()).unwrap();
            assert!(m.warnings.is_empty(), "{:?}", m.warnings);
            keeps_all_but_ours(
                &k.lines()
                    .filter(|l| l.starts_with("-A INPUT"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                &m.text,
                &v4(),
            );
        }
    }
}
