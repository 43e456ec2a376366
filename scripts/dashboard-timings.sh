#!/usr/bin/env bash
# Measures the dashboard's and the API's response times on a ledger of 1,000,000
# rows (docs/DASHBOARD.md): fills a scratch database on the local Postgres
# (127.0.0.1:5432, user postgres) with generate_series, starts `jobrunner run` on
# it with a scratch Redis key prefix on 127.0.0.1:6379 and an admin token, times
# each page with curl, then drops the database and deletes the keys. BIN names the
# binary (default: target/debug/jobrunner, built by `cargo build`).
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/debug/jobrunner}
DB=dash_timing_$$
PREFIX=dashtime$$
PORT=19187
DIR=$(mktemp -d)
TOKEN=timing-0123456789abcdef
psql() { command psql -X -q -h 127.0.0.1 -U postgres "$@"; }
cleanup() {
    [[ -n ${PID:-} ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    psql -d postgres -c "DROP DATABASE IF EXISTS $DB" || true
    redis-cli --scan --pattern "$PREFIX:*" | xargs -r -n 500 redis-cli del >/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
psql -d postgres -c "CREATE DATABASE $DB"
echo "admin $TOKEN" > "$DIR/tokens"
cat > "$DIR/c.toml" <<TOML
[database]
url = "postgres://postgres@127.0.0.1:5432/$DB"
[redis]
url = "redis://127.0.0.1:6379"
key_prefix = "$PREFIX"
[admin]
listen = "127.0.0.1:$PORT"
tokens_file = "$DIR/tokens"
[queues.default]
concurrency = 2
TOML
"$BIN" --config "$DIR/c.toml" migrate >/dev/null
start=$(date +%s)
psql -d "$DB" <<'SQL'
SET synchronous_commit = off;
INSERT INTO jobrunner.jobs (id, queue, kind, payload, status, attempts, max_attempts,
        run_at, unique_key, result, last_error, created_at, updated_at, started_at,
        finished_at, errors)
SELECT gen_random_uuid(),
       (ARRAY['mail','reports','billing','sync'])[1 + i % 4],
       (ARRAY['send','render','charge','pull','noop'])[1 + i % 5],
       jsonb_build_object('order', i, 'customer', 'c-' || (i % 5000)),
       s,
       CASE WHEN s IN ('succeeded','dead') THEN 1 ELSE 0 END, 3,
       CASE WHEN s = 'scheduled' THEN now() + interval '1 day' ELSE t END,
       CASE WHEN i % 10 = 0 THEN 'order-' || i END,
       CASE WHEN s = 'succeeded' THEN jsonb_build_object('ok', true) END,
       CASE WHEN s = 'dead' THEN 'upstream answered 503' END,
       t, t + interval '1 second',
       CASE WHEN s IN ('succeeded','dead','running') THEN t END,
       CASE WHEN s IN ('succeeded','dead','cancelled') THEN t + interval '1 second' END,
       CASE WHEN s = 'dead' THEN jsonb_build_array(jsonb_build_object(
            'attempt', 1, 'error', 'upstream answered 503', 'at', t)) ELSE '[]' END
FROM (SELECT i, now() - i * interval '2.5 seconds' AS t,
             CASE WHEN i % 1000 < 950 THEN 'succeeded'
                  WHEN i % 1000 < 990 THEN 'dead'
                  WHEN i % 1000 < 995 THEN 'queued'
                  WHEN i % 1000 < 997 THEN 'scheduled'
                  WHEN i % 1000 < 998 THEN 'running'
                  WHEN i % 1000 < 999 THEN 'retrying'
                  ELSE 'cancelled' END AS s
      FROM generate_series(1, 1000000) AS i) g;
VACUUM ANALYZE jobrunner.jobs;
SQL
echo "filled 1,000,000 rows in $(( $(date +%s) - start ))s"
psql -d "$DB" -t -A -c "SELECT status, count(*) FROM jobrunner.jobs GROUP BY 1 ORDER BY 1" | tr '\n' ' '; echo
RUST_LOG=warn "$BIN" --config "$DIR/c.toml" run > "$DIR/daemon.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
sleep 5
DEAD=$(psql -d "$DB" -t -A -c "SELECT id FROM jobrunner.jobs WHERE status='dead' ORDER BY created_at LIMIT 1 OFFSET 20000")
OLD=$(date -u -d '-20 days' +%Y-%m-%dT%H:%M:%S.000000Z)
CURSOR="$OLD~ffffffff-ffff-ffff-ffff-ffffffffffff"
time_of() { # label, accept, path
    local samples=()
    for _ in 1 2 3 4 5 6 7; do
        samples+=("$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -H "Authorization: Bearer $TOKEN" \
            -H "Accept: $2" "http://127.0.0.1:$PORT$3")")
    done
    local code=${samples[0]%% *}
    local median
    median=$(printf '%s\n' "${samples[@]}" | awk '{print $2*1000}' | sort -n | sed -n 4p)
    printf '| %s | `%s` | %s | %.0f ms |\n' "$1" "$3" "$code" "$median"
}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| page | request | code | median of 7 |"
echo "|---|---|---|---|"
time_of "overview" text/html "/"
time_of "job list, newest" text/html "/jobs"
time_of "job list, dead" text/html "/jobs?status=dead"
time_of "job list, queue + status" text/html "/jobs?queue=mail&status=succeeded"
time_of "job list, kind" text/html "/jobs?kind=charge"
time_of "job list, last hour" text/html "/jobs?since=1h"
time_of "job list, a page 20 days back" text/html "/jobs?before=$CURSOR"
time_of "search by unique key" text/html "/jobs?q=order-500000"
time_of "one job" text/html "/jobs/$DEAD"
time_of "cron" text/html "/cron"
time_of "API: job list" application/json "/jobs?status=dead&limit=200"
time_of "API: one job" application/json "/jobs/$DEAD"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
