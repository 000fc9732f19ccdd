#!/usr/bin/env python3
"""IMDSv2 emulator for the ecs-bootstrap test sandbox (stdlib only).

Runs inside the sandbox's svc namespace on 169.254.169.254:80 and
[fd00:ec2::254]:80 (ThreadingHTTPServer, HTTP/1.1 keep-alive, every response
has a correct Content-Length).

Usage:
    imds.py --config CONFIG.json --control CONTROL.json --log LOG.jsonl \
            [--listen ADDR ...] [--port 80]

CONFIG.json (written by sandbox.py `up`, static): instance_id, region,
availability_zone, account_id, role_name, instance_profile_arn,
instance_profile_id, credentials {AccessKeyId, SecretAccessKey, Token,
Expiration}.

CONTROL.json knobs (re-read on every request; missing file / missing key =
default). Counters are kept in memory and reset whenever the control file
changes (content, mtime or inode), so a test that writes a new control file
starts from zero:
    imdsv1            bool, default false: serve GETs that carry no token.
    profile           bool, default true: false = no instance profile, every
                      /latest/meta-data/iam/... path is 404.
    profile_from      epoch seconds, default null: before then, no instance
                      profile (as `profile: false`); from then on, the
                      profile (one associated just after launch).
    delay_ms          int, default 0: sleep before every response.
    fail_first        int, default 0: the first N requests (any method) are
                      answered 503.
    unavailable_until epoch seconds, default null: before then, every
                      connection is closed without an answer (IMDS not up yet
                      at boot). Such requests do not count for fail_first.
    token_401_after   int, default null: after N successful (200) GETs all
                      issued tokens are invalidated, so GETs with an old token
                      get 401 until a new token is PUT. Fires once per control
                      file version.
    tags              dict or null, default null: null = the
                      /latest/meta-data/tags/instance/ paths are 404 (instance
                      tags in metadata disabled); a dict = served.
    v2_disabled       bool, default false: token PUTs are answered 404, as a
                      metadata service that predates IMDSv2 (or a proxy that
                      knows only IMDSv1) does; combine with imdsv1 for an
                      IMDSv1-only service.
    put_hop_limit     int, default null: the IP TTL (hop limit) of the
                      answer to a token PUT, as the instance metadata option
                      HttpPutResponseHopLimit sets it (1: a container behind
                      the host's forwarding never gets the answer).
    credentials       dict, default null: merged over the served
                      iam/security-credentials/<role> JSON (e.g. to serve bad
                      or expired credentials).

Token rules (as real IMDS): PUT /latest/api/token needs header
X-aws-ec2-metadata-token-ttl-seconds, an integer 1..21600, else 400; a PUT
carrying X-Forwarded-For is 403. The response echoes the TTL header. A GET
with X-aws-ec2-metadata-token must carry a known, unexpired token, else 401;
a GET without a token is 401 unless imdsv1 is on.

Log: one JSON line per request, flushed at once:
    {"ts", "method", "path", "status", "token": bool, "ttl": int|str|null}
status is null when the connection was dropped (unavailable_until). A line is
written before the answer is sent, so it is in the log once the client has its
answer. A token
PUT answered 200 also logs "issued": the token (so tests can look for it in
the binary's output).
"""

import argparse
import datetime as dt
import hashlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


