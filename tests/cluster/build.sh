#!/usr/bin/env bash
# Build everything the real-Kubernetes test cluster needs, idempotently.
#
#   tests/cluster/build.sh            # all steps; a warm run only checks stamps and exits
#   tests/cluster/build.sh go apt     # some steps (go apt podman base actionlint netpol prometheus)
#
# Versions come from tests/cluster/versions.env (the one place they are pinned). Binaries land in
# ${BNDL_TESTBIN_CACHE:-~/.cache/bndl-testbin}/<versions>/bin, never in the repository. Each step
# writes a stamp file when it has finished, so an interrupted build resumes where it stopped.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$HERE/versions.env"

KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_containerd-${CONTAINERD_VERSION}_crictl-${CRICTL_VERSION}_coredns-${COREDNS_VERSION}_helm-${HELM_VERSION}"
ROOT="${BNDL_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bndl-testbin}"
OUT="$ROOT/$KEY"
BIN="$OUT/bin"
STAMPS="$OUT/stamps"
BASE_IMAGE="localhost/bndl-base:py311-${DEBIAN_SUITE}-r${BASE_REVISION}"
mkdir -p "$BIN" "$STAMPS"

log() { printf '[build.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
done_() { [ -e "$STAMPS/$1" ]; }
stamp() { date -u +%FT%TZ > "$STAMPS/$1"; }

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

wrapper_module() { # dir name
  rm -rf "$1" && mkdir -p "$1" && (cd "$1" && go mod init "local/$2" >/dev/null 2>&1)
}

# --- Go: Kubernetes (kube-apiserver, kcm, scheduler, kubectl, kubelet, kube-proxy) -------------
build_kubernetes() {
  done_ kubernetes && return 0
  log "kubernetes v$K8S_VERSION"
  local w="$OUT/src/kubernetes"
  wrapper_module "$w" k8s-testbin
  cd "$w"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  local mods
  mods=$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod")
  if [ -z "$mods" ]; then log "no staging replaces found in $gomod"; cat "$gomod" >&2; return 1; fi
  for m in $mods; do go mod edit -replace="$m=$m@v0.${K8S_VERSION#1.}"; done
  sed -n 's/^godebug[[:space:]]\+//p' "$gomod" | while read -r kv; do go mod edit -godebug="$kv"; done
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  go get "k8s.io/kubernetes@v$K8S_VERSION" >/dev/null
  go mod tidy >/dev/null
  local minor now ldf p
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  ldf="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldf="$ldf -X $p.gitTreeState=clean -X $p.buildDate=$now"
  done
  go build -trimpath -pgo=off -ldflags "$ldf" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
  "$BIN/kube-apiserver" --version | grep -qx "Kubernetes v$K8S_VERSION"
  "$BIN/kubelet" --version | grep -qx "Kubernetes v$K8S_VERSION"
  cd "$OUT" && stamp kubernetes
}

# --- Go: etcd (its own wrapper module so MVS does not move Kubernetes' dependencies) -----------
build_etcd() {
  done_ etcd && return 0
  log "etcd v$ETCD_VERSION"
  local w="$OUT/src/etcd"
  wrapper_module "$w" etcd-testbin
  cd "$w"
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
  go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >/dev/null
  go mod tidy >/dev/null
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
  "$BIN/etcd" --version | grep -q "etcd Version: $ETCD_VERSION"
  cd "$OUT" && stamp etcd
}

# --- Go: containerd, its runc shim and ctr -------------------------------------------------------
build_containerd() {
  done_ containerd && return 0
  log "containerd v$CONTAINERD_VERSION"
  local w="$OUT/src/containerd" m=github.com/containerd/containerd/v2
  wrapper_module "$w" containerd-testbin
  cd "$w"
  cat > tools.go <<GO
//go:build tools

package tools

import (
	_ "$m/cmd/containerd"
	_ "$m/cmd/containerd-shim-runc-v2"
	_ "$m/cmd/ctr"
)
GO
  go get "$m@v$CONTAINERD_VERSION" >/dev/null
  go mod tidy >/dev/null
  local ldf="-s -w -X $m/version.Version=v$CONTAINERD_VERSION -X $m/version.Revision=module"
  go build -trimpath -tags "no_btrfs no_devmapper no_zfs" -ldflags "$ldf" -o "$BIN/" \
    "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr"
  "$BIN/containerd" --version | grep -q "v$CONTAINERD_VERSION"
  cd "$OUT" && stamp containerd
}

# --- Go: crictl ----------------------------------------------------------------------------------
build_crictl() {
  done_ crictl && return 0
  log "crictl v$CRICTL_VERSION"
  GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=v$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@v$CRICTL_VERSION"
  "$BIN/crictl" --version >/dev/null
  stamp crictl
}

# --- Go: CoreDNS ---------------------------------------------------------------------------------
build_coredns() {
  done_ coredns && return 0
  log "coredns v$COREDNS_VERSION"
  local w="$OUT/src/coredns"
  wrapper_module "$w" coredns-testbin
  cd "$w"
  printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/coredns/coredns"\n' > tools.go
  go get "github.com/coredns/coredns@v$COREDNS_VERSION" >/dev/null
  go mod tidy >/dev/null
  go build -trimpath -ldflags "-s -w" -o "$BIN/coredns" github.com/coredns/coredns
  "$BIN/coredns" -version | grep -q "$COREDNS_VERSION"
  cd "$OUT" && stamp coredns
}

# --- Go: helm ------------------------------------------------------------------------------------
build_helm() {
  done_ helm && return 0
  log "helm v$HELM_VERSION"
  GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  "$BIN/helm" version --short | grep -q "v$HELM_VERSION"
  stamp helm
}

# --- Go: kube-network-policies (kind's NetworkPolicy enforcer; one process per cluster) --------
# Built from its own go.mod (go install) as upstream's Dockerfile does, CGO_ENABLED=0. Not part of
# the cache directory's key: its stamp carries the version, so bumping it rebuilds this alone. The
# main package is .../cmd, so go install names the binary "cmd"; it is renamed on the way in.
build_kube_network_policies() {
  local v="$KUBE_NETWORK_POLICIES_VERSION"
  done_ "kube-network-policies-$v" && [ -x "$BIN/kube-network-policies" ] && return 0
  log "kube-network-policies v$v"
  local gobin="$OUT/src/kube-network-policies-bin"
  rm -rf "$gobin" && mkdir -p "$gobin"
  GOBIN="$gobin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kube-network-policies/cmd@v$v"
  mv "$gobin/cmd" "$BIN/kube-network-policies" && rm -rf "$gobin"
  # No --version flag; its usage names the queue flag (captured first: grep -q would close the
  # pipe early, and pipefail would report the SIGPIPE).
  local usage
  usage=$("$BIN/kube-network-policies" --help 2>&1 || true)
  [[ "$usage" == *"-nfqueue-id"* ]] || { log "unexpected usage: ${usage:0:500}"; return 1; }
  stamp "kube-network-policies-$v"
}

# --- Go: actionlint (not part of the cluster: tests/test_project.py lints .github/workflows) -----
# Not part of the cache directory's key: its stamp carries the version, so bumping it rebuilds
# actionlint alone.
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-1.7.12}"
step_actionlint() {
  done_ "actionlint-$ACTIONLINT_VERSION" && [ -x "$BIN/actionlint" ] && return 0
  log "actionlint v$ACTIONLINT_VERSION"
  GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X github.com/rhysd/actionlint.version=v$ACTIONLINT_VERSION" \
    "github.com/rhysd/actionlint/cmd/actionlint@v$ACTIONLINT_VERSION"
  local v
  v=$("$BIN/actionlint" -version)
  [ "${v%%$'\n'*}" = "v$ACTIONLINT_VERSION" ] || { log "actionlint says: $v"; return 1; }
  stamp "actionlint-$ACTIONLINT_VERSION"
}

