#!/usr/bin/env python3
"""Test sandbox of real peers for ecs-bootstrap (see README.md beside this file).

    sandbox.py up NAME [--imdsv1] [--no-profile] [--state-dir DIR]
    sandbox.py down NAME [--state-dir DIR] | sandbox.py down --all
    sandbox.py put NAME KEY FILE
    sandbox.py exec NAME host|ctr|svc -- CMD...

Builds three network namespaces (ebs-NAME-host, ebs-NAME-ctr, ebs-NAME-svc)
joined by veths; svc runs moto (S3/IAM/STS, auth on), the IMDSv2 emulator
(imds.py) on 169.254.169.254 / fd00:ec2::254 and a fault proxy
(faultproxy.py). Needs root, iproute2 and the venv from venv.sh (made on
demand). Nothing here touches the root network namespace.
"""

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN_ROOT = Path("/run/ecs-bootstrap-sandbox")
MARKER_FILE = ".ebs-sandbox"
MARKER_ENV = "EBS_SANDBOX"
NAME_RE = re.compile(r"^[a-z0-9]{1,8}$")
NS_RE = re.compile(r"^ebs-([a-z0-9]{1,8})-(host|ctr|svc)$")
ROLES = ("host", "ctr", "svc")

BUCKET = "ecs-bootstrap-sandbox"
KEY = "ecs.config"
FORBIDDEN_KEY = "other.config"
REGION = "us-east-1"
AZ = "us-east-1a"
ROLE = "ecsInstanceRole"
INSTANCE_ID = "i-0123456789abcdef0"
OBJECT_CONTENT = "ECS_CLUSTER=sandbox\nECS_ENABLE_TASK_IAM_ROLE=true\nECS_LOGLEVEL=info\n"
FORBIDDEN_CONTENT = "ECS_CLUSTER=forbidden\n"
MOTO_PORT = 5000
PROXY_PORT = 5001
SVC_IP = "192.0.2.2"
IMDS_V4 = "169.254.169.254"
IMDS_V6 = "fd00:ec2::254"
NO_AUTH_CALLS = 3  # create_user, put_user_policy, create_access_key
READY_TIMEOUT_S = 20.0


class Fail(Exception):
    code = 1


class Interrupted(BaseException):
    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = signum


def log(msg):
    print(f"sandbox: {msg}", file=sys.stderr, flush=True)


def namespaces(name):
    return {r: f"ebs-{name}-{r}" for r in ROLES}


def run(cmd, check=True, timeout=60, capture=False):
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Fail(f"timed out after {timeout}s: {' '.join(cmd)}")
    if check and p.returncode != 0:
        raise Fail(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr.strip()}")
    return p.stdout if capture else p


def ip(*args, check=True):
    return run(["ip", *args], check=check)


def list_netns():
    out = run(["ip", "netns", "list"], capture=True, check=False) or ""
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def write_json_atomic(path, obj):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def check_name(name):
    if not NAME_RE.match(name or ""):
        raise Fail(f"bad sandbox name {name!r}: use 1-8 chars of [a-z0-9]")


def resolve_state_dir(name, override=None):
    if override:
        return Path(override).resolve()
    link = RUN_ROOT / name
    return link.resolve() if link.is_symlink() else link


def read_state(name, override=None):
    sd = resolve_state_dir(name, override)
    try:
        return json.loads((sd / "state.json").read_text())
    except (OSError, ValueError):
        raise Fail(f"no sandbox state for {name!r} in {sd} (is it up?)")


def venv_python():
    """Create/update the venv via venv.sh (idempotent) and return its python."""
    for var in ("ECS_BOOTSTRAP_SANDBOX_PYTHON", "ECS_BOOTSTRAP_PYTHON"):
        if os.environ.get(var):
            return os.environ[var]
    p = subprocess.run(["bash", str(HERE / "venv.sh")], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, text=True, timeout=900)
    if p.returncode != 0:
        raise Fail("venv.sh failed (see its output above)")
    return p.stdout.strip().splitlines()[-1]


def utc_iso(t):
    if isinstance(t, (int, float)):
        t = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- processes

