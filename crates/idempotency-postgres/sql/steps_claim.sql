WITH n AS (
    SELECT statement_timestamp() AS t,
           $8::bigint * interval '1 microsecond' AS l,
           $9::bigint * interval '1 microsecond' AS d
),
claimed AS (
    INSERT INTO idempotency_records AS r
        (key_prefix, operation, idempotency_key, status, fingerprint, owner_token, fence,
         record, created_at, expires_at, lease_expires_at, run_id, recovery_point,
         step_state)
    SELECT $1, $2, $3, 'pending', $4, $5, nextval('idempotency_fence_seq'),
           $6::text || idempotency_record_time(n.t) || '","expires_at":"'
               || idempotency_record_time(n.t + n.d) || $7::text,
           n.t, n.t + n.d, n.t + n.l, $5, 'started', '[]'
    FROM n
    ON CONFLICT (key_prefix, operation, idempotency_key) DO UPDATE
        SET status = 'pending', fingerprint = excluded.fingerprint,
            owner_token = excluded.owner_token, fence = excluded.fence,
            record = excluded.record, created_at = excluded.created_at,
            expires_at = excluded.expires_at, lease_expires_at = excluded.lease_expires_at,
            -- A live row here is a run whose owner's lease ended: resume it where it
            -- stopped. An expired row is nothing: start afresh.
            run_id = CASE WHEN r.expires_at > statement_timestamp() THEN r.run_id
                          ELSE excluded.run_id END,
            recovery_point = CASE WHEN r.expires_at > statement_timestamp()
                                  THEN r.recovery_point ELSE excluded.recovery_point END,
            step_state = CASE WHEN r.expires_at > statement_timestamp() THEN r.step_state
                              ELSE excluded.step_state END
        WHERE r.expires_at <= statement_timestamp()
           OR (r.status = 'pending' AND r.run_id IS NOT NULL
               AND r.lease_expires_at <= statement_timestamp()
               AND (r.fingerprint IS NULL OR excluded.fingerprint IS NULL
                    OR r.fingerprint = excluded.fingerprint))
    RETURNING r.fence, r.run_id, r.step_state
)
SELECT true AS acquired, fence, run_id, step_state,
       NULL::text AS status, NULL::text AS fingerprint, NULL::text AS record
FROM claimed
UNION ALL
SELECT false, fence, NULL, NULL, status, fingerprint, record FROM idempotency_records
WHERE key_prefix = $1 AND operation = $2 AND idempotency_key = $3
  AND expires_at > statement_timestamp()
  AND NOT EXISTS (SELECT 1 FROM claimed)
