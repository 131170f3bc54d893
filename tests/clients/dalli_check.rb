# Drives kai with Dalli, Ruby's (binary-protocol) memcached client, as Debian ships it.
# Usage: dalli_check.rb SERVERS [USER PASSWORD]; SERVERS is host:port[,host:port...].
# Exits non-zero with the failed check.
require 'dalli'

servers = ARGV[0].split(',')
options = { socket_timeout: 5, socket_max_failures: 1, down_retry_delay: 60 }
options.merge!(username: ARGV[1], password: ARGV[2]) if ARGV.length == 3
# One client per server: every call must be answered by that node (no failover).
clients = servers.map { |s| Dalli::Client.new(s, options) }

# Dalli answers a storage command with the new cas, or 0/false when nothing was stored.
def stored(result)
  result.is_a?(Integer) && result.positive? ? 'stored' : 'not stored'
end

def check(what, got, wanted)
  raise "#{what}: got #{got.inspect}, wanted #{wanted.inspect}" unless got == wanted
end

first = clients.first
first.flush
check('set', stored(first.set('plain', 'value', 0, raw: true)), 'stored')
clients.each_with_index do |c, i|
  check("get via #{i}", c.get('plain'), 'value')
end
# Ruby objects go through Marshal and the flags say so.
first.set('object', { 'a' => [1, 2] })
check('object', clients.last.get('object'), { 'a' => [1, 2] })
blob = (0..255).map(&:chr).join.b * 40
first.set('blob', blob, 0, raw: true)
check('blob', clients.last.get('blob', raw: true), blob)

keys = (0...30).map { |i| "many#{i}" }
keys.each_with_index { |k, i| first.set(k, "v#{i}", 0, raw: true) }
many = clients.last.get_multi(*(keys + ['absent']))
check('get_multi size', many.size, 30)
check('get_multi value', many['many7'], 'v7')

check('add existing', stored(first.add('plain', 'x', 0, raw: true)), 'not stored')
check('add new', stored(first.add('fresh', 'x', 0, raw: true)), 'stored')
check('replace missing', stored(first.replace('missing', 'x', 0, raw: true)), 'not stored')
check('append', first.append('plain', '-tail'), true)
check('prepend', first.prepend('plain', 'head-'), true)
check('after append', clients.last.get('plain'), 'head-value-tail')

check('delete', first.delete('fresh'), true)
check('delete missing', first.delete('fresh') ? 'deleted' : 'not found', 'not found')
check('get deleted', clients.last.get('fresh'), nil)

check('incr default', first.incr('counter', 1, 0, 10), 10)
check('incr', first.incr('counter', 5), 15)
check('decr', clients.last.decr('counter', 20), 0)
check('incr missing', first.incr('nocounter', 1), nil)

check('cas', stored(first.cas('plain') { |v| v + '!' }), 'stored')
check('after cas', clients.last.get('plain'), 'head-value-tail!')
value, cas = first.get_cas('plain')
check('get_cas', value, 'head-value-tail!')
check('set_cas stale', stored(first.set_cas('plain', 'other', cas + 1, 0, raw: true)), 'not stored')
check('set_cas', stored(first.set_cas('plain', 'swapped', cas, 0, raw: true)), 'stored')

check('touch', first.touch('plain', 3600), true)
check('touch missing', first.touch('absent', 3600), nil)
check('gat', first.gat('plain', 3600), 'swapped')

first.set('short', 'lived', 1, raw: true)
sleep 2.1
check('expired', clients.last.get('short'), nil)

versions = first.version
check('version', versions.values.first.start_with?('1.6'), true)
stats = first.stats
check('stats', stats.values.first.key?('curr_items'), true)
puts 'dalli: all checks passed'