# --- Go: Prometheus (the e2e metrics test scrapes the operator and the workers with it) ----------
# Not part of the cache directory's key: its stamp carries the version. A wrapper module, because
# Prometheus' own go.mod has replace/exclude directives that `go install pkg@version` refuses. No
# web UI assets (the test uses the HTTP API only), and only the Kubernetes service discovery
# (Prometheus' own build tags): the cloud providers' SDKs were most of a cold build's 30 minutes.
PROMETHEUS_TAGS=remove_all_sd,enable_kubernetes_sd
step_prometheus() {
  done_ "prometheus-$PROMETHEUS_VERSION-k8s-sd" && [ -x "$BIN/prometheus" ] && return 0
  log "prometheus v$PROMETHEUS_VERSION"
  local w="$OUT/src/prometheus" m=github.com/prometheus/prometheus
  wrapper_module "$w" prometheus-testbin
  cd "$w"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/prometheus"\n' "$m" > tools.go
  go get "$m@v$PROMETHEUS_VERSION" >/dev/null
  go mod tidy >/dev/null
  local ldf="-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION"
  go build -trimpath -tags "$PROMETHEUS_TAGS" -ldflags "$ldf" -o "$BIN/prometheus.tmp" \
    "$m/cmd/prometheus"
  mv "$BIN/prometheus.tmp" "$BIN/prometheus"
  "$BIN/prometheus" --version >/dev/null
  cd "$OUT" && stamp "prometheus-$PROMETHEUS_VERSION-k8s-sd"
}

