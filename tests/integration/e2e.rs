//! The walking skeleton end to end: `run` in the sandbox does all three jobs.

use crate::harness::sandbox::*;

#[test]
fn run_writes_config_blocks_containers_and_keeps_host_on_imds() {
    let sb = Sandbox::up();
    assert!(
        sb.reaches_imds(Ns::Ctr, false),
        "before the run the container reaches IMDS (else this test proves nothing)"
    );

    let src = sb.source();
    let pf = sb.persist_file();
    let args = [
        "run",
        "--source",
        &src,
        "--persist-file",
        pf.to_str().unwrap(),
        "--ipv6",
        "off",
    ];
    let puts_before = sb.token_puts();
    let logged = sb.imds_requests().len();
    let r = sb.run(&args);
    r.assert_code(0);
    assert_eq!(
        sb.token_puts() - puts_before,
        1,
        "exactly one token PUT for the whole run"
    );
    let tokenless = sb.tokenless_requests(logged);
    assert!(
        tokenless.is_empty(),
        "no IMDSv1 request at boot (MetadataNoToken stays at 0): {tokenless:?}"
    );

    let dest = sb.dest();
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        sb.s("object_content"),
        "written byte for byte"
    );
    assert_eq!(mode(&dest), 0o600);
    assert_eq!(sb.drop_rules("iptables"), 1, "exactly one DROP rule");
    let persisted = std::fs::read_to_string(&pf).unwrap();
    assert!(
        persisted.contains(
            "-I DOCKER-USER 1 -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP"
        ),
        "{persisted}"
    );
    assert!(!sb.reaches_imds(Ns::Ctr, false), "the container is blocked");
    assert!(
        sb.reaches_imds(Ns::Host, false),
        "the host still reaches IMDS"
    );

    let mut json_args = args.to_vec();
    json_args.extend(["--output", "json"]);
    let again = sb.run(&json_args);
    again.assert_code(0);
    let report = again.json();
    for step in report["steps"].as_array().unwrap() {
        assert_eq!(step["outcome"], "ok", "{step}");
        assert_eq!(
            step["changed"], false,
            "a second run changes nothing: {step}"
        );
    }
    assert_eq!(sb.drop_rules("iptables"), 1);
    assert!(temp_files(dest.parent().unwrap()).is_empty());
}
