WITH doomed AS (
    SELECT key_prefix, operation, idempotency_key FROM idempotency_records
    WHERE expires_at <= statement_timestamp()
    ORDER BY expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
DELETE FROM idempotency_records AS r
USING doomed AS d
WHERE r.key_prefix = d.key_prefix AND r.operation = d.operation
  AND r.idempotency_key = d.idempotency_key AND r.expires_at <= statement_timestamp()