# --- Debian packages ------------------------------------------------------------------------------
APT_PACKAGES=(podman runc containernetworking-plugins debootstrap iproute2 nftables conntrack
  util-linux openssl uidmap)
step_apt() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- podman configuration for this sandbox (used through CONTAINERS_CONF, the system is untouched) -
# crun rejects the hybrid cgroup layout, there is no systemd, some setrlimit calls are refused, and
# builds must use the host network (podman's default bridge network would use a private range).
step_podman() {
  cat > "$OUT/containers.conf.tmp" <<CONF
[containers]
default_ulimits = []
netns = "host"
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[engine.runtimes]
runc = ["$(command -v runc)"]
CONF
  mv "$OUT/containers.conf.tmp" "$OUT/containers.conf"
  # The runc wrapper for containerd: this sandbox forbids negative oom_score_adj even for root,
  # and the kubelet asks for -998 on pod sandboxes (-997 for Guaranteed pods); runc would die with
  # "can't get final child's PID from pipe: EOF". Clamp it to 0 in the bundle/process spec.
  cat > "$BIN/runc-wrapper.tmp" <<WRAP
#!/bin/sh
# Generated by tests/cluster/build.sh: clamp negative oomScoreAdj, then run the real runc.
prev=""
for a in "\$@"; do
  case "\$prev" in
    --bundle|-b) f="\$a/config.json"; [ -f "\$f" ] && sed -i 's/"oomScoreAdj":[[:space:]]*-[0-9]*/"oomScoreAdj":0/g' "\$f" ;;
    --process|-p) [ -f "\$a" ] && sed -i 's/"oomScoreAdj":[[:space:]]*-[0-9]*/"oomScoreAdj":0/g' "\$a" ;;
  esac
  prev="\$a"
done
exec $(command -v runc) "\$@"
WRAP
  chmod +x "$BIN/runc-wrapper.tmp" && mv "$BIN/runc-wrapper.tmp" "$BIN/runc-wrapper"
}

podman_() { CONTAINERS_CONF="$OUT/containers.conf" podman "$@"; }

# --- images: the pod sandbox ("pause") image and the debootstrapped Python base image -------------
step_base() {
  [ -e "$OUT/containers.conf" ] || step_podman
  mkdir -p "$OUT/images"
  if ! done_ "pause-r$BASE_REVISION" || ! podman_ image exists "$PAUSE_IMAGE"; then
    log "pause image $PAUSE_IMAGE"
    local w="$OUT/src/pause"
    rm -rf "$w" && mkdir -p "$w" && cp "$HERE/images/pause/pause.go" "$HERE/images/pause/Containerfile" "$w/"
    (cd "$w" && go mod init local/pause >/dev/null 2>&1 && go build -trimpath -ldflags "-s -w" -o pause .)
    podman_ build -q --network host -t "$PAUSE_IMAGE" "$w" >/dev/null
    rm -f "$OUT/images/pause.tar"
    podman_ save -q -o "$OUT/images/pause.tar" "$PAUSE_IMAGE"
    stamp "pause-r$BASE_REVISION"
  fi
  local rootfs_tar="$OUT/images/base-rootfs-r$BASE_REVISION.tar"
  if [ ! -e "$rootfs_tar" ]; then
    log "debootstrap $DEBIAN_SUITE (python3, venv, pip)"
    local mirror
    mirror=$(sed -n 's#^URIs:[[:space:]]*\(http[^ ]*debian\)[[:space:]]*$#\1#p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    mirror="${mirror:-http://deb.debian.org/debian}"
    local d="$OUT/src/rootfs"
    rm -rf "$d" && mkdir -p "$d"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      "$DEBIAN_SUITE" "$d" "$mirror" > "$OUT/debootstrap.log" 2>&1 \
      || { tail -20 "$OUT/debootstrap.log" >&2; return 1; }
    rm -rf "$d"/var/cache/apt/archives/*.deb "$d"/var/lib/apt/lists/* "$d"/var/log/*.log
    tar -C "$d" --numeric-owner -cf "$rootfs_tar.tmp" .
    mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$d"
  fi
  if ! podman_ image exists "$BASE_IMAGE"; then
    log "import $BASE_IMAGE"
    podman_ import -q --change 'CMD ["/usr/bin/python3"]' --change 'ENV LANG=C.UTF-8' \
      "$rootfs_tar" "$BASE_IMAGE" >/dev/null
  fi
}

step_netpol() { build_kube_network_policies; }

step_go() {
  build_kubernetes
  build_etcd
  build_containerd
  build_crictl
  build_coredns
  build_helm
  build_kube_network_policies
}

main() {
  local steps=("$@")
  [ ${#steps[@]} -gt 0 ] || steps=(apt go podman base actionlint prometheus)
  for s in "${steps[@]}"; do "step_$s"; done
}

main "$@"
