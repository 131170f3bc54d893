"""Drives a kai node with pymemcache, a stock Python memcached client.

Usage: pymemcache_check.py HOST PORT. Exits non-zero with the failed assertion.
"""
import sys

from pymemcache.client.base import Client

host, port = sys.argv[1], int(sys.argv[2])
c = Client((host, port), connect_timeout=5, timeout=5)

# pymemcache sends noreply by default for storage commands.
c.set("plain", b"value")
assert c.get("plain") == b"value", c.get("plain")
assert c.set("acked", b"v", noreply=False) is True

# Binary-safe values and flags (pymemcache keeps flags opaque).
blob = bytes(range(256)) * 40
c.set("blob", blob, noreply=False)
assert c.get("blob") == blob

assert c.add("plain", b"other", noreply=False) is False
assert c.add("fresh", b"new", noreply=False) is True
assert c.replace("missing", b"x", noreply=False) is False
assert c.append("plain", b"-tail", noreply=False) is True
assert c.prepend("plain", b"head-", noreply=False) is True
assert c.get("plain") == b"head-value-tail"

many = {f"key{i}": f"val{i}".encode() for i in range(50)}
assert c.set_many(many, noreply=False) == []
got = c.get_many(list(many) + ["absent"])
assert got == many, got

value, cas = c.gets("plain")
assert value == b"head-value-tail" and cas
assert c.cas("plain", b"swapped", cas, noreply=False) is True
assert c.cas("plain", b"stale", cas, noreply=False) is False
assert c.get("plain") == b"swapped"

c.set("counter", b"10", noreply=False)
assert c.incr("counter", 5) == 15
assert c.decr("counter", 20) == 0
assert c.incr("nothing", 1) is None

assert c.touch("counter", 100, noreply=False) is True
assert c.touch("nothing", 100, noreply=False) is False
assert c.get("counter") == b"0 ", c.get("counter")

assert c.delete("counter", noreply=False) is True
assert c.delete("counter", noreply=False) is False

stats = c.stats()
for name in (b"curr_items", b"cmd_get", b"kai_node", b"kai_quorum"):
    assert name in stats, name
assert c.version().startswith(b"1.6"), c.version()

assert c.flush_all(noreply=False) is True
assert c.get("fresh") is None
c.close()
print("pymemcache: all checks passed")
