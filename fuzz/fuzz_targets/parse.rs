//! ecs.config parser: `ecs_bootstrap::config::parse::parse` on arbitrary bytes.
//! Checks: no panic; every finding renders; when the source has no error, what we would write
//! (`Config::render`) parses back without error to the same config, and rendering is a fixed
//! point (so a rewritten file reads as what was meant and the next boot sees no change).
#![no_main]

use ecs_bootstrap::config::parse::{Config, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = parse(data);
    for f in &p.findings {
        let _ = f.to_string();
    }
    if p.has_errors() {
        return;
    }
    let cfg = Config::from_entries(&p.entries);
    let text = cfg.render();
    let again = parse(text.as_bytes());
    assert!(
        !again.has_errors(),
        "rendered config does not parse: {:?}",
        again.findings
    );
    let cfg2 = Config::from_entries(&again.entries);
    assert_eq!(cfg2, cfg, "render -> parse changed the config");
    assert_eq!(cfg2.render(), text, "render is not a fixed point");
});
