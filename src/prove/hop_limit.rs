//! The instance's PUT response hop limit, measured from the host without IMDSv1.

use super::probe::IMDS_V4;
use super::verdict::HopLimit;
use crate::sys::CommandRunner;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// The comment of the counting rule (no target) that measures the PUT response hop limit.
const TTL_COMMENT: &str = "ecs-bootstrap-ttl";
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The counting rule's match: IMDS's packets to the host that arrive with TTL 1.
const TTL_RULE: [&str; 16] = [
    "-s",
    "169.254.169.254/32",
    "-p",
    "tcp",
    "-m",
    "tcp",
    "--sport",
    "80",
    "-m",
    "ttl",
    "--ttl-eq",
    "1",
    "-m",
    "comment",
    "--comment",
    TTL_COMMENT,
];

/// A token PUT while a counting rule (no target, so it changes nothing) on INPUT counts IMDS's
/// packets that arrive with TTL 1. A hop limit of 1 (the answer dies at the first forward) also
/// keeps containers on the bridges from IMDSv2 tokens. Every wait ends by `deadline`; the
/// counting rule, once inserted, is deleted whatever happened. Err: why it was not measured.
pub(crate) fn measure(
    runner: &dyn CommandRunner,
    bin: &Path,
    deadline: Instant,
) -> Result<HopLimit, String> {
    let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_default();
    let endpoint = endpoint.trim().trim_end_matches('/');
    if !endpoint.is_empty() && endpoint != "http://169.254.169.254" {
        return Err(format!("IMDS is at {endpoint}, not 169.254.169.254"));
    }
    let ipt = |chain_op: &[&str]| -> Result<String, String> {
        // The deletion gets a second even past the deadline: a counting rule left behind
        // changes nothing, but it is not ours to leave.
        let wait = super::lock_wait(deadline).unwrap_or_else(|| "1".into());
        let mut a: Vec<OsString> = ["-w", &wait, "-t", "filter"].map(OsString::from).to_vec();
        a.extend(chain_op.iter().map(OsString::from));
        let out = runner
            .run(bin, &a, None)
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(format!("{}: {}", bin.display(), out.stderr.trim()))
        }
    };
    if super::within(CONNECT_TIMEOUT, deadline).is_none() {
        return Err("the deadline passed".into());
    }
    ipt(&[&["-I", "INPUT", "1"][..], &TTL_RULE].concat())?;
    let put = token_put(deadline);
    let listing = ipt(&["-S", "INPUT", "-v"]);
    let _ = ipt(&[&["-D", "INPUT"][..], &TTL_RULE].concat());
    match put {
        Ok(true) => {}
        Ok(false) => return Err("the token PUT was not answered 200".into()),
        Err(e) => return Err(format!("the token PUT failed: {e}")),
    }
    Ok(if ttl1_packets(&listing?) > 0 {
        HopLimit::One
    } else {
        HopLimit::TwoOrMore
    })
}

/// A token PUT of our own, by `deadline`; true when IMDS answered 200.
fn token_put(deadline: Instant) -> std::io::Result<bool> {
    use std::io::{Read as _, Write as _};
    let left = |limit| {
        super::within(limit, deadline)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "the deadline passed"))
    };
    let imds = SocketAddr::new(IMDS_V4.into(), 80);
    let mut s = TcpStream::connect_timeout(&imds, left(CONNECT_TIMEOUT)?)?;
    s.set_read_timeout(Some(left(READ_TIMEOUT)?))?;
    s.set_write_timeout(Some(left(READ_TIMEOUT)?))?;
    s.write_all(
        b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )?;
    let mut buf = vec![];
    let _ = s.take(64 * 1024).read_to_end(&mut buf);
    Ok(buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200"))
}

/// The packets the counting rule counted, from an `iptables -S INPUT -v` listing (pure).
fn ttl1_packets(listing: &str) -> u64 {
    listing
        .lines()
        .filter(|l| l.contains(TTL_COMMENT))
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let c = t.iter().position(|w| *w == "-c")?;
            t.get(c + 1)?.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_the_counting_rule() {
        let listing = "-P INPUT ACCEPT -c 10 900\n\
            -A INPUT -s 169.254.169.254/32 -p tcp -m tcp --sport 80 -m ttl --ttl-eq 1 -m comment --comment ecs-bootstrap-ttl -c 3 180\n\
            -A INPUT -i lo -c 7 420 -j ACCEPT\n";
        assert_eq!(ttl1_packets(listing), 3);
        assert_eq!(ttl1_packets("-P INPUT ACCEPT -c 10 900\n"), 0);
    }
}
