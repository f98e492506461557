#!/usr/bin/env bash
# Runs one load scenario against a fresh release server (and a fresh redis-server for the Redis
# engine), then stops both. Usage:
#   examples/loadgen/bench.sh redis|embedded s1|s2|s3|s4|s5 [loadgen options…] [-- server options…]
# e.g. examples/loadgen/bench.sh redis s1 --rate 50
#      examples/loadgen/bench.sh redis s2 --via http -- --redis-keys-per-reader 64
set -euo pipefail
cd "$(dirname "$0")/../.."
engine=$1 scenario=$2
shift 2
loadgen_args=() server_args=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; server_args=("$@"); break; fi
  loadgen_args+=("$1"); shift
done
cargo build -q --release -p redistribute-cli -p loadgen
target=${CARGO_TARGET_DIR:-$PWD/target}
port=${BENCH_PORT:-18080} redis_port=${BENCH_REDIS_PORT:-16379}
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
redis_opts=() redis_pid_opt=()
if [ "$engine" = redis ]; then
  /usr/bin/redis-server --port "$redis_port" --save '' --appendonly no --dir "$dir" --logfile "$dir/redis.log" &
  pids+=($!)
  redis_pid_opt=(--redis-pid "${pids[0]}")
  redis_opts=(--redis "redis://127.0.0.1:$redis_port")
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
"${BENCH_SERVER_BIN:-$target/release/redistribute}" --listen "127.0.0.1:$port" "${redis_opts[@]}" \
  --max-connections-per-ip 100000 --publish-rate 1000000 --publish-burst 1000000 \
  --subscribe-rate 1000000 --subscribe-burst 1000000 --log-format json "${server_args[@]}" \
  >"$dir/server.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
"$target/release/loadgen" "$scenario" --url "ws://127.0.0.1:$port/ws" \
  --server-pid "$server_pid" "${redis_pid_opt[@]}" "${loadgen_args[@]}"
if [ "$engine" = redis ] && [ -n "${BENCH_REDIS_STATS:-}" ]; then
  redis-cli -p "$redis_port" info commandstats | grep -E 'xread|evalsha|eval|client' || true
  redis-cli -p "$redis_port" info memory | grep -E '^used_memory:' || true
  redis-cli -p "$redis_port" info clients | grep -E '^connected_clients:' || true
fi
