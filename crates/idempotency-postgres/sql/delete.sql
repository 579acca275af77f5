WITH gone AS (
    DELETE FROM idempotency_records AS r
    USING unnest($2::text[], $3::text[]) AS k(operation, idempotency_key)
    WHERE r.key_prefix = $1 AND r.operation = k.operation
      AND r.idempotency_key = k.idempotency_key
    RETURNING r.operation, r.idempotency_key, r.expires_at > statement_timestamp() AS live
),
woken AS (
    SELECT pg_notify($4, $1 || operation || ':' || idempotency_key) FROM gone
)
SELECT (SELECT count(*) FROM gone WHERE live) AS live, (SELECT count(*) FROM woken) AS woken
