#!/usr/bin/env python3
"""Fault-injecting HTTP reverse proxy in front of moto (stdlib only).

Runs inside the sandbox's svc namespace on 0.0.0.0:5001 and forwards to moto
on 127.0.0.1:5000. Passed-through requests are forwarded byte-exact (method,
raw path+query, every header including Host in the original order, body) so
SigV4 signatures still verify; moto's status, headers and body come back.

Usage:
    faultproxy.py --control CONTROL.json --log LOG.jsonl \
                  [--listen 0.0.0.0] [--port 5001] [--upstream 127.0.0.1:5000]

CONTROL.json (re-read on every request; missing file = pass everything):
    {"plan": [ACTION, ...], "then": ACTION}
Each incoming request consumes the next plan entry; once the plan is used up,
every request gets `then` (default "pass"). The plan position resets when
the control file changes (content, mtime or inode).

Actions:
    "pass"                          forward to moto, return its answer.
    {"status": 503, "code": "SlowDown", "message": "...", "headers": {...}}
                                    S3-style XML error (moto not contacted).
    "reset"                         close the socket at once with a TCP RST
                                    (SO_LINGER 0), no response.
    {"slow_bytes_per_sec": N}       forward; moto's headers at once, the body
                                    dribbled at about N bytes/s.
    {"truncate": N}                 forward; moto's headers with the full
                                    Content-Length, only N body bytes, close.
    {"body": "...", "status": 200, "content_type": "text/html",
     "keep_headers": true}          forward; replace the body (correct
                                    Content-Length); status and content_type
                                    default to moto's. moto's other headers
                                    (ETag, x-amz-*, checksums) are kept unless
                                    keep_headers is false.
    {"oversize": N}                 200 with Content-Length N and N bytes of
                                    'A' (moto not contacted).
    {"body_b64": "...", ...}        as "body", with the new body given in
                                    base64 (arbitrary bytes: invalid UTF-8,
                                    NUL bytes).
    {"expected_owner": "ACCOUNT"}   S3's ExpectedBucketOwner check, which moto
                                    does not make: a request whose
                                    x-amz-expected-bucket-owner header is
                                    present and differs from ACCOUNT gets
                                    403 AccessDenied (moto not contacted);
                                    any other request is passed.
    {"skew_seconds": N}             S3 whose clock is N seconds off ours: a
                                    request whose x-amz-date is more than 15
                                    minutes away from now+N gets 403
                                    RequestTimeTooSkewed with a Date header of
                                    now+N (as S3 answers; moto not contacted);
                                    any other request is passed.

CONNECT (the proxy used as an HTTPS forward proxy, HTTPS_PROXY): logged with
the target host:port as "path", answered 403; nothing is forwarded.

Log: one JSON line per request: {"ts", "method", "path", "action", "status",
"upstream_status", "body_bytes"}.
"""

import argparse
import base64
import calendar
import email.utils
import hashlib
import http.client
import json
import os
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection",
              "te", "trailer", "upgrade"}


class State:
    def __init__(self, control_path, log_path, upstream):
        self.control_path = control_path
        self.upstream = upstream
        self.lock = threading.Lock()
        self.control_key = None
        self.index = 0
        self.log_file = open(log_path, "a", buffering=1, encoding="utf-8")

    def next_action(self):
        with self.lock:
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
                sys.stderr.write(f"faultproxy: bad control file: {e}\n")
                key, ctl = "bad", {}
            if key != self.control_key:
                self.control_key = key
                self.index = 0
            plan = ctl.get("plan") or []
            if self.index < len(plan):
                action = plan[self.index]
                self.index += 1
            else:
                action = ctl.get("then", "pass")
            return action

    def log(self, rec):
        line = json.dumps(rec, sort_keys=True)
        with self.lock:
            self.log_file.write(line + "\n")
            self.log_file.flush()


