# The project's commands. Each target installs what it needs first.
#   make install       what running needs: Debian packages, .venv with the runtime
#                      dependencies, BPF objects
#   make install-test  install, then what the tests add (Debian packages, the dev extras)
#   make run           run the agent on examples/local.alloy (profiles under ./profiles)
#   make profile       profile this host once for 30 s into profiles/host.pb.gz
#   make test          every test

VENV := .venv
PYTHON := $(VENV)/bin/python
# Running: the BPF build (clang, llvm-strip, bpftool for vmlinux.h, libbpf's headers),
# libbpf itself (loaded through ctypes) and the venv.
RUN_PACKAGES := clang llvm libbpf-dev libbpf1 bpftool python3-venv
# The tests and benchmarks add: compilers for the workloads, oracles (perf, gdb, go tool
# pprof), a Prometheus server, podman for discovery.docker, Go and sprig for tools/chart-render,
# chromium to open the flame graphs.
TEST_PACKAGES := gcc g++ make golang-go linux-perf prometheus util-linux podman runc \
	busybox-static golang-github-masterminds-sprig-dev gdb chromium
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install install-test run profile test bpf proto bench clean manifests

install: $(RUN_STAMP) bpf

install-test: $(TEST_STAMP) bpf

# Installs the Debian packages of $(1) that are missing (the lists updated first), if any.
define apt_install
@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
endef

$(RUN_STAMP): pyproject.toml
	$(call apt_install,$(RUN_PACKAGES))
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e .
	touch $@

# After $(RUN_STAMP), so that `make test` after `make run` adds only what is missing.
$(TEST_STAMP): $(RUN_STAMP) pyproject.toml
	$(call apt_install,$(TEST_PACKAGES))
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $@

# The object ships inside the package, beside the code that loads it.
bpf:
	$(MAKE) -C bpf
	cp bpf/.output/profile.bpf.o agent/ebpf/profile.bpf.o

run: install
	$(VENV)/bin/emberscope run examples/local.alloy

profile: install
	$(VENV)/bin/emberscope profile --all --duration 30s --output profiles/host.pb.gz

test: install-test
	$(VENV)/bin/ruff check agent tests bench
	$(PYTHON) -m pytest

proto: $(TEST_STAMP)
	$(PYTHON) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. agent/pprof/profile.proto
	$(PYTHON) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
		agent/write/push/types.proto agent/write/push/push.proto

clean:
	$(MAKE) -C bpf clean
	rm -rf $(VENV) profiles

bench: install-test
	$(PYTHON) bench/overhead.py
	$(PYTHON) bench/python_cost.py
	$(PYTHON) bench/unwind.py

# deploy/manifests/emberscope.yaml from the Helm chart, through tools/chart-render (Go's
# text/template and sprig, offline); tests/deploy/test_render.py fails when they drift.
manifests: $(TEST_STAMP)
	tools/chart-render/manifests.sh deploy/manifests/emberscope.yaml
