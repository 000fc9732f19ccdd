# shellcheck shell=sh
# ecs-bootstrap %preun: %systemd_preun expanded. On removal (not upgrade) disable and stop the
# units; stopping does not remove the firewall rule.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now ecs-bootstrap-drift.timer ecs-bootstrap-firewall.service ecs-bootstrap-config.service >/dev/null 2>&1 || :
fi
