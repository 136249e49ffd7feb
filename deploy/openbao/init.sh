#!/bin/sh
# The openbao-init service of docker-compose.yaml: initialises the bundled OpenBao once, unseals it on every start,
# enables the KV v2 mount, writes the rotation's two policies and gives the Airflow services a token each.
#
# A DEMO CONVENIENCE, NOT FOR PRODUCTION: it keeps the only unseal key and the root token on a volume
# (BAO_INIT_DIR), beside the data they protect. Production needs auto-unseal (a cloud KMS, transit or an HSM), no
# kept root token, and workers that log in (AppRole, Kubernetes) instead of holding a static token: see the README.
#
# POSIX sh (the openbao image's busybox); tests/deploy/test_compose_openbao.py runs it against a local server.
set -eu

: "${BAO_ADDR:?set BAO_ADDR (e.g. http://openbao:8200)}"
export BAO_ADDR
INIT_DIR=${BAO_INIT_DIR:-/openbao/init}
POLICY_DIR=${BAO_POLICY_DIR:-/openbao/policies}
KV_MOUNT=${BAO_KV_MOUNT:-secret}
WORKER_TOKEN_FILE=${BAO_WORKER_TOKEN_FILE:-/openbao/tokens/worker/token}
PAGE_TOKEN_FILE=${BAO_PAGE_TOKEN_FILE:-/openbao/tokens/page/token}
TOKEN_OWNER=${BAO_TOKEN_OWNER:-}      # uid:gid the token files are given to (the Airflow user), if set
TOKEN_TTL=${BAO_TOKEN_TTL:-768h}      # OpenBao's default maximum; a token is re-issued when less than a week is left
KEEP_TOKEN_SECONDS=${BAO_KEEP_TOKEN_SECONDS:-604800}

say() { echo "openbao-init: $*"; }
fail() { say "$*" >&2; exit 1; }

bao_status() { # 0 unsealed, 2 sealed (or not initialised), 1 unreachable
    rc=0
    bao status >/dev/null 2>&1 || rc=$?
    return "$rc"
}

waited=0
until bao_status || [ $? -eq 2 ]; do
    waited=$((waited + 1))
    [ "$waited" -lt 120 ] || fail "OpenBao at $BAO_ADDR did not answer in 120 s"
    sleep 1
done

umask 077
mkdir -p "$INIT_DIR"
rc=0
bao operator init -status >/dev/null 2>&1 || rc=$?
if [ "$rc" -eq 2 ]; then
    [ ! -e "$INIT_DIR/unseal-key" ] ||
        fail "OpenBao is not initialised but $INIT_DIR holds an unseal key of an earlier one: refusing to overwrite it"
    say "initialising (one unseal key, kept in $INIT_DIR: a demo convenience)"
    bao operator init -key-shares=1 -key-threshold=1 -format=json >"$INIT_DIR/init.json"
    awk '/"unseal_keys_b64"/ { getline; gsub(/[ ",]/, ""); printf "%s", $0; exit }' "$INIT_DIR/init.json" \
        >"$INIT_DIR/unseal-key"
    sed -n 's/.*"root_token": *"\([^"]*\)".*/\1/p' "$INIT_DIR/init.json" | tr -d '\n' >"$INIT_DIR/root-token"
    rm -f "$INIT_DIR/init.json"
    [ -s "$INIT_DIR/unseal-key" ] && [ -s "$INIT_DIR/root-token" ] || fail "could not read bao operator init's answer"
elif [ "$rc" -ne 0 ]; then
    fail "cannot tell whether OpenBao at $BAO_ADDR is initialised"
fi

if ! bao_status; then
    say "unsealing"
    # key=@file: the key never appears on a command line
    bao write sys/unseal key=@"$INIT_DIR/unseal-key" >/dev/null
fi

BAO_TOKEN=$(cat "$INIT_DIR/root-token")
export BAO_TOKEN
waited=0
until mounts=$(bao secrets list 2>/dev/null); do # unsealed, and raft has elected this node
    waited=$((waited + 1))
    [ "$waited" -lt 120 ] || fail "OpenBao did not become active in 120 s after unsealing"
    sleep 1
done
if ! printf '%s\n' "$mounts" | grep -q "^$KV_MOUNT/ "; then
    say "enabling KV v2 at $KV_MOUNT/"
    bao secrets enable -path="$KV_MOUNT" -version=2 kv >/dev/null
fi

# The policies generated from the inventory (python -m kosli_rotation.vault_policy [--page]), written on every start
# so that a changed inventory applies.
for policy in worker page; do
    [ -s "$POLICY_DIR/$policy.hcl" ] || fail "$POLICY_DIR/$policy.hcl is missing (the openbao-policies service writes it)"
    bao policy write "kosli-rotation-$policy" "$POLICY_DIR/$policy.hcl" >/dev/null
done

issue_token() { # policy, file: keep a token that still has a week to live, else write a new one
    policy=$1 file=$2
    if [ -s "$file" ]; then
        ttl=$(BAO_TOKEN=$(cat "$file") bao token lookup -field=ttl 2>/dev/null || echo 0)
        ttl=${ttl%s}
        case $ttl in *[!0-9]* | "") ttl=0 ;; esac
        if [ "$ttl" -ge "$KEEP_TOKEN_SECONDS" ]; then
            say "kosli-rotation-$policy token kept (${ttl}s left)"
            return
        fi
    fi
    mkdir -p "$(dirname "$file")"
    bao token create -policy="kosli-rotation-$policy" -ttl="$TOKEN_TTL" -display-name="kosli-rotation-$policy" \
        -field=token | tr -d '\n' >"$file.new"
    [ -s "$file.new" ] || fail "could not create the kosli-rotation-$policy token"
    chmod 0400 "$file.new"
    [ -z "$TOKEN_OWNER" ] || chown "$TOKEN_OWNER" "$file.new"
    mv -f "$file.new" "$file"
    say "kosli-rotation-$policy token written to $file"
}
issue_token worker "$WORKER_TOKEN_FILE"
issue_token page "$PAGE_TOKEN_FILE"
say "ready: $KV_MOUNT/ is KV v2, policies kosli-rotation-worker and kosli-rotation-page written"
