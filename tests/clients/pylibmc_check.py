"""Drives kai with pylibmc (libmemcached) in binary mode, as Debian ships it.

Usage: pylibmc_check.py HOST:PORT[,HOST:PORT...] [USER PASSWORD]
Exits non-zero with the failed assertion.
"""
import sys
import time

import pylibmc

servers = sys.argv[1].split(",")
auth = {"username": sys.argv[2], "password": sys.argv[3]} if len(sys.argv) == 4 else {}
clients = [pylibmc.Client([s], binary=True, behaviors={"cas": True, "connect_timeout": 5000,
                                                        "receive_timeout": 5000000,
                                                        "send_timeout": 5000000}, **auth)
           for s in servers]
first, last = clients[0], clients[-1]
first.flush_all()

assert first.set("plain", b"value")
for i, c in enumerate(clients):
    assert c.get("plain") == b"value", (i, c.get("plain"))
first.set("object", {"a": [1, 2]})
assert last.get("object") == {"a": [1, 2]}
blob = bytes(range(256)) * 40
first.set("blob", blob)
assert last.get("blob") == blob

many = {f"many{i}": f"v{i}".encode() for i in range(30)}
assert first.set_multi(many) == []
got = last.get_multi(list(many) + ["absent"])
assert len(got) == 30 and got["many7"] == b"v7", got

assert first.add("plain", b"x") is False
assert first.add("fresh", b"x") is True
try:
    first.replace("missing", b"x")
    raise AssertionError("replace of a missing key succeeded")
except pylibmc.NotFound:
    pass
assert first.append("plain", b"-tail")
assert first.prepend("plain", b"head-")
assert last.get("plain") == b"head-value-tail"

assert first.delete("fresh") is True
assert first.delete("fresh") is False
assert last.get("fresh") is None

first.set("counter", 10)
assert first.incr("counter", 5) == 15
assert last.decr("counter", 20) == 0
try:
    first.incr("nocounter")
    raise AssertionError("incr of a missing key succeeded")
except pylibmc.NotFound:
    pass

value, cas = first.gets("plain")
assert value == b"head-value-tail"
assert first.cas("plain", b"other", cas + 1) is False
assert first.cas("plain", b"swapped", cas) is True
assert last.get("plain") == b"swapped"

assert first.touch("plain", 3600) is True
assert first.touch("absent", 3600) is False
first.set("short", b"lived", time=1)
time.sleep(2.1)
assert last.get("short") is None

stats = first.get_stats()
assert "curr_items" in stats[0][1], stats
print("pylibmc: all checks passed")
