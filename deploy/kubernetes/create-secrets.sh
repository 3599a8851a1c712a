#!/usr/bin/env bash
# The Secrets components/tls-and-tokens mounts, made from a fresh CA, certificates and tokens
# (docs/security.md's openssl recipes, with the names Kubernetes clients dial):
#
#   deploy/kubernetes/create-secrets.sh [NAMESPACE]          create or update them (kubectl apply)
#   DRY_RUN=1 deploy/kubernetes/create-secrets.sh [NAMESPACE] print the Secret manifests instead
#
#   internvl-encoder-tls     tls.crt tls.key ca.crt            the encoders' certificate (serverAuth and
#                                                              clientAuth, for its own probe), the CA of the
#                                                              decoders' client certificates
#   internvl-encoder-tokens  tokens                            "SERVICE_TOKEN *": the decoders act for tenants
#   internvl-decoder-tls     tls.crt tls.key ca.crt            the decoders' serving certificate, the CA of
#                            client.crt client.key             the encoders', the client certificate for them
#   internvl-decoder-tokens  tokens encoder-token              "APP_TOKEN default", and SERVICE_TOKEN
#
# NAMESPACE (default internvl) is the overlay's namespace; CLUSTER_DOMAIN (default cluster.local) the
# cluster's DNS domain; the files stay in OUT_DIR (default ./internvl-secrets-NAMESPACE, mode 700): keep ca.key
# offline, give applications ca.crt and their token (decoder.tokens). More tenants: add `TOKEN TENANT` lines to
# decoder.tokens (and to encoder.tokens for tenants that call the encoders directly) and rerun with
# KEEP_FILES=1, which reuses the certificates and token files already in OUT_DIR.
set -euo pipefail

NAMESPACE=${1:-internvl}
CLUSTER_DOMAIN=${CLUSTER_DOMAIN:-cluster.local}
OUT_DIR=${OUT_DIR:-./internvl-secrets-$NAMESPACE}
DAYS=${DAYS:-365}

umask 077
mkdir -p "$OUT_DIR"
cd "$OUT_DIR"

names() {  # the DNS names of Service $1 in the namespace, as subjectAltName entries
  printf 'DNS:%s,DNS:%s.%s,DNS:%s.%s.svc,DNS:%s.%s.svc.%s' "$1" "$1" "$NAMESPACE" "$1" "$NAMESPACE" "$1" "$NAMESPACE" "$CLUSTER_DOMAIN"
}

certificate() {  # NAME CN EXTENSIONS: an EC P-256 key and a certificate signed by the CA
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" \
    -subj "/CN=$2" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" -out "$1.crt" \
    -extfile <(printf '%b' "$3") 2>/dev/null
  rm -f "$1.csr"
}

if [[ ${KEEP_FILES:-0} != 1 || ! -f ca.crt ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$DAYS" \
    -keyout ca.key -out ca.crt -subj "/CN=internvl-ca" 2>/dev/null
  certificate encoder internvl-encoder \
    "subjectAltName=$(names internvl-encoder),DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth"
  certificate decoder internvl-decoder \
    "subjectAltName=$(names internvl-decoder),$(names internvl-decoder-headless),DNS:localhost\nextendedKeyUsage=serverAuth"
  certificate decoder-client internvl-decoder "extendedKeyUsage=clientAuth"
  service_token=$(openssl rand -hex 32)
  printf '%s' "$service_token" > encoder-token  # no newline: it becomes INTERNVL_ENCODER_TOKEN as is
  printf '# the service token of the decoders: it may act for any tenant\n%s *\n' "$service_token" > encoder.tokens
  printf '# applications: TOKEN TENANT\n%s default\n' "$(openssl rand -hex 32)" > decoder.tokens
fi

secret() {  # NAME KEY=FILE...
  local name=$1
  shift
  local args=()
  for pair in "$@"; do args+=("--from-file=$pair"); done
  kubectl create secret generic "$name" --namespace "$NAMESPACE" "${args[@]}" --dry-run=client -o yaml
}

{
  secret internvl-encoder-tls tls.crt=encoder.crt tls.key=encoder.key ca.crt=ca.crt
  echo ---
  secret internvl-encoder-tokens tokens=encoder.tokens
  echo ---
  secret internvl-decoder-tls tls.crt=decoder.crt tls.key=decoder.key ca.crt=ca.crt \
    client.crt=decoder-client.crt client.key=decoder-client.key
  echo ---
  secret internvl-decoder-tokens tokens=decoder.tokens encoder-token=encoder-token
} > secrets.yaml

if [[ ${DRY_RUN:-0} == 1 ]]; then
  cat secrets.yaml
else
  kubectl apply -f secrets.yaml
  echo "Secrets applied in namespace $NAMESPACE; files (keep ca.key offline) in $(pwd)" >&2
fi
