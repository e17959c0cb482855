# syntax=docker/dockerfile:1.4
#
# Emberscope's image: the BPF object compiled with clang, the package and its dependencies in a
# virtual environment, and a runtime of Debian's python3 (3.11) and libbpf1 without a compiler.
#
#   make image                          # podman: localhost/emberscope:<version> and :latest
#   docker build -t emberscope:0.1.0 .  # the same Dockerfile, elsewhere
#
# Then push it to a registry the nodes pull from and set the chart's image.repository (and
# image.tag); no image is published.
#
# Every stage starts from debian:bookworm-slim, the runtime included (rather than python:3.11-slim,
# whose Python is built from source): one base, which `make image` can make from Debian packages
# with mmdebstrap where no registry is reachable (deploy/image/base-images.sh), and a Python that
# Debian's security updates keep. Where a registry is reachable the same FROM lines pull it.
#
# BTF: bpf/Makefile generates vmlinux.h with `bpftool btf dump file $VMLINUX_BTF`, by default
# /sys/kernel/btf/vmlinux. Builders on a Linux kernel with CONFIG_DEBUG_INFO_BTF usually see the
# host's /sys there. Otherwise pass a directory holding a `vmlinux` BTF file (from any kernel
# with BTF: the object is CO-RE, libbpf relocates it against the BTF of the kernel that loads it)
# as the named build context `btf`, which replaces the empty stage of that name below.

# An empty default for the `btf` build context.
FROM scratch AS btf

FROM debian:bookworm-slim AS bpf
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        clang llvm libbpf-dev bpftool make \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY bpf/ bpf/
RUN --mount=type=bind,from=btf,target=/btf \
    set -e; \
    btf=/sys/kernel/btf/vmlinux; \
    if [ -f /btf/vmlinux ]; then btf=/btf/vmlinux; fi; \
    if [ ! -r "$btf" ]; then echo "no BTF at $btf: pass --build-context btf=DIR (DIR/vmlinux)" >&2; exit 1; fi; \
    make -C bpf clean; \
    make -C bpf VMLINUX_BTF="$btf"; \
    test -s bpf/.output/profile.bpf.o

# The package and its dependencies from PyPI, in a venv the runtime copies as it is (same base,
# same /usr/bin/python3). The agent uses the kubernetes package's synchronous client: its asyncio
# copy (kubernetes/aio, 41 MB, imported by nothing else) is left out. A builder behind a TLS-inspecting proxy passes its CA bundle as the
# secret `ca-certificates` (`make image` passes the host's); without it pip trusts its own.
FROM debian:bookworm-slim AS venv
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml ./
COPY agent/ agent/
# The BPF object is package data (agent/ebpf/profile.bpf.o), as `make bpf` places it.
COPY --from=bpf /src/bpf/.output/profile.bpf.o agent/ebpf/profile.bpf.o
RUN --mount=type=secret,id=ca-certificates,target=/run/secrets/ca-certificates \
    set -e; \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi; \
    python3 -m venv /opt/emberscope \
 && /opt/emberscope/bin/pip install --no-cache-dir --disable-pip-version-check /src \
 && /opt/emberscope/bin/pip uninstall --yes --quiet pip setuptools \
 && rm -r /opt/emberscope/lib/python3.11/site-packages/kubernetes/aio \
 && find /opt/emberscope -name __pycache__ -prune -exec rm -rf {} +

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 libbpf1 \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY --from=venv /opt/emberscope /opt/emberscope
ENV PATH=/opt/emberscope/bin:$PATH PYTHONDONTWRITEBYTECODE=1
RUN python3 -c "from agent.ebpf import DEFAULT_OBJECT_PATH as p; assert p.is_file(), p" \
 && emberscope version
# Root: loading BPF programs needs it (or the capabilities the chart documents).
USER 0
EXPOSE 12345
ENTRYPOINT ["emberscope"]
CMD ["run", "/etc/emberscope/config.alloy", "--server.http.listen-addr=0.0.0.0:12345"]
