//! ecs.config means the same to its two readers: a differential test on generated files.
//!
//! The readers are ported in `src/config/readers.rs`, each naming the upstream code it follows:
//! ecs-init's `getEnvVars` (amazon-ecs-agent, `ecs-init/docker/docker.go`: trim the whole line,
//! split at the first `=`) and systemd's `EnvironmentFile=` (`src/basic/env-file.c`
//! `parse_env_file_internal`, `src/basic/env-util.c` `env_name_is_valid`). For a few hundred
//! generated sources holding what makes the readers differ (blanks around keys and values,
//! vertical tabs and Unicode spaces, quotes, backslashes, comments, CRLF, duplicates), the
//! config step's validation must:
//! 1. report and write what ecs-init reads from the source, for every key;
//! 2. write a file on which both readers agree, except for keys a warning names;
//! 3. name (in a reader warning) every key the two readers read differently from the source;
//! 4. not warn about a key both readers read alike, in the source and in what is written.
//!
//! Plus one run of the real binary against moto with the cases that tell the readers apart.

use crate::harness::sandbox::*;
use ecs_bootstrap::config::parse::{Severity, valid_key};
use ecs_bootstrap::config::readers;
use ecs_bootstrap::config::validate;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        6 => Just("ECS_CLUSTER"),
        4 => Just("ECS_LOGLEVEL"),
        3 => Just("ECS_RESERVED_MEMORY"),
        2 => Just("no_proxy"),
        2 => Just("HTTPS_PROXY"),
        1 => Just("MY_KEY"),
    ];
    let lead = prop_oneof![6 => Just(""), 2 => Just(" "), 1 => Just("\t"), 1 => Just("  ")];
    let piece = prop_oneof![
        8 => Just("prod"),
        2 => Just("a=b"),
        2 => Just("x y"),
        1 => Just("\""),
        1 => Just("'"),
        1 => Just("\\"),
        2 => Just(" "),
        1 => Just("\t"),
        1 => Just("\u{a0}"),
        1 => Just("\u{b}"),
        1 => Just("\u{2003}"),
        1 => Just("#"),
        1 => Just("$HOME"),
        1 => Just("é"),
    ];
    let end = prop_oneof![4 => Just("\n"), 1 => Just("\r\n")];
    let kv = (
        lead,
        key,
        proptest::collection::vec(piece, 0..4),
        end.clone(),
    )
        .prop_map(|(l, k, v, e)| format!("{l}{k}={}{e}", v.concat()));
    let other = prop_oneof![
        Just("\n".to_owned()),
        Just("# a comment\n".to_owned()),
        Just("# a comment ending in a backslash \\\n".to_owned()),
        Just("; another=comment\n".to_owned()),
        Just("  \n".to_owned()),
    ];
    prop_oneof![6 => kv, 1 => other]
}