def proc_is_ours(pid, name):
    """True if pid is alive and carries our marker env (guards pid reuse)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER_ENV}={name}".encode() in env.split(b"\0")


def proc_alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def marked_pids(name=None):
    """All processes carrying the sandbox marker (for name, or any)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for e in env:
            if e.startswith(MARKER_ENV.encode() + b"="):
                if name is None or e == f"{MARKER_ENV}={name}".encode():
                    found.append(int(d.name))
                break
    return found


def kill_all(pids, pgids, timeout=5.0):
    """SIGTERM process groups and pids, wait (bounded), then SIGKILL."""
    pids = set(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for g in set(pgids):
            try:
                os.killpg(g, sig)
            except OSError:
                pass
        for p in pids:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout * 20) + 1):
            pids = {p for p in pids if proc_alive(p)}
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not pids:
            return
    if pids:
        log(f"warning: processes still alive after SIGKILL: {sorted(pids)}")


# --------------------------------------------------------------------- down

def down(name, override=None, quiet=False):
    check_name(name)
    sd = resolve_state_dir(name, override)
    ns = namespaces(name)
    pids, pgids = [], []
    try:
        state = json.loads((sd / "state.json").read_text())
    except (OSError, ValueError):
        state = {}
    for info in (state.get("pids") or {}).values():
        if proc_is_ours(info.get("pid"), name):
            pids.append(info["pid"])
            pgids.append(info.get("pgid", info["pid"]))
    pids += marked_pids(name)
    existing = set(list_netns())
    for n in ns.values():
        if n in existing:
            out = run(["ip", "netns", "pids", n], check=False, capture=True) or ""
            pids += [int(x) for x in out.split() if x.isdigit()]
    pids = [p for p in set(pids) if p != os.getpid()]
    if pids:
        kill_all(pids, pgids)
    for n in ns.values():
        if n in existing:
            ip("netns", "delete", n, check=False)
    if (sd / MARKER_FILE).exists():
        shutil.rmtree(sd, ignore_errors=True)
    link = RUN_ROOT / name
    if link.is_symlink():
        link.unlink()
    left = [n for n in ns.values() if n in set(list_netns())]
    if left:
        raise Fail(f"could not delete namespaces {left}")
    if not quiet:
        log(f"{name}: down")


def down_all():
    names = set()
    if RUN_ROOT.is_dir():
        for e in RUN_ROOT.iterdir():
            if NAME_RE.match(e.name) and (e.is_symlink() or e.is_dir()):
                names.add(e.name)
    for n in list_netns():
        m = NS_RE.match(n)
        if m:
            names.add(m.group(1))
    for pid in marked_pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for e in env:
            if e.startswith(MARKER_ENV.encode() + b"="):
                v = e.split(b"=", 1)[1].decode(errors="replace")
                if NAME_RE.match(v):
                    names.add(v)
    errors = []
    for n in sorted(names):
        try:
            down(n)
        except Fail as e:
            errors.append(str(e))
    if errors:
        raise Fail("; ".join(errors))
    if not names:
        log("nothing to tear down")


# ----------------------------------------------------------------------- up

