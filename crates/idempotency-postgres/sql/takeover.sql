UPDATE idempotency_records AS r
SET status = 'pending', fingerprint = $4, owner_token = $5,
    fence = nextval('idempotency_fence_seq'),
    record = $6::text || idempotency_record_time(n.t) || '","expires_at":"'
        || idempotency_record_time(n.t + n.d) || $7::text,
    created_at = n.t, expires_at = n.t + n.d, lease_expires_at = n.t + n.d,
    run_id = NULL, recovery_point = NULL, step_state = NULL
FROM (SELECT statement_timestamp() AS t, $8::bigint * interval '1 microsecond' AS d) AS n
WHERE r.key_prefix = $1 AND r.operation = $2 AND r.idempotency_key = $3
  AND r.status = 'pending' AND r.record = $9
RETURNING r.fence
