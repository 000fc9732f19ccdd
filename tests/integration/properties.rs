//! Property tests of the pure logic on generated inputs (proptest), beside the unit tests in
//! src/ (which already cover: parse/render round trip, parse never panics, no secret in any
//! message). Here: the rules-file merge on generated iptables-save files (idempotent, keeps every
//! line that is not ours, and after a replayed restore our rules first in their chain and one
//! jump first in FORWARD, whatever the file held), and parser invariants
//! (CRLF equals LF, the last value wins, line numbers point into the source).
//! The cargo-fuzz targets in fuzz/ check the same merge properties on arbitrary bytes.

use ecs_bootstrap::config::parse::{At, Config, Severity, parse};
use ecs_bootstrap::firewall::merge::{MARKER, merge, minimal, replay_filter};
use ecs_bootstrap::firewall::rules::{Family, Line, Placement, RuleSet};
use proptest::prelude::*;

fn rule_set() -> impl Strategy<Value = RuleSet> {
    (
        prop_oneof![Just(Family::V4), Just(Family::V6)],
        prop_oneof![Just(Placement::DockerUser), Just(Placement::Forward)],
        prop_oneof![
            Just(vec!["docker+".to_owned()]),
            Just(vec!["docker+".to_owned(), "br-+".to_owned()]),
            Just(vec!["docker0".to_owned()]),
        ],
    )
        .prop_map(|(family, placement, interfaces)| RuleSet {
            family,
            placement,
            interfaces,
        })
}

/// Lines an iptables-save file of an ECS host holds: docker's chains and rules, other people's
/// rules, and ours in the spellings found in the wild (long options, other order, no /32).
fn body_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(":DOCKER-USER - [0:0]".to_owned()),
        Just(":DOCKER - [0:0]".to_owned()),
        Just(":DOCKER-ISOLATION-STAGE-1 - [0:0]".to_owned()),
        Just(":FORWARD DROP [0:0]".to_owned()),
        Just("-A FORWARD -j DOCKER-USER".to_owned()),
        Just("-A FORWARD  -j   DOCKER-USER".to_owned()),
        Just("-A FORWARD -j DOCKER-ISOLATION-STAGE-1".to_owned()),
        Just("-A FORWARD -o docker0 -j DOCKER".to_owned()),
        Just("-A FORWARD -i docker0 ! -o docker0 -j ACCEPT".to_owned()),
        Just("-A FORWARD -j REJECT --reject-with icmp-host-prohibited".to_owned()),
        Just("-A DOCKER-USER -j RETURN".to_owned()),
        Just("-I DOCKER-USER -j RETURN".to_owned()),
        Just("-I DOCKER-USER 1 -i docker0 -j ACCEPT".to_owned()),
        Just("--insert FORWARD 1 --in-interface docker+ --destination 169.254.169.254/32 --jump DROP".to_owned()),
        Just("-I FORWARD -i docker0 -j ACCEPT".to_owned()),
        Just("-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP".to_owned()),
        Just("-A DOCKER-USER -d 169.254.169.254/32 -i br-+ -m comment --comment ecs-bootstrap -j DROP".to_owned()),
        Just("-A DOCKER-USER -i docker0 -m comment --comment \"admin rule\" -j ACCEPT".to_owned()),
        Just("-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP".to_owned()),
        Just("-A DOCKER-USER -i docker+ -d 169.254.169.254 -j DROP".to_owned()),
        Just(
            "-A DOCKER-USER --in-interface docker+ --destination 169.254.169.254/32 --jump DROP"
                .to_owned()
        ),
        Just("-A DOCKER-USER -d fd00:ec2::254/128 -i docker+ -j DROP".to_owned()),
        Just("-A DOCKER-USER -d 169.254.169.254/32 -i br-+ -j DROP".to_owned()),
        Just("-A FORWARD -d 169.254.169.254/32 -i docker+ -j DROP".to_owned()),
        Just("-A FORWARD -d fd00:ec2::254/128 -i docker0 -j DROP".to_owned()),
        Just("-A DOCKER-USER ! -d 169.254.169.254/32 -i docker+ -j DROP".to_owned()),
        Just("-A INPUT -i lo -j ACCEPT".to_owned()),
        Just("-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT".to_owned()),
        Just("# a comment".to_owned()),
        Just(String::new()),
        "-A [A-Z-]{1,12} -[a-z] [a-z0-9.+/-]{1,12} -j (ACCEPT|DROP|RETURN)",
    ]
}

