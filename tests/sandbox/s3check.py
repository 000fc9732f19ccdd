#!/usr/bin/env python3
"""GetObject against the sandbox S3 with credentials taken from IMDS (selftest helper).

Run inside a sandbox namespace with the venv python:
    s3check.py STATE.json [--endpoint URL] [--key KEY] [--creds imds|admin]
               [--bad-secret] [--imds URL] [--version-id ID]
               --expect ok|ERRORCODE|conn-error|bad-body
Credentials "imds" are fetched the IMDSv2 way (PUT token, GET role name,
GET credentials). Exit 0 when the outcome matches --expect; prints one JSON
line describing the outcome. boto3 retries are off (one attempt).
"""

import argparse
import hashlib
import json
import sys
import urllib.request

import boto3
import botocore.exceptions
from botocore.config import Config


def imds_creds(base):
    def req(method, path, headers):
        r = urllib.request.Request(base + path, method=method, headers=headers)
        with urllib.request.urlopen(r, timeout=5) as resp:
            return resp.read().decode()

    tok = req("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"})
    h = {"X-aws-ec2-metadata-token": tok}
    role = req("GET", "/latest/meta-data/iam/security-credentials/", h).strip()
    doc = json.loads(req("GET", f"/latest/meta-data/iam/security-credentials/{role}", h))
    return doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("state")
    ap.add_argument("--endpoint")
    ap.add_argument("--key")
    ap.add_argument("--creds", choices=["imds", "admin"], default="imds")
    ap.add_argument("--imds")
    ap.add_argument("--bad-secret", action="store_true")
    ap.add_argument("--version-id")
    ap.add_argument("--expect", required=True)
    a = ap.parse_args()
    st = json.load(open(a.state, encoding="utf-8"))
    if a.creds == "imds":
        ak, sk, tok = imds_creds(a.imds or st["imds_endpoint"])
    else:
        ak, sk, tok = st["admin"]["access_key_id"], st["admin"]["secret_access_key"], None
    if a.bad_secret:
        sk = "X" + sk[1:]
    s3 = boto3.client(
        "s3", endpoint_url=a.endpoint or st["s3_endpoint"], region_name=st["region"],
        aws_access_key_id=ak, aws_secret_access_key=sk, aws_session_token=tok,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                      connect_timeout=5, read_timeout=10))
    kw = {"Bucket": st["bucket"], "Key": a.key or st["key"]}
    if a.version_id:
        kw["VersionId"] = a.version_id
    try:
        body = s3.get_object(**kw)["Body"].read()
        outcome = {"result": "ok", "sha256": hashlib.sha256(body).hexdigest(),
                   "bytes": len(body)}
        if kw["Key"] == st["key"] and not a.version_id and \
                outcome["sha256"] != st["object_sha256"]:
            outcome["result"] = "bad-body"
    except botocore.exceptions.ClientError as e:
        outcome = {"result": e.response["Error"]["Code"],
                   "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
    except (botocore.exceptions.BotoCoreError, OSError) as e:
        outcome = {"result": "conn-error", "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(outcome))
    return 0 if outcome["result"] == a.expect else 1


if __name__ == "__main__":
    sys.exit(main())
