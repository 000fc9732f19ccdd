# shellcheck shell=sh
# ecs-bootstrap %postun: %systemd_postun expanded (no restart: the units are boot jobs).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
