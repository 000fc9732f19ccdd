#!/bin/bash
# User data for a Debian or Ubuntu ECS container instance (amazon-ecs-init's .deb, Docker):
# configure ecs-bootstrap with the source of ecs.config and the cluster, and make sure it runs
# before the ECS agent starts. tests/vm runs this script with real cloud-init (only the bucket
# changed).
#
# Two cases:
# - ecs-bootstrap is baked into the AMI (dpkg -i of the .deb in the image build): writing the
#   settings is all it takes. Its config unit runs after user data and before ecs.service and
#   reads them.
# - It is not: install the .deb (from your bucket; the instance role needs s3:GetObject on it;
#   `aws` is Debian's awscli package) and run it now. Units enabled by an install during boot
#   join only the next boot, and ecs.service waits for user data to finish, so ecs.config is
#   written before it starts.
#
# The settings file may already hold the image's own settings (for example
# ECS_BOOTSTRAP_INTERFACE=docker+,br-+ for user-defined bridges, which the firewall unit needs
# before user data runs): only the keys set here are replaced, every other line is kept.
#
# The instance role needs what `ecs-bootstrap iam-policy --source "$SOURCE"` prints.
set -euo pipefail

SOURCE="s3://my-config-bucket/ecs/prod.config"
CLUSTER="prod"
# Only used when the AMI does not have ecs-bootstrap yet.
DEB_URI="s3://my-artifacts-bucket/ecs-bootstrap/ecs-bootstrap_0.1.0-1_amd64.deb"

baked=yes
if ! command -v ecs-bootstrap >/dev/null 2>&1; then
    baked=no
    deb_file=$(mktemp --suffix=.deb)
    aws s3 cp --only-show-errors "$DEB_URI" "$deb_file"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$deb_file"
    rm -f "$deb_file"
fi

# The settings file: plain KEY=VALUE lines, mode 0600 (a value may be a secret). Replaced
# atomically, keeping every line but the two keys set here.
env_file=/etc/ecs-bootstrap/env
install -d -m 0755 /etc/ecs-bootstrap
umask 077
touch "$env_file"
{
    grep -v -e '^ECS_BOOTSTRAP_SOURCE=' -e '^ECS_BOOTSTRAP_SET=' "$env_file" || true
    printf 'ECS_BOOTSTRAP_SOURCE=%s\nECS_BOOTSTRAP_SET=ECS_CLUSTER=%s\n' "$SOURCE" "$CLUSTER"
} >"$env_file.new"
chmod 0600 "$env_file.new"
mv -f "$env_file.new" "$env_file"

if [[ $baked == no ]]; then
    # Firewall and config at once, then the metadata check; the report stays in /run.
    status=0
    ecs-bootstrap run --report /run/ecs-bootstrap/report.json || status=$?
    if ((status != 0)); then
        echo "ecs-bootstrap run failed (exit $status: 3 config, 4 firewall, 5 check, 7 IMDS unreachable); see the lines above and /run/ecs-bootstrap/report.json" >&2
        exit "$status"
    fi
fi
