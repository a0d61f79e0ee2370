# redis-tls.sh: optional TLS settings shared by the scripts of this image.
# Sourced (not executed) by entrypoint.sh, bootstrap.sh, cluster-meet.sh,
# probe.sh and prestop.sh, from the directory they are in.
#
# Off by default: with REDIS_TLS unset (or "no") nothing changes, every
# redis-cli call and the redis-server command line are exactly the plain ones.
# The TLS overlay (deploy/k8s/tls) sets REDIS_TLS=yes and mounts the Secret
# redis-tls (tls.crt, tls.key, ca.crt) at /etc/redis/tls in every container
# that talks to Redis. Then:
#   - redis-server listens with TLS only (port 0, tls-port = REDIS_PORT), also
#     on the cluster bus and for replication (entrypoint.sh);
#   - every redis-cli call presents the certificate as client certificate
#     (Redis requires one: tls-auth-clients yes) and checks the node's
#     certificate against the CA.
#
# Environment:
#   REDIS_TLS               yes | no (default no)
#   REDIS_TLS_CERT_FILE     default /etc/redis/tls/tls.crt
#   REDIS_TLS_KEY_FILE      default /etc/redis/tls/tls.key
#   REDIS_TLS_CA_CERT_FILE  default /etc/redis/tls/ca.crt
#
# redis_tls_init sets REDIS_CLI_TLS, an array to put before redis-cli's other
# arguments (empty without TLS), and the three file variables. It returns 2
# (after a message on stderr) when REDIS_TLS is neither yes nor no, so that a
# typo never silently means "plain".
# shellcheck shell=bash

redis_tls_init() {
    REDIS_CLI_TLS=()
    case "${REDIS_TLS:-no}" in
        no | "") return 0 ;;
        yes) ;;
        *)
            printf "REDIS_TLS='%s': expected yes or no\n" "$REDIS_TLS" >&2
            return 2
            ;;
    esac
    REDIS_TLS_CERT_FILE="${REDIS_TLS_CERT_FILE:-/etc/redis/tls/tls.crt}"
    REDIS_TLS_KEY_FILE="${REDIS_TLS_KEY_FILE:-/etc/redis/tls/tls.key}"
    REDIS_TLS_CA_CERT_FILE="${REDIS_TLS_CA_CERT_FILE:-/etc/redis/tls/ca.crt}"
    REDIS_CLI_TLS=(--tls --cert "$REDIS_TLS_CERT_FILE" --key "$REDIS_TLS_KEY_FILE" --cacert "$REDIS_TLS_CA_CERT_FILE")
}

# redis_tls_on: true when redis_tls_init enabled TLS.
redis_tls_on() { ((${#REDIS_CLI_TLS[@]} > 0)); }
