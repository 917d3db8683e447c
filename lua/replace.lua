-- replace.lua: replace an environment's statistics atomically (set, reset, checkpoint loads,
-- restores). (Runs after stats_lib.lua, which supplies the helpers used here.)
--
-- KEYS[1]  the env's stats hash, e.g. "rewardnorm:{gsm8k}"
-- ARGV[1]  the statistics, "count mean m2 min max": count an integer 0 <= count < 2^53 (0:
--          empty statistics), the others finite decimal numbers, m2 >= 0, min <= max;
--          e.g. "4 0.5 3 -1 1"
-- ARGV[2]  (optional) the env's whole state, "weight wmean wm2 half_life frozen merges
--          updated_at" (a snapshot's): half_life 0 for none (then weight, wmean and wm2 0),
--          else > 0 with weight >= 0 and wm2 >= 0; frozen 0 or 1; merges and updated_at
--          integers >= 0. Everything is stored as given.
--
-- Without ARGV[2] the configuration stays (half_life and frozen, as stored), the decayed
-- statistics restart empty (weight 0) and the activity (merges, updated_at) is cleared.
-- Either way the statistics get a new identity (epoch: the server time in microseconds; origin
-- 'replace'), so clients can tell a deliberate replacement (set, reset, restore) from a loss:
-- the hash is kept, with its identity, even when it holds no statistics.
--
-- Returns the env's record as stored, in ENV_FIELDS order, as merge.lua (without its last word).
--
-- Errors (nothing is written when one is raised):
--   REWARDNORM_INVALID <key> ...    an argument is malformed
--   REWARDNORM_WRONGTYPE <key> ...  the key holds something other than a hash
--
-- Cost: O(1): TIME, HMGET (without ARGV[2]) or TYPE, DEL, HSET.

local err = check_arity('replace', KEYS, ARGV, {1, 1, 1, 2})
if err then return err end
local key = KEYS[1]

local stats
stats, err = parse_stats_arg(key, ARGV[1], 0)
if err then return err end
if stats.count == 0 then
  stats = nil
end

local _, time = server_time()
-- A deliberate replacement: new statistics, so a new identity, marked as deliberate.
local env = {stats = stats, merges = 0, updated_at = 0, epoch = epoch_of(time), origin = 'replace'}
local config = {}  -- field/value pairs of the configuration to store
if ARGV[2] then
  env, err = parse_state_arg(key, ARGV[2], env)
  if err then return err end
  err = check_type(key, 'hash')
  if err then return err end
  config = config_pairs(env)
else
  -- Keep the stored configuration as it is (a malformed value stays, for reads to report).
  local stored
  stored, err = read_key(key, 'hash', 'HMGET', unpack(CONFIG_FIELDS))
  if err then return err end
  for i = 1, #CONFIG_FIELDS do
    if stored[i] then
      config[#config + 1] = CONFIG_FIELDS[i]
      config[#config + 1] = stored[i]
    end
  end
  local half_life = parse_finite(stored[HALF_LIFE_AT - CONFIG_AT])
  env.half_life = half_life and half_life > 0 and half_life or nil
  env.weight, env.wmean, env.wm2 = 0, 0, 0
  env.frozen = stored[FROZEN_AT - CONFIG_AT] == '1'
end

redis.call('DEL', key)
return table.concat(write_env(key, env, nil, config), ' ', 1, #ENV_FIELDS)
