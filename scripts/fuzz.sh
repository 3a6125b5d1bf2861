#!/usr/bin/env bash
# scripts/fuzz.sh: run every Go fuzz target of the repository, one at a time, at the lowest
# CPU priority, and report what each found.
#
#   scripts/fuzz.sh                  # every target, 60 s each
#   FUZZTIME=10m scripts/fuzz.sh     # every target, 10 minutes each
#   scripts/fuzz.sh federation       # only targets whose package path or name contains "federation"
#
# Targets are found with `grep -r "^func Fuzz" --include=*_test.go`, so a new one is picked up
# without editing this script. Each runs as
#
#   nice -n 19 go test -run '^$' -fuzz '^NAME$' -fuzztime $FUZZTIME ./PKG
#
# Findings: when a target fails, Go writes the failing input to PKG/testdata/fuzz/NAME/HASH.
# That file is a regression test from then on (plain `go test` runs it); reproduce with
#
#   go test -run 'NAME/HASH' ./PKG
#
# and commit it with the fix. New "interesting" inputs (coverage) go to Go's fuzz cache
# ($(go env GOCACHE)/fuzz), not into the repository.
#
# Environment:
#   FUZZTIME      per target, as go test -fuzztime takes it (60s, 10m, 100000x); default 60s
#   FUZZ_LOGDIR   where the per-target logs go; default a new temporary directory
#   FUZZ_TIMEOUT  go test -timeout; default 0 (none: -fuzztime bounds the run)
#
# Exit status: 0 when no target failed, 1 when one found a failing input or did not build.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZTIME=${FUZZTIME:-60s}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-0}
FUZZ_LOGDIR=${FUZZ_LOGDIR:-$(mktemp -d "${TMPDIR:-/tmp}/parley-fuzz.XXXXXX")}
FILTER=${1:-}
mkdir -p "$FUZZ_LOGDIR"

# "PKGDIR NAME" per target, sorted.
mapfile -t TARGETS < <(
	grep -r --include='*_test.go' --exclude-dir=node_modules --exclude-dir=.git -H '^func Fuzz' . |
		sed -E 's#^\./(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*#\1 \2#' |
		sort -u
)
if [ "${#TARGETS[@]}" -eq 0 ]; then
	echo "scripts/fuzz.sh: no fuzz targets found" >&2
	exit 1
fi

# Failing inputs already present, so that only new ones are reported.
corpus_snapshot() { find . -path ./web/node_modules -prune -o -path '*/testdata/fuzz/*' -type f -print 2>/dev/null | sort; }
BEFORE=$(corpus_snapshot)

printf 'scripts/fuzz.sh: %d targets, %s each, logs in %s\n' "${#TARGETS[@]}" "$FUZZTIME" "$FUZZ_LOGDIR"

RESULTS=()
FAILED=0
for t in "${TARGETS[@]}"; do
	pkg=${t% *}
	name=${t#* }
	if [ -n "$FILTER" ] && [[ "$pkg/$name" != *"$FILTER"* ]]; then
		continue
	fi
	log="$FUZZ_LOGDIR/${pkg//\//_}.$name.log"
	printf '\n==> %s ./%s (%s) %s\n' "$name" "$pkg" "$FUZZTIME" "$(date -u +%H:%M:%SZ)"
	start=$SECONDS
	nice -n 19 go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -timeout "$FUZZ_TIMEOUT" "./$pkg" >"$log" 2>&1
	rc=$?
	secs=$((SECONDS - start))
	# The last progress line holds the totals: "fuzz: elapsed: 10m0s, execs: N (R/sec), new interesting: K (total: T)".
	last=$(grep -E '^fuzz: elapsed: .*execs: ' "$log" | tail -n 1)
	execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
	newi=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
	total=$(sed -nE 's/.*\(total: ([0-9]+)\).*/\1/p' <<<"$last")
	if [ "$rc" -eq 0 ]; then
		verdict="ok"
	elif grep -q 'Failing input written to' "$log"; then
		verdict="CRASH: $pkg/$(grep -o 'testdata/fuzz/[^ ]*' "$log" | head -n 1)"
		FAILED=1
	elif [ -z "$last" ]; then
		verdict="DID NOT RUN (build or seed failure, see log)"
		FAILED=1
	else
		verdict="FAILED (exit $rc, see log)"
		FAILED=1
	fi
	line=$(printf '%-22s %-28s %6ss  execs %-12s new interesting %-5s corpus %-6s %s' \
		"$pkg" "$name" "$secs" "${execs:-?}" "${newi:-?}" "${total:-?}" "$verdict")
	echo "$line"
	if [ "$rc" -ne 0 ]; then
		# The failure itself: the panic or t.Fatal message and the input file.
		grep -E -A 12 -- '--- FAIL|panic:|Failing input written to|To re-run' "$log" | head -n 40 | sed 's/^/    /'
	fi
	RESULTS+=("$line")
done

printf '\n==> summary (%s per target; logs in %s)\n' "$FUZZTIME" "$FUZZ_LOGDIR"
printf '%s\n' "${RESULTS[@]}"

NEW=$(comm -13 <(printf '%s\n' "$BEFORE") <(corpus_snapshot) | sed '/^$/d')
if [ -n "$NEW" ]; then
	printf '\nNew failing inputs (each now a regression test; reproduce with go test -run NAME/HASH ./PKG):\n%s\n' "$NEW"
else
	printf '\nNo new failing inputs under testdata/fuzz/.\n'
fi
exit "$FAILED"
