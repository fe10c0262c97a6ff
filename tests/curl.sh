#!/usr/bin/env bash
# Drives the berth HTTP API with plain curl, the way a CI job would. Uses only curl, grep
# and sed. BERTH_URL names the assigner (default http://127.0.0.1:8080); the pool is `ppa`.
# Exits non-zero, saying what went wrong, at the first surprise.
set -euo pipefail

url="${BERTH_URL:-http://127.0.0.1:8080}"
json='content-type: application/json'

fail() { echo "curl.sh: $*" >&2; exit 1; }

# get PATH -> the body. Read whole before grepping: `curl | grep -q` under pipefail fails
# when grep stops reading early and curl cannot write the rest (curl: (23)).
get() { curl -sS "$url$1"; }

# post PATH BODY -> prints "STATUS BODY"
post() {
    curl -sS -X POST "$url$1" -H "$json" -d "$2" -w ' %{http_code}' | sed -E 's/^(.*) ([0-9]{3})$/\2 \1/'
}

field() { echo "$1" | sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p"; }

# 1. Acquire a slot.
answer=$(post /v1/pools/ppa/acquire '{"owner":"ci-job-42","lease_secs":600,"wait_secs":30}')
[ "${answer%% *}" = 200 ] || fail "acquire answered: $answer"
slot=$(field "$answer" slot)
token=$(field "$answer" lease_token)
expires=$(field "$answer" lease_expires)
[ -n "$slot" ] && [ -n "$token" ] || fail "no slot or token in: $answer"
echo "$answer" | grep -q '"reference":"ppa:berth-ci/' || fail "no PPA reference in: $answer"
echo "acquired $slot until $expires"

# 2. It shows as used by us.
grep -q "\"slot\":\"$slot\",\"pool\":\"ppa\",\"state\":\"used\",\"owner\":\"ci-job-42\"" <<<"$(get /v1/slots)" \
    || fail "GET /v1/slots does not show $slot used by ci-job-42"

# 3. Renew moves the lease later.
answer=$(post "/v1/slots/$slot/renew" "{\"lease_token\":\"$token\",\"lease_secs\":3600}")
[ "${answer%% *}" = 200 ] || fail "renew answered: $answer"
renewed=$(field "$answer" lease_expires)
[[ "$renewed" > "$expires" ]] || fail "renew did not move the lease: $expires -> $renewed"
echo "renewed until $renewed"

# 4. Mistakes get JSON errors with the right status.
answer=$(post "/v1/slots/$slot/release" '{"lease_token":"not-the-token"}')
[ "${answer%% *}" = 403 ] || fail "release with a wrong token answered: $answer"
answer=$(post /v1/pools/no-such-pool/acquire '{"owner":"x"}')
[ "${answer%% *}" = 404 ] || fail "unknown pool answered: $answer"
answer=$(post /v1/pools/ppa/acquire '{"owner":""}')
[ "${answer%% *}" = 400 ] || fail "empty owner answered: $answer"
echo "$answer" | grep -q '"error":"bad_request"' || fail "400 without a JSON error: $answer"

# 5. Release, then the slot comes back.
answer=$(post "/v1/slots/$slot/release" "{\"lease_token\":\"$token\"}")
[ "${answer%% *}" = 202 ] || fail "release answered: $answer"
echo "released $slot"
for _ in $(seq 1 100); do
    if grep -q "\"slot\":\"$slot\",\"pool\":\"ppa\",\"state\":\"free\"" <<<"$(get /v1/slots)"; then
        echo "$slot is free again"
        grep -q ready <<<"$(get /readyz)" || fail "/readyz is not ready"
        grep -q '^berth_acquire_duration_seconds_count' <<<"$(get /metrics)" || fail "no metrics"
        echo "ok"
        exit 0
    fi
    sleep 0.2
done
fail "$slot did not come back free within 20 s"
