#!/usr/bin/env bash
# Runs every test of kohakuriver on a fresh Debian 12 machine with Docker:
# installs what is missing, builds the VPS image, then gofmt, vet, staticcheck, the test suite
# and short fuzzing runs. Long soaks and benchmarks are separate
# (see the Justfile: bench, soak).
set -euo pipefail
cd "$(dirname "$0")/.."

bash testdata/setup.sh
export KOHAKURIVER_REQUIRE_SSHD=1

echo "== gofmt, go vet, staticcheck"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	echo "gofmt -l lists files that need formatting: $unformatted" >&2
	exit 1
fi
go vet ./...
# Pinned, fetched through the module proxy like every other dependency.
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
echo "== go test"
go test -count=1 -timeout 30m ./...
echo "== fuzz (short)"
# Budgets are execution counts, about 8 s of fuzzing each here, not
# durations: Go 1.26's fuzz coordinator can fail a duration-bounded run with
# a bare "context deadline exceeded" when a worker is mid-call at the
# deadline (go.dev/issue/75804, fixed in Go 1.27); a count has no deadline
# to race. FUZZTIME overrides every budget (e.g. FUZZTIME=60s).
fuzz() { go test -run '^$' -fuzz "^$1\$" -fuzztime "${FUZZTIME:-$3}" "$2"; }
# Every parser that sees client input: routing names, authorized_keys lines,
# stored records, API and agent request bodies, the relay handshake.
fuzz FuzzParseTarget ./gateway/ 50000x
fuzz FuzzParseAuthorizedKey ./store/ 80000x
fuzz FuzzDecodeVPS ./store/embedded/ 100000x
fuzz FuzzCreateVPSRequest ./gateway/api/ 25000x
fuzz FuzzKeysRequest ./gateway/api/ 20000x
fuzz FuzzExecRequest ./gateway/api/ 35000x
# Each call writes the store (fsync): several hundred per second.
fuzz FuzzAgentReport ./gateway/api/ 5000x
fuzz FuzzRelayHandshake ./agent/relay/ 100000x
fuzz FuzzVerify ./agent/clusterauth/ 100000x
echo "== all tests and fuzzing passed"
