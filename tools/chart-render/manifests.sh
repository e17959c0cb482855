#!/bin/sh
# Regenerates deploy/manifests/emberscope.yaml from the Helm chart (run by `make manifests`):
# builds chart-render offline against Debian's Go packages, then writes namespace.yaml (the
# header and the Namespace, which the chart does not render) followed by what
#   helm template emberscope deploy/helm/emberscope --namespace emberscope
# renders with the chart's default values.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/deploy/manifests/emberscope.yaml}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
(cd "$here" && GO111MODULE=off GOPATH="/usr/share/gocode:$tmp/gopath" GOFLAGS= GOPROXY=off \
	go build -o "$tmp/chart-render" .)
{
	cat "$here/namespace.yaml"
	"$tmp/chart-render" emberscope "$root/deploy/helm/emberscope" --namespace emberscope
} >"$tmp/emberscope.yaml"
mv "$tmp/emberscope.yaml" "$out"
