#!/usr/bin/env bash
# scripts/bench.sh: what one node and one 3-node cluster carry on this machine.
#
#   scripts/bench.sh [quick|full]      (default: quick, about a minute)
#
# Builds parley and parley-bench, starts nodes on loopback with the per-user and abuse limits
# raised for load (the report says so), runs the load tool's scenarios and writes JSON and
# HTML reports to ./bench-results/. Needs RabbitMQ for the federation row (skipped, and said
# so, without one). Every run is bounded in count and time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode=${1:-quick}
out=./bench-results
tmp=$(mktemp -d)
mkdir -p "$out"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

go build -o "$tmp/parley" ./cmd/parley
go build -o "$tmp/parley-bench" ./cmd/parley-bench
ulimit -n "$(ulimit -Hn)" || true

# Every node of every row runs with these: load needs the limits up.
node_env=(PARLEY_LIMITS_SEND_PER_SECOND=1000000 PARLEY_LIMITS_SEND_BURST=1000000
	PARLEY_LIMITS_REGISTER_PER_HOUR=1000000 PARLEY_LIMITS_LOGIN_PER_MINUTE=1000000
	PARLEY_LIMITS_CONNECTIONS_PER_USER=1000000 PARLEY_LIMITS_CONNECTIONS_PER_IP=1000000
	PARLEY_LIMITS_ROOMS_PER_HOUR=1000000 PARLEY_LIMITS_JOINS_PER_HOUR=1000000
	PARLEY_LIMITS_UNAUTHENTICATED_CONNECTIONS=1000000 PARLEY_LOG_LEVEL=warn
	# A benchmark host has memory to spare: the heap's growth on huge pages (docs/operations.md).
	PARLEY_MEMORY_HUGE_PAGES=true)
echo "bench: nodes run with limits.* raised to 1000000 and memory.huge_pages=true"
# Stated in every report (--node-limits).
node_limits="limits.* = 1000000 (PARLEY_LIMITS_SEND_PER_SECOND, PARLEY_LIMITS_SEND_BURST and the others), memory.huge_pages=true"

start_node() { # name http raft [extra env...]
	local name=$1 http=$2 raft=$3
	shift 3
	env "${node_env[@]}" PARLEY_DATA_DIR="$tmp/$name" PARLEY_HTTP_LISTEN="$http" \
		PARLEY_CLUSTER_RAFT_LISTEN="$raft" "$@" "$tmp/parley" serve >"$tmp/$name.log" 2>&1 &
	pids+=($!)
}

