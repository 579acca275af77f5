-- Params: 1 prefix, 2 operation, 3 key, 4 fence and 5 record text as inspected, 6 the
-- NOTIFY channel, 7 force. Deletes the row only while it still holds exactly what was
-- inspected (a new owner draws a new fence; a completion rewrites the record), and,
-- unless forced, only while it is not a live reservation (checked by the server's clock
-- in this statement). Waiters are woken as by a release.
WITH gone AS (
    DELETE FROM idempotency_records
    WHERE key_prefix = $1 AND operation = $2 AND idempotency_key = $3
      AND fence = $4 AND record = $5
      AND ($7 OR status <> 'pending' OR expires_at <= statement_timestamp())
    RETURNING operation, idempotency_key
),
woken AS (
    SELECT pg_notify($6, $1 || operation || ':' || idempotency_key) FROM gone
)
SELECT (SELECT count(*) FROM gone) AS removed, (SELECT count(*) FROM woken) AS woken
