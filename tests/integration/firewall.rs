//! The firewall step with real iptables (nft and legacy backends) in network namespaces the
//! tests create: effects are proven with TCP connections from a "container" namespace on the
//! docker0 bridge to listeners on 169.254.169.254, fd00:ec2::254 and 198.51.100.10.

use crate::harness::netns::*;
use ecs_bootstrap::firewall::iptables::{Ipt, IptError};
use ecs_bootstrap::firewall::rules::Family;
use ecs_bootstrap::sys::SystemRunner;
use std::path::Path;
use std::time::Duration;

/// Declares one test per backend.
macro_rules! both_backends {
    ($($name:ident => $body:ident;)*) => {
        mod nft {
            $( #[test] fn $name() { super::$body(super::NFT) } )*
        }
        mod legacy {
            $( #[test] fn $name() { super::$body(super::LEGACY) } )*
        }
    };
}

both_backends! {
    blocks_container_keeps_host_and_second_run_changes_nothing => blocks_and_is_idempotent;
    twenty_concurrent_runs_leave_exactly_one_rule => twenty_concurrent_runs;
    restored_persisted_file_blocks_in_fresh_namespace_and_al2_sample_is_replaced => restore_after_al2_sample;
    docker_layouts_replayed_after_and_before_us_keep_the_block => docker_replay_keeps_block;
    forward_placement_is_bypassed_by_docker_replay => forward_placement_bypassed;
    runner_tells_existing_chain_gone_rule_and_failure_apart => runner_kinds;
    full_save_writes_a_restorable_stable_file => full_save;
    invalid_existing_rules_file_is_left_alone_with_a_clear_error => invalid_file_untouched;
    rules_file_over_the_size_cap_is_left_alone_and_the_rule_still_asserted => oversized_file_untouched;
    return_or_accept_above_our_drop_is_repaired_keeping_them_below => foreign_rule_above_ours;
    rules_files_that_leaked_block_after_merge_and_restore => leaky_rules_files;
    documented_seed_rule_is_recognised_and_moved => seed_rule_moved;
    interface_and_chain_changes_remove_what_is_no_longer_wanted => changes_remove_unwanted;
    remove_undoes_everything_we_added => remove_undoes;
    churn_at_the_top_of_forward_loses_nothing_with_restore => churn_with_restore;
    churn_at_the_top_of_forward_loses_nothing_without_restore => churn_without_restore;
    ipv6_auto_fails_closed_when_a_blocked_bridge_has_ipv6_and_no_ip6tables => ipv6_fails_closed;
    changed_sample_loaded_at_boot_is_merged_keeping_input_and_containers_work => sample_merged;
    docker_nftables_backend_replayed_keeps_the_block => docker_nftables_replay;
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn blocks_and_is_idempotent(bin: &str) {
    let t = Topo::new();
    let root = tempdir();
    let (f4, f6) = files(root.path());
    // Before: the container reaches IMDS (v4 and v6), so the test can fail.
    assert_reaches(&t.ctr, IMDS4, "no rule yet");
    assert_reaches(&t.ctr, IMDS6, "no rule yet");

    let r = block(
        &t.host,
        root.path(),
        bin,
        &[
            "--persist-file",
            &f4,
            "--persist-file6",
            &f6,
            "--ipv6",
            "on",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.changed(), "{}", r.text());
    let d = &r.step()["details"];
    let want_backend = if bin.ends_with("nft") {
        "nft"
    } else {
        "legacy"
    };
    assert_eq!(d["backend"], want_backend, "{}", r.text());
    assert_eq!(d["families"][0]["chain_created"], true);
    assert_eq!(d["families"][0]["rules"][0]["state"], "added");
    assert_eq!(d["families"][0]["jump"], "placed");
    assert_eq!(d["families"][0]["persist"]["outcome"], "written");
    assert_eq!(d["families"][1]["family"], "v6");

    assert_blocked(&t.ctr, IMDS4, "after block-imds");
    assert_blocked(&t.ctr, IMDS6, "after block-imds");
    assert_reaches(&t.ctr, OTHER4, "only IMDS is blocked");
    assert_reaches(&t.host, IMDS4, "the host keeps IMDS");
    assert_reaches(&t.host, IMDS6, "the host keeps IMDS");

    let rules4 = t.host.rules(bin);
    assert_eq!(count(&rules4, RULE4), 1, "{rules4:?}");
    let fwd: Vec<&String> = rules4
        .iter()
        .filter(|l| l.starts_with("-A FORWARD"))
        .collect();
    assert_eq!(fwd.first().map(|s| s.as_str()), Some(JUMP), "{rules4:?}");
    assert_eq!(count(&t.host.rules(&six(bin)), RULE6), 1);

    // Second run: nothing changes, in the kernel or on disk.
    let file4 = std::fs::read(&f4).unwrap();
    let mtime = std::fs::metadata(&f4).unwrap().modified().unwrap();
    let r2 = block(
        &t.host,
        root.path(),
        bin,
        &[
            "--persist-file",
            &f4,
            "--persist-file6",
            &f6,
            "--ipv6",
            "on",
        ],
    );
    assert_eq!(r2.code, 0, "{}", r2.text());
    assert!(!r2.changed(), "{}", r2.text());
    let d2 = &r2.step()["details"]["families"][0];
    assert_eq!(d2["rules"][0]["state"], "present");
    assert_eq!(d2["jump"], "present");
    assert_eq!(d2["persist"]["outcome"], "unchanged");
    assert_eq!(t.host.rules(bin), rules4);
    assert_eq!(std::fs::read(&f4).unwrap(), file4);
    assert_eq!(std::fs::metadata(&f4).unwrap().modified().unwrap(), mtime);
}

fn twenty_concurrent_runs(bin: &str) {
    let host = Ns::new("h");
    let root = tempdir();
    let (f4, f6) = files(root.path());
    let root_s = root.path().to_str().unwrap().to_owned();
    let children: Vec<_> = (0..20)
        .map(|_| {
            std::process::Command::new("ip")
                .args(["netns", "exec", host.name(), BIN, "--output", "json"])
                .args(["--deadline", "60", "block-imds", "--root", &root_s])
                .args(["--iptables", bin, "--ipv6", "on"])
                .args(["--persist-file", &f4, "--persist-file6", &f6])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut changed = 0;
    for c in children {
        let r = parse_run(c.wait_with_output().unwrap());
        assert_eq!(r.code, 0, "{}", r.text());
        changed += usize::from(r.changed());
    }
    assert_eq!(changed, 1, "exactly one run adds the rules");
    let rules4 = host.rules(bin);
    assert_eq!(count(&rules4, RULE4), 1, "{rules4:?}");
    assert_eq!(count(&rules4, JUMP), 1, "{rules4:?}");
    let rules6 = host.rules(&six(bin));
    assert_eq!(count(&rules6, RULE6), 1, "{rules6:?}");
    assert_eq!(count(&rules6, JUMP), 1, "{rules6:?}");
    let file: Vec<String> = std::fs::read_to_string(&f4)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(count(&file, FILE_RULE4), 1);
    assert_eq!(count(&file, FILE_JUMP), 1);
}

/// Amazon Linux 2's /etc/sysconfig/iptables from iptables-services.
const AL2_SAMPLE: &str = "# sample configuration for iptables service
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

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn restore_into(ns: &Ns, bin: &str, text: &[u8]) {
    let o = ns.exec_stdin(&restore_bin(bin), &["-w", "10"], text);
    assert!(
        o.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn restore_after_al2_sample(bin: &str) {
    // An Amazon Linux root with the iptables-services sample in place.
    let root = tempdir();
    write(
        &root.path().join("etc/os-release"),
        "NAME=\"Amazon Linux\"\nVERSION=\"2\"\nID=\"amzn\"\nID_LIKE=\"centos rhel fedora\"\n",
    );
    let sysconfig = root.path().join("etc/sysconfig/iptables");
    write(&sysconfig, AL2_SAMPLE);
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&sysconfig, std::fs::Permissions::from_mode(0o600)).unwrap();
    write(
        &root.path().join("usr/lib/systemd/system/iptables.service"),
        "[Service]\n",
    );
    enable_unit(root.path(), "iptables.service");

    let first = Topo::new();
    let r = block(&first.host, root.path(), bin, &["--ipv6", "off"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let p = &r.step()["details"]["families"][0]["persist"];
    assert_eq!(p["file"], sysconfig.to_str().unwrap(), "{}", r.text());
    assert_eq!(p["outcome"], "written");
    assert_eq!(p["loaded_at_boot_by"], "iptables.service");
    let backup = root
        .path()
        .join("etc/sysconfig/iptables.ecs-bootstrap.orig");
    assert_eq!(p["backup"], backup.to_str().unwrap());
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), AL2_SAMPLE);
    assert!(
        r.stdout.contains("iptables-services sample"),
        "a warning says what happened: {}",
        r.text()
    );
    let persisted = std::fs::read_to_string(&sysconfig).unwrap();
    assert!(!persisted.contains("REJECT"), "{persisted}");
    // The mode of the sample (0600 as iptables-services ships it) is kept.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&sysconfig), 0o600);
    assert_eq!(mode(&backup), 0o600);
    drop(first);

    // "Reboot": a fresh topology, the persisted file restored as iptables.service would.
    let fresh = Topo::new();
    assert_reaches(&fresh.ctr, IMDS4, "fresh namespace, nothing restored yet");
    restore_into(&fresh.host, bin, persisted.as_bytes());
    assert_blocked(&fresh.ctr, IMDS4, "restored persisted file");
    assert_reaches(&fresh.ctr, OTHER4, "containers still reach other addresses");
    assert_reaches(&fresh.host, IMDS4, "the host keeps IMDS");
    // ecs-bootstrap at boot finds everything in place.
    let again = block(&fresh.host, root.path(), bin, &["--ipv6", "off"]);
    assert_eq!(again.code, 0, "{}", again.text());
    assert!(!again.changed(), "{}", again.text());

    // The sample itself, restored, would have cut the container off: the replacement matters.
    let sample = Topo::new();
    restore_into(&sample.host, bin, AL2_SAMPLE.as_bytes());
    assert_blocked(
        &sample.ctr,
        OTHER4,
        "the sample REJECTs all forwarded traffic",
    );
}

fn docker_replay_keeps_block(bin: &str) {
    for layout in [DockerLayout::V20To27, DockerLayout::V28] {
        for dockerd_first in [false, true] {
            let why = format!("{layout:?}, dockerd first: {dockerd_first}");
            let t = Topo::new();
            let root = tempdir();
            let args = ["--persist", "none", "--ipv6", "off"];
            if dockerd_first {
                replay_dockerd(&t.host, bin, layout);
                assert_reaches(&t.ctr, IMDS4, &format!("{why}: dockerd alone"));
            }
            let r = block(&t.host, root.path(), bin, &args);
            assert_eq!(r.code, 0, "{}", r.text());
            if !dockerd_first {
                assert_blocked(&t.ctr, IMDS4, &why);
                replay_dockerd(&t.host, bin, layout);
            }
            let rules = t.host.rules(bin);
            let fwd: Vec<&String> = rules
                .iter()
                .filter(|l| l.starts_with("-A FORWARD"))
                .collect();
            assert_eq!(fwd[0], JUMP, "{why}: {rules:?}");
            assert!(
                fwd.len() > 1,
                "{why}: docker's rules are in place: {rules:?}"
            );
            assert_blocked(&t.ctr, IMDS4, &format!("{why}: after dockerd"));
            assert_reaches(
                &t.ctr,
                OTHER4,
                &format!("{why}: docker's ACCEPT rules work"),
            );
            assert_reaches(&t.host, IMDS4, &why);
            // Running again (as the docker.service drop-in does) changes nothing.
            let r2 = block(&t.host, root.path(), bin, &args);
            assert_eq!(r2.code, 0, "{}", r2.text());
            assert!(!r2.changed(), "{why}: {}", r2.text());
            assert_eq!(t.host.rules(bin), rules, "{why}");
        }
    }
}

fn forward_placement_bypassed(bin: &str) {
    for layout in [DockerLayout::V20To27, DockerLayout::V28] {
        let t = Topo::new();
        let root = tempdir();
        let block_forward = || {
            block(
                &t.host,
                root.path(),
                bin,
                &["--chain", "FORWARD", "--persist", "none", "--ipv6", "off"],
            )
        };
        let r = block_forward();
        assert_eq!(r.code, 0, "{}", r.text());
        assert!(
            r.stdout
                .contains("dockerd re-inserts its own ACCEPT rules above it"),
            "{}",
            r.text()
        );
        let rules = t.host.rules(bin);
        assert_eq!(
            rules.iter().find(|l| l.starts_with("-A FORWARD")).unwrap(),
            FWD_RULE4
        );
        assert!(
            !rules.iter().any(|l| l.contains("DOCKER-USER")),
            "{rules:?}"
        );
        assert_blocked(&t.ctr, IMDS4, "FORWARD placement before dockerd");
        replay_dockerd(&t.host, bin, layout);
        assert_reaches(
            &t.ctr,
            IMDS4,
            &format!("{layout:?}: the documented FORWARD-1 rule is bypassed after dockerd starts"),
        );
        // A rerun (what the docker.service drop-in does after every dockerd start) moves the
        // rule back to the top: blocked again, one copy, first in FORWARD.
        let again = block_forward();
        assert_eq!(again.code, 0, "{}", again.text());
        assert!(again.changed(), "{}", again.text());
        assert!(again.stdout.contains("moved"), "{}", again.text());
        let rules = t.host.rules(bin);
        let forward: Vec<&String> = rules
            .iter()
            .filter(|l| l.starts_with("-A FORWARD"))
            .collect();
        assert_eq!(forward[0], FWD_RULE4, "{forward:?}");
        assert_eq!(count(&rules, FWD_RULE4), 1);
        assert_blocked(
            &t.ctr,
            IMDS4,
            &format!("{layout:?}: FORWARD placement after a rerun"),
        );
        let third = block_forward();
        assert!(!third.changed(), "{}", third.text());
    }
}

fn runner_kinds(bin: &str) {
    let host = Ns::new("h");
    let bin = bin.to_owned();
    host.within(move || {
        let runner = SystemRunner::default();
        let ipt = Ipt::new(bin.clone().into(), &runner, &runner.deadline);
        let spec: Vec<String> = ["-d", "169.254.169.254/32", "-i", "docker+", "-j", "DROP"]
            .map(String::from)
            .to_vec();
        let listed = |ipt: &Ipt| {
            let (t, _) = ipt.list_table().unwrap();
            t.iter()
                .filter(|l| *l == "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP")
                .count()
        };
        // A chain created meanwhile (by dockerd) is not an error.
        assert!(ipt.new_chain("DOCKER-USER").unwrap());
        assert!(
            !ipt.new_chain("DOCKER-USER").unwrap(),
            "already exists is not an error"
        );
        ipt.insert("DOCKER-USER", 1, &spec).unwrap();
        assert_eq!(listed(&ipt), 1);
        // A rule removed meanwhile (by someone else) is not an error either.
        assert!(ipt.delete_spec("DOCKER-USER", &spec).unwrap());
        assert_eq!(listed(&ipt), 0);
        assert!(
            !ipt.delete_spec("DOCKER-USER", &spec).unwrap(),
            "a rule already gone is not an error"
        );
        // Failed: a bad target is a failure naming the command line and stderr.
        let bad: Vec<String> = ["-j", "NO-SUCH-TARGET"].map(String::from).to_vec();
        let e = ipt.insert("DOCKER-USER", 1, &bad).unwrap_err();
        assert!(matches!(e, IptError::Failed { .. }), "{e:?}");
        let m = e.to_string();
        assert!(
            m.contains(&format!(
                "`{bin} -w 10 -t filter -I DOCKER-USER 1 -j NO-SUCH-TARGET`"
            )),
            "{m}"
        );
        assert!(m.contains("NO-SUCH-TARGET"), "{m}");
        // Backend.
        let b = ipt.backend().unwrap();
        assert_eq!(
            b.name(),
            if bin.ends_with("nft") {
                "nft"
            } else {
                "legacy"
            }
        );
    });
}

fn full_save(bin: &str) {
    let t = Topo::new();
    let root = tempdir();
    let (f4, _) = files(root.path());
    replay_dockerd(&t.host, bin, DockerLayout::V20To27);
    // dockerd's masquerade rule: `iptables-save` (and so full-save) keeps every table.
    let masquerade = "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE";
    let mut nat = vec!["-w", "5", "-t", "nat"];
    nat.extend(masquerade.split(' '));
    t.host.exec_ok(bin, &nat);
    let args = [
        "--persist",
        "full-save",
        "--persist-file",
        &f4,
        "--ipv6",
        "off",
    ];
    let r = block(&t.host, root.path(), bin, &args);
    assert_eq!(r.code, 0, "{}", r.text());
    let saved = std::fs::read_to_string(&f4).unwrap();
    // As documented: full-save does persist Docker's run-time rules.
    assert!(saved.contains("-A FORWARD -o docker0 -j DOCKER"), "{saved}");
    assert!(saved.contains(RULE4), "{saved}");
    assert!(
        saved.contains("*nat\n") && saved.contains(masquerade),
        "{saved}"
    );
    assert!(!saved.contains("# Generated by"), "{saved}");
    // Traffic changes counters and the clock moves: the file stays the same.
    assert_reaches(&t.ctr, OTHER4, "docker rules");
    let r2 = block(&t.host, root.path(), bin, &args);
    assert!(!r2.changed(), "{}", r2.text());
    assert_eq!(std::fs::read_to_string(&f4).unwrap(), saved);
    let fresh = Topo::new();
    restore_into(&fresh.host, bin, saved.as_bytes());
    assert_blocked(&fresh.ctr, IMDS4, "restored full save");
    assert_reaches(&fresh.ctr, OTHER4, "restored full save");
}

fn invalid_file_untouched(bin: &str) {
    let host = Ns::new("h");
    let root = tempdir();
    let (f4, _) = files(root.path());
    // An unknown option: iptables-restore --test rejects the file with both backends. (An
    // undeclared chain would pass iptables-nft-restore --test, which only parses.)
    let broken = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT --no-such-option -j ACCEPT\nCOMMIT\n";
    write(Path::new(&f4), broken);
    let r = block(
        &host,
        root.path(),
        bin,
        &["--persist-file", &f4, "--ipv6", "off"],
    );
    assert_eq!(r.code, 4, "{}", r.text());
    assert!(
        r.stdout.contains("does not pass iptables-restore --test") && r.stdout.contains(&f4),
        "{}",
        r.text()
    );
    assert_eq!(std::fs::read_to_string(&f4).unwrap(), broken);
    // The rule itself is in place: persistence failing does not undo the block.
    assert_eq!(count(&host.rules(bin), RULE4), 1);
}

/// A rules file just over the 16 MiB cap (generated `-A INPUT` and comment lines) is not read: exit 4 with
/// the figure and the fix, the file as it was, and the kernel rule in place. The control: the
/// same file 1 KiB under the cap is merged.
fn oversized_file_untouched(bin: &str) {
    let cap = ecs_bootstrap::firewall::MAX_RULES_FILE as usize;
    let root = tempdir();
    let (f4, _) = files(root.path());
    let rules = |size: usize| {
        // Rules, then comment lines (cheap for iptables-restore --test in the control).
        let line = "-A INPUT -s 10.0.0.1/32 -j ACCEPT\n";
        let pad = "# padding padding padding padding padding padding padding padding\n";
        let mut t = String::with_capacity(size + pad.len());
        t.push_str("*filter\n:INPUT ACCEPT [0:0]\n");
        t.push_str(&line.repeat(1000));
        while t.len() + pad.len() + "COMMIT\n".len() <= size {
            t.push_str(pad);
        }
        while t.len() + "COMMIT\n".len() < size {
            t.push('#');
            t.push('\n');
        }
        t.push_str("COMMIT\n");
        t
    };
    let big = rules(cap + 1);
    assert_eq!(big.len(), cap + 1);
    write(Path::new(&f4), &big);
    let host = Ns::new("h");
    let r = block(
        &host,
        root.path(),
        bin,
        &["--persist-file", &f4, "--ipv6", "off"],
    );
    assert_eq!(r.code, 4, "{}", r.text());
    assert!(
        r.stdout.contains("more than the 16 MiB") && r.stdout.contains("kernel rule is in place"),
        "{}",
        r.text()
    );
    assert!(
        std::fs::read_to_string(&f4).unwrap() == big,
        "the file changed"
    );
    assert_eq!(count(&host.rules(bin), RULE4), 1);
    drop(host);

    // Control: just under the cap, the same kind of file is merged.
    let small = rules(cap - 1024);
    write(Path::new(&f4), &small);
    let host = Ns::new("h");
    let r = block(
        &host,
        root.path(),
        bin,
        &["--persist-file", &f4, "--ipv6", "off"],
    );
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(
        r.step()["details"]["families"][0]["persist"]["outcome"],
        "written"
    );
}

/// A FIFO at the rules file's path (formerly: the run blocked opening it, past its deadline and
/// SIGTERM): exit 4 at once, naming the file, the kernel rule in place.
#[test]
fn fifo_rules_file_fails_at_once_and_the_rule_is_asserted() {
    let host = Ns::new("f");
    let root = tempdir();
    let (f4, _) = files(root.path());
    std::fs::create_dir_all(Path::new(&f4).parent().unwrap()).unwrap();
    nix::unistd::mkfifo(
        Path::new(&f4),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let root_s = root.path().to_str().unwrap();
    let o = host.exec(
        "timeout",
        &[
            "-s",
            "KILL",
            "30",
            BIN,
            "--deadline",
            "10",
            "block-imds",
            "--root",
            root_s,
            "--iptables",
            NFT,
            "--persist-file",
            &f4,
            "--ipv6",
            "off",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(
        out.contains("not a regular file") && out.contains(&f4),
        "{out}"
    );
    assert_eq!(count(&host.rules(NFT), RULE4), 1);
}

#[test]
fn missing_iptables_names_the_package() {
    let root = tempdir();
    let o = std::process::Command::new(BIN)
        .args(["block-imds", "--root", root.path().to_str().unwrap()])
        .args([
            "--iptables",
            "/nonexistent/sbin/iptables",
            "--persist",
            "none",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(
        out.contains("/nonexistent/sbin/iptables not found"),
        "{out}"
    );
    assert!(out.contains("install the package `iptables`"), "{out}");
}

#[test]
fn unknown_distribution_warns_that_nothing_persists() {
    let host = Ns::new("h");
    let root = tempdir();
    write(&root.path().join("etc/os-release"), "ID=bottlerocket\n");
    let r = block(&host, root.path(), NFT, &["--ipv6", "off"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stdout
            .contains("nothing persists the IPv4 rule on bottlerocket"),
        "{}",
        r.text()
    );
    assert_eq!(
        r.step()["details"]["families"][0]["persist"]["outcome"],
        "skipped"
    );
    assert_eq!(count(&host.rules(NFT), RULE4), 1);
}

#[test]
fn debian_default_file_without_loader_warns() {
    let host = Ns::new("h");
    let root = tempdir();
    write(&root.path().join("etc/os-release"), "ID=debian\n");
    let r = block(
        &host,
        root.path(),
        LEGACY,
        &[
            "--ipv6",
            "on",
            "--interface",
            "docker+",
            "--interface",
            "br-+",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.text());
    let v4 = std::fs::read_to_string(root.path().join("etc/iptables/rules.v4")).unwrap();
    let v6 = std::fs::read_to_string(root.path().join("etc/iptables/rules.v6")).unwrap();
    assert!(
        v4.contains(FILE_RULE4)
            && v4.contains("-I DOCKER-USER 1 -d 169.254.169.254/32 -i br-+ -m comment --comment ecs-bootstrap -j DROP"),
        "{v4}"
    );
    assert!(
        v6.contains("-I DOCKER-USER 1 -d fd00:ec2::254/128 -i docker+ -m comment --comment ecs-bootstrap -j DROP"),
        "{v6}"
    );
    assert!(r.stdout.contains("nothing loads"), "{}", r.text());
    let rules = host.rules(LEGACY);
    let du: Vec<&String> = rules
        .iter()
        .filter(|l| l.starts_with("-A DOCKER-USER"))
        .collect();
    assert_eq!(
        du,
        [
            RULE4,
            "-A DOCKER-USER -d 169.254.169.254/32 -i br-+ -m comment --comment ecs-bootstrap -j DROP"
        ],
        "interfaces in the order given"
    );
}

/// `--remove` belongs to block-imds; on `run` it is a usage error (exit 2), before any work.
#[test]
fn remove_on_run_is_a_usage_error() {
    let root = tempdir();
    let o = std::process::Command::new(BIN)
        .args(["run", "--root", root.path().to_str().unwrap()])
        .args(["--remove", "--skip-config", "--skip-check"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("block-imds --remove"), "{err}");
}

#[test]
fn bad_interface_is_a_usage_error() {
    let root = tempdir();
    let o = std::process::Command::new(BIN)
        .args(["block-imds", "--root", root.path().to_str().unwrap()])
        .args(["--interface", "not a name", "--persist", "none"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a valid interface pattern"), "{err}");
}

/// The shell-glob habit (`docker*`, `br-*`), formerly rendered as `-i docker*`, which matches
/// no bridge (exit 0, nothing blocked): a usage error naming iptables' wildcard and no rule
/// added; from the environment, the error and the built-in default asserted (in a namespace of the test's own, as
/// the run it refuses would otherwise touch the firewall).
#[test]
fn shell_glob_interface_is_a_usage_error_naming_the_plus_wildcard() {
    for bin in [NFT, LEGACY] {
        let host = Ns::new("g");
        let root = tempdir();
        for (args, env, fix) in [
            (vec!["--interface", "docker*"], None, "docker+"),
            (vec!["--interface", "docker+,br-*"], None, "br-+"),
        ] {
            let mut cmd = vec![
                "env".to_owned(),
                format!("ECS_BOOTSTRAP_INTERFACE={}", env.unwrap_or("docker+")),
                BIN.to_owned(),
                "block-imds".into(),
                "--root".into(),
                root.path().to_str().unwrap().into(),
                "--iptables".into(),
                bin.into(),
                "--persist".into(),
                "none".into(),
            ];
            cmd.extend(args.iter().map(|a| a.to_string()));
            let argv: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
            let o = host.exec(&cmd[0], &argv);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {err}");
            assert!(
                err.contains("iptables' wildcard is +")
                    && err.contains(&format!("did you mean {fix}?")),
                "{args:?} {env:?}: {err}"
            );
            let rules = host.rules(bin);
            assert!(
                !rules.iter().any(|r| r.contains("169.254.169.254")),
                "{args:?} {env:?}: {rules:?}"
            );
        }
        // From the environment, block-imds falls back to the built-in default (docker+), as
        // for any bad setting of the environment file, so the block is still asserted.
        let o = host.exec(
            "env",
            &[
                "ECS_BOOTSTRAP_INTERFACE=docker*",
                BIN,
                "block-imds",
                "--root",
                root.path().to_str().unwrap(),
                "--iptables",
                bin,
                "--persist",
                "none",
                "--ipv6",
                "off",
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{err}");
        assert!(err.contains("did you mean docker+?"), "{err}");
        assert_eq!(count(&host.rules(bin), RULE4), 1);
        drop(host);
        // Control: the same run with docker+ adds the rule.
        let host = Ns::new("g");
        let r = block(
            &host,
            root.path(),
            bin,
            &["--persist", "none", "--ipv6", "off"],
        );
        assert_eq!(r.code, 0, "{}", r.text());
        assert_eq!(count(&host.rules(bin), RULE4), 1);
    }
}

/// The docker.service drop-in's command, run after dockerd's layout was replayed (a dockerd
/// restart that also lost our rule): the block is back, and the rules file is not written.
#[test]
fn docker_dropin_reasserts_without_persisting() {
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/docker.service.d/10-ecs-bootstrap.conf"
    ))
    .unwrap();
    let exec: Vec<&str> = conf
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPost="))
        .expect("an ExecStartPost= line")
        .split_whitespace()
        .collect();
    assert!(exec[0].ends_with("/ecs-bootstrap"), "{exec:?}");
    assert!(
        exec.windows(2).any(|w| w == ["--persist", "none"]),
        "{exec:?}"
    );

    let t = Topo::new();
    let root = tempdir();
    write(&root.path().join("etc/os-release"), "ID=debian\n");
    let root_s = root.path().to_str().unwrap();
    // Boot: block-imds has run, then someone flushed DOCKER-USER, then dockerd restarted.
    let r = block(&t.host, root.path(), NFT, &["--ipv6", "off"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let rules_v4 = root.path().join("etc/iptables/rules.v4");
    std::fs::remove_file(&rules_v4).unwrap();
    t.host.exec_ok(NFT, &["-w", "10", "-F", "DOCKER-USER"]);
    replay_dockerd(&t.host, NFT, DockerLayout::V20To27);
    assert_reaches(&t.ctr, IMDS4, "rule flushed");

    let mut args: Vec<&str> = exec[1..].to_vec();
    args.extend(["--root", root_s, "--iptables", NFT, "--ipv6", "off"]);
    let mut full = vec![BIN];
    full.extend(args);
    let o = parse_run(t.host.exec(full[0], &full[1..]));
    assert_eq!(o.code, 0, "{}", o.text());
    assert_blocked(&t.ctr, IMDS4, "re-asserted by the drop-in command");
    assert_reaches(&t.ctr, OTHER4, "docker's rules intact");
    assert!(!rules_v4.exists(), "--persist none writes no file");
}

/// The file written on a first boot holds nothing but our own rendering and is not run through
/// `iptables-restore --test` at run time (that dry run costs the nft backend about 17 ms), so
/// here it is, for both families, both placements, both backends and several interface lists.
#[test]
fn minimal_rendering_passes_restore_test_on_both_backends() {
    use ecs_bootstrap::firewall::merge::minimal;
    use ecs_bootstrap::firewall::rules::{Placement, RuleSet};
    let host = Ns::new("m");
    let lists: [&[&str]; 3] = [
        &["docker+"],
        &["docker+", "br-+"],
        &["docker0", "br-1a2b3c4d5e6f", "eni+"],
    ];
    for bin in [NFT, LEGACY] {
        for family in [Family::V4, Family::V6] {
            for placement in [Placement::DockerUser, Placement::Forward] {
                for list in lists {
                    let set = RuleSet {
                        family,
                        placement,
                        interfaces: list.iter().map(|s| s.to_string()).collect(),
                    };
                    let text = minimal(&set);
                    let restore = restore_bin(&match family {
                        Family::V4 => bin.to_owned(),
                        Family::V6 => six(bin),
                    });
                    let o = host.exec_stdin(&restore, &["--test"], text.as_bytes());
                    assert!(
                        o.status.success(),
                        "{restore} --test refused:\n{text}\n{}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
        }
    }
    // The check can fail: an option iptables does not know is refused by both backends, and
    // the legacy one also refuses a rule for a chain that is not declared (the nft backend's
    // dry run does not: one more reason to run every rendering through both).
    for bin in [NFT, LEGACY] {
        let o = host.exec_stdin(
            &restore_bin(bin),
            &["--test"],
            b"*filter\n-A FORWARD -i docker+ --no-such-option 1 -j DROP\nCOMMIT\n",
        );
        assert!(!o.status.success(), "{bin}");
    }
    let o = host.exec_stdin(
        &restore_bin(LEGACY),
        &["--test"],
        b"*filter\n-A DOCKER-USER -i docker+ -j DROP\nCOMMIT\n",
    );
    assert!(!o.status.success());
}

/// `--ipv6 auto` follows the host: with IPv6 on (lo has ::1), the IPv6 rule goes in too; with
/// IPv6 disabled by sysctl, only IPv4, and the report says why.
#[test]
fn ipv6_auto_follows_the_host() {
    let auto = |ns: &Ns| {
        let root = tempdir();
        let (p4, p6) = files(root.path());
        let extra = [
            "--ipv6",
            "auto",
            "--persist-file",
            &p4,
            "--persist-file6",
            &p6,
        ];
        let r = block(ns, root.path(), NFT, &extra);
        assert_eq!(r.code, 0, "{}", r.text());
        r.step()["details"]["ipv6"].clone()
    };
    let on = Ns::new("a6");
    let v6 = auto(&on);
    assert_eq!(v6["enabled"], true, "{v6}");
    assert_eq!(v6["reason"], "auto: the host has IPv6");
    assert_eq!(count(&on.rules(&six(NFT)), RULE6), 1);

    let off = Ns::new("n6");
    for key in ["all", "default", "lo"] {
        let o = off.exec(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{key}.disable_ipv6=1")],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let v6 = auto(&off);
    assert_eq!(v6["enabled"], false, "{v6}");
    assert_eq!(v6["reason"], "auto: the host has no IPv6");
    assert_eq!(count(&off.rules(NFT), RULE4), 1);
    assert_eq!(count(&off.rules(&six(NFT)), RULE6), 0);
}

/// The kernel holds our DROP, but a rule above it lets the packet through first: dockerd's
/// `-j RETURN` (or an admin's) or an admin's `-i docker0 -j ACCEPT`. The block does not hold
/// (the container reaches IMDS: the control), and a run repairs it in one transaction: ours
/// back on top, theirs kept below, and the report says what it moved.
fn foreign_rule_above_ours(bin: &str) {
    for foreign in ["-j RETURN", "-i docker0 -j ACCEPT"] {
        let t = Topo::new();
        let root = tempdir();
        let args = ["--persist", "none", "--ipv6", "off"];
        let r = block(&t.host, root.path(), bin, &args);
        assert_eq!(r.code, 0, "{}", r.text());
        assert_blocked_by_us(&t, bin, "after the first run");
        let mut ins = vec!["-w", "10", "-I", "DOCKER-USER", "1"];
        ins.extend(foreign.split(' '));
        t.host.exec_ok(bin, &ins);
        assert_reaches(
            &t.ctr,
            IMDS4,
            &format!("`{foreign}` above our DROP lets it through"),
        );

        let r = block(&t.host, root.path(), bin, &args);
        assert_eq!(r.code, 0, "{}", r.text());
        assert!(r.changed(), "{}", r.text());
        let line = format!("-A DOCKER-USER {foreign}");
        assert!(
            r.stdout.contains("moved") && r.stdout.contains(&line),
            "the report names what it moved ours above: {}",
            r.text()
        );
        let f = &r.step()["details"]["families"][0];
        assert_eq!(f["rules"][0]["state"], "moved", "{f}");
        assert_eq!(f["moved_above"][0], line.as_str(), "{f}");
        assert_blocked_by_us(&t, bin, &format!("repaired after `{foreign}`"));
        let rules = t.host.rules(bin);
        assert_eq!(
            chain_of(&rules, "DOCKER-USER"),
            [RULE4, line.as_str()],
            "theirs kept, below"
        );
        let again = block(&t.host, root.path(), bin, &args);
        assert!(!again.changed(), "{}", again.text());
    }
}

/// Rules files that held "our rule" and still let containers through once restored (the
/// control restores each as it was and sees the container reach IMDS). Merged by a run, then
/// restored into a fresh namespace: blocked, by our rule, and other traffic still flows.
fn leaky_rules_files(bin: &str) {
    let old = "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP";
    let cases = [
        ("RETURN first", format!("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\n{old}\nCOMMIT\n")),
        ("an -I ACCEPT line", format!("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n{old}\n-I DOCKER-USER -i docker0 -j ACCEPT\nCOMMIT\n")),
        ("long spellings", "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n--append FORWARD --jump DOCKER-USER\n--insert DOCKER-USER 1 --jump RETURN\n--append DOCKER-USER --in-interface docker+ --destination 169.254.169.254 --jump DROP\nCOMMIT\n".to_owned()),
        ("two *filter tables", format!("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n{old}\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")),
        ("CRLF", format!("*filter\r\n:INPUT ACCEPT [0:0]\r\n:FORWARD ACCEPT [0:0]\r\n:OUTPUT ACCEPT [0:0]\r\n:DOCKER-USER - [0:0]\r\n-A DOCKER-USER -j RETURN\r\n{old}\r\n-A FORWARD -j DOCKER-USER\r\nCOMMIT\r\n")),
        ("a second *filter header with a trailing comment", "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-I FORWARD 1 -i docker+ -d 169.254.169.254/32 -j DROP\nCOMMIT\n*filter # admin overrides\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -i docker0 -j ACCEPT\nCOMMIT\n".to_owned()),
        ("a second *filter header with trailing blanks", format!("*filter\n:FORWARD ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n{old}\nCOMMIT\n*filter \t \n:FORWARD ACCEPT [0:0]\n-A FORWARD -i docker0 -j ACCEPT\nCOMMIT\n")),
        ("the seed rule under an -I ACCEPT", "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-I FORWARD 1 --in-interface docker+ --destination 169.254.169.254/32 --jump DROP\n-I FORWARD -i docker0 -j ACCEPT\nCOMMIT\n".to_owned()),
    ];
    for (what, text) in &cases {
        let control = Topo::new();
        // iptables-restore rejects CR: the control restores the LF form of the same file.
        restore_into(&control.host, bin, text.replace("\r\n", "\n").as_bytes());
        assert_reaches(
            &control.ctr,
            IMDS4,
            &format!("{what}: the file as it was leaks"),
        );
        drop(control);

        let host = Ns::new("m");
        let root = tempdir();
        let (f4, _) = files(root.path());
        write(Path::new(&f4), text);
        let r = block(
            &host,
            root.path(),
            bin,
            &["--persist-file", &f4, "--ipv6", "off"],
        );
        assert_eq!(r.code, 0, "{what}: {}", r.text());
        assert_eq!(
            r.step()["details"]["families"][0]["persist"]["outcome"],
            "written",
            "{what}"
        );
        let merged = std::fs::read_to_string(&f4).unwrap();
        drop(host);

        let t = Topo::new();
        restore_into(&t.host, bin, merged.as_bytes());
        assert_blocked_by_us(&t, bin, &format!("{what}: merged file restored:\n{merged}"));
    }
}

/// The AWS documentation's rule (`--insert FORWARD 1 --in-interface docker+ ...`), bypassed
/// once dockerd put its rules above it (the control), is recognised and moved: it goes, ours
/// goes into DOCKER-USER, and the report says so.
fn seed_rule_moved(bin: &str) {
    let t = Topo::new();
    let root = tempdir();
    t.host.exec_ok(
        bin,
        &[
            "-w",
            "10",
            "--insert",
            "FORWARD",
            "1",
            "--in-interface",
            "docker+",
            "--destination",
            "169.254.169.254/32",
            "--jump",
            "DROP",
        ],
    );
    replay_dockerd(&t.host, bin, DockerLayout::V20To27);
    assert_reaches(
        &t.ctr,
        IMDS4,
        "the documented rule is bypassed after dockerd starts",
    );
    let r = block(
        &t.host,
        root.path(),
        bin,
        &["--persist", "none", "--ipv6", "off"],
    );
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stdout.contains("the documented FORWARD rule"),
        "{}",
        r.text()
    );
    let rules = t.host.rules(bin);
    assert_eq!(count(&rules, SEED4), 0, "{rules:?}");
    assert_eq!(chain_of(&rules, "FORWARD")[0], JUMP);
    assert_eq!(chain_of(&rules, "DOCKER-USER")[0], RULE4);
    assert_blocked_by_us(&t, bin, "seed rule moved into DOCKER-USER");
}

/// A change of --interface or --chain removes the rules no longer wanted, in the kernel and in
/// the rules file; the block holds throughout for what is still wanted.
fn changes_remove_unwanted(bin: &str) {
    let t = Topo::new();
    let root = tempdir();
    let (f4, _) = files(root.path());
    let run = |extra: &[&str]| {
        let mut a = vec!["--persist-file", f4.as_str(), "--ipv6", "off"];
        a.extend_from_slice(extra);
        let r = block(&t.host, root.path(), bin, &a);
        assert_eq!(r.code, 0, "{}", r.text());
        r
    };
    let br =
        "-A DOCKER-USER -d 169.254.169.254/32 -i br-+ -m comment --comment ecs-bootstrap -j DROP";
    run(&["--interface", "docker+,br-+"]);
    assert_eq!(chain_of(&t.host.rules(bin), "DOCKER-USER"), [RULE4, br]);
    assert!(std::fs::read_to_string(&f4).unwrap().contains("-i br-+"));

    let r = run(&["--interface", "docker+"]);
    assert!(r.stdout.contains("no longer wanted"), "{}", r.text());
    assert_eq!(chain_of(&t.host.rules(bin), "DOCKER-USER"), [RULE4]);
    let file = std::fs::read_to_string(&f4).unwrap();
    assert!(!file.contains("-i br-+"), "{file}");
    assert_blocked_by_us(&t, bin, "docker+ only");

    run(&["--chain", "FORWARD"]);
    let rules = t.host.rules(bin);
    assert_eq!(
        chain_of(&rules, "DOCKER-USER"),
        Vec::<&str>::new(),
        "{rules:?}"
    );
    assert_eq!(chain_of(&rules, "FORWARD")[0], FWD_RULE4, "{rules:?}");
    let file = std::fs::read_to_string(&f4).unwrap();
    assert!(!file.contains("-I DOCKER-USER"), "{file}");
    assert!(
        file.contains("-I FORWARD 1 -d 169.254.169.254/32 -i docker+ -m comment"),
        "{file}"
    );
    assert_blocked_by_us(&t, bin, "--chain FORWARD");

    run(&[]);
    let rules = t.host.rules(bin);
    assert_eq!(count(&rules, FWD_RULE4), 0, "{rules:?}");
    assert_eq!(chain_of(&rules, "DOCKER-USER"), [RULE4]);
    assert_blocked_by_us(&t, bin, "back to DOCKER-USER");
}

/// `block-imds --remove` undoes everything we added: without Docker, the kernel's table and
/// the rules file are as before the first run (DOCKER-USER and the jump too); with Docker's
/// chains, only our rules go. The container reaches IMDS again (the effect).
fn remove_undoes(bin: &str) {
    let t = Topo::new();
    let root = tempdir();
    let (f4, _) = files(root.path());
    t.host.exec_ok(
        bin,
        &["-w", "10", "-A", "FORWARD", "-i", "eth9", "-j", "ACCEPT"],
    );
    let before = t.host.rules(bin);
    let original = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n";
    write(Path::new(&f4), original);
    let args = ["--persist-file", f4.as_str(), "--ipv6", "off"];
    let r = block(&t.host, root.path(), bin, &args);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_blocked_by_us(&t, bin, "blocked");
    let mut rm = args.to_vec();
    rm.push("--remove");
    let r = block(&t.host, root.path(), bin, &rm);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.changed(), "{}", r.text());
    assert_eq!(t.host.rules(bin), before);
    assert_eq!(std::fs::read_to_string(&f4).unwrap(), original);
    assert_reaches(&t.ctr, IMDS4, "removed");
    let again = block(&t.host, root.path(), bin, &rm);
    assert!(!again.changed(), "{}", again.text());

    // With dockerd's chains: ours go, DOCKER-USER and its jump (dockerd's) stay.
    let t = Topo::new();
    replay_dockerd(&t.host, bin, DockerLayout::V20To27);
    let before = t.host.rules(bin);
    let r = block(&t.host, root.path(), bin, &args);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_blocked_by_us(&t, bin, "blocked under dockerd");
    let r = block(&t.host, root.path(), bin, &rm);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(t.host.rules(bin), before);
    assert_reaches(&t.ctr, IMDS4, "removed under dockerd");
}

fn churn_with_restore(bin: &str) {
    churn(bin, bin.to_owned(), false);
}

/// The same without iptables-restore: `--iptables` is a link named `iptables` in a folder
/// without `iptables-restore`, so every change goes one command at a time.
fn churn_without_restore(bin: &str) {
    let dir = tempdir();
    let link = dir.path().join("iptables");
    std::os::unix::fs::symlink(bin, &link).unwrap();
    churn(bin, link.to_str().unwrap().to_owned(), true);
    drop(dir);
}

/// Another process inserts and deletes a rule at the top of FORWARD in a loop (as dockerd
/// does while it starts) during many runs, each of which has something to move (a second jump
/// at the bottom of FORWARD, a new rule of others above ours). After every run: no rule of
/// others lost, exactly one jump, ours first in DOCKER-USER; at the end the block holds.
fn churn(bin: &str, ours: String, one_by_one: bool) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const RUNS: usize = 25;
    let t = Topo::new();
    let root = tempdir();
    replay_dockerd(&t.host, bin, DockerLayout::V20To27);
    let args = ["--persist", "none", "--ipv6", "off"];
    let r = block(&t.host, root.path(), &ours, &args);
    assert_eq!(r.code, 0, "{}", r.text());
    let churn_rule = "-A FORWARD -i churn0 -j ACCEPT";
    let stop = Arc::new(AtomicBool::new(false));
    let (ns, b, st) = (t.host.name().to_owned(), bin.to_owned(), stop.clone());
    let churner = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let mut n = 0;
        while !st.load(Ordering::SeqCst) && n < 5000 && start.elapsed() < Duration::from_secs(120) {
            for op in ["-I", "-D"] {
                let _ = sh(
                    "ip",
                    &[
                        "netns", "exec", &ns, &b, "-w", "10", op, "FORWARD", "-i", "churn0", "-j",
                        "ACCEPT",
                    ],
                );
            }
            n += 1;
        }
        n
    });
    let not_churn = |rules: &[String]| -> Vec<String> {
        rules.iter().filter(|l| *l != churn_rule).cloned().collect()
    };
    let mut theirs: Vec<String> = not_churn(&t.host.rules(bin))
        .into_iter()
        .filter(|l| l.starts_with("-A ") && l != RULE4 && l != JUMP)
        .collect();
    for i in 0..RUNS {
        let rule = format!("-i f{i} -j ACCEPT");
        let mut ins = vec!["-w", "10", "-I", "DOCKER-USER", "1"];
        ins.extend(rule.split(' '));
        t.host.exec_ok(bin, &ins);
        t.host
            .exec_ok(bin, &["-w", "10", "-A", "FORWARD", "-j", "DOCKER-USER"]);
        theirs.push(format!("-A DOCKER-USER {rule}"));
        let r = block(&t.host, root.path(), &ours, &args);
        assert_eq!(r.code, 0, "run {i}: {}", r.text());
        let method = r.step()["details"]["families"][0]["method"]
            .as_str()
            .unwrap_or("");
        if one_by_one {
            assert_eq!(method, "one command at a time", "run {i}: {}", r.text());
        } else {
            assert!(method.starts_with("transaction"), "run {i}: {}", r.text());
        }
        let rules = not_churn(&t.host.rules(bin));
        for l in &theirs {
            assert!(rules.contains(l), "run {i}: {l} lost: {rules:#?}");
        }
        assert_eq!(count(&rules, JUMP), 1, "run {i}: {rules:#?}");
        assert_eq!(count(&rules, RULE4), 1, "run {i}: {rules:#?}");
        assert_eq!(chain_of(&rules, "FORWARD")[0], JUMP, "run {i}: {rules:#?}");
        assert_eq!(
            chain_of(&rules, "DOCKER-USER")[0],
            RULE4,
            "run {i}: {rules:#?}"
        );
        assert!(
            !rules.iter().any(|l| l.contains("ecs-bootstrap-moving")),
            "run {i}: a temporary copy was left: {rules:#?}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    let loops = churner.join().unwrap();
    assert!(loops > 5, "the churn ran during the runs ({loops} loops)");
    let rules = t.host.rules(bin);
    assert_eq!(count(&rules, churn_rule), 0);
    assert_blocked_by_us(&t, bin, "after the churn");
}

/// `--ipv6 auto` with ip6tables missing: while docker0 has a global IPv6 address, containers
/// reach fd00:ec2::254 (the control shows it), so the step fails (exit 4) and says what to
/// install, with the IPv4 rule in place; once no blocked bridge has one, a warning remains.
fn ipv6_fails_closed(bin: &str) {
    let t = Topo::new();
    let root = tempdir();
    let dir = tempdir();
    let link = dir.path().join("iptables");
    std::os::unix::fs::symlink(bin, &link).unwrap();
    let link = link.to_str().unwrap();
    let args = ["--persist", "none", "--ipv6", "auto"];
    let r = block(&t.host, root.path(), link, &args);
    assert_eq!(r.code, 4, "{}", r.text());
    assert!(
        r.stdout.contains("docker0 has a global IPv6 address")
            && r.stdout.contains("ip6tables")
            && r.stdout.contains("is missing")
            && r.stdout.contains("apt-get install iptables"),
        "{}",
        r.text()
    );
    assert_blocked_by_us(&t, bin, "the IPv4 rule is in place");
    assert_reaches(
        &t.ctr,
        IMDS6,
        "no ip6tables: IPv6 IMDS is open, hence the failure",
    );

    t.host
        .ip(&["addr", "del", "fd00:d0c::1/64", "dev", "docker0"]);
    let r = block(&t.host, root.path(), link, &args);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stdout.contains("fd00:ec2::254 is not blocked"),
        "{}",
        r.text()
    );
}

/// `systemctl enable UNIT` under a root: the link in multi-user.target.wants.
fn enable_unit(root: &Path, unit: &str) {
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(format!("/usr/lib/systemd/system/{unit}"), wants.join(unit))
        .unwrap();
}

/// An Amazon Linux root: os-release, iptables.service installed (enabled when asked), and
/// /etc/sysconfig/iptables holding `rules`.
fn al2_root(rules: &str, enabled: bool) -> tempfile::TempDir {
    let root = tempdir();
    write(
        &root.path().join("etc/os-release"),
        "NAME=\"Amazon Linux\"\nVERSION=\"2\"\nID=\"amzn\"\nID_LIKE=\"centos rhel fedora\"\n",
    );
    write(&root.path().join("etc/sysconfig/iptables"), rules);
    write(
        &root.path().join("usr/lib/systemd/system/iptables.service"),
        "[Service]\n",
    );
    if enabled {
        enable_unit(root.path(), "iptables.service");
    }
    root
}

/// The sample with a note of the operator's, loaded at boot by an enabled iptables.service:
/// merged, not replaced. Its INPUT rules stay; its forwarding REJECT (which, restored, cuts
/// every container off: the control) is commented out; restored into a fresh namespace the
/// container is blocked from IMDS by our rule and reaches other addresses.
fn sample_merged(bin: &str) {
    let annotated = AL2_SAMPLE.replace("*filter\n", "# ops: keep ssh only, ticket 42\n*filter\n");
    let control = Topo::new();
    restore_into(&control.host, bin, annotated.as_bytes());
    assert_blocked(
        &control.ctr,
        OTHER4,
        "the sample's REJECT cuts containers off",
    );
    drop(control);

    let root = al2_root(&annotated, true);
    let host = Ns::new("s");
    let r = block(&host, root.path(), bin, &["--ipv6", "off"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let p = &r.step()["details"]["families"][0]["persist"];
    assert_eq!(p["outcome"], "written", "{}", r.text());
    assert_eq!(p["backup"], serde_json::Value::Null, "merged, not replaced");
    assert_eq!(p["loaded_at_boot_by"], "iptables.service");
    assert!(r.stdout.contains("keeping its INPUT rules"), "{}", r.text());
    let merged = std::fs::read_to_string(root.path().join("etc/sysconfig/iptables")).unwrap();
    for l in AL2_SAMPLE.lines().filter(|l| l.starts_with("-A INPUT")) {
        assert!(merged.lines().any(|m| m == l), "{l} kept:\n{merged}");
    }
    assert!(
        !merged
            .lines()
            .any(|l| l.starts_with("-A FORWARD -j REJECT")),
        "{merged}"
    );
    drop(host);
    let t = Topo::new();
    restore_into(&t.host, bin, merged.as_bytes());
    assert_blocked_by_us(&t, bin, "the merged sample, restored");
}

/// The same annotated sample with iptables.service installed but not enabled is inert at
/// boot: replaced (kept as the backup), and no loader is reported, with a warning saying so.
#[test]
fn inert_sample_is_replaced_and_no_loader_is_reported() {
    let annotated = AL2_SAMPLE.replace("*filter\n", "# ops note\n*filter\n");
    let root = al2_root(&annotated, false);
    let host = Ns::new("i");
    let r = block(&host, root.path(), NFT, &["--ipv6", "off"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let p = &r.step()["details"]["families"][0]["persist"];
    assert_eq!(p["loaded_at_boot_by"], serde_json::Value::Null, "{p}");
    assert!(p["backup"].is_string(), "{p}");
    assert!(
        r.stdout.contains("systemctl enable iptables.service"),
        "{}",
        r.text()
    );
    let file = std::fs::read_to_string(root.path().join("etc/sysconfig/iptables")).unwrap();
    assert!(!file.contains("REJECT"), "{file}");
}

/// A rules file that is a symbolic link: written through to a root-owned regular target (the
/// link stays a link); a target owned by someone else, or a dangling link, is not written and
/// the step succeeds with a warning, the kernel rule in place.
#[test]
fn symlinked_rules_file_is_written_through_only_to_a_root_owned_file() {
    use std::os::unix::fs::MetadataExt as _;
    let host = Ns::new("l");
    let root = tempdir();
    let target = root.path().join("real.rules");
    let link = root.path().join("rules.v4");
    write(
        &target,
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n",
    );
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let args = ["--persist-file", link.to_str().unwrap(), "--ipv6", "off"];
    let r = block(&host, root.path(), NFT, &args);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let text = std::fs::read_to_string(&target).unwrap();
    assert!(
        text.contains(FILE_RULE4) && text.contains("-A INPUT -i lo -j ACCEPT"),
        "{text}"
    );

    // Someone else's target: left alone.
    let theirs = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";
    write(&target, theirs);
    nix::unistd::chown(&target, Some(nix::unistd::Uid::from_raw(1000)), None).unwrap();
    assert_eq!(std::fs::metadata(&target).unwrap().uid(), 1000);
    let r = block(&host, root.path(), NFT, &args);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stdout.contains("not a regular file owned by root"),
        "{}",
        r.text()
    );
    assert_eq!(
        r.step()["details"]["families"][0]["persist"]["outcome"],
        "skipped"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), theirs);
    assert_eq!(count(&host.rules(NFT), RULE4), 1);

    // Dangling.
    std::fs::remove_file(&target).unwrap();
    let r = block(&host, root.path(), NFT, &args);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.stdout.contains("cannot be resolved"), "{}", r.text());
    assert!(!target.exists());
}

/// Docker 29's `firewall-backend: nftables`, replayed as Docker's documentation describes it:
/// its rules live in its own table `ip docker-bridges`, whose forward base chain accepts the
/// bridge's traffic, and there is no DOCKER-USER of Docker's. An accept ends only that base
/// chain; our DROP (in the filter table, iptables-nft or iptables-legacy) is final. Before our
/// run the container reaches IMDS (control); after it, whichever came first, it is blocked by
/// our rule, and Docker's accept still lets other traffic through.
fn docker_nftables_replay(bin: &str) {
    const DOCKER_BRIDGES: &str = "table ip docker-bridges {
    chain filter-FORWARD {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname \"docker0\" oifname != \"docker0\" accept
    }
}
";
    for docker_first in [true, false] {
        let t = Topo::new();
        let root = tempdir();
        let nft = |t: &Topo| {
            let o = t
                .host
                .exec_stdin("nft", &["-f", "-"], DOCKER_BRIDGES.as_bytes());
            assert!(
                o.status.success(),
                "nft: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        if docker_first {
            nft(&t);
            assert_reaches(
                &t.ctr,
                IMDS4,
                "Docker's nftables accept, no rule of ours yet",
            );
        }
        let r = block(
            &t.host,
            root.path(),
            bin,
            &["--persist", "none", "--ipv6", "off"],
        );
        assert_eq!(r.code, 0, "{}", r.text());
        if !docker_first {
            nft(&t);
        }
        let tables = t.host.exec_ok("nft", &["list", "tables"]);
        assert!(tables.contains("table ip docker-bridges"), "{tables}");
        assert_blocked_by_us(
            &t,
            bin,
            &format!("nftables backend, Docker first: {docker_first}"),
        );
        let again = block(
            &t.host,
            root.path(),
            bin,
            &["--persist", "none", "--ipv6", "off"],
        );
        assert!(!again.changed(), "{}", again.text());
    }
}

/// `--deadline 3`, started now in `ns` with `extra` arguments (IPv4 only, nothing persisted):
/// the child, for the caller to wait on or signal.
fn spawn_bounded(ns: &Ns, root: &Path, iptables: &str, deadline: &str) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), BIN, "--output", "json"])
        .args(["--deadline", deadline, "block-imds", "--root"])
        .arg(root)
        .args(["--iptables", iptables, "--ipv6", "off", "--persist", "none"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// An `iptables` and an `iptables-restore` in `dir` that run iptables-nft's, after sleeping
/// `HANG` when a file `<name>.hang` is beside them: a hung iptables whose hang can be turned
/// off for the control run.
fn hanging_iptables(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    for (name, real) in [
        ("iptables", "/usr/sbin/iptables-nft"),
        ("iptables-restore", "/usr/sbin/iptables-nft-restore"),
    ] {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!("#!/bin/sh\n[ -e \"$0.hang\" ] && sleep {HANG}\nexec {real} \"$@\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir.join("iptables").to_str().unwrap().to_owned()
}

/// How long a hung iptables sleeps before it would go on and change the rules.
const HANG: u64 = 6;

/// The lifetime the deadline allows: at least the deadline (the run waited, it did not give
/// up early), at most a second more.
#[track_caller]
fn assert_lived(lived: Duration, deadline: Duration, r: &Run) {
    assert!(
        lived >= deadline - Duration::from_millis(100) && lived < deadline + Duration::from_secs(1),
        "lived {lived:?} with a deadline of {deadline:?}\n{}",
        r.text()
    );
}

/// The firewall step's report says the deadline ended it.
#[track_caller]
fn assert_deadline_reported(r: &Run) {
    assert_ne!(r.code, 0, "{}", r.text());
    let err = r.step()["error"].as_str().unwrap_or_default();
    assert!(err.contains("deadline"), "{}", r.text());
}

/// Sleeps until `since` + `d`.
fn sleep_until(since: std::time::Instant, d: Duration) {
    std::thread::sleep(d.saturating_sub(since.elapsed()));
}

/// `--deadline 3` while another process holds the firewall lock: the process ends within a
/// second of the deadline (not after the lock's own patience), says so, and changes nothing;
/// once the lock is free, the same run adds the rule (the control).
#[test]
fn deadline_bounds_the_wait_for_a_held_lock() {
    let host = Ns::new("h");
    let root = tempdir();
    let lock = root.path().join("run/ecs-bootstrap/firewall.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    let held = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        !std::process::Command::new("flock")
            .args(["-n"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    });
    assert!(held, "flock did not take {}", lock.display());

    let start = std::time::Instant::now();
    let child = spawn_bounded(&host, root.path(), NFT, "3");
    let r = parse_run(child.wait_with_output().unwrap());
    assert_lived(start.elapsed(), Duration::from_secs(3), &r);
    assert_deadline_reported(&r);
    assert_eq!(count(&host.rules(NFT), RULE4), 0, "{}", r.text());

    holder.kill().unwrap();
    holder.wait().unwrap();
    let r = parse_run(
        spawn_bounded(&host, root.path(), NFT, "30")
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(count(&host.rules(NFT), RULE4), 1, "{}", r.text());
}

/// `--deadline 3` while `iptables-restore` hangs with the change in hand: the process ends
/// within a second of the deadline and says so; the hung command was killed, so even after the
/// time it would have gone on, no rule changed. Without the hang, the same run adds the rule.
#[test]
fn deadline_kills_a_hung_iptables_and_no_rule_changes_after() {
    let host = Ns::new("h");
    let root = tempdir();
    let ipt = hanging_iptables(root.path());
    std::fs::write(root.path().join("iptables-restore.hang"), "").unwrap();

    let start = std::time::Instant::now();
    let r = parse_run(
        spawn_bounded(&host, root.path(), &ipt, "3")
            .wait_with_output()
            .unwrap(),
    );
    assert_lived(start.elapsed(), Duration::from_secs(3), &r);
    assert_deadline_reported(&r);
    sleep_until(start, Duration::from_secs(HANG + 1));
    assert_eq!(count(&host.rules(NFT), RULE4), 0, "{}", r.text());

    std::fs::remove_file(root.path().join("iptables-restore.hang")).unwrap();
    let r = parse_run(
        spawn_bounded(&host, root.path(), &ipt, "30")
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(count(&host.rules(NFT), RULE4), 1, "{}", r.text());
}

/// SIGTERM while `iptables-restore` hangs: the process ends within a second, its report says
/// it was interrupted, and no rule changed, also after the hung command would have gone on.
#[test]
fn sigterm_kills_a_hung_iptables_and_no_rule_changes_after() {
    let host = Ns::new("h");
    let root = tempdir();
    let ipt = hanging_iptables(root.path());
    std::fs::write(root.path().join("iptables-restore.hang"), "").unwrap();

    let start = std::time::Instant::now();
    let child = spawn_bounded(&host, root.path(), &ipt, "60");
    // `ip netns exec` execs the binary: the child's pid is ecs-bootstrap's.
    std::thread::sleep(Duration::from_secs(1));
    let term = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let r = parse_run(child.wait_with_output().unwrap());
    let lived = term.elapsed();
    assert!(lived < Duration::from_secs(1), "{lived:?}\n{}", r.text());
    assert_eq!(r.json["interrupted_by"], "SIGTERM", "{}", r.text());
    sleep_until(start, Duration::from_secs(HANG + 1));
    assert_eq!(count(&host.rules(NFT), RULE4), 0, "{}", r.text());
}

/// `block-imds --drift` in `ns` under `strace -f`: the run, and the command lines of every
/// program it started (execve that succeeded), the binary itself left out, in order.
fn traced_drift(ns: &Ns, root: &Path, extra: &[&str]) -> (Run, Vec<String>) {
    let trace = root.join("drift.trace");
    // -z: successful calls only; -s: whole arguments.
    let mut args = vec!["-f", "-qq", "-z", "-s", "4096", "-e", "trace=execve"];
    args.extend(["-e", "signal=none", "-o"]);
    args.push(trace.to_str().unwrap());
    args.extend([BIN, "--output", "json", "block-imds", "--drift", "--root"]);
    args.push(root.to_str().unwrap());
    args.extend(["--iptables", NFT]);
    args.extend_from_slice(extra);
    let r = parse_run(ns.exec("strace", &args));
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut execs: Vec<String> = text
        .lines()
        .filter(|l| l.contains("execve(") && l.contains('[') && l.contains(']'))
        .map(|l| {
            let argv = &l[l.find('[').unwrap() + 1..l.find(']').unwrap()];
            argv.split(", ")
                .map(|a| a.trim_matches('"'))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert!(
        execs.first().is_some_and(|e| e.starts_with(BIN)),
        "{execs:#?}"
    );
    execs.remove(0);
    (r, execs)
}

/// The drift check (the timer's `block-imds --drift`): where the boot run left the block in
/// place, it starts one `iptables -S` per family and nothing else (no backend probe, no
/// `iptables-restore --test`, no rules-file rewrite); after someone deleted our rule, the
/// check puts it back (the container is blocked again) and logs the drift as an error naming
/// what it found. The count sees the repair's extra process (a control for the counting).
/// With `--persist full-save`, a check that repairs nothing does not save either.
#[test]
fn drift_check_costs_one_listing_per_family_and_repairs_with_an_error() {
    let t = Topo::new();
    let root = tempdir();
    let (f4, f6) = files(root.path());
    let args = [
        "--persist-file",
        &f4,
        "--persist-file6",
        &f6,
        "--ipv6",
        "on",
    ];
    let r = block(&t.host, root.path(), NFT, &args);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_blocked(&t.ctr, IMDS4, "after the boot run");

    let (r, mut execs) = traced_drift(&t.host, root.path(), &args);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(!r.changed(), "{}", r.text());
    assert!(!r.stderr.contains("drift:"), "{}", r.text());
    execs.sort();
    assert_eq!(
        execs,
        [
            "/usr/sbin/ip6tables-nft -w 10 -t filter -S",
            "/usr/sbin/iptables-nft -w 10 -t filter -S",
        ],
        "{}",
        r.text()
    );

    // With --persist full-save too: the tables (Docker's run-time rules with them) are not
    // saved every minute when nothing was repaired.
    let mut full = args.to_vec();
    full.extend(["--persist", "full-save"]);
    let (r, execs) = traced_drift(&t.host, root.path(), &full);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(!r.changed(), "{}", r.text());
    assert_eq!(execs.len(), 2, "{execs:#?}");

    // A rules file the operator saved with iptables-save holds the block and is left as it
    // is; the drift check does not test it again every minute either (the boot run does).
    let saved = t.host.exec_ok("iptables-nft-save", &[]);
    std::fs::write(&f4, &saved).unwrap();
    let (r, execs) = traced_drift(&t.host, root.path(), &args);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(!r.changed(), "{}", r.text());
    assert_eq!(
        std::fs::read_to_string(&f4).unwrap(),
        saved,
        "left as it is"
    );
    assert_eq!(execs.len(), 2, "{execs:#?}");

    let ours: Vec<&str> = RULE4.split_whitespace().skip(2).collect();
    let mut del = vec!["-w", "10", "-D", "DOCKER-USER"];
    del.extend(&ours);
    t.host.exec_ok(NFT, &del);
    assert_reaches(&t.ctr, IMDS4, "someone deleted the rule");

    let (r, execs) = traced_drift(&t.host, root.path(), &args);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.changed(), "{}", r.text());
    let line = r
        .stderr
        .lines()
        .find(|l| {
            l.contains("drift: IPv4: DROP rule for docker+ missing from DOCKER-USER; repaired")
        })
        .unwrap_or_else(|| panic!("no drift line in\n{}", r.text()));
    assert!(line.contains("ERROR"), "{line}");
    assert!(!r.stderr.contains("drift: IPv6"), "{}", r.text());
    assert!(
        execs.len() > 2,
        "the repair's restore is counted: {execs:#?}"
    );
    assert_blocked(&t.ctr, IMDS4, "the drift check repaired it");
    assert_eq!(count(&t.host.rules(NFT), RULE4), 1);
}

/// An `iptables`, `iptables-restore` in `dir`: the restore sleeps `secs` (a child of the
/// wrapper shell, marked by its argument) without reading its input, then runs iptables-nft's.
fn restore_hanging_unread(dir: &Path, secs: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    for (name, body) in [
        ("iptables", "exec /usr/sbin/iptables-nft \"$@\"".to_owned()),
        (
            "iptables-restore",
            format!("sleep {secs}\nexec /usr/sbin/iptables-nft-restore \"$@\""),
        ),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir.join("iptables").to_str().unwrap().to_owned()
}

/// Pids of the processes whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<i32> {
    let want = argv.join("\0") + "\0";
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes())
        })
        .collect()
}

/// `--deadline 3`, `--persist merge` of an existing rules file larger than a pipe's
/// buffer (another tool's 4000 rules), and an `iptables-restore` that hangs without reading
/// its input. The input is written to the child before the runner starts watching the
/// deadline, so the write blocks: the process must still end within a second of the deadline
/// (it lived until the hung child exited), and change neither the rules nor the file.
#[test]
fn deadline_bounds_a_hung_iptables_restore_that_does_not_read_a_large_input() {
    let host = Ns::new("h");
    let root = tempdir();
    let ipt = restore_hanging_unread(root.path(), "8.125");
    let file = root.path().join("rules.v4");
    let mut text = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n");
    text.push_str(":OUTPUT ACCEPT [0:0]\n");
    for i in 0..4000 {
        text.push_str(&format!(
            "-A INPUT -s 10.{}.{}.1/32 -m comment --comment other-tool-{i} -j ACCEPT\n",
            i / 250,
            i % 250
        ));
    }
    text.push_str("COMMIT\n");
    assert!(text.len() > 256 * 1024);
    std::fs::write(&file, &text).unwrap();

    let start = std::time::Instant::now();
    let out = std::process::Command::new("timeout")
        .args(["-s", "KILL", "30", "ip", "netns", "exec", host.name(), BIN])
        .args([
            "--output",
            "json",
            "--deadline",
            "3",
            "block-imds",
            "--root",
        ])
        .arg(root.path())
        .args(["--iptables", &ipt, "--ipv6", "off", "--persist", "merge"])
        .arg("--persist-file")
        .arg(&file)
        .output()
        .unwrap();
    let lived = start.elapsed();
    let killed = pids_running(&["sleep", "8.125"]);
    for pid in &killed {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        lived < Duration::from_secs(4),
        "lived {lived:?} with --deadline 3 (status {:?})\n{stderr}",
        out.status
    );
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    assert_eq!(count(&host.rules(NFT), RULE4), 0, "{stderr}");
}

/// A command killed at the deadline takes its children with it. The hung
/// `iptables-restore` here is a shell running `sleep`; killing the shell alone leaves the
/// `sleep` running after ecs-bootstrap has exited (under a timer, every minute, another).
#[test]
fn a_command_killed_at_the_deadline_leaves_no_process_behind() {
    let host = Ns::new("h");
    let root = tempdir();
    let ipt = restore_hanging_unread(root.path(), "9.375");
    let start = std::time::Instant::now();
    let child = spawn_bounded(&host, root.path(), &ipt, "2");
    std::thread::sleep(Duration::from_secs(1));
    // The control: the hung command's child runs while the run waits (else this proves nothing).
    let during = pids_running(&["sleep", "9.375"]);
    let r = parse_run(child.wait_with_output().unwrap());
    assert!(!during.is_empty(), "no sleep ran\n{}", r.text());
    assert_lived(start.elapsed(), Duration::from_secs(2), &r);
    assert_deadline_reported(&r);
    std::thread::sleep(Duration::from_millis(200));
    let left = pids_running(&["sleep", "9.375"]);
    for pid in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        left.is_empty(),
        "the hung command's child still runs after the process ended: pids {left:?}"
    );
}

/// The operator saves the tables the way the AWS documentation says
/// (`iptables-save > /etc/sysconfig/iptables`, or `service iptables save`) after the boot run.
/// The saved file holds the block (our DROP first in DOCKER-USER, the jump first in FORWARD),
/// and restoring it in a fresh namespace blocks (the control). A drift check must then find no
/// drift: no error line claiming the file "did not hold the block", and the operator's file
/// left as saved (else every save raises an alarm and is rewritten by the next check).
#[test]
fn drift_check_accepts_a_file_the_operator_saved_with_iptables_save() {
    let t = Topo::new();
    let root = tempdir();
    let (f4, _) = files(root.path());
    let args = ["--persist-file", &f4, "--ipv6", "off"];
    let r = block(&t.host, root.path(), NFT, &args);
    assert_eq!(r.code, 0, "{}", r.text());
    let saved = t.host.exec_ok("/usr/sbin/iptables-nft-save", &[]);
    std::fs::write(&f4, &saved).unwrap();

    // The control: the saved file alone blocks the container.
    let fresh = Topo::new();
    let restored = fresh
        .host
        .exec_stdin("/usr/sbin/iptables-nft-restore", &[], saved.as_bytes());
    assert!(restored.status.success(), "{restored:?}");
    assert_blocked(&fresh.ctr, IMDS4, "the saved file restored");

    let (r, _) = traced_drift(&t.host, root.path(), &args);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        !r.stderr.contains("drift:"),
        "a drift check called a saved file that holds the block drift:\n{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&f4).unwrap(), saved);
}

/// What a signal sent while `iptables-restore` hangs (its wrapper's `sleep SECS` running) leaves:
/// the run's output, how long the process lived after the signal, and the `sleep`s still
/// running 200 ms later (killed here, after being counted). The control: the `sleep` ran when
/// the signal went.
fn signal_during_a_hung_restore(
    host: &Ns,
    root: &Path,
    secs: &str,
    signal: nix::sys::signal::Signal,
) -> (std::process::Output, Duration, Vec<i32>) {
    let ipt = restore_hanging_unread(root, secs);
    let child = spawn_bounded(host, root, &ipt, "60");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !pids_running(&["sleep", secs]).is_empty(),
        "the restore did not hang"
    );
    let sent = std::time::Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let out = child.wait_with_output().unwrap();
    let lived = sent.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let left = pids_running(&["sleep", secs]);
    for pid in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    (out, lived, left)
}

/// SIGQUIT (a terminal's quit key), which does not reach the command directly (each command
/// leads a process group of its own), ends the run as SIGTERM does: within a second, exit
/// 128+3, a report that says so, and the hung command killed with its own children (the
/// wrapper's `sleep`).
#[test]
fn sigquit_kills_a_hung_iptables_with_its_children_and_reports() {
    let host = Ns::new("h");
    let root = tempdir();
    let (out, lived, left) = signal_during_a_hung_restore(
        &host,
        root.path(),
        "7.875",
        nix::sys::signal::Signal::SIGQUIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(lived < Duration::from_secs(1), "{lived:?}\n{stderr}");
    assert_eq!(
        out.status.code(),
        Some(131),
        "SIGQUIT: exit 128+3\n{stderr}"
    );
    assert!(
        left.is_empty(),
        "the hung command's child still runs: {left:?}"
    );
    let r = parse_run(out);
    assert_eq!(r.json["interrupted_by"], "SIGQUIT", "{}", r.text());
}

/// A saved file that would hold the block by its rules but does not load (an unknown option
/// added by hand) is not reported as holding it: left alone, it is tested like any file that
/// is not ours, and the run fails with exit 4 naming it. The control: the same file without
/// the line is accepted (`drift_check_accepts_a_file_the_operator_saved_with_iptables_save`).
#[test]
fn a_saved_file_that_holds_the_block_but_does_not_load_is_an_error() {
    let t = Topo::new();
    let root = tempdir();
    let (f4, _) = files(root.path());
    let args = ["--persist-file", &f4, "--ipv6", "off"];
    let r = block(&t.host, root.path(), NFT, &args);
    assert_eq!(r.code, 0, "{}", r.text());
    let saved = t.host.exec_ok("/usr/sbin/iptables-nft-save", &[]);
    let at = saved.find("*filter").unwrap();
    let commit = at + saved[at..].find("\nCOMMIT\n").unwrap();
    let broken = format!(
        "{}\n-A INPUT --no-such-option -j ACCEPT{}",
        &saved[..commit],
        &saved[commit..]
    );
    std::fs::write(&f4, &broken).unwrap();
    let r = block(&t.host, root.path(), NFT, &args);
    assert_eq!(r.code, 4, "{}", r.text());
    assert!(
        r.stdout.contains("does not pass iptables-restore --test") && r.stdout.contains(&f4),
        "{}",
        r.text()
    );
    assert_eq!(std::fs::read_to_string(&f4).unwrap(), broken);
}

/// SIGHUP (the operator's ssh session drops) while `iptables-restore` hangs ends the run as
/// SIGTERM does: within a second, a report that says so, the hung command killed (no rule
/// changed after it would have gone on).
#[test]
fn sighup_kills_a_hung_iptables_and_reports() {
    let host = Ns::new("h");
    let root = tempdir();
    let start = std::time::Instant::now();
    let (out, lived, _) = signal_during_a_hung_restore(
        &host,
        root.path(),
        "7.625",
        nix::sys::signal::Signal::SIGHUP,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(lived < Duration::from_secs(1), "{lived:?}\n{stderr}");
    assert_eq!(out.status.code(), Some(129), "SIGHUP: exit 128+1\n{stderr}");
    let r = parse_run(out);
    assert_eq!(r.json["interrupted_by"], "SIGHUP", "{}", r.text());
    sleep_until(start, Duration::from_secs(9));
    assert_eq!(count(&host.rules(NFT), RULE4), 0, "{}", r.text());
}
