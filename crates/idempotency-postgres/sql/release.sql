WITH gone AS (
    DELETE FROM idempotency_records
    WHERE key_prefix = $1 AND operation = $2 AND idempotency_key = $3
      AND status = 'pending' AND owner_token = $4 AND expires_at > statement_timestamp()
    RETURNING 1
),
woken AS (SELECT pg_notify($5, $6) FROM gone)
SELECT (SELECT count(*) FROM gone) AS gone, (SELECT count(*) FROM woken) AS woken
