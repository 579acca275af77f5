WITH claimed AS (
    INSERT INTO idempotency_records AS r
        (key_prefix, operation, idempotency_key, status, fingerprint, owner_token, fence,
         record, created_at, expires_at, lease_expires_at)
    SELECT $1, $2, $3, 'pending', $4, $5, nextval('idempotency_fence_seq'),
           $6::text || idempotency_record_time(n.t) || '","expires_at":"'
               || idempotency_record_time(n.t + n.d) || $7::text,
           n.t, n.t + n.d, n.t + n.d
    FROM (SELECT statement_timestamp() AS t, $8::bigint * interval '1 microsecond' AS d) AS n
    ON CONFLICT (key_prefix, operation, idempotency_key) DO UPDATE
        SET status = 'pending', fingerprint = excluded.fingerprint,
            owner_token = excluded.owner_token, fence = excluded.fence,
            record = excluded.record, created_at = excluded.created_at,
            expires_at = excluded.expires_at, lease_expires_at = excluded.lease_expires_at,
            run_id = NULL, recovery_point = NULL, step_state = NULL
        WHERE r.expires_at <= statement_timestamp()
    RETURNING r.record, r.fence, r.status
)
SELECT true AS acquired, record, fence, status FROM claimed
UNION ALL
SELECT false, record, fence, status FROM idempotency_records
WHERE key_prefix = $1 AND operation = $2 AND idempotency_key = $3
  AND expires_at > statement_timestamp()
  AND NOT EXISTS (SELECT 1 FROM claimed)
