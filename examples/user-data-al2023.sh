#!/bin/bash
# User data for an ECS-optimized Amazon Linux 2023 instance: configure ecs-bootstrap with the
# source of ecs.config and the cluster, and make sure it runs before the ECS agent starts.
#
# Two cases:
# - ecs-bootstrap is baked into the AMI (examples/image-builder-component.yaml or
#   examples/packer/ecs-bootstrap.pkr.hcl): writing the settings file is all it takes. Its
#   units run after user data (cloud-final.service) and before ecs.service, and read it.
# - It is not: install the rpm (from your bucket; the instance role needs s3:GetObject on it)
#   and run the agent now. Units enabled by an install during boot join only the next boot,
#   and ecs.service waits for user data to finish, so ecs.config is written before it starts.
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
RPM_URI="s3://my-artifacts-bucket/ecs-bootstrap/ecs-bootstrap-0.1.0-1.x86_64.rpm"

baked=yes
if ! command -v ecs-bootstrap >/dev/null 2>&1; then
    baked=no
    rpm_file=$(mktemp --suffix=.rpm)
    aws s3 cp --only-show-errors "$RPM_URI" "$rpm_file"
    dnf install -y "$rpm_file"
    rm -f "$rpm_file"
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
