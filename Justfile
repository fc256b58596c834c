# Convenience recipes; each is plain shell, so every line also works by hand.

# Host + agent + a demo VPS; prints the ssh line to use.
up:
    go run . up

# Every test, with setup (packages, VPS image).
test:
    bash testdata/test.sh

# Build the offline VPS image (root, Docker, debootstrap).
image:
    bash testdata/vpsimage/build.sh

# Benchmarks against OpenSSH, side by side (5 to 12 minutes on a quiet machine; see gateway/bench/README.md).
bench:
    go run ./gateway/bench -rounds 5 -size 1G -sessions 2000 -json /tmp/kohakuriver-bench.json

# In-process relay benchmarks, for regressions.
bench-relay:
    go test -run '^$' -bench . -benchtime 3x ./gateway/

# Soak: 2,000 concurrent sessions moving checksummed data for 2 minutes.
soak:
    ulimit -n 65536; KOHAKURIVER_SOAK_SESSIONS=2000 KOHAKURIVER_SOAK_SECONDS=120 go test -run '^TestSoak$' -count=1 -timeout 30m -v ./gateway/

lint:
    gofmt -l . && go vet ./...
