#!/usr/bin/env bash
# Ask the token service whether a PAT or an exchanged JWT is still good (RFC 7662); prints
# the JSON answer: owner, scopes and expiry, or exactly {"active":false}.
#
#   PATROL_URL=https://patrol.example.com CALLER_TOKEN=... TOKEN=... examples/clients/introspect.sh
#
# CALLER_TOKEN authenticates the service that asks: a token the kube-apiserver accepts (its
# ServiceAccount token) whose user may `create` tokenintrospections.patrol.dev (see
# docs/token-exchange.md#introspection). Optional: PATROL_CA.
set -euo pipefail
: "${PATROL_URL:?set PATROL_URL to the token service, e.g. https://patrol.example.com}"
: "${CALLER_TOKEN:?set CALLER_TOKEN to the token of the service that asks}"
: "${TOKEN:?set TOKEN to the PAT or JWT to check}"
args=(--silent --show-error "$PATROL_URL/oauth2/introspect")
[[ -n ${PATROL_CA:-} ]] && args+=(--cacert "$PATROL_CA")
# Process substitutions live only as long as the command they are part of.
curl "${args[@]}" --header @<(printf 'Authorization: Bearer %s\n' "$CALLER_TOKEN") \
  --data-urlencode "token@"<(printf '%s' "$TOKEN")
echo