def utc_iso(ts=None):
    t = dt.datetime.fromtimestamp(time.time() if ts is None else ts, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class State:
    """Shared in-memory state: tokens and counters, guarded by a lock."""

    def __init__(self, config, control_path, log_path):
        self.config = config
        self.control_path = control_path
        self.lock = threading.Lock()
        self.tokens = {}  # token -> expiry (time.monotonic())
        self.control_key = None
        self.requests = 0  # counted for fail_first
        self.good_gets = 0  # counted for token_401_after
        self.invalidated = False
        self.log_file = open(log_path, "a", buffering=1, encoding="utf-8")
        self.started = utc_iso()

    def control(self):
        """Read the control file; reset counters if it changed. Holds lock."""
        try:
            st = os.stat(self.control_path)
            with open(self.control_path, "rb") as f:
                raw = f.read()
            key = (st.st_ino, st.st_mtime_ns, hashlib.sha256(raw).hexdigest())
            ctl = json.loads(raw) if raw.strip() else {}
            if not isinstance(ctl, dict):
                ctl = {}
        except FileNotFoundError:
            key, ctl = None, {}
        except (OSError, ValueError) as e:
            sys.stderr.write(f"imds: bad control file: {e}\n")
            key, ctl = "bad", {}
        if key != self.control_key:
            self.control_key = key
            self.requests = 0
            self.good_gets = 0
            self.invalidated = False
        return ctl

    def log(self, rec):
        line = json.dumps(rec, sort_keys=True)
        with self.lock:
            self.log_file.write(line + "\n")
            self.log_file.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Real IMDS answers without Nagle stalls; without this, headers and body go out as two
    # segments and every keep-alive request waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    def version_string(self):
        return "EC2ws"

    def log_message(self, fmt, *args):  # access log goes to our JSON log
        pass

    @property
    def st(self):
        return self.server.state

    def _reply(self, status, body=b"", ctype="text/plain", extra=None):
        if isinstance(body, str):
            body = body.encode()
        # The request's log line is written before the answer leaves: a client that has its
        # answer (and a test that reads the log once the binary exited) finds the line there.
        rec, self._rec = getattr(self, "_rec", None), None
        if rec is not None:
            rec["status"] = status
            issued, self.issued = getattr(self, "issued", None), None
            if issued:
                rec["issued"] = issued
            self.st.log(rec)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _drain_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > 0:
            self.rfile.read(n)

    def _handle(self):
        self._drain_body()
        ttl_raw = self.headers.get(TTL_HEADER)
        try:
            ttl_log = int(ttl_raw) if ttl_raw is not None else None
        except ValueError:
            ttl_log = ttl_raw
        rec = {
            "ts": time.time(),
            "method": self.command,
            "path": self.path,
            "status": None,
            "token": self.headers.get(TOKEN_HEADER) is not None,
            "ttl": ttl_log,
        }
        st = self.st
        with st.lock:
            ctl = st.control()
            until = ctl.get("unavailable_until")
            if until is not None and time.time() < float(until):
                drop = True
            else:
                drop = False
                st.requests += 1
                nreq = st.requests
        if drop:
            self.close_connection = True
            st.log(rec)
            return
        delay = int(ctl.get("delay_ms") or 0)
        if delay > 0:
            time.sleep(delay / 1000.0)
        self._rec = rec
        if nreq <= int(ctl.get("fail_first") or 0):
            self._reply(503, "Service Unavailable\n")
        else:
            self._route(ctl)
        if self._rec is not None:  # answered without _reply: log what is known
            self._rec = None
            st.log(rec)

    def _route(self, ctl):
        st = self.st
        path = self.path.split("?", 1)[0]
        if path == TOKEN_PATH:
            if ctl.get("v2_disabled", False):
                return self._reply(404, "Not Found\n")
            if self.command != "PUT":
                return self._reply(405, "Method Not Allowed\n", extra={"Allow": "PUT"})
            if self.headers.get("X-Forwarded-For") is not None:
                return self._reply(403, "Forbidden\n")
            raw = self.headers.get(TTL_HEADER)
            try:
                ttl = int(raw)
            except (TypeError, ValueError):
                ttl = 0
            if not 1 <= ttl <= 21600:
                return self._reply(400, "Bad Request\n")
            token = secrets.token_urlsafe(42)
            with st.lock:
                now = time.monotonic()
                st.tokens = {t: e for t, e in st.tokens.items() if e > now}
                st.tokens[token] = now + ttl
            self.issued = token
            hops = ctl.get("put_hop_limit")
            if hops is not None:
                v6 = self.connection.family == socket.AF_INET6
                self.connection.setsockopt(
                    socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP,
                    socket.IPV6_UNICAST_HOPS if v6 else socket.IP_TTL,
                    int(hops),
                )
            return self._reply(200, token, extra={TTL_HEADER: str(ttl)})

        if self.command not in ("GET", "HEAD"):
            return self._reply(405, "Method Not Allowed\n", extra={"Allow": "GET, PUT"})
        token = self.headers.get(TOKEN_HEADER)
        if token is not None:
            with st.lock:
                exp = st.tokens.get(token)
            if exp is None or exp <= time.monotonic():
                return self._reply(401, "Unauthorized\n")
        elif not ctl.get("imdsv1", False):
            return self._reply(401, "Unauthorized\n")

        body = self._lookup(path, ctl)
        if body is None:
            return self._reply(404, "Not Found\n")
        status = self._reply(200, body)
        with st.lock:
            st.good_gets += 1
            n = ctl.get("token_401_after")
            if n is not None and not st.invalidated and st.good_gets >= int(n):
                st.tokens.clear()
                st.invalidated = True
        return status

    def _lookup(self, path, ctl):
        """Return the body for a metadata path, or None for 404."""
        c = self.st.config
        profile = ctl.get("profile", True)
        if ctl.get("profile_from") is not None and time.time() < float(ctl["profile_from"]):
            profile = False
        tags = ctl.get("tags")
        md = "/latest/meta-data/"
        p = path.rstrip("/")
        if p.startswith("/latest/meta-data/iam") and not profile:
            return None
        if p.startswith("/latest/meta-data/tags") and not isinstance(tags, dict):
            return None
        if p == "/latest/meta-data":
            items = ["ami-id", "instance-id", "instance-type", "local-ipv4",
                     "placement/"]
            if profile:
                items.append("iam/")
            if isinstance(tags, dict):
                items.append("tags/")
            return "\n".join(items)
        simple = {
            md + "ami-id": "ami-0123456789abcdef0",
            md + "instance-id": c["instance_id"],
            md + "instance-type": "t3.micro",
            md + "local-ipv4": "10.0.0.10",
            md + "placement": "availability-zone\nregion",
            md + "placement/region": c["region"],
            md + "placement/availability-zone": c["availability_zone"],
            md + "iam": "info\nsecurity-credentials/",
            md + "iam/security-credentials": c["role_name"],
        }
        if p in simple:
            return simple[p]
        if p == md + "iam/info":
            return json.dumps({
                "Code": "Success",
                "LastUpdated": self.st.started,
                "InstanceProfileArn": c["instance_profile_arn"],
                "InstanceProfileId": c["instance_profile_id"],
            }, indent=2)
        if p == md + "iam/security-credentials/" + c["role_name"]:
            cr = c["credentials"]
            doc = {
                "Code": "Success",
                "LastUpdated": self.st.started,
                "Type": "AWS-HMAC",
                "AccessKeyId": cr["AccessKeyId"],
                "SecretAccessKey": cr["SecretAccessKey"],
                "Token": cr["Token"],
                "Expiration": cr["Expiration"],
            }
            doc.update(ctl.get("credentials") or {})
            return json.dumps(doc, indent=2)
        if p == md + "tags/instance":
            return "\n".join(sorted(tags))
        if p.startswith(md + "tags/instance/"):
            k = p[len(md + "tags/instance/"):]
            return str(tags[k]) if k in tags else None
        if p == "/latest/dynamic/instance-identity/document":
            return json.dumps({
                "accountId": c["account_id"],
                "architecture": "x86_64",
                "availabilityZone": c["availability_zone"],
                "billingProducts": None,
                "devpayProductCodes": None,
                "marketplaceProductCodes": None,
                "imageId": "ami-0123456789abcdef0",
                "instanceId": c["instance_id"],
                "instanceType": "t3.micro",
                "kernelId": None,
                "pendingTime": self.st.started,
                "privateIp": "10.0.0.10",
                "ramdiskId": None,
                "region": c["region"],
                "version": "2017-09-30",
            }, indent=2)
        return None

    def do_GET(self):
        self._handle()

    do_PUT = do_HEAD = do_POST = do_DELETE = do_PATCH = do_GET


class Server4(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops the SYNs of a burst of clients (50 concurrent
    # runs), which then wait a second for the retransmit; a real endpoint does not.
    request_queue_size = 128


class Server6(Server4):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--listen", action="append",
                    help="address to bind (repeatable); default 169.254.169.254 and fd00:ec2::254")
    ap.add_argument("--port", type=int, default=80)
    a = ap.parse_args()
    with open(a.config, encoding="utf-8") as f:
        config = json.load(f)
    state = State(config, a.control, a.log)
    servers = []
    for addr in a.listen or ["169.254.169.254", "fd00:ec2::254"]:
        cls = Server6 if ":" in addr else Server4
        srv = cls((addr, a.port), Handler)
        srv.state = state
        servers.append(srv)
    for srv in servers[1:]:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    sys.stderr.write(f"imds: listening on {[s.server_address for s in servers]}\n")
    sys.stderr.flush()
    try:
        servers[0].serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
