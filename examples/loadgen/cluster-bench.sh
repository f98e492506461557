#!/usr/bin/env bash
# Runs one load scenario against N fresh release server instances sharing a fresh local
# 3-primary Redis Cluster (no replicas), then stops everything. Subscribers and publisher
# connections are spread over the instances; CPU is summed over all instances and all nodes.
# Usage:
#   examples/loadgen/cluster-bench.sh INSTANCES SCENARIO [loadgen options…] [-- server options…]
# e.g. examples/loadgen/cluster-bench.sh 2 s2
#      examples/loadgen/cluster-bench.sh 3 s1 --channels 100 --subscribers 3000 --rate 1000
set -euo pipefail
cd "$(dirname "$0")/../.."
instances=$1 scenario=$2
shift 2
loadgen_args=() server_args=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; server_args=("$@"); break; fi
  loadgen_args+=("$1"); shift
done
target=${CARGO_TARGET_DIR:-$PWD/target}
cargo build -q --release -p redistribute-cli -p loadgen
base=${BENCH_CLUSTER_PORT:-17000} port=${BENCH_PORT:-18080}
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
nodes=() redis_pids=() cluster_opts=()
for i in 0 1 2; do
  p=$((base + i))
  mkdir -p "$dir/$p"
  # An absolute path, so $! is redis-server itself (not a subshell).
  /usr/bin/redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no \
    --cluster-enabled yes --cluster-config-file nodes.conf --dir "$dir/$p" \
    --logfile "$dir/redis-$p.log" &
  pids+=($!) redis_pids+=(--redis-pid "$!")
  nodes+=("127.0.0.1:$p") cluster_opts+=(--redis-cluster "redis://127.0.0.1:$p")
done
for p in $base $((base + 1)) $((base + 2)); do
  for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log"
for p in $base $((base + 1)) $((base + 2)); do
  for _ in $(seq 100); do
    redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.1
  done
done
urls=() server_pids=()
for i in $(seq 0 $((instances - 1))); do
  "$target/release/redistribute" --listen "127.0.0.1:$((port + i))" "${cluster_opts[@]}" \
    --max-connections-per-ip 100000 --publish-rate 1000000 --publish-burst 1000000 \
    --subscribe-rate 1000000 --subscribe-burst 1000000 --log-format json "${server_args[@]}" \
    >"$dir/server-$i.log" 2>&1 &
  pids+=($!) server_pids+=(--server-pid "$!")
  urls+=(--url "ws://127.0.0.1:$((port + i))/ws")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((port + i))/healthz" >/dev/null && break; sleep 0.1; done
done
echo "$instances instance(s) on a 3-primary Redis Cluster"
"$target/release/loadgen" "$scenario" "${urls[@]}" "${server_pids[@]}" "${redis_pids[@]}" \
  "${loadgen_args[@]}"
if [ -n "${BENCH_REDIS_STATS:-}" ]; then
  for p in $base $((base + 1)) $((base + 2)); do
    echo "node $p: $(redis-cli -p "$p" info clients | grep -E 'connected_clients|blocked_clients' | tr -d '\r' | tr '\n' ' ')"
    redis-cli -p "$p" info commandstats | grep -E 'xread|eval' || true
  done
fi