def build_network(ns):
    h, c, s = ns["host"], ns["ctr"], ns["svc"]
    for n in (h, c, s):
        ip("netns", "add", n)
    for n in (h, c, s):
        sysctls = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
        if n == h:
            sysctls += ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                        "net.ipv6.conf.default.forwarding=1"]
        run(["ip", "netns", "exec", n, "sysctl", "-q", "-w", *sysctls])
        ip("-n", n, "link", "set", "lo", "up")
    # host: docker0 bridge
    ip("-n", h, "link", "add", "docker0", "type", "bridge")
    ip("-n", h, "addr", "add", "172.17.0.1/16", "dev", "docker0")
    ip("-n", h, "-6", "addr", "add", "fd00:d0c:0:1::1/64", "dev", "docker0", "nodad")
    ip("-n", h, "link", "set", "docker0", "up")
    # ctr: eth0 <-> vethctr0 (port of docker0)
    ip("-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "vethctr0",
       "netns", h)
    ip("-n", h, "link", "set", "vethctr0", "master", "docker0")
    ip("-n", h, "link", "set", "vethctr0", "up")
    ip("-n", c, "addr", "add", "172.17.0.2/16", "dev", "eth0")
    ip("-n", c, "-6", "addr", "add", "fd00:d0c:0:1::2/64", "dev", "eth0", "nodad")
    ip("-n", c, "link", "set", "eth0", "up")
    ip("-n", c, "route", "add", "default", "via", "172.17.0.1")
    ip("-n", c, "-6", "route", "add", "default", "via", "fd00:d0c:0:1::1")
    # svc: eth0 <-> svc0 (host)
    ip("-n", s, "link", "add", "eth0", "type", "veth", "peer", "name", "svc0",
       "netns", h)
    ip("-n", h, "addr", "add", "192.0.2.1/24", "dev", "svc0")
    ip("-n", h, "-6", "addr", "add", "fd00:5e5::1/64", "dev", "svc0", "nodad")
    ip("-n", h, "link", "set", "svc0", "up")
    ip("-n", s, "addr", "add", "192.0.2.2/24", "dev", "eth0")
    ip("-n", s, "-6", "addr", "add", "fd00:5e5::2/64", "dev", "eth0", "nodad")
    ip("-n", s, "link", "set", "eth0", "up")
    ip("-n", s, "addr", "add", f"{IMDS_V4}/32", "dev", "lo")
    ip("-n", s, "-6", "addr", "add", f"{IMDS_V6}/128", "dev", "lo", "nodad")
    ip("-n", h, "route", "add", f"{IMDS_V4}/32", "via", SVC_IP)
    ip("-n", h, "-6", "route", "add", f"{IMDS_V6}/128", "via", "fd00:5e5::2")
    ip("-n", s, "route", "add", "172.17.0.0/16", "via", "192.0.2.1")
    ip("-n", s, "-6", "route", "add", "fd00:d0c:0:1::/64", "via", "fd00:5e5::1")


def child_env(name):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({MARKER_ENV: name, "PYTHONUNBUFFERED": "1",
                "AWS_EC2_METADATA_DISABLED": "true"})
    return env


def start_bg(state, tag, ns, cmd, env, sd):
    out = open(sd / f"{tag}.out", "ab")
    try:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
    finally:
        out.close()
    state["pids"][tag] = {"pid": p.pid, "pgid": p.pid}
    state["process_logs"][tag] = str(sd / f"{tag}.out")
    write_json_atomic(sd / "state.json", state)
    return p


