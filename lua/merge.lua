-- merge.lua: merge one batch summary into an environment's running statistics (and, with a
-- half-life, its decayed statistics), atomically, exactly once, and return the env's record in
-- the same round trip. (Runs after stats_lib.lua, which supplies the helpers used here.)
--
-- KEYS[1]  the env's stats hash, e.g. "rewardnorm:{gsm8k}"
-- KEYS[2]  (optional) the sending client's batch record for this env; it shares the env's
--          hash tag: "rewardnorm:{gsm8k}:batches:<client id>"
-- ARGV[1]  the batch summary, "count mean m2 min max": count an integer 1 <= count < 2^53, the
--          others finite decimal numbers, m2 >= 0 (squared deviations from the batch mean),
--          min <= max; e.g. "4 0.5 3 -1 1"
-- ARGV[2]  (with KEYS[2]) the batch's sequence number: an integer >= 1 that this client never
--          uses twice for this env; a retry of the same batch sends the same number
-- ARGV[3]  (with KEYS[2]) seconds the batch record lives after its last use, an integer from 1
--          to MAX_RECORD_TTL (ten years, as MAX_BATCH_RECORD_TTL in _core/store_ops.py)
--
-- Exactly once: a batch whose sequence number the record shows as merged is not merged again
-- (a lost reply retried by the store, the driver or the caller under its batch_id); the reply
-- then carries the current statistics. The record and its rules are stats_lib.lua's
-- claim_batch, shared by every operation that must count a write once.
--
-- Frozen env (field frozen = 1): nothing is added and the hash is not written, but the batch
-- is recorded as handled, so a retry after an unfreeze is not counted either.
--
-- Decayed statistics (field half_life = H samples): a batch of n samples multiplies the stored
-- weight and wm2 by 2^(-n/H), then adds the batch with weight 1 per sample (weighted Chan).
-- So after batches B1..Bk, a sample of Bj weighs 2^(-a/H), a being the samples merged after Bj.
--
-- Identity: the first merge into an env that has none (new, or lost and recreated) sets its
-- epoch to the server time in microseconds and its origin to 'merge' (stats_lib.lua's
-- IDENTITY_FIELDS); later merges keep both.
--
-- Returns one string, the env's record in ENV_FIELDS order ("count mean m2 min max weight
-- wmean wm2 half_life frozen merges updated_at epoch origin"; integers '%d', a float this call computed
-- '%.17g', a float it left unchanged the text it read, which parses to the same double) then
-- one word: 1 when this call merged the batch, 0 when it had been merged before, 2 when the
-- env is frozen.
--
-- Errors (nothing is written when one is raised):
--   REWARDNORM_INVALID <key> ...    an argument is malformed
--   REWARDNORM_WRONGTYPE <key> ...  a key holds another type
--   REWARDNORM_CORRUPT <key> ...    a stored field is malformed or missing (names the field)
--   REWARDNORM_OVERFLOW <key> ...   the merged statistics would not be finite
--   REWARDNORM_STALE <key> ...      the sequence number is too far behind to be judged
--
-- Cost: O(1) whatever the batch size (the client sends a summary, not the values): one HMGET
-- and one HSET of the hash (of the fields that changed: min and max only when the batch
-- extends them), TIME, and with a record GET and SET EX; the record holds at most WINDOW gaps
-- (more gaps cost more: each call rewrites the list). Measured (benchmarks/server_cost.py):
-- 34-38x the server time of a no-op EVALSHA, with or without a half-life (benchmarks/README.md:
-- where it goes, and why).

local err = check_arity('merge', KEYS, ARGV, {1, 1, 2, 3})
if err then return err end
local key = KEYS[1]
local record_key = KEYS[2]

local batch
batch, err = parse_stats_arg(key, ARGV[1], 1)
if err then return err end
local env
env, err = read_env(key)
if err then return err end

-- Exactly once (stats_lib.lua's claim_batch): nil record and no error for a batch merged before.
local record, claimed
if record_key then
  record, err, claimed = claim_batch(key, record_key, ARGV[2], ARGV[3])
  if err then return err end
  if not claimed then
    local texts = format_env(env)
    texts[#ENV_FIELDS + 1] = '0'
    return table.concat(texts, ' ')
  end
end
if env.frozen then
  if record then
    store_batch_record(record_key, record, ARGV[3])
  end
  local texts = format_env(env)
  texts[#ENV_FIELDS + 1] = '2'
  return table.concat(texts, ' ')
end

local merged = batch
if env.stats then
  merged, err = merge_stats(key, env.stats, batch)
  if err then return err end
end
-- The env after this batch; `env` stays as read, so write_env stores only what changed. The
-- first merge into an env without an identity gives it one (origin 'merge').
local updated_at, time = server_time()
local new = {stats = merged, half_life = env.half_life, weight = 0, wmean = 0, wm2 = 0, frozen = false,
  merges = env.merges + 1, updated_at = updated_at, epoch = env.epoch or epoch_of(time),
  origin = env.origin or 'merge'}
if env.half_life then
  local decayed
  decayed, err = merge_decayed(key, env, env.half_life, batch, new)
  if not decayed then return err end
end
if record then
  store_batch_record(record_key, record, ARGV[3])
end
local texts = write_env(key, new, env)
texts[#ENV_FIELDS + 1] = '1'
return table.concat(texts, ' ')
