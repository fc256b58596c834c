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

# Benchmarks against OpenSSH, side by side.
bench:
    go test -run '^$' -bench . -benchtime 3x ./gateway/

lint:
    gofmt -l . && go vet ./...
