-- A downstream write fenced by a fencing token: the hash at KEYS[1] takes `value` only
-- when the token is larger than the one it last accepted.
-- ARGV[1] value; ARGV[2] token (a decimal integer below 2^53).
-- Returns 1 when written, 0 when refused (an older or equal token).
local last = redis.call('HGET', KEYS[1], 'fence')
if last and tonumber(last) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'fence', ARGV[2])
return 1
