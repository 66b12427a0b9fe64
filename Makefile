# weft: build, install into the local Docker, test, benchmark.
PLUGIN      ?= weft:latest
GO          ?= go
GOFLAGS_BLD := -tags nosystemd -trimpath
BIN         := bin/weft

.PHONY: all build rootfs plugin-dir install uninstall demo test deps engines unit e2e test-kernel test-swarm bench bench-swarm clean

all: build

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BLD) -ldflags '-s -w' -o $(BIN) ./plugin

# rootfs/ is generated (gitignored): weft plus the iptables binaries it runs.
rootfs: build
	scripts/build-rootfs.sh $(BIN) rootfs

# docker plugin create wants a directory with config.json and rootfs/ only.
plugin-dir: rootfs
	rm -rf build/plugin && mkdir -p build/plugin
	cp config.json build/plugin/ && cp -a rootfs build/plugin/

# Install (or reinstall) the plugin into the local Docker and enable it.
install: plugin-dir
	scripts/install.sh $(PLUGIN) build/plugin

uninstall:
	-docker plugin disable -f $(PLUGIN)
	-docker plugin rm -f $(PLUGIN)

# First README command: from a fresh machine to two containers talking.
demo:
	scripts/demo.sh

# Second README command: the whole suite, as CI runs it.
test: deps engines unit e2e test-kernel test-swarm

# Debian packages the tests use (docker.io, iptables, busybox-static, ...).
deps:
	scripts/e2e-env.sh deps

# The current Docker engine (versions pinned in scripts/engines.sh), built
# from the Go module proxy into build/engine-current; a no-op once built.
engines:
	scripts/engines.sh build current

unit:
	$(GO) vet -tags nosystemd ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) test -tags nosystemd -count=1 $$($(GO) list -tags nosystemd ./... | grep -v -e /e2e -e /kernellab -e /swarmtest)

# The e2e suite once per engine and firewall backend (scripts/engines.sh list);
# E2E=ENGINE:FIREWALL narrows it, E2E_RUN=REGEX selects tests.
e2e:
	scripts/e2e.sh $(E2E)

# Kernel features this machine lacks (ipvlan, 802.1q, dummy, WireGuard), tested in
# Debian's kernel under qemu.
test-kernel:
	scripts/kernel-lab.sh

# Swarm: three dockerd hosts in network namespaces form a swarm, with the
# plugin installed on each as weft-swarm:latest (SCOPE=global).
test-swarm:
	scripts/swarm-test.sh

bench:
	scripts/bench.sh

# Swarm overlay: weft vs Docker's overlay and vs a bare wireguard-go tunnel,
# between two hosts of a swarm lab of its own; rewrites its section of
# docs/benchmarks.md. BENCH_PLUGIN_DIR=DIR uses a plugin directory built
# before instead of building build/plugin.
bench-swarm: $(if $(BENCH_PLUGIN_DIR),,plugin-dir)
	BENCH_PLUGIN_DIR=$(or $(BENCH_PLUGIN_DIR),build/plugin) scripts/bench-swarm.sh

clean:
	rm -rf bin rootfs build
