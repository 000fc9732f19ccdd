//! Rules-file merge: `ecs_bootstrap::firewall::merge::merge` on arbitrary text.
//! The first byte picks the rule set (family, chain, interfaces); the rest is the old file.
//! Checks, whenever the merge succeeds:
//! - merging the result again changes nothing (idempotent: no rewrite at every boot);
//! - every line of the old file that is not one of ours is kept, in order;
//! - after a restore (the last *filter table replayed) our DROP rules are the first rules of
//!   their chain, once each, and in the DOCKER-USER placement the jump is the first FORWARD
//!   rule, once.
#![no_main]

use ecs_bootstrap::firewall::merge::{MARKER, merge, replay_filter};
use ecs_bootstrap::firewall::rules::{Family, Line, Placement, RuleSet};
use libfuzzer_sys::fuzz_target;

fn rule_set(b: u8) -> RuleSet {
    let family = if b & 1 == 0 { Family::V4 } else { Family::V6 };
    let placement = if b & 2 == 0 {
        Placement::DockerUser
    } else {
        Placement::Forward
    };
    let interfaces = match (b >> 2) % 3 {
        0 => vec!["docker+".to_owned()],
        1 => vec!["docker+".to_owned(), "br-+".to_owned()],
        _ => vec!["docker0".to_owned(), "br-+".to_owned(), "eni+".to_owned()],
    };
    RuleSet {
        family,
        placement,
        interfaces,
    }
}

fn ours(line: &str, set: &RuleSet) -> bool {
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

fuzz_target!(|data: &[u8]| {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    let Ok(old) = std::str::from_utf8(rest) else {
        return;
    };
    let set = rule_set(b);
    let Ok(m) = merge(old, &set) else {
        return;
    };

    let again = merge(&m.text, &set).expect("merged text must merge again");
    assert_eq!(again.text, m.text, "merge is not idempotent");

    // A blank (whitespace-only) file counts as missing: it becomes the minimal file.
    let norm = old.replace("\r\n", "\n").replace('\r', "\n");
    let kept = if old.trim().is_empty() { "" } else { &norm };
    let mut out = m.text.lines();
    for l in kept.lines().filter(|l| !ours(l, &set)) {
        assert!(out.any(|o| o == l), "line {l:?} lost or reordered");
    }

    let chains = replay_filter(&m.text);
    let own = chains.get(set.chain()).cloned().unwrap_or_default();
    for (n, i) in set.interfaces.iter().enumerate() {
        let got = own.get(n).map(|r| format!("-A {} {r}", set.chain()));
        assert_eq!(got, Some(set.save_line(i)), "rule {n} is not ours after a restore");
    }
    let copies = own
        .iter()
        .filter(|r| set.is_our_rule(&format!("-A {} {r}", set.chain())))
        .count();
    assert_eq!(copies, set.interfaces.len(), "copies of our rules");
    if set.jump_line().is_some() {
        let fwd = chains.get("FORWARD").cloned().unwrap_or_default();
        assert_eq!(fwd.first().map(String::as_str), Some("-j DOCKER-USER"));
        assert_eq!(fwd.iter().filter(|r| *r == "-j DOCKER-USER").count(), 1);
    }
});
