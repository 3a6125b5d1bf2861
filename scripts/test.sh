#!/usr/bin/env bash
# scripts/test.sh: the project's one test command. CI runs exactly this.
#
#   scripts/test.sh
#
# Steps: tools, RabbitMQ broker, gofmt, go vet, staticcheck, go test -race,
# serial broker-chaos tests, benchmark smoke run, web client checks.
# It fails fast; the summary at the end shows what ran and what failed.
#
# Environment:
#   PARLEY_TEST_AMQP_URL  broker for the tests; found or started if unset.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

STATICCHECK_VERSION=0.8.2
AMQP_PORT=5672
BROKER_WAIT_SECONDS=60

# rabbitmq-server and rabbitmqctl live in /usr/sbin on Debian.
case ":$PATH:" in
*:/usr/sbin:*) ;;
*) PATH="$PATH:/usr/sbin" ;;
esac
export PATH

# --- bookkeeping -------------------------------------------------------------

SUMMARY=()
CURRENT=""
STARTED=$SECONDS

log() { printf '\n==> %s\n' "$*"; }
die() {
	printf '\nscripts/test.sh: FAIL: %s\n' "$*" >&2
	exit 1
}

on_exit() {
	local rc=$?
	if [[ -n "$CURRENT" ]]; then
		SUMMARY+=("FAIL  $CURRENT")
	fi
	printf '\n==> Summary (%ds)\n' $((SECONDS - STARTED))
	local line
	for line in "${SUMMARY[@]}"; do
		printf '    %s\n' "$line"
	done
	if [[ $rc -eq 0 ]]; then
		printf '    ALL PASSED\n'
	else
		printf '    FAILED (exit %d)\n' "$rc"
	fi
}
trap on_exit EXIT

# step NAME CMD...: run one step, recording its outcome for the summary.
step() {
	local name=$1 t0=$SECONDS
	shift
	log "$name"
	CURRENT=$name
	"$@"
	CURRENT=""
	SUMMARY+=("ok    $name ($((SECONDS - t0))s)")
}

note() { SUMMARY+=("$*"); }

# --- tools -------------------------------------------------------------------

command -v go >/dev/null || die "go is not installed or not on PATH"

STATICCHECK=()
find_staticcheck() {
	local c
	for c in "$(command -v staticcheck || true)" "$(go env GOPATH)/bin/staticcheck"; do
		if [[ -n "$c" && -x "$c" ]] && "$c" -version 2>/dev/null | grep -qF "($STATICCHECK_VERSION)"; then
			STATICCHECK=("$c")
			echo "using $c ($("$c" -version))"
			return
		fi
	done
	STATICCHECK=(go run "honnef.co/go/tools/cmd/staticcheck@v$STATICCHECK_VERSION")
	echo "using ${STATICCHECK[*]}"
	"${STATICCHECK[@]}" -version
}

# --- RabbitMQ ------------------------------------------------------------------

port_open() {
	timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$AMQP_PORT" 2>/dev/null
}

start_rabbitmq() {
	if ! port_open; then
		echo "starting rabbitmq-server -detached"
		# It may fail because a freshly installed broker is already
		# starting as a service; the wait below decides.
		rabbitmq-server -detached ||
			echo "warning: rabbitmq-server -detached exited with $?; waiting for the port anyway" >&2
	fi
	local i
	for ((i = 0; i < BROKER_WAIT_SECONDS; i++)); do
		if port_open; then
			echo "broker is listening on 127.0.0.1:$AMQP_PORT after ${i}s"
			if command -v rabbitmqctl >/dev/null; then
				timeout "$BROKER_WAIT_SECONDS" rabbitmqctl -q await_startup ||
					echo "warning: rabbitmqctl await_startup did not confirm startup" >&2
			fi
			return
		fi
		sleep 1
	done
	die "started rabbitmq-server but nothing listens on 127.0.0.1:$AMQP_PORT after ${BROKER_WAIT_SECONDS}s"
}

