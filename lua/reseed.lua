-- reseed.lua: put a client's last view of an env back after the env's statistics were lost
-- (the server came back empty, a failover to a replica that had nothing, a FLUSHDB, eviction),
-- atomically and at most once per loss: the first client to ask wins. (Runs after
-- stats_lib.lua, which supplies the helpers used here.)
--
-- KEYS[1]  the env's stats hash, e.g. "rewardnorm:{gsm8k}"
-- ARGV[1]  the epoch the client found (the lost statistics' successor: the epoch a merge gave
--          the recreated env), or '0' for an env found without an identity
-- ARGV[2]  the client's last view of the totals, "count mean m2 min max" (count >= 1)
-- ARGV[3]  that view's state, "weight wmean wm2 half_life frozen merges updated_at" (as
--          replace.lua's ARGV[2]; half_life 0 for none)
--
-- If the env's epoch is still ARGV[1], the env becomes the view merged with what it holds now
-- (the batches merged since the loss, as one batch: Chan's merge for the totals, the weighted
-- merge for the decayed statistics), with the view's configuration (half-life, frozen flag;
-- what the env holds now where the view has none), merges added up, and a new identity (origin
-- 'reseed'). Otherwise somebody changed the env since the client looked (another client
-- re-seeded it, or a deliberate replace), and nothing is written: a deliberate reset is never
-- undone, and a second client cannot count the view twice.
--
-- Returns the env's record in ENV_FIELDS order (as merge.lua), then one word: 1 when this call
-- re-seeded the env, 0 when it did not.
--
-- Errors (nothing is written when one is raised): REWARDNORM_INVALID, REWARDNORM_WRONGTYPE,
-- REWARDNORM_CORRUPT and REWARDNORM_OVERFLOW, as for merge.lua.
--
-- Cost: O(1): HMGET, TIME, DEL, HSET; runs once per loss per env.

local err = check_arity('reseed', KEYS, ARGV, {1, 3})
if err then return err end
local key = KEYS[1]

if not string.find(ARGV[1], '^[0-9]+$') then
  return error_for('INVALID', key, 'expected epoch must be an integer (0: none), got ' .. quoted(ARGV[1]))
end
local view
view, err = parse_stats_arg(key, ARGV[2], 1)
if err then return err end
local seed
seed, err = parse_state_arg(key, ARGV[3], {stats = view})
if err then return err end
local env
env, err = read_env(key)
if err then return err end

if (env.epoch or '0') ~= ARGV[1] then
  local texts = format_env(env)
  texts[#ENV_FIELDS + 1] = '0'
  return table.concat(texts, ' ')
end

local updated_at, time = server_time()
local new = {stats = view, half_life = seed.half_life or env.half_life, weight = seed.weight or 0,
  wmean = seed.wmean or 0, wm2 = seed.wm2 or 0, frozen = seed.frozen or env.frozen,
  merges = seed.merges + env.merges, updated_at = updated_at, epoch = epoch_of(time), origin = 'reseed'}
if not seed.half_life and env.half_life then  -- configured since the loss: its decayed statistics
  new.weight, new.wmean, new.wm2 = env.weight, env.wmean, env.wm2
end
if env.stats then
  new.stats, err = merge_stats(key, view, env.stats)
  if err then return err end
  if seed.half_life then
    local decayed
    decayed, err = merge_decayed(key, seed, seed.half_life, env.stats, new)
    if not decayed then return err end
  end
end
redis.call('DEL', key)
local texts = write_env(key, new, nil, config_pairs(new))
texts[#ENV_FIELDS + 1] = '1'
return table.concat(texts, ' ')
