#!/usr/bin/env bash
# scripts/dev-federation.sh: build parley and run two federated single-node orgs in the
# foreground, over a local RabbitMQ broker.
#
#   scripts/dev-federation.sh           start (or restart) both orgs, keeping their data
#   scripts/dev-federation.sh --fresh   wipe ./dev-federation/ and the vhost first (new keys,
#                                       empty orgs, no messages left from earlier runs)
#
#   acme.test    http://127.0.0.1:8091/   Raft 127.0.0.1:7091   ./dev-federation/acme.test/
#   globex.test  http://127.0.0.1:8092/   Raft 127.0.0.1:7092   ./dev-federation/globex.test/
#
# Each org gets a signing key made with `parley keygen` (kept across restarts) and lists the
# other as its federation peer. Both use the broker's vhost "parley-dev", created with
# rabbitmqctl when it is available. Ctrl-C (or SIGTERM) stops both orgs.
#
# Environment:
#   PARLEY_AMQP_URL   the broker (default amqp://guest:guest@127.0.0.1:5672/); its vhost part
#                     is replaced by PARLEY_DEV_VHOST
#   PARLEY_DEV_VHOST  vhost to use (default parley-dev)
#   PARLEY_BIN        use this binary instead of building one into ./dev-federation/parley
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DIR=$ROOT/dev-federation
ORGS=(acme.test globex.test)
declare -A HTTP=([acme.test]=127.0.0.1:8091 [globex.test]=127.0.0.1:8092)
declare -A RAFT=([acme.test]=127.0.0.1:7091 [globex.test]=127.0.0.1:7092)

case ":$PATH:" in
*:/usr/sbin:*) ;;
*) PATH="$PATH:/usr/sbin" ;; # rabbitmqctl lives there on Debian
esac

FRESH=0
if [[ ${1:-} == "--fresh" ]]; then
	rm -rf "$DIR"
	FRESH=1
	shift
