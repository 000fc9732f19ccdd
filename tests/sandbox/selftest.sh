#!/usr/bin/env bash
# Self-test of the sandbox: up, IMDS v4/v6 from host and ctr, S3 via moto with
# IMDS-served role credentials (allowed / denied / bad signature), proxy
# faults, put, down, and nothing left behind.
#   usage: selftest.sh [NAME]     (root; default NAME: st$$ truncated)
# Prints "N passed, N failed" at the end; exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="${1:-st$(($$ % 100000))}"
sb=(python3 "$here/sandbox.py")
passed=0
failed=0
state=""
tmp="$(mktemp -d)"

name2="${name:0:7}v"
cleanup() {
    trap - EXIT INT TERM
    "${sb[@]}" down "$name" >/dev/null 2>&1 || true
    "${sb[@]}" down "$name2" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
# check DESC CMD...: pass when CMD exits 0
check() {
    local desc="$1"
    shift
    local out
    if out="$("$@" 2>&1)"; then ok "$desc"; else bad "$desc: $out"; fi
}
inns() { local where="$1"; shift; "${sb[@]}" exec "$name" "$where" -- "$@"; }
# http_code WHERE URL [curl args...] -> prints the status code
http_code() {
    local where="$1" url="$2"
    shift 2
    inns "$where" curl -sS -m 5 -o /dev/null -w '%{http_code}' "$@" "$url" || true
}
token() {
    inns "$1" curl -sS -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
        "$2/latest/api/token"
}
expect_eq() { # DESC GOT WANT
    if [[ "$2" == "$3" ]]; then ok "$1"; else bad "$1: got '$2', want '$3'"; fi
}
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d[sys.argv[2]])' "$state" "$1"; }
set_proxy() { # JSON
    local f
    f="$(jget proxy_control)"
    printf '%s\n' "$1" >"$f.tmp" && mv "$f.tmp" "$f"
}

echo "== up $name"
"${sb[@]}" up "$name" >"$tmp/state.json"
state="$tmp/state.json"
py="$(jget python)"
ok "up"

for ns_ in host ctr; do
    for base in "http://169.254.169.254" "http://[fd00:ec2::254]"; do
        md="$base/latest/meta-data"
        expect_eq "$ns_ $base: GET without token is 401" \
            "$(http_code "$ns_" "$md/instance-id")" 401
        tok="$(token "$ns_" "$base")"
        expect_eq "$ns_ $base: token is non-empty" "$([[ -n "$tok" ]] && echo y)" y
        got="$(inns "$ns_" curl -sS -m 5 -H "X-aws-ec2-metadata-token: $tok" "$md/instance-id")"
        expect_eq "$ns_ $base: instance-id with token" "$got" "$(jget instance_id)"
        got="$(inns "$ns_" curl -sS -m 5 -H "X-aws-ec2-metadata-token: $tok" \
            "$md/iam/security-credentials/")"
        expect_eq "$ns_ $base: role name" "$got" ecsInstanceRole
        expect_eq "$ns_ $base: bad token is 401" \
            "$(http_code "$ns_" "$md/instance-id" -H 'X-aws-ec2-metadata-token: nope')" 401
    done
done
expect_eq "token PUT without TTL header is 400" \
    "$(http_code host http://169.254.169.254/latest/api/token -X PUT)" 400
expect_eq "token PUT with X-Forwarded-For is 403" \
    "$(http_code host http://169.254.169.254/latest/api/token -X PUT \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' -H 'X-Forwarded-For: 10.9.9.9')" 403
hdr="$(inns host curl -sS -m 5 -o /dev/null -D - -X PUT \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 77' http://169.254.169.254/latest/api/token \
    | tr -d '\r' | grep -i '^x-aws-ec2-metadata-token-ttl-seconds:' || true)"
