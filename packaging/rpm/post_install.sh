# shellcheck shell=sh
# ecs-bootstrap %post: %systemd_post expanded as a plain script (cargo-generate-rpm has no
# macros). On a first installation, apply the presets: ours
# (/usr/lib/systemd/system-preset/50-ecs-bootstrap.preset) enables both units and the drift
# timer. They are enabled, not started: they are boot jobs (the timer starts at the next boot).
mkdir -p /etc/ecs
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset ecs-bootstrap-firewall.service ecs-bootstrap-config.service ecs-bootstrap-drift.timer >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