fn table() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("*filter"), Just("*nat"), Just("*mangle")],
        proptest::collection::vec(body_line(), 0..14),
        any::<bool>(),
    )
        .prop_map(|(name, body, builtins)| {
            let mut t = vec![name.to_owned()];
            if builtins {
                t.extend(
                    [
                        ":INPUT ACCEPT [10:800]",
                        ":FORWARD ACCEPT [0:0]",
                        ":OUTPUT ACCEPT [3:120]",
                    ]
                    .map(str::to_owned),
                );
            }
            t.extend(body);
            t.push("COMMIT".to_owned());
            t.join("\n")
        })
}

/// A whole rules file: tables, date comments, maybe CRLF line ends.
fn rules_file() -> impl Strategy<Value = String> {
    (proptest::collection::vec(table(), 0..4), any::<bool>(), any::<bool>()).prop_map(
        |(tables, comments, crlf)| {
            let mut s = String::new();
            for t in tables {
                if comments {
                    s.push_str("# Generated by iptables-save v1.8.9 (nf_tables) on Mon Jan  8 10:00:00 2024\n");
                }
                s.push_str(&t);
                s.push('\n');
                if comments {
                    s.push_str("# Completed on Mon Jan  8 10:00:00 2024\n");
                }
            }
            if crlf { s.replace('\n', "\r\n") } else { s }
        },
    )
}

fn is_ours(line: &str, set: &RuleSet) -> bool {
    set.classify(line) != Line::Other
        || line.trim() == MARKER
        || set.chain_decl().is_some_and(|d| {
            line.trim()
                .strip_prefix(':')
                .and_then(|r| r.split_whitespace().next())
                == d.strip_prefix(':')
                    .and_then(|r| r.split_whitespace().next())
        })
}

