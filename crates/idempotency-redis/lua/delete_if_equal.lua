-- Deletes a key only if it still holds the given value (an expired record we read), so
-- a record written in between is never removed.
-- KEYS[1] record key; ARGV[1] the value read. Returns the number of keys deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
