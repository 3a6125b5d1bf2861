#!/usr/bin/env bash
# scripts/dev-cluster.sh: build parley and run a local 3-node cluster in the foreground.
#
#   scripts/dev-cluster.sh           start (or restart) the cluster, keeping its data
#   scripts/dev-cluster.sh --fresh   wipe ./dev-cluster/ first and start a new cluster
#
# Org "localhost". Node N (1..3) serves HTTP/WebSocket on 127.0.0.1:808N and Raft on
# 127.0.0.1:700N; its data and log are in ./dev-cluster/nodeN/ and ./dev-cluster/nodeN.log
# (./ is the repository root). Ctrl-C (or SIGTERM) stops all three nodes. A node that exits
# on its own (or that you kill to watch a failover) is reported; the others keep running.
#
# Environment:
#   PARLEY_BIN   use this binary instead of building one into ./dev-cluster/parley
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DIR=$ROOT/dev-cluster
NODES=(1 2 3)

if [[ ${1:-} == "--fresh" ]]; then
	rm -rf "$DIR"
	shift
fi
if [[ $# -gt 0 ]]; then
	echo "usage: scripts/dev-cluster.sh [--fresh]" >&2
	exit 2
fi
mkdir -p "$DIR"

# --- build -----------------------------------------------------------------------

BIN=${PARLEY_BIN:-}
if [[ -z $BIN ]]; then
	BIN=$DIR/parley
	echo "building $BIN ..."
	go build -o "$BIN" ./cmd/parley
fi

# --- configuration -----------------------------------------------------------------

# The cluster secret is made once and kept, so a restart finds the same cluster.
if [[ ! -s $DIR/secret ]]; then
	head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$DIR/secret"
fi
SECRET=$(cat "$DIR/secret")

CONFIG=$DIR/cluster.yaml
{
	echo "# written by scripts/dev-cluster.sh"
	echo "org: localhost"
	echo "cluster:"
	echo "  peers:"
	for n in "${NODES[@]}"; do
		echo "    - {id: node$n, raft_addr: \"127.0.0.1:700$n\"}"
	done
} >"$CONFIG"

port_busy() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
for n in "${NODES[@]}"; do
	for port in "808$n" "700$n"; do
		if port_busy "$port"; then
			echo "scripts/dev-cluster.sh: 127.0.0.1:$port is already in use (another dev cluster?)" >&2
			exit 1
		fi
	done
done

# --- run -----------------------------------------------------------------------------

PIDS=()
GONE=()
stopping=0
cleanup() {
	[[ $stopping == 1 ]] && return
	stopping=1
	trap - INT TERM
	echo
	echo "stopping the dev cluster ..."
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	echo "stopped; data kept in $DIR (scripts/dev-cluster.sh --fresh starts over)"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for n in "${NODES[@]}"; do
	PARLEY_ORG=localhost \
		PARLEY_DATA_DIR="$DIR/node$n" \
		PARLEY_HTTP_LISTEN="127.0.0.1:808$n" \
		PARLEY_CLUSTER_NODE_ID="node$n" \
		PARLEY_CLUSTER_RAFT_LISTEN="127.0.0.1:700$n" \
		PARLEY_CLUSTER_SECRET="$SECRET" \
		"$BIN" serve --config "$CONFIG" >>"$DIR/node$n.log" 2>&1 &
	PIDS+=($!)
done

echo "waiting for a leader ..."
healthy() { curl -fsS --max-time 1 "http://127.0.0.1:808$1/v1/health" >/dev/null 2>&1; }
for ((i = 0; i < 300; i++)); do
	ok=1
	for n in "${NODES[@]}"; do
		healthy "$n" || ok=0
	done
	[[ $ok == 1 ]] && break
	for pid in "${PIDS[@]}"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "a node exited during start; last lines of the logs:" >&2
			tail -n 5 "$DIR"/node*.log >&2
			exit 1
		fi
	done
	sleep 0.1
done
if [[ $ok != 1 ]]; then
	echo "the cluster did not become healthy in 30 s; see $DIR/node*.log" >&2
	exit 1
fi
"$BIN" cluster status --addr 127.0.0.1:8081 --secret "$SECRET" || true

cat <<EOF

Parley dev cluster is running (org "localhost", 3 nodes):
  node1  http://127.0.0.1:8081/   raft 127.0.0.1:7001   log $DIR/node1.log
  node2  http://127.0.0.1:8082/   raft 127.0.0.1:7002   log $DIR/node2.log
  node3  http://127.0.0.1:8083/   raft 127.0.0.1:7003   log $DIR/node3.log

Browser client: http://127.0.0.1:8081/ (any node; all serve the same org)
Register:       curl -s -XPOST http://127.0.0.1:8081/v1/register -d '{"username":"alice","password":"correct horse"}'
WebSocket:      npx wscat -c ws://127.0.0.1:8082/v1/ws   then send {"op":"auth","id":"1","token":"TOKEN"}
Cluster status: $BIN cluster status --addr 127.0.0.1:8081 --secret $SECRET
                (or export PARLEY_CLUSTER_SECRET=$SECRET)
Node pids:      node1=${PIDS[0]} node2=${PIDS[1]} node3=${PIDS[2]} (kill -9 one to watch a failover)

Press Ctrl-C to stop all three nodes.
EOF

# Run until Ctrl-C. A node that exits (or is killed to try a failover) is reported; the
# others keep running. When none is left, the script ends.
set +e
while true; do
	alive=()
	for i in "${!PIDS[@]}"; do
		[[ -z ${GONE[$i]:-} ]] && alive+=("${PIDS[$i]}")
	done
	[[ ${#alive[@]} == 0 ]] && break
	wait -n "${alive[@]}"
	rc=$?
	[[ $stopping == 1 ]] && break
	for i in "${!PIDS[@]}"; do
		if ! kill -0 "${PIDS[$i]}" 2>/dev/null && [[ -z ${GONE[$i]:-} ]]; then
			GONE[$i]=1
			echo "node$((i + 1)) (pid ${PIDS[$i]}) exited (status $rc); last log lines:" >&2
			tail -n 3 "$DIR/node$((i + 1)).log" >&2
		fi
	done
done
echo "no node is running any more"
