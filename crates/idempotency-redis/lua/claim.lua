-- Claims a key on servers older than Redis 7.0, which lack `SET … NX GET`.
-- KEYS[1] record key; ARGV[1] pending JSON; ARGV[2] lease ms.
-- Returns the value already there, or nil after writing ours.
local current = redis.call('GET', KEYS[1])
if current then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
