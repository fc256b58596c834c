#!/usr/bin/env bash
# Runs every test of kohakuriver on a fresh Debian 12 machine with Docker:
# installs what is missing, builds the VPS image, then vet, the test suite
# and short fuzzing runs. Long soaks and benchmarks are separate
# (see the Justfile: bench, soak).
set -euo pipefail
cd "$(dirname "$0")/.."

bash testdata/setup.sh
export KOHAKURIVER_REQUIRE_SSHD=1

echo "== go vet"
go vet ./...
echo "== go test"
go test -count=1 -timeout 30m ./...
echo "== fuzz (short)"
fuzz() { go test -run '^$' -fuzz "^$1\$" -fuzztime "${FUZZTIME:-10s}" "$2"; }
fuzz FuzzParseTarget ./gateway/
