-- prompt_configure.lua: set a prompt set's decay and (while it holds no prompts) its bucket
-- count, for every writer at once. (Runs after stats_lib.lua.)
--
-- KEYS[1]  the prompt set's settings hash, "<ns>:{<env>}:prompts"
-- ARGV[1]  the decay rho in (0, 1], or '' to leave it
-- ARGV[2]  the bucket count (1 to MAX_PROMPT_BUCKETS), or '' to leave it. Refused once the set's
--          first prompt is written with another count (prompts would be looked up in the wrong
--          bucket): forget the set first.
--
-- ARGV[3]  (optional) 'replace': give the set a new identity of origin 'replace' (a restore, so
--          that clients tell it from a loss); without it a set without an identity gets one of
--          origin 'configure' when this call writes.
--
-- A new decay applies from the next visit of each prompt on: weights already stored keep the
-- decay of the visits that made them. Returns "<decay> <buckets> <changed> <epoch> <origin>"
-- (changed: 1 or 0; epoch '0' and origin '-' for a set without an identity).

local err = check_arity('prompt_configure', KEYS, ARGV, {1, 2, 1, 3})
if err then return err end
local key = KEYS[1]
local _, prefix_err = prompt_bucket_prefix(key)
if prefix_err then return prefix_err end
local settings
settings, err = read_prompt_settings(key)
if err then return err end
local fields = {}
if ARGV[1] ~= '' then
  local decay
  decay, err = parse_decay(key, ARGV[1], 'INVALID')
  if err then return err end
  if decay ~= settings.decay then
    settings.decay = decay
    fields[#fields + 1] = 'decay'
    fields[#fields + 1] = string.format('%.17g', decay)
  end
end
if ARGV[2] ~= '' then
  local buckets
  buckets, err = parse_bucket_count(key, ARGV[2], 'INVALID')
  if err then return err end
  if buckets ~= settings.buckets or not settings.stored then
    if settings.stored then
      return error_for('INVALID', key, 'the prompt set already uses ' .. settings.buckets .. ' buckets; forget it '
        .. 'before choosing another count')
    end
    settings.buckets = buckets
    fields[#fields + 1] = 'buckets'
    fields[#fields + 1] = string.format('%d', buckets)
  end
end
local renew = ARGV[3] ~= nil
if renew and ARGV[3] ~= 'replace' then
  return error_for('INVALID', key, 'the third argument must be replace, got ' .. quoted(ARGV[3]))
end
if #fields > 0 then
  redis.call('HSET', key, unpack(fields))
  redis.call('PERSIST', key)  -- (a forgotten set's tombstone becomes the settings)
end
if #fields > 0 or renew then
  stamp_prompt_set(key, settings, renew and 'replace' or 'configure', renew)
end
return string.format('%.17g %d %d %s %s', settings.decay, settings.buckets, (#fields > 0 or renew) and 1 or 0,
  settings.epoch or '0', settings.origin or '-')
