-- stats_lib.lua: helpers shared by every operation that reads or writes a stats hash.
--
-- Not an operation of its own. As a script, an operation is this file followed by the
-- operation's file (merge.lua, replace.lua, ...); in the Redis Function library, this file is the
-- library's top level and each operation's file the body of a function(KEYS, ARGV). Either
-- way validation is written once. `shared-rewardnorm lua NAME` prints an assembled script,
-- `shared-rewardnorm lua library` the Function library.
--
-- Helpers that find a problem return nil plus an error reply and never raise, so an operation
-- stops before it writes anything.

-- The stats schema, named once for Lua (shared_rewardnorm/schema.py names it once for Python;
-- tests/test_schema.py checks that both agree). Every list of fields below derives from these.
-- The totals, in the order operations receive and return them:
local STAT_FIELDS = {'count', 'mean', 'm2', 'min', 'max'}
-- The decayed statistics (total weight, weighted mean, weighted sum of squared deviations),
-- kept only while the env has a half-life:
local DECAY_FIELDS = {'weight', 'wmean', 'wm2'}
-- The env's configuration, set by configure.lua and freeze.lua (absent: no decay, not frozen):
local CONFIG_FIELDS = {'half_life', 'frozen'}
-- Written by each merge: batches merged since the last replace, and the server time of the
-- last one (milliseconds since the epoch); absent: 0, never.
local ACTIVITY_FIELDS = {'merges', 'updated_at'}
-- Written beside the statistics for people reading the hash with redis-cli; never read back:
local DISPLAY_FIELDS = {'std'}