/// The names of keys mentioned in reader warnings (those that speak of ecs-init and systemd),
/// leaving out the note about old systemd versions and control characters.
fn named(findings: &[ecs_bootstrap::config::parse::Finding], keys: &[String]) -> Vec<String> {
    let texts: Vec<String> = findings
        .iter()
        .map(|f| f.message.clone())
        .filter(|m| m.contains("ecs-init") && !m.contains("control characters"))
        .collect();
    keys.iter()
        .filter(|k| {
            texts.iter().any(|t| {
                t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .any(|w| w == k.as_str())
            })
        })
        .cloned()
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn what_we_write_means_the_same_to_both_readers(
        lines in proptest::collection::vec(line(), 1..8)
    ) {
        let source = lines.concat();
        let (config, findings) = validate(source.as_bytes(), &[], false, true);
        prop_assume!(!findings.iter().any(|f| f.severity == Severity::Error));
        let written = config.render();
        let ours: BTreeMap<String, String> = config
            .keys()
            .map(|k| (k.to_owned(), config.get(k).unwrap().to_owned()))
            .collect();
        let keys: Vec<String> = ours.keys().cloned().collect();
        let named = named(&findings, &keys);

        // 1. What we report and write is what ecs-init reads, from the source and from our file.
        let init_src: BTreeMap<String, String> = readers::ecs_init(&source)
            .into_iter()
            .filter(|(k, _)| valid_key(k))
            .collect();
        prop_assert_eq!(&init_src, &ours, "source {:?}", source);
        let init_out = readers::ecs_init(&written);
        prop_assert_eq!(&init_out, &ours, "written {:?}", written);

        // 2. Both readers agree on our file, except on keys a warning names.
        let sysd_out = readers::systemd(&written);
        for k in &keys {
            if sysd_out.get(k) != init_out.get(k) {
                prop_assert!(named.contains(k), "{} differs in {:?}, unnamed: {:?}", k, written, findings);
            }
        }

        // 3. A key the readers read differently from the source is named, where each line
        // stands alone: no key set twice (a line that a later one overrides is not written,
        // whatever it would do) and no value running on into other lines (quotes, backslashes:
        // which lines systemd joins depends on the exact text, and 2. checks what is written).
        let sysd_src = readers::systemd(&source);
        let lines_with_keys = lines.iter().filter(|l| l.contains('=') && !l.trim_start().starts_with(['#', ';'])).count();
        let runs_on = source.contains(['"', '\'', '\\']);
        let alone = lines_with_keys == keys.len() && !runs_on;
        for k in keys.iter().filter(|_| alone) {
            if sysd_src.get(k) != init_src.get(k) {
                prop_assert!(named.contains(k), "{} differs in {:?}, unnamed: {:?}", k, source, findings);
            }
        }

        // 4. No reader warning about a key both read alike, in the source and in our file
        // (where no value runs on into other lines: then a line's own warning may be about a
        // value systemd never gets to).
        for k in named.iter().filter(|_| !runs_on) {
            let alike = sysd_src.get(k) == init_src.get(k) && sysd_out.get(k) == init_out.get(k);
            prop_assert!(!alike, "{} is read alike but named: {:?} in {:?}", k, findings, source);
        }
    }
}

/// The real binary on the cases that tell the readers apart: a trailing blank (both readers drop it: written and
/// reported without it, no warning), blanks before a key (accepted), lower-case proxy keys
/// (accepted), and an unclosed quote that makes systemd swallow the next lines (every key it
/// takes is named).
#[test]
fn the_config_step_writes_what_both_readers_read() {
    let sb = Sandbox::up();
    sb.put(
        &sb.s("key"),
        b"ECS_CLUSTER=prod \n  ECS_LOGLEVEL=info\nno_proxy=169.254.169.254\n\
          ECS_RESERVED_MEMORY=\"256\nECS_ENABLE_TASK_IAM_ROLE=true\nECS_AWSVPC_BLOCK_IMDS=true\n",
    );
    let r = sb.run(&["fetch-config", "--source", &sb.source(), "--output", "json"]);
    r.assert_code(0)
        .assert_contains("the value of ECS_RESERVED_MEMORY starts with a quote")
        .assert_contains("systemd reads the line of ECS_ENABLE_TASK_IAM_ROLE as part of the value of ECS_RESERVED_MEMORY")
        .assert_contains("systemd reads the line of ECS_AWSVPC_BLOCK_IMDS as part of the value of ECS_RESERVED_MEMORY");
    for k in ["ECS_CLUSTER", "ECS_LOGLEVEL", "no_proxy"] {
        assert!(
            !r.stderr
                .lines()
                .any(|l| l.contains("WARN") && l.contains(&format!(" {k} "))),
            "{k} is read alike by both readers:\n{}",
            r.stderr
        );
    }
    let written = std::fs::read_to_string(sb.dest()).unwrap();
    assert!(
        written.starts_with("ECS_CLUSTER=prod\nECS_LOGLEVEL=info\nno_proxy=169.254.169.254\n"),
        "{written}"
    );
    assert_eq!(readers::ecs_init(&written)["ECS_CLUSTER"], "prod");
    assert_eq!(readers::systemd(&written)["ECS_CLUSTER"], "prod");
    // --strict refuses what the readers disagree on, and only that.
    sb.put(
        &sb.s("key"),
        b"ECS_CLUSTER=prod \n  ECS_LOGLEVEL=info\nno_proxy=x\n",
    );
    sb.run(&["fetch-config", "--source", &sb.source(), "--strict"])
        .assert_code(0);
}
