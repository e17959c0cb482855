# The project's commands. Each target installs what it needs first.
#   make install   system packages, .venv, BPF objects
#   make run       run the agent on examples/local.alloy (profiles under ./profiles)
#   make profile   profile this host once for 30 s into profiles/host.pb.gz
#   make test      every test

VENV := .venv
PYTHON := $(VENV)/bin/python
APT_PACKAGES := clang llvm libbpf-dev libbpf1 bpftool gcc g++ make golang-go linux-perf prometheus \
	python3-venv util-linux podman runc busybox-static golang-github-masterminds-sprig-dev gdb
STAMP := $(VENV)/.installed

.PHONY: install run profile test bpf proto bench clean manifests

install: $(STAMP) bpf

# Installs the Debian packages only where one is missing, then the venv.
$(STAMP): pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
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

test: install
	$(VENV)/bin/ruff check agent tests bench
	$(PYTHON) -m pytest

proto:
	$(PYTHON) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. agent/pprof/profile.proto
	$(PYTHON) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
		agent/write/push/types.proto agent/write/push/push.proto

clean:
	$(MAKE) -C bpf clean
	rm -rf $(VENV) profiles

bench: install
	$(PYTHON) bench/overhead.py
	$(PYTHON) bench/python_cost.py

# deploy/manifests/emberscope.yaml from the Helm chart, through tools/chart-render (Go's
# text/template and sprig, offline); tests/deploy/test_render.py fails when they drift.
manifests: $(STAMP)
	tools/chart-render/manifests.sh deploy/manifests/emberscope.yaml
