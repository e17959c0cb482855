# syntax=docker/dockerfile:1.4
#
# Emberscope's image: the BPF object is compiled with clang in a Debian bookworm stage; the
# runtime stage is python:3.11-slim-bookworm with libbpf1 and the package, and no compiler.
#
#   docker build -t emberscope:0.1.0 .
#   docker build --build-context btf=/sys/kernel/btf -t emberscope:0.1.0 .   # see "BTF" below
#
# Then push it to a registry the nodes can pull from and set the chart's image.repository and
# image.tag (deploy/helm/emberscope). No image is published. This Dockerfile has not been built
# where it was written (no container engine, no registry there): build it once before relying on it.
#
# BTF: bpf/Makefile generates vmlinux.h with `bpftool btf dump file $VMLINUX_BTF`, by default
# /sys/kernel/btf/vmlinux. Builders on a Linux kernel with CONFIG_DEBUG_INFO_BTF usually see the
# host's /sys there. Otherwise pass a directory holding a `vmlinux` BTF file (from any kernel
# with BTF: the object is CO-RE, libbpf relocates it against the BTF of the kernel that loads it)
# as the named build context `btf`, which replaces the empty stage of that name below.

# An empty default for the `btf` build context.
FROM scratch AS btf

FROM debian:bookworm AS bpf
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        clang llvm libbpf-dev bpftool make \
 && rm -rf /var/lib/apt/lists/*
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

FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml ./
COPY agent/ agent/
# The BPF object is package data (agent/ebpf/profile.bpf.o), as `make bpf` places it.
COPY --from=bpf /src/bpf/.output/profile.bpf.o agent/ebpf/profile.bpf.o
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libbpf1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels
RUN python -c "from agent.ebpf import DEFAULT_OBJECT_PATH as p; assert p.is_file(), p; print(p)" \
 && emberscope version
# Root: loading BPF programs needs it (or the capabilities the chart documents).
USER 0
EXPOSE 12345
ENTRYPOINT ["emberscope"]
CMD ["run", "/etc/emberscope/config.alloy", "--server.http.listen-addr=0.0.0.0:12345"]
