# The bundled OpenBao of docker-compose.yaml: one server keeping its data in integrated storage (raft) on the
# `openbao-data` volume, so records survive a restart. A DEMO setup: plain HTTP on the compose network, unsealed by
# the openbao-init service with a key it keeps on a volume (see init.sh, and the README for what production needs
# instead). tests/deploy/test_compose_openbao.py starts `bao server` with this very file, only the storage path and
# the listener's addresses moved to the test's own.

ui = false

storage "raft" {
  path    = "/openbao/file"
  node_id = "openbao-1"
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_disable     = true
}

api_addr     = "http://openbao:8200"
cluster_addr = "http://openbao:8201"