def s3_error_xml(code, message, resource):
    def esc(s):
        return (str(s).replace("&", "&amp;").replace("<", "&lt;")
                .replace(">", "&gt;"))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{esc(code)}</Code><Message>{esc(message)}</Message>"
            f"<Resource>{esc(resource)}</Resource>"
            f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>").encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            # De-chunk; re-sent below with the same Transfer-Encoding header.
            chunks = []
            for _ in range(1_000_000):
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks), True
        n = int(self.headers.get("Content-Length") or 0)
        return (self.rfile.read(n) if n > 0 else b""), False

    def _upstream(self, body, chunked):
        host, port = self.server.state.upstream
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.putrequest(self.command, self.path, skip_host=True,
                        skip_accept_encoding=True)
        for k, v in self.headers.items():
            if k.lower() in ("connection", "keep-alive", "proxy-connection"):
                continue
            conn.putheader(k, v)
        conn.endheaders()
        if chunked:
            if body:
                conn.send(b"%x\r\n%s\r\n" % (len(body), body))
            conn.send(b"0\r\n\r\n")
        elif body:
            conn.send(body)
        resp = conn.getresponse()
        data = resp.read()
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        conn.close()
        return resp.status, resp.reason, headers, data

    def _send_head(self, status, reason, headers, content_length):
        self.send_response_only(status, reason)
        for k, v in headers:
            if k.lower() == "content-length":
                continue
            self.send_header(k, v)
        self.send_header("Content-Length", str(content_length))
        self.end_headers()

    def _reset(self):
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                   struct.pack("ii", 1, 0))
        # rfile is a makefile() holding a reference; close it so the fd really
        # closes now (with SO_LINGER 0 that sends RST instead of FIN).
        # (wfile writes straight to the socket and holds no reference.)
        self.rfile.close()
        self.connection.close()

    def _handle(self):
        state = self.server.state
        body, chunked = self._read_body()
        action = state.next_action()
        rec = {"ts": time.time(), "method": self.command, "path": self.path,
               "action": action, "status": None, "upstream_status": None,
               "body_bytes": None}
        try:
            self._do(action, body, chunked, rec)
        finally:
            state.log(rec)

    def _do(self, action, body, chunked, rec):
        head = self.command == "HEAD"
        if isinstance(action, dict) and "expected_owner" in action:
            sent = self.headers.get("x-amz-expected-bucket-owner")
            rec["expected_bucket_owner"] = sent
            if sent is not None and sent != str(action["expected_owner"]):
                action = {"status": 403, "code": "AccessDenied", "message": "Access Denied"}
            else:
                action = "pass"
        if isinstance(action, dict) and "skew_seconds" in action:
            server_now = time.time() + float(action["skew_seconds"])
            sent = self.headers.get("x-amz-date") or ""
            try:
                t = calendar.timegm(time.strptime(sent, "%Y%m%dT%H%M%SZ"))
            except ValueError:
                t = None
            rec["x_amz_date"] = sent
            if t is None or abs(t - server_now) > 900:
                date = email.utils.formatdate(server_now, usegmt=True)
                action = {"status": 403, "code": "RequestTimeTooSkewed",
                          "message": "The difference between the request time and the current time is too large.",
                          "headers": {"Date": date}}
            else:
                action = "pass"
        if action == "reset":
            self._reset()
            return
        if isinstance(action, dict) and "oversize" in action:
            n = int(action["oversize"])
            self._send_head(200, "OK", [("Content-Type", "application/octet-stream")], n)
            rec["status"] = 200
            sent = 0
            block = b"A" * 65536
            try:
                while sent < n and not head:
                    k = min(len(block), n - sent)
                    self.wfile.write(block[:k])
                    sent += k
            except OSError:
                self.close_connection = True
            rec["body_bytes"] = sent
            return
        if (isinstance(action, dict) and "status" in action and "body" not in action
                and "body_b64" not in action):
            st = int(action["status"])
            data = s3_error_xml(action.get("code", "InternalError"),
                                action.get("message", "Injected fault"),
                                self.path.split("?", 1)[0])
            hdrs = [("Content-Type", "application/xml"),
                    ("x-amz-request-id", uuid.uuid4().hex[:16].upper())]
            hdrs += list((action.get("headers") or {}).items())
            self._send_head(st, None, hdrs, len(data))
            if not head:
                self.wfile.write(data)
            rec["status"], rec["body_bytes"] = st, len(data)
            return

        try:
            status, reason, headers, data = self._upstream(body, chunked)
        except (OSError, http.client.HTTPException) as e:
            data = s3_error_xml("ProxyUpstreamError", str(e), self.path)
            self._send_head(502, None, [("Content-Type", "application/xml")], len(data))
            self.wfile.write(data)
            rec["status"], rec["body_bytes"] = 502, len(data)
            return
        rec["upstream_status"] = status
        if head:
            # HEAD: keep moto's Content-Length, no body.
            self.send_response_only(status, reason)
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            rec["status"], rec["body_bytes"] = status, 0
            return

        if action == "pass" or not isinstance(action, dict):
            if action != "pass":
                sys.stderr.write(f"faultproxy: unknown action {action!r}, passing\n")
            self._send_head(status, reason, headers, len(data))
            self.wfile.write(data)
            rec["status"], rec["body_bytes"] = status, len(data)
        elif "slow_bytes_per_sec" in action:
            rate = max(1, int(action["slow_bytes_per_sec"]))
            self._send_head(status, reason, headers, len(data))
            rec["status"] = status
            step = max(1, rate // 10)
            sent = 0
            try:
                while sent < len(data):
                    self.wfile.write(data[sent:sent + step])
                    self.wfile.flush()
                    sent += min(step, len(data) - sent)
                    if sent < len(data):
                        time.sleep(step / rate)
            except OSError:
                self.close_connection = True
            rec["body_bytes"] = sent
        elif "truncate" in action:
            n = max(0, min(int(action["truncate"]), len(data)))
            self._send_head(status, reason, headers, len(data))
            self.wfile.write(data[:n])
            self.wfile.flush()
            self.close_connection = True
            rec["status"], rec["body_bytes"] = status, n
        elif "body" in action or "body_b64" in action:
            if "body_b64" in action:
                new = base64.b64decode(action["body_b64"])
            else:
                new = str(action["body"]).encode()
            st = int(action.get("status", status))
            keep = action.get("keep_headers", True)
            hdrs = [(k, v) for k, v in headers
                    if k.lower() != "content-type" and (keep or k.lower() in ("date", "server"))]
            ctype = action.get("content_type")
            if ctype is None:
                ctype = next((v for k, v in headers if k.lower() == "content-type"),
                             "text/plain")
            hdrs.append(("Content-Type", ctype))
            self._send_head(st, None, hdrs, len(new))
            self.wfile.write(new)
            rec["status"], rec["body_bytes"] = st, len(new)
        else:
            sys.stderr.write(f"faultproxy: unknown action {action!r}, passing\n")
            self._send_head(status, reason, headers, len(data))
            self.wfile.write(data)
            rec["status"], rec["body_bytes"] = status, len(data)

    def do_GET(self):
        self._handle()

    def do_CONNECT(self):
        # As a forward proxy for HTTPS: the client names the host it resolved (the S3
        # endpoint: FIPS, dual-stack, partition, access point). Logged and refused: nothing
        # leaves the sandbox.
        self.server.state.log({"ts": time.time(), "method": "CONNECT", "path": self.path,
                               "action": "refused", "status": 403,
                               "upstream_status": None, "body_bytes": 0})
        self.close_connection = True
        self.send_response_only(403, "Forbidden")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_HEAD = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_GET


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops the SYNs of a burst of clients (50 concurrent
    # runs), which then wait a second for the retransmit; a real endpoint does not.
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--control", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--listen", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--upstream", default="127.0.0.1:5000")
    a = ap.parse_args()
    uh, up = a.upstream.rsplit(":", 1)
    srv = Server((a.listen, a.port), Handler)
    srv.state = State(a.control, a.log, (uh, int(up)))
    sys.stderr.write(f"faultproxy: {a.listen}:{a.port} -> {a.upstream}\n")
    sys.stderr.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
