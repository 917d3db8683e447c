-- stats_lib.lua: helpers shared by every operation that reads or writes a stats hash.
--
-- Not an operation of its own. As a script, an operation is this file followed by the
-- operation's file (merge.lua, replace.lua); in the Redis Function library, this file is the
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
-- Written beside the statistics for people reading the hash with redis-cli; never read back:
local DISPLAY_FIELDS = {'std'}
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

-- Read a stored stats hash: nil when absent, the parsed table, or nil plus an error reply.
local function read_stats(key)
  local stored, err = read_key(key, 'hash', 'HMGET', unpack(STAT_FIELDS))
  if err then
    return nil, err
  end
  for i = 1, #STAT_FIELDS do
    if stored[i] ~= false then
      return parse_stats(key, stored, 'CORRUPT', 1)
    end
  end
  return nil
end

-- Format stats as text: Redis would truncate Lua numbers in a reply to integers, and tostring
-- keeps only 14 digits. Absent stats (nil) format as zeros: count 0 means empty.
local function format_stats(stats)
  local texts = {string.format('%d', stats and stats.count or 0)}
  for i = 2, #STAT_FIELDS do
    texts[i] = string.format('%.17g', stats and stats[STAT_FIELDS[i]] or 0)
  end
  return texts
end

-- Store stats with a human-readable std; returns their texts.
local function write_stats(key, stats)
  local std = 0
  if stats.count >= 2 then
    std = math.sqrt(stats.m2 / stats.count)
  end
  local texts = format_stats(stats)
  local fields = {}
  for i = 1, #STAT_FIELDS do
    fields[2 * i - 1] = STAT_FIELDS[i]
    fields[2 * i] = texts[i]
  end
  fields[#fields + 1] = DISPLAY_FIELDS[1]
  fields[#fields + 1] = string.format('%.17g', std)
  redis.call('HSET', key, unpack(fields))
  return texts
end

-- The reply of an operation: one string, "count mean m2 min max" plus any extra words (one
-- bulk string parses faster in a client than an array of six).
local function reply_text(texts, extra)
  local reply = table.concat(texts, ' ')
  if extra then
    reply = reply .. ' ' .. extra
  end
  return reply
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
