//! `ecs-bootstrap status`: whether this instance is protected now (the block as the kernel
//! holds it), read-only, with the rules files, the last boot's report and the written
//! ecs.config; exit 0 only when the block holds.

use crate::harness::sandbox::*;
use serde_json::Value;

fn status(sb: &Sandbox, pf: &str) -> Run {
    sb.run(&["status", "--persist-file", pf, "--output", "json"])
}

fn family<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["block"]["families"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["family"] == name)
        .unwrap_or_else(|| panic!("no family {name} in {v}"))
}

fn problems(v: &Value) -> String {
    family(v, "v4")["problems"].to_string()
}

#[test]
fn status_says_whether_the_block_holds_now_and_changes_nothing() {
    let sb = Sandbox::up();
    let src = sb.source();
    let pf = sb.persist_file();
    let pf = pf.to_str().unwrap();

    // Before any block: not protected, and status does not put one in.
    let r = status(&sb, pf);
    r.assert_code(4);
    let v = r.json();
    assert_eq!(v["protected"], false, "{v}");
    assert_eq!(v["exit_code"], 4);
    assert!(problems(&v).contains("does not exist"), "{v}");
    assert_eq!(v["last_boot"]["state"], "missing", "{v}");
    assert_eq!(v["ecs_config"]["state"], "missing", "{v}");
    assert_eq!(sb.drop_rules("iptables"), 0, "status changed the rules");

    // The boot: the units' block and config run, with the config unit's report path.
    let boot_report = sb.root.path().join("run/ecs-bootstrap/report.json");
    let br = boot_report.to_str().unwrap();
    sb.run(&[
        "run",
        "--source",
        &src,
        "--persist-file",
        pf,
        "--report",
        br,
    ])
    .assert_code(0);
    let before = sb.rules("iptables");
    let r = status(&sb, pf);
    r.assert_code(0);
    let v = r.json();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["protected"], true, "{v}");
    assert_eq!(family(&v, "v4")["holds"], true, "{v}");
    let rules_v4 = &v["rules_files"][0];
    assert_eq!(rules_v4["path"], pf, "{v}");
    assert_eq!(rules_v4["has_our_rule"], true, "{v}");
    assert_eq!(v["last_boot"]["state"], "read", "{v}");
    assert_eq!(v["last_boot"]["command"], "run");
    assert_eq!(v["last_boot"]["ok"], true);
    assert_eq!(v["ecs_config"]["state"], "written", "{v}");
    assert_eq!(v["ecs_config"]["source"], src.as_str(), "{v}");
    assert_eq!(sb.rules("iptables"), before, "status changed the rules");
    assert!(!sb.reaches_imds(Ns::Ctr, false));

    // A RETURN above our DROP: our line is still there, but containers reach IMDS, and
    // status says so (the kernel's state, not a line's presence).
    sb.exec(
        Ns::Host,
        &[
            "iptables",
            "-w",
            "5",
            "-I",
            "DOCKER-USER",
            "1",
            "-j",
            "RETURN",
        ],
    );
    assert!(
        sb.reaches_imds(Ns::Ctr, false),
        "the control: the RETURN opens the path"
    );
    let r = status(&sb, pf);
    r.assert_code(4);
    let v = r.json();
    assert_eq!(v["protected"], false, "{v}");
    assert!(problems(&v).contains("another tool"), "{v}");
    let text = sb.run(&["status", "--persist-file", pf]);
    text.assert_code(4).assert_contains("protected  NO");

    // Our rule removed (an `iptables -F DOCKER-USER`): not protected, the reason named, and
    // nothing repaired.
    sb.exec(Ns::Host, &["iptables", "-w", "5", "-F", "DOCKER-USER"]);
    let r = status(&sb, pf);
    r.assert_code(4);
    assert!(problems(&r.json()).contains("no DROP rule"), "{}", r.stdout);
    assert_eq!(sb.drop_rules("iptables"), 0, "status repaired the rule");
}

/// A last boot that failed is named with its failed step; a bad `--remove` is refused.
#[test]
fn status_names_a_failed_boot_and_refuses_changes() {
    let sb = Sandbox::up();
    let pf = sb.persist_file();
    let pf = pf.to_str().unwrap();
    let forbidden = format!("s3://{}/{}", sb.s("bucket"), sb.s("forbidden_key"));
    let boot_report = sb.root.path().join("run/ecs-bootstrap/report.json");
    let br = boot_report.to_str().unwrap();
    sb.run(&[
        "run",
        "--source",
        &forbidden,
        "--persist-file",
        pf,
        "--report",
        br,
    ])
    .assert_code(3);
    let r = status(&sb, pf);
    r.assert_code(0);
    let v = r.json();
    assert_eq!(v["last_boot"]["ok"], false, "{v}");
    assert_eq!(v["last_boot"]["exit_code"], 3);
    assert_eq!(v["last_boot"]["failed"][0]["step"], "config", "{v}");
    sb.run(&["status", "--remove"])
        .assert_code(2)
        .assert_contains("status changes nothing");
}
