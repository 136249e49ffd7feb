#!/usr/bin/env bash
# Entry point of the Airflow services that talk to the bundled OpenBao (docker-compose.yaml): turns the token the
# openbao-init service issued to this service into its Vault connection, then runs Airflow's own entrypoint.
#   airflow-worker:    AIRFLOW_CONN_VAULT_DEFAULT from the kosli-rotation-worker token (the rotation's policy)
#   airflow-apiserver: AIRFLOW_CONN_KOSLI_ROTATION_PAGE_VAULT from the kosli-rotation-page token (the page's
#                      read-only policy: no key)
# A connection already set in the environment (.env: your own Vault) is left as it is.
set -euo pipefail

connection() { # token file -> the connection's JSON
    printf '{"conn_type": "vault", "host": "%s", "port": %s, "schema": "%s", "password": "%s", ' \
        "${KOSLI_ROTATION_BAO_HOST:-openbao}" "${KOSLI_ROTATION_BAO_PORT:-8200}" "${KOSLI_ROTATION_BAO_MOUNT:-secret}" \
        "$(tr -d '\n' <"$1")"
    printf '"extra": {"auth_type": "token", "kv_engine_version": 2}}'
}

worker_token=${KOSLI_ROTATION_WORKER_TOKEN_FILE:-/opt/airflow/vault/worker/token}
page_token=${KOSLI_ROTATION_PAGE_TOKEN_FILE:-/opt/airflow/vault/page/token}
if [[ -z "${AIRFLOW_CONN_VAULT_DEFAULT:-}" && -r "$worker_token" ]]; then
    AIRFLOW_CONN_VAULT_DEFAULT=$(connection "$worker_token")
    export AIRFLOW_CONN_VAULT_DEFAULT
fi
if [[ -z "${AIRFLOW_CONN_KOSLI_ROTATION_PAGE_VAULT:-}" && -r "$page_token" ]]; then
    AIRFLOW_CONN_KOSLI_ROTATION_PAGE_VAULT=$(connection "$page_token")
    export AIRFLOW_CONN_KOSLI_ROTATION_PAGE_VAULT
fi
exec "${AIRFLOW_ENTRYPOINT:-/entrypoint}" "$@"
