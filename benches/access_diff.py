"""Differential check of the access index between source trees (issue 10, store format 2):
runs the same seeded random scenario (versions, merges, Access and IdAccess grants, revocations,
group membership changes, fixed timestamps) in a fresh store of each tree and compares
``accessible_roots(P, since)`` for every principal and every ``since`` in ``0..last+1``, and
``verify()``.

    python benches/access_diff.py SEEDS OPS NAME=TREE NAME=TREE [--core rust|pure] [--node-grants]

``--node-grants`` adds Access grants whose object is a version node (granted as ``u`` and, through
an IdAccess of its ID, as ``n``). Format 1 keeps one count for both and can end in states its own
``verify()`` reports ("root does not match the grant"); the comparison then counts those runs
apart. Prints one line per seed and a summary; exits 1 on a difference in a run where every
tree's ``verify()`` is clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

SCENARIO = r'''
import json, random, sys, tempfile
from lama import access
from lama._core import core
from lama.objects import versions

seed, nops, node_grants = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
rnd = random.Random(seed)
T = [1_700_000_000_000]
def ts():
    T[0] += 1
    return T[0]
versions.now_ms = ts
PEOPLE = ["b" * 64, "c" * 64, "d" * 64, "e" * 64]
EMAILS = [f"p{i}@example.com" for i in range(4)]
ops = ["ver", "ver", "ver", "keys", "grant_obj", "grant_id", "grant_id", "revoke_obj", "revoke_id",
       "group", "merge"] + (["grant_node"] if node_grants else [])
with tempfile.TemporaryDirectory() as d:
    s = core.Store(d + "/s")
    gids = [access.group_id(g) for g in ("g1", "g2")]
    keys, ids, nodes = [], {}, []
    for i in range(nops):
        op = rnd.choice(ops)
        who = rnd.sample(PEOPLE, rnd.randint(0, 2))
        grp = rnd.sample(gids, rnd.randint(0, 1))
        if op == "ver":
            e = rnd.choice(EMAILS)
            r = versions.store_versioned(s, {"$type$": "Person", "email": e, "name": f"n{i}"}, timestamp_ms=ts())
            ids[e] = r.id_hash
            nodes.append(r.node_hash)
        elif op == "merge" and ids:
            e = rnd.choice(sorted(ids))
            r = versions.store_versioned(s, {"$type$": "Person", "email": e, "name": f"m{i}"}, mode="merge",
                                         timestamp_ms=ts())
            nodes.append(r.node_hash)
        elif op == "keys":
            obj = {"$type$": "Keys", "owner": "b" * 64, "publicKey": f"{i:064x}", "publicSignKey": "b" * 64}
            keys.append(str(s.put_objects([obj])[0][0]))
        elif op == "grant_obj" and keys and (who or grp):
            access.grant(s, object=rnd.choice(keys), persons=who, groups=grp)
        elif op == "grant_node" and nodes and (who or grp):
            access.grant(s, object=rnd.choice(nodes), persons=who, groups=grp)
        elif op == "grant_id" and ids and (who or grp):
            access.grant(s, id=ids[rnd.choice(sorted(ids))], persons=who, groups=grp)
        elif op == "revoke_obj" and keys:
            access.revoke(s, object=rnd.choice(keys + (nodes if node_grants else [])),
                          persons=who or None, groups=grp or None)
        elif op == "revoke_id" and ids:
            access.revoke(s, id=ids[rnd.choice(sorted(ids))], persons=who or None, groups=grp or None)
        elif op == "group":
            access.set_group(s, rnd.choice(("g1", "g2")), rnd.sample(PEOPLE, rnd.randint(0, 3)))
    last = s.last_seq()
    out = {"verify": s.verify(),
           "roots": {p: [s.accessible_roots(p, since)[1] for since in range(last + 2)] for p in PEOPLE + gids}}
    s.close()
json.dump(out, sys.stdout)
'''


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    core = "rust"
    if "--core" in sys.argv:
        core = sys.argv[sys.argv.index("--core") + 1]
        args.remove(core)
    node_grants = "--node-grants" in sys.argv
    seeds, nops = int(args[0]), int(args[1])
    trees = [a.split("=", 1) for a in args[2:]]
    bad = 0
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(SCENARIO)
    try:
        for seed in range(1, seeds + 1):
            res = {}
            for name, tree in trees:
                env = dict(os.environ, LAMA_CORE=core, PYTHONPATH=os.path.join(tree, "python"))
                p = subprocess.run([sys.executable, f.name, str(seed), str(nops), "1" if node_grants else "0"],
                                   env=env, capture_output=True, text=True, check=True)
                res[name] = json.loads(p.stdout)
            ref = res[trees[0][0]]
            clean = all(not r["verify"] for r in res.values())
            diffs = {name: sum(a != b for p in ref["roots"] for a, b in zip(ref["roots"][p], r["roots"][p]))
                     for name, r in res.items()}
            n = sum(len(x) for v in ref["roots"].values() for x in v)
            print(json.dumps({"seed": seed, "answers_compared": sum(len(v) for v in ref["roots"].values()),
                              "roots": n, "verify_problems": {k: len(r["verify"]) for k, r in res.items()},
                              "differing_answers": diffs}))
            if clean and any(diffs.values()):
                bad += 1
    finally:
        os.unlink(f.name)
    print("runs with a clean verify() and a difference:", bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
