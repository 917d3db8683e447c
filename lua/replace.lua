-- replace.lua: replace an environment's statistics atomically (checkpoint loads, restores).
-- (Loaded after stats_lib.lua, which supplies the helpers used here.)
--
-- KEYS[1]  the env's stats hash, e.g. "rewardnorm:{gsm8k}"
-- ARGV[1]  count: decimal integer, 0 <= count < 2^53 (0 deletes the hash: empty statistics)
-- ARGV[2]  mean, ARGV[3] m2 (>= 0), ARGV[4] min, ARGV[5] max (>= min): finite decimal floats
--
-- Returns the stored {count, mean, m2, min, max} as strings; {} when count is 0.
--
-- Errors (nothing is written when one is raised):
--   REWARDNORM_INVALID <key> ...    an argument is malformed
--   REWARDNORM_WRONGTYPE <key> ...  the key holds something other than a hash
--
-- Cost: O(1).

local err = check_arity('replace', {{1, 5}})
if err then return err end
local key = KEYS[1]

local stats
stats, err = parse_stats(key, ARGV, 'INVALID', 0)
if err then return err end
err = check_type(key, 'hash')
if err then return err end

if stats.count == 0 then
  redis.call('DEL', key)
  return {}
end
redis.call('DEL', key)
return write_stats(key, stats)
