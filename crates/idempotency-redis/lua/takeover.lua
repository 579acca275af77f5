-- Takes over a key whose value no client can read, or an abandoned reservation: replaces
-- it with our pending record only if it still holds exactly the bytes that were found (so
-- a record written meanwhile is never lost), or claims it if it emptied meanwhile.
-- KEYS[1] record key; ARGV[1] the bytes found; ARGV[2] pending JSON; ARGV[3] lease ms;
-- ARGV[4] '1' when the bytes are an abandoned reservation: then only a key Redis will
-- never expire is taken over (liveness is Redis's: a key with a TTL is left to expire).
-- Returns nil when the key is now ours, or the value that holds it now.
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return current
end
if current and ARGV[4] == '1' and redis.call('PTTL', KEYS[1]) ~= -1 then
  return current
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return false