def tail(path, n=20):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def wait_ready(ns, procs, targets, state):
    """Bounded wait until every host:port accepts TCP inside ns."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    probe = [sys.executable, str(Path(__file__).resolve()), "_probe", *targets]
    for _ in range(int(READY_TIMEOUT_S / 0.25) + 1):
        for tag, p in procs.items():
            if p.poll() is not None:
                raise Fail(f"{tag} exited with {p.returncode}:\n"
                           f"{tail(state['process_logs'][tag])}")
        if run(["ip", "netns", "exec", ns, *probe], check=False, timeout=10).returncode == 0:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    raise Fail(f"not ready within {READY_TIMEOUT_S}s: {targets}")


def up(args):
    name = args.name
    check_name(name)
    if os.geteuid() != 0:
        raise Fail("must run as root")
    ns = namespaces(name)
    clash = [n for n in ns.values() if n in set(list_netns())]
    link = RUN_ROOT / name
    if clash or link.exists() or link.is_symlink():
        raise Fail(f"sandbox {name!r} already exists ({clash or link}); "
                   f"run: sandbox.py down {name}")
    if args.state_dir:
        sd = Path(args.state_dir).resolve()
        if sd.exists() and any(sd.iterdir()):
            raise Fail(f"--state-dir {sd} must be empty or not exist")
    else:
        sd = link
    py = venv_python()

    def on_signal(signum, frame):
        raise Interrupted(signum)

    # SIGINT too: a shell starts background jobs with SIGINT ignored.
    old = {s: signal.signal(s, on_signal)
           for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    created = False
    try:
        created = True  # from here on, failure tears down (down is idempotent)
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        sd.mkdir(parents=True, exist_ok=True)
        (sd / MARKER_FILE).write_text(name + "\n")
        if args.state_dir:
            os.symlink(sd, link)
        state = {
            "name": name, "namespaces": ns, "state_dir": str(sd), "phase": "starting",
            "python": py, "pids": {}, "process_logs": {},
        }
        write_json_atomic(sd / "state.json", state)
        log(f"{name}: building namespaces")
        build_network(ns)

        env = child_env(name)
        menv = dict(env, INITIAL_NO_AUTH_ACTION_COUNT=str(NO_AUTH_CALLS))
        procs = {}
        log(f"{name}: starting moto")
        procs["moto"] = start_bg(state, "moto", ns["svc"],
                                 [py, str(HERE / "moto_server.py"), "-H", "0.0.0.0",
                                  "-p", str(MOTO_PORT)], menv, sd)
        wait_ready(ns["svc"], procs, [f"127.0.0.1:{MOTO_PORT}"], state)

        log(f"{name}: configuring IAM/S3/STS in moto")
        p = run(["ip", "netns", "exec", ns["svc"], py, str(Path(__file__).resolve()),
                 "_setup"], check=False, timeout=120)
        if p.returncode != 0:
            raise Fail(f"moto setup failed:\n{p.stderr.strip()}")
        setup = json.loads(p.stdout)

        imds_cfg = {
            "instance_id": INSTANCE_ID, "region": REGION, "availability_zone": AZ,
            "account_id": setup["account_id"], "role_name": ROLE,
            "instance_profile_arn": setup["instance_profile_arn"],
            "instance_profile_id": setup["instance_profile_id"],
            "credentials": {
                "AccessKeyId": setup["role_credentials"]["access_key_id"],
                "SecretAccessKey": setup["role_credentials"]["secret_access_key"],
                "Token": setup["role_credentials"]["session_token"],
                "Expiration": setup["role_credentials"]["expiration"],
            },
        }
        write_json_atomic(sd / "imds-config.json", imds_cfg)
        write_json_atomic(sd / "imds-control.json",
                          {"imdsv1": bool(args.imdsv1), "profile": not args.no_profile,
                           "tags": None})
        write_json_atomic(sd / "proxy-control.json", {"plan": [], "then": "pass"})
        for f in ("imds-requests.jsonl", "proxy-requests.jsonl"):
            (sd / f).touch()

        log(f"{name}: starting imds and faultproxy")
        procs["imds"] = start_bg(state, "imds", ns["svc"], [
            py, str(HERE / "imds.py"), "--config", str(sd / "imds-config.json"),
            "--control", str(sd / "imds-control.json"),
            "--log", str(sd / "imds-requests.jsonl"),
            "--listen", IMDS_V4, "--listen", IMDS_V6, "--port", "80"], env, sd)
        procs["faultproxy"] = start_bg(state, "faultproxy", ns["svc"], [
            py, str(HERE / "faultproxy.py"), "--control", str(sd / "proxy-control.json"),
            "--log", str(sd / "proxy-requests.jsonl"), "--listen", "0.0.0.0",
            "--port", str(PROXY_PORT), "--upstream", f"127.0.0.1:{MOTO_PORT}"], env, sd)
        wait_ready(ns["svc"], procs, [f"127.0.0.1:{MOTO_PORT}", f"{IMDS_V4}:80",
                                      f"[{IMDS_V6}]:80", f"127.0.0.1:{PROXY_PORT}"], state)

        state.update({
            "phase": "up",
            "s3_endpoint": f"http://{SVC_IP}:{MOTO_PORT}",
            "s3_fault_endpoint": f"http://{SVC_IP}:{PROXY_PORT}",
            "imds_endpoint": f"http://{IMDS_V4}",
            "imds_endpoint_v6": f"http://[{IMDS_V6}]",
            "bucket": BUCKET, "key": KEY, "forbidden_key": FORBIDDEN_KEY,
            "version_id": setup["version_id"], "etag": setup["etag"],
            "object_sha256": hashlib.sha256(OBJECT_CONTENT.encode()).hexdigest(),
            "object_content": OBJECT_CONTENT,
            "region": REGION, "availability_zone": AZ, "instance_id": INSTANCE_ID,
            "account_id": setup["account_id"], "role_name": ROLE,
            "role_arn": setup["role_arn"],
            "instance_profile_arn": setup["instance_profile_arn"],
            "instance_profile_id": setup["instance_profile_id"],
            "admin": setup["admin"], "role_credentials": setup["role_credentials"],
            "imdsv1": bool(args.imdsv1), "profile": not args.no_profile,
            "imds_log": str(sd / "imds-requests.jsonl"),
            "imds_control": str(sd / "imds-control.json"),
            "imds_config": str(sd / "imds-config.json"),
            "proxy_log": str(sd / "proxy-requests.jsonl"),
            "proxy_control": str(sd / "proxy-control.json"),
            "addresses": {
                "host_docker0": ["172.17.0.1", "fd00:d0c:0:1::1"],
                "host_svc0": ["192.0.2.1", "fd00:5e5::1"],
                "ctr_eth0": ["172.17.0.2", "fd00:d0c:0:1::2"],
                "svc_eth0": ["192.0.2.2", "fd00:5e5::2"],
                "imds": [IMDS_V4, IMDS_V6],
            },
        })
        write_json_atomic(sd / "state.json", state)
        for s in old:  # up is done: from here on a signal must not tear down
            signal.signal(s, signal.SIG_IGN)
        print(json.dumps(state, indent=2, sort_keys=True), flush=True)
        log(f"{name}: up")
    except BaseException as e:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        what = "interrupted" if isinstance(e, (KeyboardInterrupt, Interrupted)) else "failed"
        log(f"{name}: up {what}: {e}; tearing down")
        if created:
            try:
                down(name, args.state_dir, quiet=True)
            except Exception as e2:  # noqa: BLE001
                log(f"{name}: teardown error: {e2}")
        if isinstance(e, Fail):
            raise
        err = Fail(f"up {what}: {e}")
        if isinstance(e, Interrupted):
            err.code = 128 + e.signum
        elif isinstance(e, KeyboardInterrupt):
            err.code = 130
        raise err from None


# ------------------------------------------------ helpers run inside svc ns

def _probe(targets):
    for t in targets:
        host, port = t.rsplit(":", 1)
        host = host.strip("[]")
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect((host, int(port)))
        except OSError:
            return 1
    return 0


def _clients():
    import boto3
    from botocore.config import Config
    cfg = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                 connect_timeout=5, read_timeout=30)
    kw = {"endpoint_url": f"http://127.0.0.1:{MOTO_PORT}", "region_name": REGION,
          "config": cfg}
    return boto3, kw


def _setup():
    import botocore.exceptions
    boto3, kw = _clients()
    # The first NO_AUTH_CALLS calls are unauthenticated (moto's
    # INITIAL_NO_AUTH_ACTION_COUNT): make an allow-all admin with a key.
    iam0 = boto3.client("iam", aws_access_key_id="bootstrap",
                        aws_secret_access_key="bootstrap", **kw)
    iam0.create_user(UserName="admin")
    iam0.put_user_policy(UserName="admin", PolicyName="allow-all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam0.create_access_key(UserName="admin")["AccessKey"]
    admin = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
    akw = dict(kw, aws_access_key_id=admin["access_key_id"],
               aws_secret_access_key=admin["secret_access_key"])
    account = boto3.client("sts", **akw).get_caller_identity()["Account"]
    s3 = boto3.client("s3", **akw)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    put = s3.put_object(Bucket=BUCKET, Key=KEY, Body=OBJECT_CONTENT.encode())
    s3.put_object(Bucket=BUCKET, Key=FORBIDDEN_KEY, Body=FORBIDDEN_CONTENT.encode())
    iam = boto3.client("iam", **akw)
    # moto checks the trust policy's AWS principal by exact ARN match.
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "sts:AssumeRole",
        "Principal": {"Service": "ec2.amazonaws.com",
                      "AWS": [f"arn:aws:iam::{account}:user/admin"]}}]}
    role = iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust),
                           MaxSessionDuration=43200)["Role"]
    iam.put_role_policy(RoleName=ROLE, PolicyName="read-ecs-config", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": f"arn:aws:s3:::{BUCKET}/{KEY}"}]}))
    ip_ = iam.create_instance_profile(InstanceProfileName=ROLE)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=ROLE, RoleName=ROLE)
    cr = boto3.client("sts", **akw).assume_role(
        RoleArn=role["Arn"], RoleSessionName=INSTANCE_ID, DurationSeconds=43200)["Credentials"]
    rc = {"access_key_id": cr["AccessKeyId"], "secret_access_key": cr["SecretAccessKey"],
          "session_token": cr["SessionToken"], "expiration": utc_iso(cr["Expiration"])}
    # Self-check: moto must enforce the role policy.
    rs3 = boto3.client("s3", aws_access_key_id=rc["access_key_id"],
                       aws_secret_access_key=rc["secret_access_key"],
                       aws_session_token=rc["session_token"], **kw)
    got = rs3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read()
    if got != OBJECT_CONTENT.encode():
        raise SystemExit("self-check: role read wrong content")
    try:
        rs3.get_object(Bucket=BUCKET, Key=FORBIDDEN_KEY)
        raise SystemExit("self-check: moto did NOT deny the role reading other.config")
    except botocore.exceptions.ClientError as e:
        if e.response["Error"]["Code"] != "AccessDenied":
            raise
    print(json.dumps({
        "account_id": account, "admin": admin, "role_arn": role["Arn"],
        "instance_profile_arn": ip_["Arn"], "instance_profile_id": ip_["InstanceProfileId"],
        "version_id": put.get("VersionId"), "etag": put.get("ETag"),
        "role_credentials": rc}))
    return 0


def _put(state_dir, key, path, kms=False):
    boto3, kw = _clients()
    st = json.loads((Path(state_dir) / "state.json").read_text())
    creds = dict(aws_access_key_id=st["admin"]["access_key_id"],
                 aws_secret_access_key=st["admin"]["secret_access_key"], **kw)
    s3 = boto3.client("s3", **creds)
    extra, key_arn = {}, None
    if kms:
        # SSE-KMS with a new customer managed key in moto's KMS.
        key_arn = boto3.client("kms", **creds).create_key(
            Description="ecs-bootstrap sandbox")["KeyMetadata"]["Arn"]
        extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key_arn}
    r = s3.put_object(Bucket=st["bucket"], Key=key, Body=Path(path).read_bytes(), **extra)
    print(json.dumps({"version_id": r.get("VersionId"), "etag": r.get("ETag"),
                      "kms_key_arn": key_arn}))
    return 0


# ---------------------------------------------------------------------- cli

def main(argv=None):
    ap = argparse.ArgumentParser(prog="sandbox.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="build a sandbox, print its state JSON")
    p.add_argument("name")
    p.add_argument("--imdsv1", action="store_true", help="IMDS serves token-less GETs")
    p.add_argument("--no-profile", action="store_true", help="IMDS has no instance profile")
    p.add_argument("--state-dir", help=f"default {RUN_ROOT}/NAME")
    p = sub.add_parser("down", help="tear a sandbox down (idempotent)")
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true", help="every sandbox and leftover ebs-* netns")
    p.add_argument("--state-dir")
    p = sub.add_parser("put", help="upload FILE as KEY with admin credentials")
    p.add_argument("name")
    p.add_argument("key")
    p.add_argument("file")
    p.add_argument("--kms", action="store_true",
                   help="encrypt with SSE-KMS under a new KMS key (its ARN is printed)")
    p = sub.add_parser("exec", help="run a command in a sandbox namespace")
    p.add_argument("name")
    p.add_argument("where", choices=ROLES)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("_probe")
    p.add_argument("targets", nargs="+")
    sub.add_parser("_setup")
    p = sub.add_parser("_put")
    p.add_argument("state_dir")
    p.add_argument("key")
    p.add_argument("file")
    p.add_argument("--kms", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "up":
            up(a)
        elif a.cmd == "down":
            if a.all:
                down_all()
            elif a.name:
                down(a.name, a.state_dir)
            else:
                ap.error("down needs NAME or --all")
        elif a.cmd == "put":
            check_name(a.name)
            st = read_state(a.name)
            if not Path(a.file).is_file():
                raise Fail(f"no such file: {a.file}")
            cmd = ["ip", "netns", "exec", st["namespaces"]["svc"], st["python"],
                   str(Path(__file__).resolve()), "_put", st["state_dir"], a.key,
                   str(Path(a.file).resolve())] + (["--kms"] if a.kms else [])
            return subprocess.run(cmd, stdin=subprocess.DEVNULL, timeout=120).returncode
        elif a.cmd == "exec":
            check_name(a.name)
            cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
            if not cmd:
                ap.error("exec needs a command after --")
            n = namespaces(a.name)[a.where]
            if n not in list_netns():
                raise Fail(f"namespace {n} does not exist")
            os.execvp("ip", ["ip", "netns", "exec", n, *cmd])
        elif a.cmd == "_probe":
            return _probe(a.targets)
        elif a.cmd == "_setup":
            return _setup()
        elif a.cmd == "_put":
            return _put(a.state_dir, a.key, a.file, a.kms)
    except Fail as e:
        log(f"error: {e}")
        return e.code
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