-- Everything an env's hash holds that is read back, in the order of reads and replies. (Plain
-- loops: while a Function library loads, globals such as ipairs and unpack are not available.)
local ENV_FIELDS = {}
local ENV_GROUPS = {STAT_FIELDS, DECAY_FIELDS, CONFIG_FIELDS, ACTIVITY_FIELDS}
for g = 1, #ENV_GROUPS do
  for i = 1, #ENV_GROUPS[g] do
    ENV_FIELDS[#ENV_FIELDS + 1] = ENV_GROUPS[g][i]
  end
end
-- The fields after the totals (decay, configuration, activity): an env's "state".
local STATE_FIELDS = {}
for i = #STAT_FIELDS + 1, #ENV_FIELDS do
  STATE_FIELDS[#STATE_FIELDS + 1] = ENV_FIELDS[i]
end
-- The largest count below 2^53: every integer up to it is exact in a Lua number (a double),
-- and any decimal text at or above 2^53 parses to at least 2^53, so the check cannot round away.
local MAX_COUNT = 9007199254740991

-- tonumber() accepts 'nan', 'inf', '1e400' (-> inf), ' 1' and hex ('0x10'): a number is valid
-- only if its text is plain decimal (digits, sign, point, exponent) and its value finite.
local function parse_finite(text)
  if type(text) ~= 'string' or not string.find(text, '^[0-9eE.+-]+$') then
    return nil
  end
  local value = tonumber(text)
  if value == nil or value ~= value or value == math.huge or value == -math.huge then
    return nil
  end
  return value
end

local function quoted(value)
  return string.format('%q', tostring(value))
end

local function error_for(kind, key, detail)
  return redis.error_reply('REWARDNORM_' .. kind .. ' ' .. key .. ' ' .. detail)
end

-- Parse five texts (count, mean, m2, min, max) into a stats table. `kind` is INVALID for
-- arguments and CORRUPT for stored fields; `min_count` is 1 for a batch, 0 for a replacement.
local function parse_stats(key, texts, kind, min_count)
  local stats = {}
  for i = 1, #STAT_FIELDS do
    if texts[i] == false then  -- HMGET's answer for an absent field
      return nil, error_for(kind, key, STAT_FIELDS[i] .. ' is missing')
    end
    local value = parse_finite(texts[i])
    if value == nil then
      return nil, error_for(kind, key, STAT_FIELDS[i] .. ' must be a finite decimal number, got '
        .. quoted(texts[i]))
    end
    stats[STAT_FIELDS[i]] = value
  end
  local count = stats.count
  if count < min_count or count > MAX_COUNT or count ~= math.floor(count) then
    return nil, error_for(kind, key, 'count must be an integer >= ' .. min_count
      .. ' and < 2^53, got ' .. quoted(texts[1]))
  end
  if stats.m2 < 0 then
    return nil, error_for(kind, key, 'm2 must be >= 0, got ' .. quoted(texts[3]))
  end
  if stats.min > stats.max then
    return nil, error_for(kind, key, 'min ' .. quoted(texts[4]) .. ' is greater than max '
      .. quoted(texts[5]))
  end
  return stats
end

local function parse_count(text)
  local value = parse_finite(text)
  if value == nil or value < 0 or value > MAX_COUNT or value ~= math.floor(value) then
    return nil
  end
  return value
end

-- Parse an env's state, texts in STATE_FIELDS order (false: absent) into `env`:
-- env.half_life (nil: no decay), env.weight/wmean/wm2 (only with a half-life), env.frozen,
-- env.merges and env.updated_at (0 when absent). `kind` as for parse_stats.
local function parse_state(key, texts, kind, env)
  local text = {}
  for i = 1, #STATE_FIELDS do
    text[STATE_FIELDS[i]] = texts[i]
  end
  env.half_life = nil
  if text.half_life ~= false then
    local half_life = parse_finite(text.half_life)
    if half_life == nil or half_life <= 0 then
      return nil, error_for(kind, key, 'half_life must be a positive finite number, got ' .. quoted(text.half_life))
    end
    env.half_life = half_life
    for _, field in ipairs(DECAY_FIELDS) do
      if text[field] == false then
        return nil, error_for(kind, key, field .. ' is missing')
      end
      local value = parse_finite(text[field])
      if value == nil or (field ~= 'wmean' and value < 0) then
        return nil, error_for(kind, key, field .. ' must be a finite decimal number'
          .. (field ~= 'wmean' and ' >= 0' or '') .. ', got ' .. quoted(text[field]))
      end
      env[field] = value
    end
  end
  if text.frozen ~= false and text.frozen ~= '0' and text.frozen ~= '1' then
    return nil, error_for(kind, key, 'frozen must be 0 or 1, got ' .. quoted(text.frozen))
  end
  env.frozen = text.frozen == '1'
  for _, field in ipairs(ACTIVITY_FIELDS) do
    local value = 0
    if text[field] ~= false then
      value = parse_count(text[field])
      if value == nil then
        return nil, error_for(kind, key, field .. ' must be an integer >= 0 and < 2^53, got ' .. quoted(text[field]))
      end
    end
    env[field] = value
  end
  return env
end

-- Split argument `label` into exactly #names words separated by single spaces, or nil plus
-- an error reply naming the expected form ('stats must be "count mean m2 min max"').
local function split_words(key, label, text, names)
  local texts = {}
  local start = 1
  for i = 1, #names - 1 do
    local space = type(text) == 'string' and string.find(text, ' ', start, true)
    if not space then
      return nil, error_for('INVALID', key, label .. ' must be "' .. table.concat(names, ' ') .. '", got ' .. quoted(text))
    end
    texts[i] = string.sub(text, start, space - 1)
    start = space + 1
  end
  texts[#names] = string.sub(text, start)
  return texts
end

-- Parse the stats argument: "count mean m2 min max", five numbers separated by single spaces
-- (one argument rather than five: fewer arguments make every call cheaper to send).
local function parse_stats_arg(key, text, min_count)
  local texts, err = split_words(key, 'stats', text, STAT_FIELDS)
  if err then
    return nil, err
  end
  return parse_stats(key, texts, 'INVALID', min_count)
end

-- Refuse to touch a key that holds anything but `expected` (or nothing). For writes that do
-- not read the key first (a replace); reads check through read_key at no extra cost.
local function check_type(key, expected)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= expected and kind ~= 'none' then
    return error_for('WRONGTYPE', key, 'holds a ' .. kind .. ', not a ' .. expected)
  end
  return nil
end

-- Run a read command on `key`: a key of another type becomes a REWARDNORM_WRONGTYPE error
-- reply (instead of aborting with Redis's own error), so no TYPE call is needed.
local function read_key(key, expected, command, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    local message = tostring(reply.err)  -- fakeredis hands the message over as userdata
    if string.find(message, 'WRONGTYPE', 1, true) then
      return nil, check_type(key, expected)
    end
    return nil, redis.error_reply(message)
  end
  return reply
end

-- Read an env's hash: a table with `stats` (nil when the env has no statistics) and the
-- state of parse_state, or nil plus an error reply. One HMGET whatever the env holds.
local function read_env(key)
  local stored, err = read_key(key, 'hash', 'HMGET', unpack(ENV_FIELDS))
  if err then
    return nil, err
  end
  local env = {}
  for i = 1, #STAT_FIELDS do
    if stored[i] ~= false then
      env.stats, err = parse_stats(key, stored, 'CORRUPT', 1)
      if err then
        return nil, err
      end
      break
    end
  end
  return parse_state(key, {unpack(stored, #STAT_FIELDS + 1)}, 'CORRUPT', env)
end

-- The totals as texts ('%d' and '%.17g': Redis would truncate Lua numbers in a reply to
-- integers, and tostring keeps only 14 digits). Absent stats (nil) format as zeros: count 0
-- means empty.
local function format_stats(stats)
  local texts = {string.format('%d', stats and stats.count or 0)}
  for i = 2, #STAT_FIELDS do
    texts[i] = string.format('%.17g', stats and stats[STAT_FIELDS[i]] or 0)
  end
  return texts
end

-- Every field of ENV_FIELDS as text, for replies: an absent half-life, decay and activity
-- format as 0.
local function format_env(env)
  local texts = format_stats(env.stats)
  for _, field in ipairs(DECAY_FIELDS) do
    texts[#texts + 1] = string.format('%.17g', env.half_life and env[field] or 0)
  end
  texts[#texts + 1] = string.format('%.17g', env.half_life or 0)
  texts[#texts + 1] = env.frozen and '1' or '0'
  for _, field in ipairs(ACTIVITY_FIELDS) do
    texts[#texts + 1] = string.format('%d', env[field])
  end
  return texts
end

-- Store the env in one HSET: the totals (with a human-readable std) unless empty, the decayed
-- statistics with a half-life, the activity unless 0, and `extra` field/value pairs (the
-- configuration, for a replace; merges leave it alone). Returns the texts of format_env.
local function write_env(key, env, extra)
  local texts = format_env(env)
  local fields = extra or {}
  local function put(field, text)
    fields[#fields + 1] = field
    fields[#fields + 1] = text
  end
  if env.stats then
    for i = 1, #STAT_FIELDS do
      put(STAT_FIELDS[i], texts[i])
    end
    local std = 0
    if env.stats.count >= 2 then
      std = math.sqrt(env.stats.m2 / env.stats.count)
    end
    put(DISPLAY_FIELDS[1], string.format('%.17g', std))
  end
  if env.half_life then
    for i = 1, #DECAY_FIELDS do
      put(DECAY_FIELDS[i], texts[#STAT_FIELDS + i])
    end
  end
  for i = 1, #ACTIVITY_FIELDS do
    if env[ACTIVITY_FIELDS[i]] ~= 0 then
      put(ACTIVITY_FIELDS[i], texts[#ENV_FIELDS - #ACTIVITY_FIELDS + i])
    end
  end
  if #fields > 0 then
    redis.call('HSET', key, unpack(fields))
  end
  return texts
end

-- The reply of an operation: one string, the words of ENV_FIELDS plus any extra words (one
-- bulk string parses faster in a client than an array).
local function reply_text(texts, extra)
  local reply = table.concat(texts, ' ')
  if extra then
    reply = reply .. ' ' .. extra
  end
  return reply
end

-- The server's clock in milliseconds since the epoch (scripts replicate by effects, so
-- reading TIME is allowed and replicas store the primary's value).
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- Operations take a fixed number of keys and arguments; `forms` lists the accepted {keys, args}.
local function check_arity(name, keys, args, forms)
  local accepted = {}
  for _, form in ipairs(forms) do
    if #keys == form[1] and #args == form[2] then
      return nil
    end
    accepted[#accepted + 1] = form[1] .. ' key(s) and ' .. form[2] .. ' argument(s)'
  end
  return redis.error_reply('REWARDNORM_INVALID ' .. name .. ' expects ' .. table.concat(accepted, ' or ')
    .. ', got ' .. #keys .. ' and ' .. #args)
end