expect_eq "token response echoes the TTL header" "${hdr,,}" "x-aws-ec2-metadata-token-ttl-seconds: 77"
nput="$(grep -c '"method": "PUT"' "$(jget imds_log)" || true)"
if [[ "$nput" -ge 7 ]]; then ok "imds log counts token PUTs ($nput)"; else bad "imds log PUT count $nput"; fi

s3c=("$py" "$here/s3check.py" "$state")
for ns_ in host ctr; do
    check "$ns_: GetObject ecs.config with IMDS role creds" inns "$ns_" "${s3c[@]}" --expect ok
    check "$ns_: GetObject other.config is AccessDenied" \
        inns "$ns_" "${s3c[@]}" --key other.config --expect AccessDenied
done
check "bad signature is SignatureDoesNotMatch" \
    inns host "${s3c[@]}" --bad-secret --expect SignatureDoesNotMatch
check "IMDS over IPv6 feeds S3 too" \
    inns ctr "${s3c[@]}" --imds 'http://[fd00:ec2::254]' --expect ok
check "GetObjectVersion with the recorded version_id" \
    inns host "${s3c[@]}" --version-id "$(jget version_id)" --expect ok

fault="http://192.0.2.2:5001"
set_proxy '{"plan": [{"status": 503, "code": "SlowDown", "message": "slow down"}, "reset", {"truncate": 10}], "then": "pass"}'
check "proxy: injected 503 SlowDown" inns host "${s3c[@]}" --endpoint "$fault" --expect SlowDown
check "proxy: reset" inns host "${s3c[@]}" --endpoint "$fault" --expect conn-error
check "proxy: truncate" inns host "${s3c[@]}" --endpoint "$fault" --expect conn-error
check "proxy: then pass (signature still verifies)" \
    inns host "${s3c[@]}" --endpoint "$fault" --expect ok
check "proxy: pass keeps AccessDenied" \
    inns ctr "${s3c[@]}" --endpoint "$fault" --key other.config --expect AccessDenied
nlog="$(grep -c . "$(jget proxy_log)" || true)"
expect_eq "proxy log has one line per request" "$nlog" 5

printf 'ECS_CLUSTER=changed\n' >"$tmp/new.config"
if out="$("${sb[@]}" put "$name" ecs.config "$tmp/new.config")" &&
    [[ "$out" == *version_id* ]]; then ok "put: $out"; else bad "put: $out"; fi

echo "== second sandbox $name2 (--imdsv1 --no-profile --state-dir) beside $name"
"${sb[@]}" up "$name2" --imdsv1 --no-profile --state-dir "$tmp/sd2" >"$tmp/state2.json"
ok "up $name2"
md2="http://169.254.169.254/latest/meta-data"
got="$("${sb[@]}" exec "$name2" ctr -- curl -sS -m 5 "$md2/instance-id")"
expect_eq "$name2: --imdsv1 serves GET without token" "$got" "$(jget instance_id)"
got="$("${sb[@]}" exec "$name2" host -- curl -sS -m 5 -o /dev/null -w '%{http_code}' \
    "$md2/iam/security-credentials/" || true)"
expect_eq "$name2: --no-profile makes iam/ 404" "$got" 404
"${sb[@]}" down "$name2"
expect_eq "$name2: custom state dir removed" "$([[ -e "$tmp/sd2" ]] && echo yes || echo no)" no
expect_eq "$name ($name2 went down) still serves IMDS" \
    "$(http_code host http://169.254.169.254/latest/meta-data/instance-id)" 401

echo "== down $name"
"${sb[@]}" down "$name"
"${sb[@]}" down "$name" # idempotent
left_ns="$(ip netns list | grep -c "^ebs-$name-" || true)"
expect_eq "no ebs-$name-* netns left" "$left_ns" 0
left_p="$(grep -l "EBS_SANDBOX=$name" /proc/[0-9]*/environ 2>/dev/null | wc -l || true)"
expect_eq "no sandbox processes left" "$left_p" 0
expect_eq "state dir removed" "$([[ -e /run/ecs-bootstrap-sandbox/$name ]] && echo yes || echo no)" no

echo "$passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
