#!/usr/bin/env bash
# Trade a PAT for a short-lived JWT (RFC 8693 token exchange); prints the JSON answer.
#
#   PATROL_URL=https://patrol.example.com PAT=... examples/clients/exchange.sh [AUDIENCE] [SCOPE]
#
# Optional: PATROL_CA, the CA file of the token service's certificate; ACTOR_TOKEN, a token
# of the workload acting for the owner (its ServiceAccount token), which the PAT must allow
# in spec.exchange.allowedActors. Tokens reach curl through file descriptors, never its
# command line, where other users of the machine could read them.
set -euo pipefail
: "${PATROL_URL:?set PATROL_URL to the token service, e.g. https://patrol.example.com}"
: "${PAT:?set PAT to the personal access token}"
args=(--silent --show-error "$PATROL_URL/oauth2/token"
  --data grant_type=urn:ietf:params:oauth:grant-type:token-exchange
  --data subject_token_type=urn:ietf:params:oauth:token-type:access_token)
[[ -n ${PATROL_CA:-} ]] && args+=(--cacert "$PATROL_CA")
[[ -n ${1:-} ]] && args+=(--data-urlencode "audience=$1")
[[ -n ${2:-} ]] && args+=(--data-urlencode "scope=$2")
# Process substitutions live only as long as the command they are part of.
if [[ -n ${ACTOR_TOKEN:-} ]]; then
  curl "${args[@]}" --data-urlencode "subject_token@"<(printf '%s' "$PAT") \
    --data actor_token_type=urn:ietf:params:oauth:token-type:jwt \
    --data-urlencode "actor_token@"<(printf '%s' "$ACTOR_TOKEN")
else
  curl "${args[@]}" --data-urlencode "subject_token@"<(printf '%s' "$PAT")
fi
echo