/// The lines of the last `*filter` table (the one a restore leaves), between the header and
/// COMMIT.
fn filter_body_last(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.trim() == "*filter")
        .expect("a *filter table");
    let end = start
        + lines[start..]
            .iter()
            .position(|l| l.trim() == "COMMIT")
            .expect("COMMIT");
    lines[start + 1..end].to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn merge_is_idempotent(old in rules_file(), set in rule_set()) {
        if let Ok(m) = merge(&old, &set) {
            let again = merge(&m.text, &set).expect("the merged file merges again");
            prop_assert_eq!(&again.text, &m.text);
            prop_assert!(again.notes.is_empty(), "second merge still changes: {:?}", again.notes);
        }
    }

    #[test]
    fn merge_keeps_every_line_that_is_not_ours_in_order(old in rules_file(), set in rule_set()) {
        if let Ok(m) = merge(&old, &set) {
            let mut out = m.text.lines();
            for l in old.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !is_ours(l, &set)) {
                prop_assert!(out.any(|o| o == l), "line {:?} lost or reordered in\n{}", l, m.text);
            }
        }
    }

    /// The block holds after a restore of the merged file, whatever it held: replaying its
    /// last *filter table (-A appends, -I inserts), our rules are the first of their chain, in
    /// order, once each, and the jump is the first rule of FORWARD, once.
    #[test]
    fn merge_makes_the_block_hold_after_a_restore(old in rules_file(), set in rule_set()) {
        if let Ok(m) = merge(&old, &set) {
            let chains = replay_filter(&m.text);
            let own = chains.get(set.chain()).cloned().unwrap_or_default();
            for (n, i) in set.interfaces.iter().enumerate() {
                let got = own.get(n).map(|r| format!("-A {} {r}", set.chain()));
                prop_assert_eq!(got, Some(set.save_line(i)), "rule {} in\n{}", n, m.text);
            }
            let ours = own.iter().filter(|r| set.is_our_rule(&format!("-A {} {r}", set.chain()))).count();
            prop_assert_eq!(ours, set.interfaces.len(), "copies in\n{}", m.text);
            if set.jump_line().is_some() {
                let fwd = chains.get("FORWARD").cloned().unwrap_or_default();
                prop_assert_eq!(fwd.first().map(String::as_str), Some("-j DOCKER-USER"), "jump not first in\n{}", m.text);
                prop_assert_eq!(fwd.iter().filter(|r| *r == "-j DOCKER-USER").count(), 1, "jumps in\n{}", m.text);
                let body = filter_body_last(&m.text);
                let decls = body.iter().filter(|l| l.starts_with(":DOCKER-USER ")).count();
                prop_assert_eq!(decls, 1, "DOCKER-USER declarations in\n{}", m.text);
            }
            prop_assert!(!m.text.contains('\r'));
        }
    }

    #[test]
    fn merge_only_fails_on_a_filter_table_without_commit(old in rules_file(), set in rule_set()) {
        // Generated files always close their tables, so the merge must accept them.
        prop_assert!(merge(&old, &set).is_ok());
    }

    #[test]
    fn minimal_file_is_a_fixed_point(set in rule_set()) {
        let m = merge(&minimal(&set), &set).unwrap();
        prop_assert_eq!(m.text, minimal(&set));
        prop_assert!(m.notes.is_empty());
    }

    #[test]
    fn crlf_parses_like_lf(lines in proptest::collection::vec("[A-Z_]{1,8}=[a-z0-9 ]{0,8}|#[a-z ]{0,8}|", 0..10)) {
        let lf = lines.join("\n");
        let crlf = lines.join("\r\n");
        let (a, b) = (parse(lf.as_bytes()), parse(crlf.as_bytes()));
        prop_assert_eq!(a.entries, b.entries);
        prop_assert_eq!(a.findings, b.findings);
    }

    #[test]
    fn last_value_wins_and_first_position_is_kept(
        entries in proptest::collection::vec(("[A-C]_", "[a-z0-9]{0,6}"), 1..12),
    ) {
        let text: String = entries.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let p = parse(text.as_bytes());
        prop_assert!(!p.has_errors());
        let cfg = Config::from_entries(&p.entries);
        let mut order: Vec<&str> = vec![];
        for (k, _) in &entries {
            if !order.contains(&k.as_str()) {
                order.push(k);
            }
        }
        prop_assert_eq!(cfg.keys().collect::<Vec<_>>(), order.clone());
        for k in order {
            let last = &entries.iter().rev().find(|(kk, _)| kk == k).unwrap().1;
            prop_assert_eq!(cfg.get(k), Some(last.as_str()));
        }
        // One duplicate warning per repeated line, naming the key.
        let dups = entries.len() - cfg.len();
        let warned = p.findings.iter().filter(|f| f.severity == Severity::Warning && f.message.contains("also set on line")).count();
        prop_assert_eq!(warned, dups);
    }

    #[test]
    fn findings_and_entries_point_into_the_source(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let p = parse(&bytes);
        let lines = bytes.split(|b| *b == b'\n').count();
        for f in &p.findings {
            if let At::Line(n) = f.at {
                prop_assert!(n >= 1 && n <= lines, "line {} of {}", n, lines);
            }
        }
        for e in &p.entries {
            prop_assert!(e.line >= 1 && e.line <= lines);
            prop_assert!(!e.key.is_empty() && !e.key.contains('='));
            prop_assert!(!e.value.contains('\n'));
        }
        if p.has_errors() {
            prop_assert!(p.findings.iter().any(|f| f.severity == Severity::Error));
        }
    }
}
