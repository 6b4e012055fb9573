#!/usr/bin/env bash
# Make sure RabbitMQ and Redis answer at the configured URLs: start local servers that are
# stopped, install them when missing (root with apt), otherwise say exactly what to run.
set -euo pipefail

amqp_url=${SENSORHUB_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
redis_url=${SENSORHUB_REDIS_URL:-redis://127.0.0.1:6379/0}

host_port() {  # URL default-port -> "host port"
  python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or sys.argv[2])' "$1" "$2"
}

answers() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

is_local() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }

wait_for() {  # name host port seconds
  for _ in $(seq 1 "$4"); do answers "$2" "$3" && return 0; sleep 1; done
  echo "services: $1 did not start answering on $2:$3 within $4 s" >&2
  return 1
}

install_packages() {
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "services: installing $* with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "services: $* not installed; run: sudo apt-get install -y $*" >&2
    exit 1
  fi
}

read -r rabbit_host rabbit_port <<<"$(host_port "$amqp_url" 5672)"
read -r redis_host redis_port <<<"$(host_port "$redis_url" 6379)"

if ! answers "$redis_host" "$redis_port"; then
  is_local "$redis_host" || { echo "services: Redis at $redis_host:$redis_port does not answer" >&2; exit 1; }
  command -v redis-server >/dev/null || install_packages redis-server
  echo "services: starting redis-server on port $redis_port (AOF on, fsync always)"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$redis_port" \
    --appendonly yes --appendfsync always --dir "${SENSORHUB_REDIS_DIR:-/var/lib/redis}" \
    --logfile "${SENSORHUB_REDIS_LOG:-/var/log/redis/sensorhub.log}"
  wait_for Redis "$redis_host" "$redis_port" 20
fi

if ! answers "$rabbit_host" "$rabbit_port"; then
  is_local "$rabbit_host" || { echo "services: RabbitMQ at $rabbit_host:$rabbit_port does not answer" >&2; exit 1; }
  command -v rabbitmq-server >/dev/null || install_packages rabbitmq-server
  echo "services: starting rabbitmq-server"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for RabbitMQ "$rabbit_host" "$rabbit_port" 90
fi
echo "services: RabbitMQ $rabbit_host:$rabbit_port and Redis $redis_host:$redis_port answer"
