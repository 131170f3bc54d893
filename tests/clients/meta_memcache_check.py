# Drives kai with meta-memcache (RevenueCat's meta-protocol client, from PyPI).
# Usage: meta_memcache_check.py SERVERS; SERVERS is host:port[,host:port...]. Every check
# writes through the first server and reads through each of them, so against a cluster the
# meta commands are seen to run through the shared node operations. Exits non-zero with the
# failed check.
import sys
import threading

from meta_memcache import (
    CacheClient,
    LeasePolicy,
    RecachePolicy,
    ServerAddress,
    SetMode,
    StalePolicy,
    connection_pool_factory_builder,
)


def client(server):
    host, port = server.rsplit(":", 1)
    return CacheClient.cache_client_from_servers(
        servers=[ServerAddress(host=host, port=int(port))],
        connection_pool_factory_fn=connection_pool_factory_builder(recv_timeout=5),
    )


def check(what, got, wanted):
    if got != wanted:
        sys.exit(f"{what}: got {got!r}, wanted {wanted!r}")


servers = sys.argv[1].split(",")
clients = [client(s) for s in servers]
first = clients[0]

# get / set / delete, objects through the serializer, many keys in one pipelined batch.
check("set", first.set("plain", b"value", ttl=0), True)
for i, c in enumerate(clients):
    check(f"get via {i}", c.get("plain"), b"value")
check("set object", first.set("object", {"a": [1, 2]}, ttl=300), True)
check("get object", clients[-1].get("object"), {"a": [1, 2]})
keys = [f"many{i}" for i in range(40)]
for i, k in enumerate(keys):
    first.set(k, f"v{i}".encode(), ttl=0, no_reply=True)
# Quiet sets are not waited for: a request answered on the same connection after them
# says they are done, before another node is asked (in a cluster, 1 run in 5 saw 39).
check("after the quiet sets", first.get(keys[-1]), b"v39")
got = clients[-1].multi_get(keys + ["absent"])
check("multi_get size", sum(1 for v in got.values() if v is not None), 40)
check("multi_get value", [v for k, v in got.items() if k.key == "many7"], [b"v7"])
check("add existing", first.set("plain", b"x", ttl=0, set_mode=SetMode.ADD), False)
check("add new", first.set("fresh", b"x", ttl=0, set_mode=SetMode.ADD), True)
check("replace missing", first.set("missing", b"x", ttl=0, set_mode=SetMode.REPLACE), False)
check("append", first.set("plain", b"-tail", ttl=0, set_mode=SetMode.APPEND), True)
check("prepend", first.set("plain", b"head-", ttl=0, set_mode=SetMode.PREPEND), True)
check("after append", clients[-1].get("plain"), b"head-value-tail")
check("delete", first.delete("fresh"), True)
check("delete missing", first.delete("fresh"), False)
check("invalidate missing", first.invalidate("fresh"), True)
check("get deleted", clients[-1].get("fresh"), None)
check("touch", first.touch("plain", ttl=300), True)
check("touch missing", first.touch("fresh", ttl=300), False)

# cas: a token read back stores once; a stale token is refused.
value, token = first.get_cas("plain")
check("get_cas value", value, b"head-value-tail")
new_token = first.set_cas("plain", b"v2", ttl=0, cas_token=token)
check("set with cas", new_token is not None, True)
check("set with an old cas", first.set("plain", b"v3", ttl=0, cas_token=token), False)
check("set with the new cas", first.set("plain", b"v3", ttl=0, cas_token=new_token), True)
check("after cas", clients[-1].get("plain"), b"v3")

# Arithmetic: counters created on a miss, incremented, decremented with the new value back.
check("delta missing", first.delta("counter", 1), False)
check("delta_initialize_and_get", first.delta_initialize_and_get("counter", 1, 10, 300), 10)
check("delta_and_get", clients[-1].delta_and_get("counter", 5), 15)
check("decrement", first.delta_and_get("counter", -20), 0)

# Leases (vivify on miss): exactly one of several concurrent readers wins the miss and
# refills; the others wait for its value rather than hitting the database.
lease = LeasePolicy(ttl=30, miss_retries=20, miss_retry_wait=0.1, miss_max_retry_wait=0.3)
winners, seen = [], []
lock = threading.Lock()


def reader(c):
    value = c.get_or_lease("leased", lease_policy=lease)
    if value is None:
        with lock:
            winners.append(1)
        c.set("leased", b"from the database", ttl=300)
        value = b"from the database"
    with lock:
        seen.append(value)


threads = [threading.Thread(target=reader, args=(client(servers[i % len(servers)]),)) for i in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check("lease winners", len(winners), 1)
check("lease readers", seen, [b"from the database"] * 6)

# Stale while revalidate: a delete marks the item stale; the first reader gets a miss
# (it recaches), the others keep the stale value until the new one lands.
stale = StalePolicy(mark_stale_on_deletion_ttl=30, mark_stale_on_cas_mismatch=True)
first.set("profile", b"old", ttl=300)
check("stale delete", first.delete("profile", stale_policy=stale), True)
check("first reader recaches", clients[-1].get("profile"), None)
check("others see stale", first.get("profile"), b"old")
check("refill", first.set("profile", b"new", ttl=300, stale_policy=stale), True)
check("after refill", clients[-1].get("profile"), b"new")

# Recache: with little TTL left, one reader is told to refresh early.
first.set("expiring", b"soon", ttl=20)
recache = RecachePolicy(ttl=60)
check("recache winner", clients[-1].get("expiring", recache_policy=recache), None)
check("recache others", first.get("expiring", recache_policy=recache), b"soon")
print("meta-memcache: all checks passed")
