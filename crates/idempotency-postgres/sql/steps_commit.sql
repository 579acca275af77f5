UPDATE idempotency_records AS r
SET recovery_point = $6, step_state = $7,
    lease_expires_at = statement_timestamp() + $8::bigint * interval '1 microsecond'
WHERE r.key_prefix = $1 AND r.operation = $2 AND r.idempotency_key = $3
  AND r.status = 'pending' AND r.owner_token = $4 AND r.fence = $5
RETURNING r.fence
