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

# Stations over MQTT: RabbitMQ's MQTT plugin, and its management API (where `sensorhub station`
# manages station accounts), enabled on a local broker without a restart; the ports also go into
# its config file so that they hold after one. A port another server holds (Mosquitto often holds
# 1883) is never taken over: say so, and how to pick another.
mqtt_port=${SENSORHUB_MQTT_PORT:-1883}
read -r api_host api_port <<<"$(host_port "${SENSORHUB_RABBITMQ_API_URL:-http://127.0.0.1:15672/}" 15672)"
ctl=${SENSORHUB_RABBITMQCTL:-rabbitmqctl}
plugins=${SENSORHUB_RABBITMQ_PLUGINS:-rabbitmq-plugins}
config=${RABBITMQ_CONFIG_FILE:-/etc/rabbitmq/rabbitmq.conf}
config=${config%.conf}.conf

set_port() {  # app key value config-line: on the running node now, and in the config file for later
  "$ctl" -q eval "application:load($1), application:set_env($1, $2, $3)." >/dev/null
  if [[ -w $(dirname "$config") ]] && ! grep -qs "^${4%% =*} " "$config"; then
    printf '# added by sensorhub (scripts/services.sh)\n%b\n' "$4" >>"$config"
  fi
}

if is_local "$rabbit_host" && is_local "$api_host" && command -v "$ctl" >/dev/null; then
  if ! enabled=$("$plugins" -q list --enabled --minimal 2>/dev/null); then
    echo "services: cannot manage RabbitMQ's plugins as $(id -un); run: sudo rabbitmq-plugins enable rabbitmq_mqtt rabbitmq_management" >&2
  else
    enable=()
    if ! grep -qx rabbitmq_mqtt <<<"$enabled"; then
      if answers 127.0.0.1 "$mqtt_port"; then
        echo "services: port $mqtt_port is taken by another server (another MQTT broker such as Mosquitto?), so RabbitMQ's MQTT plugin stays off; pick a free port: SENSORHUB_MQTT_PORT=1884 make run" >&2
      else
        set_port rabbitmq_mqtt tcp_listeners "[{\"127.0.0.1\", $mqtt_port}]" "mqtt.listeners.tcp.1 = 127.0.0.1:$mqtt_port"
        enable+=(rabbitmq_mqtt)
      fi
    fi
    if ! grep -qx rabbitmq_management <<<"$enabled"; then
      set_port rabbitmq_management tcp_config "[{ip, \"127.0.0.1\"}, {port, $api_port}]" \
        "management.tcp.port = $api_port\nmanagement.tcp.ip = 127.0.0.1"
      enable+=(rabbitmq_management)
    fi
    if ((${#enable[@]})); then
      echo "services: enabling ${enable[*]} on RabbitMQ (takes about 10 s)"
      "$plugins" -q enable "${enable[@]}" >/dev/null
    fi
  fi
fi
