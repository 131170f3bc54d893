<?php
// Drives kai with PHP's Memcached extension (libmemcached) in binary mode.
// Usage: php php_memcached_check.php HOST:PORT[,HOST:PORT...] [USER PASSWORD]
// Exits non-zero with the failed check.
$servers = explode(',', $argv[1]);
function client($server, $argv) {
    $m = new Memcached();
    $m->setOption(Memcached::OPT_BINARY_PROTOCOL, true);
    $m->setOption(Memcached::OPT_CONNECT_TIMEOUT, 5000);
    $m->setOption(Memcached::OPT_RECV_TIMEOUT, 5000000);
    $m->setOption(Memcached::OPT_SEND_TIMEOUT, 5000000);
    [$host, $port] = explode(':', $server);
    $m->addServer($host, (int)$port);
    if (count($argv) == 4) {
        $m->setSaslAuthData($argv[2], $argv[3]);
    }
    return $m;
}
function check($what, $got, $wanted, $m) {
    if ($got !== $wanted) {
        fwrite(STDERR, "$what: got " . var_export($got, true) . ", wanted " .
            var_export($wanted, true) . " (" . $m->getResultMessage() . ")\n");
        exit(1);
    }
}
$clients = array_map(fn($s) => client($s, $argv), $servers);
$m = $clients[0];
$last = end($clients);
check('flush', $m->flush(), true, $m);
check('set', $m->set('plain', 'value'), true, $m);
foreach ($clients as $i => $c) {
    check("get via $i", $c->get('plain'), 'value', $c);
}
$m->set('array', ['a' => [1, 2]]);
check('array', $last->get('array'), ['a' => [1, 2]], $last);
$items = [];
for ($i = 0; $i < 30; $i++) { $items["many$i"] = "v$i"; }
check('setMulti', $m->setMulti($items), true, $m);
$got = $last->getMulti(array_merge(array_keys($items), ['absent']));
check('getMulti size', count($got), 30, $last);
check('getMulti value', $got['many7'], 'v7', $last);
check('add existing', $m->add('plain', 'x'), false, $m);
check('add new', $m->add('fresh', 'x'), true, $m);
check('replace missing', $m->replace('missing', 'x'), false, $m);
$m->setOption(Memcached::OPT_COMPRESSION, false);
check('append', $m->append('plain', '-tail'), true, $m);
check('prepend', $m->prepend('plain', 'head-'), true, $m);
check('after append', $last->get('plain'), 'head-value-tail', $last);
check('delete', $m->delete('fresh'), true, $m);
check('delete missing', $m->delete('fresh'), false, $m);
check('incr missing', $m->increment('counter'), false, $m);
check('incr initial', $m->increment('counter', 1, 10), 10, $m);
check('incr', $m->increment('counter', 5), 15, $m);
check('decr', $last->decrement('counter', 20), 0, $last);
$got = $m->get('plain', null, Memcached::GET_EXTENDED);
check('gets', $got['value'], 'head-value-tail', $m);
check('cas stale', $m->cas($got['cas'] + 1, 'plain', 'other'), false, $m);
check('cas', $m->cas($got['cas'], 'plain', 'swapped'), true, $m);
check('after cas', $last->get('plain'), 'swapped', $last);
check('touch', $m->touch('plain', 3600), true, $m);
check('touch missing', $m->touch('absent', 3600), false, $m);
$versions = $m->getVersion();
check('version', str_starts_with(reset($versions), '1.6'), true, $m);
$stats = $m->getStats();
check('stats', isset(reset($stats)['curr_items']), true, $m);
echo "php-memcached: all checks passed\n";
