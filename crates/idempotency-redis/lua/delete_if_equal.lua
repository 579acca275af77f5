-- Deletes a key only if it still holds the given value (an expired record we read), so
-- a record written in between is never removed.
-- KEYS[1] record key; ARGV[1] the value read; ARGV[2] '1' when the value is an abandoned
-- reservation: then only a key Redis will never expire is deleted (liveness is Redis's: a
-- reservation with a TTL may be the live one of a writer whose clock runs behind).
-- Returns the number of keys deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '1' and redis.call('PTTL', KEYS[1]) ~= -1 then
    return 0
  end
  return redis.call('DEL', KEYS[1])
end
return 0
