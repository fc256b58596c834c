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
fuzz() { go test -run '^$' -fuzz "^$1\$" -fuzztime "${FUZZTIME:-8s}" "$2"; }
# Every parser that sees client input: routing names, authorized_keys lines,
# stored records, API and agent request bodies, the relay handshake.
fuzz FuzzParseTarget ./gateway/
fuzz FuzzParseAuthorizedKey ./store/
fuzz FuzzDecodeVPS ./store/embedded/
fuzz FuzzCreateVPSRequest ./gateway/api/
fuzz FuzzKeysRequest ./gateway/api/
fuzz FuzzExecRequest ./gateway/api/
fuzz FuzzAgentReport ./gateway/api/
fuzz FuzzRelayHandshake ./agent/relay/
fuzz FuzzVerify ./agent/clusterauth/
echo "== all tests and fuzzing passed"
