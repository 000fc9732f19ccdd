//! Rules-file merge: `ecs_bootstrap::firewall::persist::merge` on arbitrary text.
//! The first byte picks the rule set (family, chain, interfaces); the rest is the old file.
//! Checks, whenever the merge succeeds:
//! - merging the result again changes nothing (idempotent: no rewrite at every boot);
//! - every line of the old file that is not one of ours is kept, in order;
//! - the first *filter table holds each of our DROP rules exactly once, and in the
//!   DOCKER-USER placement exactly one jump, as the first FORWARD rule.
#![no_main]

use ecs_bootstrap::firewall::persist::merge;
use ecs_bootstrap::firewall::rules::{Family, Placement, RuleSet};
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
    let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    set.is_our_rule(line)
        || set.jump_line().is_some_and(|j| words(line) == words(&j))
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

    let lines: Vec<&str> = m.text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "*filter")
        .expect("a *filter table");
    let end = start
        + lines[start..]
            .iter()
            .position(|l| l.trim() == "COMMIT")
            .expect("COMMIT");
    let body = &lines[start + 1..end];
    for i in &set.interfaces {
        let n = body.iter().filter(|l| set.is_rule_for(l, i)).count();
        assert_eq!(n, 1, "rule for {i} appears {n} times");
    }
    if let Some(j) = set.jump_line() {
        let jw: Vec<&str> = j.split_whitespace().collect();
        let is_j = |l: &&&str| l.split_whitespace().eq(jw.iter().copied());
        assert_eq!(body.iter().filter(is_j).count(), 1, "jump count");
        let first_fwd = body.iter().find(|l| {
            let mut t = l.split_whitespace();
            t.next() == Some("-A") && t.next() == Some("FORWARD")
        });
        assert!(
            first_fwd.is_some_and(|l| is_j(&l)),
            "jump is not the first FORWARD rule"
        );
    }
});
