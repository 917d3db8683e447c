-- replace.lua: replace an environment's statistics atomically (checkpoint loads, restores).
-- (Runs after stats_lib.lua, which supplies the helpers used here.)
--
-- KEYS[1]  the env's stats hash, e.g. "rewardnorm:{gsm8k}"
-- ARGV[1]  the statistics, "count mean m2 min max": count an integer 0 <= count < 2^53 (0
--          deletes the hash: empty statistics), the others finite decimal numbers, m2 >= 0,
--          min <= max; e.g. "4 0.5 3 -1 1"
--
-- Returns "count mean m2 min max" as stored ('%d' and '%.17g'); "0 0 0 0 0" when emptied.
--
-- Errors (nothing is written when one is raised):
--   REWARDNORM_INVALID <key> ...    an argument is malformed
--   REWARDNORM_WRONGTYPE <key> ...  the key holds something other than a hash
--
-- Cost: O(1): TYPE, DEL, HSET.

local err = check_arity('replace', KEYS, ARGV, {{1, 1}})
if err then return err end
local key = KEYS[1]

local stats
stats, err = parse_stats_arg(key, ARGV[1], 0)
if err then return err end
err = check_type(key, 'hash')
if err then return err end

redis.call('DEL', key)
if stats.count == 0 then
  return reply_text(format_stats(nil))
end
return reply_text(write_stats(key, stats))
