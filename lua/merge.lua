-- merge.lua: merge one batch summary into an environment's running statistics, atomically,
-- and return the merged statistics in the same round trip.
-- (Loaded after stats_lib.lua, which supplies the helpers used here.)
--
-- KEYS[1]  the env's stats hash, e.g. "rewardnorm:{gsm8k}"
-- ARGV[1]  batch count: decimal integer, 1 <= count < 2^53
-- ARGV[2]  batch mean: finite decimal float
-- ARGV[3]  batch m2: finite decimal float >= 0 (sum of squared deviations from the batch mean)
-- ARGV[4]  batch min: finite decimal float
-- ARGV[5]  batch max: finite decimal float >= min
--
-- Returns the merged {count, mean, m2, min, max} as strings ('%d' and '%.17g').
--
-- Errors (nothing is written when one is raised):
--   REWARDNORM_INVALID <key> ...    an argument is malformed
--   REWARDNORM_WRONGTYPE <key> ...  the key holds something other than a hash
--   REWARDNORM_CORRUPT <key> ...    a stored field is malformed (names the field and its value)
--   REWARDNORM_OVERFLOW <key> ...   the merged statistics would not be finite
--
-- Cost: O(1) whatever the batch size: the client sends a summary, not the values.

local err = check_arity('merge', 1, 5)
if err then return err end
local key = KEYS[1]

local batch
batch, err = parse_stats(key, ARGV, 'INVALID', 1)
if err then return err end
err = check_hash_or_none(key)
if err then return err end
local old
old, err = read_stats(key)
if err then return err end

local merged = batch
if old then
  -- Chan, Golub and LeVeque's pairwise update: exact in real arithmetic, stable in floats.
  local count = old.count + batch.count
  local delta = batch.mean - old.mean
  merged = {
    count = count,
    mean = old.mean + delta * (batch.count / count),
    m2 = old.m2 + batch.m2 + delta * delta * (old.count * batch.count / count),
    min = math.min(old.min, batch.min),
    max = math.max(old.max, batch.max),
  }
  if count > MAX_COUNT then
    return error_for('OVERFLOW', key, 'count would reach 2^53')
  end
  if merged.mean ~= merged.mean or math.abs(merged.mean) == math.huge
      or merged.m2 ~= merged.m2 or merged.m2 == math.huge then
    return error_for('OVERFLOW', key, 'merged mean or m2 is not finite')
  end
end
return write_stats(key, merged)
