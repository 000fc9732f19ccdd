#!/usr/bin/env bash
# The documented manual procedure that `ecs-bootstrap run` replaces, as a user-data script would
# do it (AWS docs: "Storing container instance configuration in Amazon S3" and "Blocking
# containers from instance metadata"):
#   1. aws s3 cp s3://BUCKET/KEY /etc/ecs/ecs.config   (AWS CLI, instance role from IMDS)
#   2. iptables --insert FORWARD 1 --in-interface docker+ --destination 169.254.169.254/32
#      --jump DROP, unless the rule is already there (iptables -C)
#   3. iptables-save > /etc/sysconfig/iptables
#   4. an IMDSv2 check with curl: token PUT, then GET meta-data/instance-id
#
# Usage: documented.sh SOURCE_URL ROOT
#   SOURCE_URL  s3://BUCKET/KEY
#   ROOT        folder standing for / : writes ROOT/etc/ecs/ecs.config and
#               ROOT/etc/sysconfig/iptables
# The AWS CLI is `aws` from PATH; the S3 endpoint comes from AWS_ENDPOINT_URL_S3 and the
# region from AWS_DEFAULT_REGION (both set by bench/bench.sh). Credentials: the CLI's default
# chain, which ends at IMDS (169.254.169.254).
set -euo pipefail

source_url=${1:?usage: documented.sh SOURCE_URL ROOT}
root=${2:?usage: documented.sh SOURCE_URL ROOT}
imds=http://169.254.169.254

mkdir -p "$root/etc/ecs" "$root/etc/sysconfig"
aws s3 cp --only-show-errors "$source_url" "$root/etc/ecs/ecs.config"

rule=(FORWARD --in-interface docker+ --destination 169.254.169.254/32 --jump DROP)
iptables -C "${rule[@]}" 2>/dev/null || iptables --insert FORWARD 1 --in-interface docker+ \
    --destination 169.254.169.254/32 --jump DROP
iptables-save >"$root/etc/sysconfig/iptables"

token=$(curl -sS -f -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
    "$imds/latest/api/token")
id=$(curl -sS -f -m 5 -H "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/instance-id")
echo "instance $id: ecs.config fetched, IMDS blocked for docker+, rules saved"