find_broker() {
	if [[ -n "${PARLEY_TEST_AMQP_URL:-}" ]]; then
		echo "using PARLEY_TEST_AMQP_URL from the environment"
		note "      broker: PARLEY_TEST_AMQP_URL from the environment"
	elif port_open; then
		echo "a broker is already listening on 127.0.0.1:$AMQP_PORT"
		PARLEY_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/"
		note "      broker: already running on 127.0.0.1:$AMQP_PORT"
	elif command -v rabbitmq-server >/dev/null; then
		start_rabbitmq
		PARLEY_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/"
		note "      broker: started rabbitmq-server (left running)"
	elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
		echo "installing rabbitmq-server with apt-get"
		apt-get update
		DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server
		start_rabbitmq
		PARLEY_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/"
		note "      broker: installed and started rabbitmq-server (left running)"
	else
		die "no RabbitMQ broker: set PARLEY_TEST_AMQP_URL, start one on 127.0.0.1:$AMQP_PORT, or install rabbitmq-server (or run as root with apt-get available)"
	fi
	export PARLEY_TEST_AMQP_URL
	if command -v rabbitmqctl >/dev/null; then
		echo "rabbitmqctl: $(command -v rabbitmqctl) (tests use it to create vhosts)"
		note "      rabbitmqctl: $(command -v rabbitmqctl)"
	else
		echo "warning: rabbitmqctl not found; tests that create vhosts will fail or skip" >&2
		note "      rabbitmqctl: NOT FOUND (tests that create vhosts cannot run)"
	fi
}

# --- checks --------------------------------------------------------------------

go_files() {
	find . \( -name .git -o -name node_modules -o -name testdata -o -name vendor \) -prune -o \
		-name '*.go' -type f -print
}

check_gofmt() {
	local unformatted
	unformatted=$(go_files | xargs -r gofmt -l)
	if [[ -n "$unformatted" ]]; then
		echo "gofmt needed on:"
		sed 's/^/    /' <<<"$unformatted"
		echo "run: gofmt -w <files>"
		return 1
	fi
}

# Build tags that have test files, e.g. //go:build brokerchaos.
chaos_tags() {
	if go_files | xargs -r grep -l '^//go:build .*\bbrokerchaos\b' 2>/dev/null | grep -q .; then
		echo brokerchaos
	fi
}

run_chaos() {
	local tags
	tags=$(chaos_tags)
	# Serial (-p 1): these tests disrupt the shared broker.
	PARLEY_CHAOS=1 go test -race -count=1 -p 1 -timeout 20m ${tags:+-tags "$tags"} -run 'Chaos' ./...
}

run_web() {
	if [[ ! -f web/package.json ]]; then
		note "      web: no web/package.json, skipped"
		return
	fi
	if [[ ! -f scripts/test-web.sh ]]; then
		note "      web: WARNING web/package.json exists but scripts/test-web.sh does not; skipped"
		return
	fi
	bash scripts/test-web.sh
}

# --- steps ---------------------------------------------------------------------
# Add new steps here, in order, with: step "name" command args...

step "tools: staticcheck $STATICCHECK_VERSION" find_staticcheck
step "broker: RabbitMQ" find_broker
# The bridge's end-to-end test drives it with Debian's amqp-tools as the external system.
step "tools: amqp-tools" bash -c 'command -v amqp-consume >/dev/null && command -v amqp-publish >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y amqp-tools; }'
step "gofmt" check_gofmt
step "go vet" go vet ./...
step "staticcheck" "${STATICCHECK[@]}" ./...

# Main test run.
step "go test -race" go test -race -count=1 -timeout 20m ./...

# Serial step: broker-disrupting tests (names matching Chaos, PARLEY_CHAOS=1,
# with -tags brokerchaos when files with that build tag exist).
step "chaos tests (serial)" run_chaos

# Benchmarks still run (not a measurement).
step "benchmark smoke" go test -run '^$' -bench . -benchtime 100x ./...

# Web client checks.
step "web client" run_web