fi
if [[ $# -gt 0 ]]; then
	echo "usage: scripts/dev-federation.sh [--fresh]" >&2
	exit 2
fi
mkdir -p "$DIR"

# --- broker ------------------------------------------------------------------------

BROKER=${PARLEY_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
VHOST=${PARLEY_DEV_VHOST:-parley-dev}
if [[ ! $BROKER =~ ^(amqps?://)([^/]*)(/.*)?$ ]]; then
	echo "scripts/dev-federation.sh: PARLEY_AMQP_URL is not an amqp:// URL: $BROKER" >&2
	exit 2
fi
AMQP_URL="${BASH_REMATCH[1]}${BASH_REMATCH[2]}/$VHOST"
authority=${BASH_REMATCH[2]}
amqp_user=guest
if [[ $authority == *@* ]]; then
	amqp_user=${authority%%@*}
	amqp_user=${amqp_user%%:*}
fi
hostport=${authority##*@}
host=${hostport%%:*}
port=5672
[[ $hostport == *:* ]] && port=${hostport##*:}
if ! timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then
	echo "scripts/dev-federation.sh: no broker listens on $host:$port." >&2
	echo "  start one (e.g. rabbitmq-server -detached) or set PARLEY_AMQP_URL" >&2
	exit 1
fi
if command -v rabbitmqctl >/dev/null && rabbitmqctl -q status >/dev/null 2>&1; then
	if [[ $FRESH == 1 ]] && rabbitmqctl -q list_vhosts | grep -qx "$VHOST"; then
		# Messages left from an earlier run were signed with keys that no longer exist.
		rabbitmqctl -q delete_vhost "$VHOST"
	fi
	if ! rabbitmqctl -q list_vhosts | grep -qx "$VHOST"; then
		rabbitmqctl -q add_vhost "$VHOST"
	fi
	rabbitmqctl -q set_permissions -p "$VHOST" "$amqp_user" '.*' '.*' '.*'
	echo "broker vhost $VHOST is ready (user $amqp_user)"
else
	echo "note: rabbitmqctl cannot manage the broker here; vhost $VHOST must already exist" >&2
fi

# --- build -----------------------------------------------------------------------

BIN=${PARLEY_BIN:-}
if [[ -z $BIN ]]; then
	BIN=$DIR/parley
	echo "building $BIN ..."
	go build -o "$BIN" ./cmd/parley
fi

# --- keys and configuration --------------------------------------------------------

declare -A PUB
for org in "${ORGS[@]}"; do
	mkdir -p "$DIR/$org"
	key=$DIR/$org/signing.key
	if [[ ! -f $key ]]; then
		"$BIN" keygen --out "$key" >"$DIR/$org/public.key"
	elif [[ ! -s $DIR/$org/public.key ]]; then
		echo "scripts/dev-federation.sh: $key exists without public.key; run with --fresh" >&2
		exit 1
	fi
	PUB[$org]=$(cat "$DIR/$org/public.key")
done

for org in "${ORGS[@]}"; do
	{
		echo "# written by scripts/dev-federation.sh"
		echo "org: $org"
		echo "data_dir: \"$DIR/$org/data\""
		echo "http:"
		echo "  listen: \"${HTTP[$org]}\""
		echo "cluster:"
		echo "  node_id: node1"
		echo "  raft_listen: \"${RAFT[$org]}\""
		echo "amqp:"
		echo "  url: \"$AMQP_URL\""
		echo "federation:"
		echo "  key_file: \"$DIR/$org/signing.key\""
		echo "  peers:"
		for peer in "${ORGS[@]}"; do
			[[ $peer == "$org" ]] && continue
			echo "    - {org: $peer, public_key: \"${PUB[$peer]}\"}"
		done
	} >"$DIR/$org/parley.yaml"
	chmod 600 "$DIR/$org/parley.yaml"
done

port_busy() { timeout 1 bash -c "exec 3<>/dev/tcp/${1%:*}/${1##*:}" 2>/dev/null; }
for org in "${ORGS[@]}"; do
	for addr in "${HTTP[$org]}" "${RAFT[$org]}"; do
		if port_busy "$addr"; then
			echo "scripts/dev-federation.sh: $addr is already in use (another dev federation?)" >&2
			exit 1
		fi
	done
done

# --- run -----------------------------------------------------------------------------

declare -A PID
stopping=0
cleanup() {
	[[ $stopping == 1 ]] && return
	stopping=1
	trap - INT TERM
	echo
	echo "stopping both orgs ..."
	local org
	for org in "${!PID[@]}"; do
		kill -TERM "${PID[$org]}" 2>/dev/null || true
	done
	for org in "${!PID[@]}"; do
		wait "${PID[$org]}" 2>/dev/null || true
	done
	echo "stopped; data kept in $DIR (scripts/dev-federation.sh --fresh starts over)"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for org in "${ORGS[@]}"; do
	"$BIN" serve --config "$DIR/$org/parley.yaml" >>"$DIR/$org/parley.log" 2>&1 &
	PID[$org]=$!
done

echo "waiting for both orgs ..."
ready() { curl -fsS --max-time 1 "http://$1/v1/federation/key" >/dev/null 2>&1; }
ok=0
for ((i = 0; i < 300; i++)); do
	ok=1
	for org in "${ORGS[@]}"; do
		ready "${HTTP[$org]}" || ok=0
		if ! kill -0 "${PID[$org]}" 2>/dev/null; then
			echo "$org exited during start; last lines of its log:" >&2
			tail -n 5 "$DIR/$org/parley.log" >&2
			exit 1
		fi
	done
	[[ $ok == 1 ]] && break
	sleep 0.1
done
if [[ $ok != 1 ]]; then
	echo "the orgs did not become ready in 30 s; see $DIR/*/parley.log" >&2
	exit 1
fi

cat <<EOF

Two federated orgs are running on $host:$port, vhost $VHOST:
  acme.test    http://${HTTP[acme.test]}/    log $DIR/acme.test/parley.log
  globex.test  http://${HTTP[globex.test]}/    log $DIR/globex.test/parley.log
Public keys (what each lists for the other in federation.peers):
  acme.test    ${PUB[acme.test]}
  globex.test  ${PUB[globex.test]}

Try it:
  curl -s -XPOST http://${HTTP[acme.test]}/v1/register -d '{"username":"alice","password":"correct horse"}'
  curl -s -XPOST http://${HTTP[globex.test]}/v1/register -d '{"username":"bob","password":"battery staple"}'
  alice (npx wscat -c ws://${HTTP[acme.test]}/v1/ws):
    {"op":"auth","id":"1","token":"ALICE_TOKEN"}
    {"op":"create_room","id":"2","alias":"lobby","visibility":"public"}
  bob (npx wscat -c ws://${HTTP[globex.test]}/v1/ws):
    {"op":"auth","id":"1","token":"BOB_TOKEN"}
    {"op":"join","id":"2","room":"#lobby:acme.test"}
    {"op":"send","id":"3","room_id":"ROOM_ID","txn_id":"t1","content":{"msgtype":"m.text","body":"hi acme"}}
  Refused federation messages: rabbitmqctl list_queues -p $VHOST name messages | grep dlq

Press Ctrl-C to stop both orgs.
EOF

set +e
wait -n "${PID[@]}"
rc=$?
set -e
if [[ $stopping == 0 ]]; then
	echo "an org exited on its own (status $rc); stopping the other. Last log lines:" >&2
	tail -n 5 "$DIR"/*/parley.log >&2
	exit 1
fi
