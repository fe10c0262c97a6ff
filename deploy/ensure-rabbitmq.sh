#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on the AMQP port berth uses (default 127.0.0.1:5672).
# Reuses a running broker; otherwise installs Debian's rabbitmq-server if it is missing and
# starts it. Safe to run again and again.
set -euo pipefail

host="${BERTH_AMQP_HOST:-127.0.0.1}"
port="${BERTH_AMQP_PORT:-5672}"

say() { echo "ensure-rabbitmq: $*" >&2; }

reachable() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if reachable; then
    say "broker already answering on $host:$port"
    exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
    say "rabbitmq-server is not installed; installing Debian's package"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    # Do not let the package start the broker through policy-rc.d quirks; we start it below.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
fi

if reachable; then
    say "broker started by the package on $host:$port"
    exit 0
fi

say "starting rabbitmq-server"
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    as_root systemctl start rabbitmq-server || true
fi
if ! reachable; then
    as_root env PATH="/usr/sbin:/usr/lib/rabbitmq/bin:$PATH" rabbitmq-server -detached || true
fi

for _ in $(seq 1 120); do
    if reachable; then
        # The port opens a moment before the broker accepts logins; wait for full start-up.
        as_root env PATH="/usr/sbin:$PATH" rabbitmqctl await_startup >/dev/null 2>&1 || true
        say "broker ready on $host:$port"
        exit 0
    fi
    sleep 1
done
say "RabbitMQ did not come up on $host:$port within 120 s; see /var/log/rabbitmq/ for why"
exit 1
