#!/usr/bin/env bash
# scripts/test-web.sh: the web client's checks; scripts/test.sh calls it.
#
#   scripts/test-web.sh
#
# Steps:
#   1. Debian's chromium (and an emoji font), installed with apt-get when missing. Never a
#      browser downloaded by playwright. Also certutil (libnss3-tools) and openssl for the
#      HTTPS test.
#   2. npm ci in web/ (esbuild, DOMPurify, playwright-core, as locked in package-lock.json).
#   3. web/dist, which the node embeds, must be exactly a fresh build of web/src.
#   4. go test ./web (security headers, index.html served).
#   5. The node binary, built from this tree.
#   6. The unit tests of the timeline model, the outbox and the connection
#      (web/test/room.test.mjs, outbox.test.mjs, conn.test.mjs, revocation.test.mjs) and the browser tests
#      (web/test/e2e.test.mjs under node --test): the harness starts the node on
#      free loopback ports with a temporary data dir and raised send limits, restarts it for
#      the reconnect test, and stops it. They write docs/screenshot.png. web/test/https.test.mjs
#      starts a node with TLS (a throwaway CA from scripts/dev-certs.sh) and a chromium that
#      trusts the CA through an NSS database in a temporary HOME.
#
# Environment:
#   PARLEY_WEB_TEST_TIMEOUT  seconds for the browser tests (default 900)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
CHROMIUM=/usr/bin/chromium
TIMEOUT=${PARLEY_WEB_TEST_TIMEOUT:-900}

log() { printf '\n--> web: %s\n' "$*"; }
die() {
	printf '\nscripts/test-web.sh: FAIL: %s\n' "$*" >&2
	exit 1
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/parley-web.XXXXXX")
cleanup() {
	# The node the harness started, if the tests were cut off before they stopped it.
	local pidfile pid
	for pidfile in "$TMP/run/node.pid" "$TMP/run/https/node/node.pid"; do
		[[ -f $pidfile ]] || continue
		pid=$(cat "$pidfile")
		if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null || true
			sleep 1
			kill -9 "$pid" 2>/dev/null || true
		fi
	done
	rm -rf "$TMP"
}
trap cleanup EXIT

# --- 1. browser ------------------------------------------------------------------
log "chromium"
need=()
[[ -x $CHROMIUM ]] || need+=(chromium)
dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || need+=(fonts-noto-color-emoji)
command -v certutil >/dev/null || need+=(libnss3-tools)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
	if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
		echo "installing ${need[*]} with apt-get"
		apt-get update
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
	elif [[ ! -x $CHROMIUM ]]; then
		die "$CHROMIUM is missing: install Debian's chromium (apt-get install chromium) or run as root"
	elif ! command -v certutil >/dev/null || ! command -v openssl >/dev/null; then
		die "certutil or openssl is missing: apt-get install libnss3-tools openssl, or run as root"
	else
		echo "warning: fonts-noto-color-emoji is missing; emoji render as boxes in the screenshot" >&2
	fi
fi
[[ -x $CHROMIUM ]] || die "$CHROMIUM is still missing after apt-get"
command -v certutil >/dev/null || die "certutil is still missing after apt-get (libnss3-tools)"
command -v openssl >/dev/null || die "openssl is still missing after apt-get"
"$CHROMIUM" --version 2>/dev/null | head -n1 || true

# --- 2. npm ----------------------------------------------------------------------
log "npm ci"
command -v node >/dev/null || die "node (Node.js 18 or later) is not installed"
command -v npm >/dev/null || die "npm is not installed"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' ||
	die "Node.js 18 or later is needed, found $(node --version)"
(cd web && npm ci --no-audit --no-fund --loglevel=error)

# --- 3. web/dist up to date ------------------------------------------------------
log "web/dist matches web/src"
(cd web && node build.mjs "$TMP/dist" >/dev/null)
if ! diff -r -q "$TMP/dist" web/dist; then
	die "web/dist is out of date, run npm run build (in web/) and commit web/dist"
fi

# --- 4. Go handler ---------------------------------------------------------------
log "go test ./web"
go test -count=1 ./web

# --- 5. node binary --------------------------------------------------------------
log "go build ./cmd/parley"
grep -rqs --include='*.go' 'web.Handler()' node cmd ||
	die "the node does not serve the client: mount web.Handler() in node/http.go (mux.Handle(\"GET /\", web.Handler()))"
go build -o "$TMP/parley" ./cmd/parley

# --- 6. browser tests ------------------------------------------------------------
log "browser tests (chromium $(basename "$CHROMIUM"), timeout ${TIMEOUT}s)"
mkdir -p "$TMP/run"
rc=0
PARLEY_BIN="$TMP/parley" PARLEY_WEB_TMP="$TMP/run" PARLEY_CHROMIUM="$CHROMIUM" \
	PARLEY_SCREENSHOT="$ROOT/docs/screenshot.png" \
	timeout --kill-after=20 "$TIMEOUT" node --test --test-concurrency=1 --test-reporter=spec web/test/room.test.mjs web/test/outbox.test.mjs web/test/conn.test.mjs web/test/revocation.test.mjs web/test/e2e.test.mjs web/test/https.test.mjs || rc=$?
if ((rc != 0)); then
	if [[ -f $TMP/run/node.log ]]; then
		echo "--- last lines of the node's log ---"
		tail -n 40 "$TMP/run/node.log"
	fi
	if [[ -f $TMP/run/https/node/node.log ]]; then
		echo "--- last lines of the HTTPS node's log ---"
		tail -n 40 "$TMP/run/https/node/node.log"
	fi
	((rc == 124)) && die "browser tests timed out after ${TIMEOUT}s"
	die "browser tests failed (exit $rc)"
fi
echo "screenshot: docs/screenshot.png"
