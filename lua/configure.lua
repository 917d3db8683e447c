-- configure.lua: set or clear an environment's half-life (decayed statistics), atomically.
-- (Runs after stats_lib.lua, which supplies the helpers used here.)
--
-- KEYS[1]  the env's stats hash, e.g. "rewardnorm:{gsm8k}"
-- ARGV[1]  the half-life in samples, a positive finite decimal number (e.g. "10000"), or
--          "none" to stop keeping decayed statistics
--
-- Setting a half-life, or changing it, starts the decayed statistics afresh (weight 0): they
-- then follow the definition exactly for the batches merged from now on. Setting the half-life
-- the env already has changes nothing (compared as numbers: a stored "1e4" is 10000). "none"
-- deletes half_life, weight, wmean and wm2. The totals, the frozen flag and the activity are
-- untouched, and a malformed stored half-life is overwritten (this is how to repair it).
--
-- Returns "1" when the configuration changed, "0" when it already was so.
--
-- Errors (nothing is written when one is raised):
--   REWARDNORM_INVALID <key> ...    the argument is malformed
--   REWARDNORM_WRONGTYPE <key> ...  the key holds something other than a hash
--
-- Cost: O(1): HGET, then HSET or HDEL.

local err = check_arity('configure', KEYS, ARGV, {1, 1})
if err then return err end
local key = KEYS[1]

local wanted = nil  -- the half-life as a number, nil for "none"
if ARGV[1] ~= 'none' then
  wanted = parse_finite(ARGV[1])
  if wanted == nil or wanted <= 0 then
    return error_for('INVALID', key, 'half_life must be a positive finite number or "none", got ' .. quoted(ARGV[1]))
  end
end
local stored
stored, err = read_key(key, 'hash', 'HGET', 'half_life')
if err then return err end
-- Compared as numbers: a stored "1e4" is the half-life 10000 (a malformed one parses to nil).
if (stored and parse_finite(stored) or nil) == wanted then
  return '0'
end
if wanted == nil then
  redis.call('HDEL', key, 'half_life', unpack(DECAY_FIELDS))
else
  local fields = {'half_life', string.format('%.17g', wanted)}
  for _, field in ipairs(DECAY_FIELDS) do
    fields[#fields + 1] = field
    fields[#fields + 1] = '0'
  end
  redis.call('HSET', key, unpack(fields))
end
return '1'