wait_health() {
	for _ in $(seq 1 100); do
		curl -sf "http://$1/v1/health" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "bench: node $1 did not become healthy" >&2
	cat "$tmp"/*.log >&2
	return 1
}

bench() { # name scenario args...
	local name=$1
	shift
	echo
	echo "=== $name: parley-bench $*"
	"$tmp/parley-bench" "$@" --node-limits "$node_limits" --json "$out/$name.json" --html "$out/$name.html"
}

if [[ $mode == full ]]; then
	conns=15000 subs=1000 dur=20s
else
	conns=3000 subs=300 dur=8s
fi

# What this machine charges for the primitives every event pays (syscalls, new pages, thread
# wake-ups, fsync on the nodes' disk): figures from different machines differ by these first.
bench machine machine --dir "$tmp"

start_node single 127.0.0.1:18080 127.0.0.1:17000
wait_health 127.0.0.1:18080
bench conns conns --addr 127.0.0.1:18080 --conns "$conns" --conns-per-user 500 --hold 3s --timeout 60s
bench fanout fanout --addr 127.0.0.1:18080 --subs "$subs" --pubs 64 --duration "$dur" --conns-per-user 100 --timeout 60s
bench latency latency --addr 127.0.0.1:18080 --subs "$subs" --rate 100/s --duration "$dur" --conns-per-user 100 --timeout 60s

cat >"$tmp/cluster.yaml" <<YAML
cluster:
  peers:
    - {id: n1, raft_addr: "127.0.0.1:17001"}
    - {id: n2, raft_addr: "127.0.0.1:17002"}
    - {id: n3, raft_addr: "127.0.0.1:17003"}
YAML
for i in 1 2 3; do
	env "${node_env[@]}" PARLEY_DATA_DIR="$tmp/n$i" PARLEY_HTTP_LISTEN="127.0.0.1:1808$i" PARLEY_CLUSTER_RAFT_LISTEN="127.0.0.1:1700$i" \
		PARLEY_CLUSTER_NODE_ID="n$i" PARLEY_CLUSTER_SECRET=bench PARLEY_CLUSTER_HEARTBEAT_MS=1000 PARLEY_CLUSTER_ELECTION_MS=1000 \
		"$tmp/parley" serve --config "$tmp/cluster.yaml" >"$tmp/n$i.log" 2>&1 &
	pids+=($!)
done
for i in 1 2 3; do wait_health "127.0.0.1:1808$i"; done
addrs=127.0.0.1:18081,127.0.0.1:18082,127.0.0.1:18083
bench cluster cluster --addrs "$addrs" --senders 64 --rooms 64 --duration "$dur"
# The same senders pipelining (a bridge or a bot: 16 sends in flight each, committed in order).
bench cluster-pipelined cluster --addrs "$addrs" --senders 64 --rooms 64 --window 16 --duration "$dur"
# Subscribers and senders on a follower, so every send takes the forwarded path (the leader
# moves between runs; a run on the leader measures something else).
follower=127.0.0.1:18081
for i in 1 2 3; do
	if curl -sf "http://127.0.0.1:1808$i/v1/health" | grep -q '"role":"follower"'; then
		follower=127.0.0.1:1808$i
		break
	fi
done
bench cluster-latency latency --addr "$follower" --subs "$subs" --rate 100/s --duration "$dur" --conns-per-user 100 --timeout 60s

amqp=${PARLEY_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
	"$tmp/parley" keygen --out "$tmp/a.key" >"$tmp/a.pub"
	"$tmp/parley" keygen --out "$tmp/b.key" >"$tmp/b.pub"
	for side in a b; do
		if [[ $side == a ]]; then org=bench-a.test peer=bench-b.test peerkey=$(cat "$tmp/b.pub"); else org=bench-b.test peer=bench-a.test peerkey=$(cat "$tmp/a.pub"); fi
		printf 'org: %s\namqp: {url: "%s"}\nfederation:\n  key_file: %s\n  peers:\n    - {org: %s, public_key: "%s"}\n' \
			"$org" "$amqp" "$tmp/$side.key" "$peer" "$peerkey" >"$tmp/$side.yaml"
	done
	env "${node_env[@]}" PARLEY_DATA_DIR="$tmp/fa" PARLEY_HTTP_LISTEN=127.0.0.1:18091 PARLEY_CLUSTER_RAFT_LISTEN=127.0.0.1:17091 \
		"$tmp/parley" serve --config "$tmp/a.yaml" >"$tmp/fa.log" 2>&1 &
	pids+=($!)
	env "${node_env[@]}" PARLEY_DATA_DIR="$tmp/fb" PARLEY_HTTP_LISTEN=127.0.0.1:18092 PARLEY_CLUSTER_RAFT_LISTEN=127.0.0.1:17092 \
		"$tmp/parley" serve --config "$tmp/b.yaml" >"$tmp/fb.log" 2>&1 &
	pids+=($!)
	wait_health 127.0.0.1:18091
	wait_health 127.0.0.1:18092
	bench federation federation --addr 127.0.0.1:18091 --peer-addr 127.0.0.1:18092 --rate 100/s --duration "$dur"
else
	echo "bench: no RabbitMQ on 127.0.0.1:5672: federation row skipped"
fi
# A restart, last: the cluster-latency row's follower, stopped cleanly and started again on the
# state the cluster rows left, timed until /v1/health answers 200, which it does only once the
# node has read its snapshot, replayed the log after it and applied everything committed
# (docs/cluster.md). Last, so that nothing a restart sets off (its catch-up, a snapshot) can
# overlap a measured row.
restart_node() { # node number: n1..n3 are pids[1..3] (pids[0] is the single node)
	local at=$1 i=$1 keys
	keys=$(curl -sf "http://127.0.0.1:1808$i/metrics" | awk '/^parley_state_keys /{printf "%d", $2}')
	kill "${pids[$at]}" 2>/dev/null || true
	wait "${pids[$at]}" 2>/dev/null || true
	local t0 t1
	t0=$(date +%s%N)
	env "${node_env[@]}" PARLEY_DATA_DIR="$tmp/n$i" PARLEY_HTTP_LISTEN="127.0.0.1:1808$i" PARLEY_CLUSTER_RAFT_LISTEN="127.0.0.1:1700$i" \
		PARLEY_CLUSTER_NODE_ID="n$i" PARLEY_CLUSTER_SECRET=bench PARLEY_CLUSTER_HEARTBEAT_MS=1000 PARLEY_CLUSTER_ELECTION_MS=1000 \
		"$tmp/parley" serve --config "$tmp/cluster.yaml" >>"$tmp/n$i.log" 2>&1 &
	pids[$at]=$!
	for _ in $(seq 1 1200); do
		curl -sf "http://127.0.0.1:1808$i/v1/health" >/dev/null 2>&1 && break
		sleep 0.05
	done
	t1=$(date +%s%N)
	if ! curl -sf "http://127.0.0.1:1808$i/v1/health" >/dev/null; then
		echo "bench: node n$i not healthy 60 s after its restart" >&2
		cat "$tmp/n$i.log" >&2
		return 1
	fi
	echo
	echo "=== restart: node n$i stopped (SIGTERM) and started again on a state of $keys keys"
	echo "healthy again after (start to /v1/health 200, caught up)    $(( (t1 - t0) / 1000000 )) ms"
}
restart_node "${follower: -1}"
echo
echo "reports in $out/ (JSON and HTML per scenario)"
