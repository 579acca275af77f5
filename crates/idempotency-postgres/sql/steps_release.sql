WITH released AS (
    UPDATE idempotency_records AS r
    SET lease_expires_at = statement_timestamp()
    WHERE r.key_prefix = $1 AND r.operation = $2 AND r.idempotency_key = $3
      AND r.status = 'pending' AND r.owner_token = $4 AND r.fence = $5
    RETURNING 1
),
woken AS (SELECT pg_notify($6, $7) FROM released)
SELECT (SELECT count(*) FROM released) AS released, (SELECT count(*) FROM woken) AS woken
