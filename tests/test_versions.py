"""Versioned objects: version nodes, heads, history and CRDT merges (objects.md §4, §9 17-19, 25).

Runs against the core selected by ``LAMA_CORE`` (every store here is a real store in tmp_path).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from lama.objects import crdt, versions
from lama._core import core
from lama.errors import ConflictError, LamaError, MicrodataError, NotFoundError, RecipeError

ALICE_ID = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"
BOB_ID = "58c379901b18278fa72f55f57d15f041b524655e2bbe55bef73383e35c2eae0a"
BOB_HASH = "81123d061c6a6a2e91b7e531e19bec26173c2f436a8e5b85d8979ff6c22f576f"
SHA_X = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
SHA_Y = "a1fce4363854ff888cff4b8e7875d600c2682390412a8cf79b37d0b11148b0fa"
SHA_A = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
SHA_B = "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"
T0 = 1_700_000_000_000

NOTE = "LamaVersionsTest$Note"
PART = "LamaVersionsTest$Part"
CUSTOM = "LamaVersionsTest$Custom"
CUSTOM_ALG = "LamaVersionsTest$Concat"

RECIPES: list[dict[str, Any]] = [
    {
        "$type$": "Recipe",
        "name": PART,
        "rule": [{"itemprop": "a", "optional": True}, {"itemprop": "b", "optional": True}],
    },
    {
        "$type$": "Recipe",
        "name": NOTE,
        "rule": [
            {"itemprop": "id", "isId": True},
            {"itemprop": "title", "optional": True},
            {"itemprop": "count", "itemtype": {"type": "integer"}, "optional": True},
            {"itemprop": "tags", "itemtype": {"type": "set", "item": {"type": "string"}}, "optional": True},
            {"itemprop": "items", "itemtype": {"type": "array", "item": {"type": "string"}}, "optional": True},
            {"itemprop": "note", "optional": True},
            {
                "itemprop": "props",
                "itemtype": {"type": "map", "key": {"type": "string"}, "value": {"type": "string"}},
                "optional": True,
            },
            {
                "itemprop": "ref",
                "itemtype": {"type": "referenceToObj", "allowedTypes": {"$set": [PART]}},
                "optional": True,
            },
        ],
    },
    {
        "$type$": "Recipe",
        "name": CUSTOM,
        "crdtConfig": {"$map": [["title#string", CUSTOM_ALG]]},
        "rule": [{"itemprop": "id", "isId": True}, {"itemprop": "title"}, {"itemprop": "other"}],
    },
]


@pytest.fixture(scope="module", autouse=True)
def _recipes() -> None:
    for r in RECIPES:
        core.register_recipe(json.dumps(r))


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = core.Store(str(tmp_path / "store"))
    yield s
    s.close()


def note(**kw: Any) -> dict[str, Any]:
    return {"$type$": NOTE, "id": "n1", **kw}


def fork(store: Any, prev: str, obj: dict[str, Any], t: int) -> str:
    """Store a VersionNodeChange on ``prev`` without moving the head (a concurrent branch)."""
    depth = versions.load_node(store, prev).depth + 1
    node = {"$type$": "VersionNodeChange", "prev": prev, "data": core.object_hash(obj), "depth": depth, "creationTime": t}
    store.write_batch([obj, node], [])
    return core.object_hash(node)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Version node vectors (objects.md §1.10, storage dump)


def test_version_node_vectors() -> None:
    edge = crdt.VersionNode("", "edge", SHA_X, 0, T0).to_object()
    assert core.serialize(edge) == (
        '<div itemscope itemtype="//refin.io/VersionNodeEdge"><a itemprop="data" data-type="obj">'
        f'{SHA_X}</a><span itemprop="depth">0</span><span itemprop="creationTime">1700000000000</span></div>'
    )
    assert core.object_hash(edge) == "deefc54519f10086c8f01d0d41879c924bb5ebf141e119f3b8ff0b9a9532605b"
    change = crdt.VersionNode("", "change", SHA_X, 1, T0 + 1, (SHA_Y,)).to_object()
    assert core.object_hash(change) == "40a18349602184f1b816621971985c39c663d8b229a9408cc541f74f768a876e"
    merge = crdt.VersionNode("", "merge", SHA_X, 2, T0 + 2, (SHA_B, SHA_A)).to_object()
    assert core.serialize(merge).startswith(
        '<div itemscope itemtype="//refin.io/VersionNodeMerge"><ul itemprop="nodes">'
        f'<li><a data-type="obj">{SHA_B}</a></li><li><a data-type="obj">{SHA_A}</a></li></ul>'
    )
    assert core.object_hash(merge) == "f74c6e209f39c3637e656b6912e309d33e5ea16cd071ee801f14a96dfbae6a6c"
    dump = crdt.VersionNode(
        "",
        "merge",
        "58f377e27b9387de2136cc092cb995c1f4bcfc64898303333144e2cede12592d",
        2,
        T0 + 2,
        (
            "c8b20e85a965c85a9b59bbb53bfbd53e4f51e368abe542c317d6e7a29e39869a",
            "1ac3547acbdaaf8d829da35810d5dd4b1fb233982aa8f1039c92bf5ccc6541b4",
        ),
    ).to_object()
    assert core.object_hash(dump) == "ea028eed2dfdaaabca8f024eef49f05f1c29592f3043dcc3893985aa1a665e18"


def test_nodes_parse_back(store: Any) -> None:
    r = versions.store_versioned(store, note(title="a"), timestamp_ms=T0)
    node = versions.load_node(store, r.node_hash)
    assert (node.kind, node.data, node.depth, node.creation_time, node.parents) == ("edge", r.hash, 0, T0, ())
    with pytest.raises(MicrodataError):
        versions.load_node(store, r.hash)  # a Note, not a version node


# ---------------------------------------------------------------------------------------------
# Storing (objects.md §4.2)


def test_bob_stored_twice_edge_then_change(store: Any) -> None:
    t1, t2 = T0, T0 + 5
    r1 = versions.store_versioned(store, {"$type$": "Person", "email": "bob@example.com", "name": "Bob"}, timestamp_ms=t1)
    assert (r1.hash, r1.id_hash, r1.status, r1.timestamp) == (BOB_HASH, BOB_ID, "new", t1)
    edge_md = (
        '<div itemscope itemtype="//refin.io/VersionNodeEdge"><a itemprop="data" data-type="obj">'
        f'{BOB_HASH}</a><span itemprop="depth">0</span><span itemprop="creationTime">{t1}</span></div>'
    )
    assert store.get(r1.node_hash) == edge_md
    assert r1.node_hash == core.sha256_hex(edge_md) == store.get_head(BOB_ID) == r1.head

    r2 = versions.store_versioned(store, {"$type$": "Person", "email": "bob@example.com", "name": "Bobby"}, timestamp_ms=t2)
    assert r2.hash.startswith("b9f493fd") and r2.hash.endswith("651f")
    assert r2.id_hash == BOB_ID and r2.status == "new" and r2.timestamp == t2
    change_md = (
        '<div itemscope itemtype="//refin.io/VersionNodeChange"><a itemprop="prev" data-type="obj">'
        f'{r1.node_hash}</a><a itemprop="data" data-type="obj">{r2.hash}</a>'
        f'<span itemprop="depth">1</span><span itemprop="creationTime">{t2}</span></div>'
    )
    assert store.get(r2.node_hash) == change_md
    assert store.get_head(BOB_ID) == r2.node_hash == core.sha256_hex(change_md)
    # the ID object is stored under the ID hash
    assert store.get(BOB_ID) == (
        '<div data-id-object="true" itemscope itemtype="//refin.io/Person">'
        '<span itemprop="email">bob@example.com</span></div>'
    )
    assert versions.current(store, BOB_ID)["name"] == "Bobby"
    assert [v.hash for v in versions.history(store, BOB_ID)] == [BOB_HASH, r2.hash]


def test_same_data_is_a_no_op(store: Any) -> None:
    r1 = versions.store_versioned(store, note(title="a"), timestamp_ms=T0)
    n = store.count()
    for mode in ("change", "merge"):
        r = versions.store_versioned(store, note(title="a"), mode=mode, timestamp_ms=T0 + 99)
        assert r.status == "exists" and r.node_hash == r1.node_hash and r.timestamp == T0
        assert store.count() == n and store.get_head(r1.id_hash) == r1.node_hash


def test_default_timestamp_is_now(store: Any) -> None:
    before = versions.now_ms()
    r = versions.store_versioned(store, note(title="a"))
    assert before <= r.timestamp <= versions.now_ms()
    assert isinstance(r.timestamp, int)


def test_current_lookup(store: Any) -> None:
    id_hash = core.id_hash(note())
    assert versions.current_hash(store, id_hash) is None
    assert versions.head_node(store, id_hash) is None
    assert versions.current_version(store, id_hash) is None
    assert versions.history(store, id_hash) == []
    with pytest.raises(NotFoundError) as e:
        versions.current(store, id_hash)
    assert e.value.code == "SB-READ2"
    versions.store_versioned(store, note(title="a"), timestamp_ms=T0)
    r = versions.store_versioned(store, note(title="b"), timestamp_ms=T0 + 1)
    assert versions.current_hash(store, id_hash) == r.hash
    assert versions.current(store, id_hash) == {"$type$": NOTE, "id": "n1", "title": "b"}
    cv = versions.current_version(store, id_hash)
    assert cv is not None and (cv.hash, cv.node_hash, cv.timestamp, cv.depth, cv.kind) == (
        r.hash,
        r.node_hash,
        T0 + 1,
        1,
        "change",
    )


def test_history_order_and_depth(store: Any) -> None:
    hashes = [versions.store_versioned(store, note(count=i), timestamp_ms=T0 + i).hash for i in range(5)]
    # storing an older version again appends it (CHANGE mode)
    hashes.append(versions.store_versioned(store, note(count=1), timestamp_ms=T0 + 10).hash)
    hist = versions.history(store, core.id_hash(note()))
    assert [v.hash for v in hist] == hashes
    assert [v.depth for v in hist] == list(range(6))
    assert [v.timestamp for v in hist] == [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4, T0 + 10]
    assert [v.kind for v in hist] == ["edge"] + ["change"] * 5


def test_bad_input(store: Any) -> None:
    keys = {"$type$": "Keys", "owner": ALICE_ID, "publicKey": "a" * 64, "publicSignKey": "b" * 64}
    with pytest.raises(MicrodataError) as e:
        versions.store_versioned(store, keys)
    assert e.value.code == "O2M-COBJ1"
    with pytest.raises(LamaError):
        versions.store_versioned(store, note(), mode="edit")
    with pytest.raises(MicrodataError):
        versions.store_versioned(store, note(), timestamp_ms=True)
    with pytest.raises(MicrodataError):
        versions.current_hash(store, "ABC")
    with pytest.raises(NotFoundError):
        versions.merge_remote_version(store, "0" * 64, T0)
    h, _ = store.put_objects([keys])[0][:2]
    with pytest.raises(MicrodataError) as e:
        versions.merge_remote_version(store, h, T0)
    assert e.value.code == "O2M-COBJ1"
    assert store.count() == 1  # nothing else was written


# ---------------------------------------------------------------------------------------------
# Merging (objects.md §4.3, §6.6)


def test_concurrent_group_merge(store: Any) -> None:
    g1 = {"$type$": "Group", "name": "everyone", "person": [ALICE_ID]}
    g2 = {"$type$": "Group", "name": "everyone", "person": [BOB_ID]}
    r1 = versions.store_versioned(store, g1, timestamp_ms=T0)
    r2 = versions.store_versioned(store, g2, mode="merge", timestamp_ms=T0 + 7)
    head = versions.head_node(store, r1.id_hash)
    assert head is not None and head.hash == r2.head != r2.node_hash
    assert head.kind == "merge" and head.depth == 1 and head.creation_time == T0 + 7
    assert set(head.parents) == {r1.node_hash, r2.node_hash}
    assert versions.load_node(store, r2.node_hash).kind == "edge"
    lo, hi = sorted(head.parents)
    md = store.get(head.hash)
    assert md == (
        '<div itemscope itemtype="//refin.io/VersionNodeMerge"><ul itemprop="nodes">'
        f'<li><a data-type="obj">{lo}</a></li><li><a data-type="obj">{hi}</a></li></ul>'
        f'<a itemprop="data" data-type="obj">{head.data}</a><span itemprop="depth">1</span>'
        f'<span itemprop="creationTime">{T0 + 7}</span></div>'
    )
    merged = versions.current(store, r1.id_hash)
    assert merged == {"$type$": "Group", "name": "everyone", "person": [ALICE_ID, BOB_ID]}
    assert r2.merged == head.data == core.object_hash(merged)
    # merge nodes are not versions
    hist = versions.history(store, r1.id_hash)
    assert {v.node_hash for v in hist} == {r1.node_hash, r2.node_hash}
    assert {v.hash for v in hist} == {r1.hash, r2.hash}
    assert not store.verify()


def test_remote_version_by_hash(store: Any) -> None:
    versions.store_versioned(store, note(title="local", tags={"a"}), timestamp_ms=T0)
    remote = note(title="remote", tags={"b"})
    md = core.serialize(remote)
    store.put_microdata([(md, core.object_hash(remote))])
    r = versions.merge_remote_version(store, core.object_hash(remote), T0 + 1)
    assert r.timestamp == T0 + 1 and r.status == "exists"
    edge = versions.load_node(store, r.node_hash)
    assert (edge.kind, edge.data, edge.creation_time) == ("edge", core.object_hash(remote), T0 + 1)
    assert versions.current(store, r.id_hash) == {"$type$": NOTE, "id": "n1", "title": "remote", "tags": {"a", "b"}}
    # importing the same remote version again changes nothing (the head contains that edge)
    head = store.get_head(r.id_hash)
    n = store.count()
    again = versions.merge_remote_version(store, remote, T0 + 1)
    assert again.head == head and store.get_head(r.id_hash) == head and store.count() == n


def test_already_merged_and_fast_forward(store: Any) -> None:
    r0 = versions.store_versioned(store, note(title="a"), timestamp_ms=T0)
    r1 = versions.store_versioned(store, note(title="b"), timestamp_ms=T0 + 1)
    # the remote version equal to our first edge (same data, same creationTime) is contained
    r = versions.merge_remote_version(store, note(title="a"), T0)
    assert r.node_hash == r0.node_hash and r.head == r1.node_hash
    assert store.get_head(r0.id_hash) == r1.node_hash
    # merging an ancestor node of the head: nothing
    assert versions.merge_node(store, r0.node_hash).head == r1.node_hash
    # a branch that descends from the head: fast-forward, no merge node
    c2 = fork(store, r1.node_hash, note(title="c"), T0 + 2)
    res = versions.merge_node(store, c2)
    assert res.head == c2 == store.get_head(r0.id_hash)
    assert versions.current(store, r0.id_hash)["title"] == "c"
    assert [v.node_hash for v in versions.history(store, r0.id_hash)] == [r0.node_hash, r1.node_hash, c2]


def test_merge_node_with_the_importers_id_hint(store: Any) -> None:
    """The importer's ``merge`` event names the ID: a node that already is that ID's head (the
    import fast-forwarded it) gives the same result as the full merge; a node that is not the
    head, or a wrong hint, still merges by the node's own ID."""
    r0 = versions.store_versioned(store, note(title="a"), timestamp_ms=T0)
    r1 = versions.store_versioned(store, note(title="b"), timestamp_ms=T0 + 1)
    assert versions.merge_node(store, r1.node_hash, r0.id_hash) == versions.merge_node(store, r1.node_hash)
    other = versions.store_versioned(store, note(id="n2", title="x"), timestamp_ms=T0)
    # a branch off r0 concurrent with r1, hinted with its own ID and with a wrong one
    c = fork(store, r0.node_hash, note(title="c"), T0 + 2)
    res = versions.merge_node(store, c, other.id_hash)
    assert res.id_hash == r0.id_hash and res.head not in (c, r1.node_hash)
    assert store.get_head(other.id_hash) == other.node_hash
    assert store.get_head(r0.id_hash) == res.head
    assert versions.merge_node(store, res.head, r0.id_hash).head == res.head
    with pytest.raises(ValueError):
        versions.merge_node(store, c, "not a hash")


def test_register_last_writer_wins_by_creation_time(store: Any) -> None:
    versions.store_versioned(store, note(title="base"), timestamp_ms=T0)
    versions.store_versioned(store, note(title="local"), timestamp_ms=T0 + 30)
    r = versions.store_versioned(store, note(title="remote"), mode="merge", timestamp_ms=T0 + 20)
    assert versions.current(store, r.id_hash)["title"] == "local"
    r = versions.store_versioned(store, note(title="later"), mode="merge", timestamp_ms=T0 + 40)
    assert versions.current(store, r.id_hash)["title"] == "later"
    head = versions.head_node(store, r.id_hash)
    assert head is not None and head.kind == "merge" and head.depth == 3 and head.creation_time == T0 + 40


def test_register_tie_broken_by_node_hash(tmp_path: Path) -> None:
    winners = set()
    for i in range(3):  # i == 2: the merged (right) edge has the larger hash, else the left one
        s = core.Store(str(tmp_path / f"s{i}"))
        try:
            a = versions.store_versioned(s, note(title=f"x{i}"), timestamp_ms=T0)
            b = versions.store_versioned(s, note(title=f"y{i}"), mode="merge", timestamp_ms=T0)
            winner = "x" if a.node_hash > b.node_hash else "y"
            winners.add(winner)
            assert versions.current(s, a.id_hash)["title"] == f"{winner}{i}"
        finally:
            s.close()
    assert winners == {"x", "y"}  # both outcomes were exercised


def test_register_changed_side_beats_unchanged_side(store: Any) -> None:
    e0 = versions.store_versioned(store, note(title="base", count=1), timestamp_ms=T0)
    # left changes count (early), right changes only the title (late)
    versions.store_versioned(store, note(title="base", count=2), timestamp_ms=T0 + 1)
    branch = fork(store, e0.node_hash, note(title="new", count=1), T0 + 50)
    versions.merge_node(store, branch)
    assert versions.current(store, e0.id_hash) == {"$type$": NOTE, "id": "n1", "title": "new", "count": 2}


def test_set_remove_wins_over_untouched_and_adds_merge(store: Any) -> None:
    e0 = versions.store_versioned(store, note(tags={"x", "y"}), timestamp_ms=T0)
    versions.store_versioned(store, note(tags={"y"}), timestamp_ms=T0 + 5)  # removes x
    branch = fork(store, e0.node_hash, note(tags={"x", "y", "z"}), T0 + 9)  # adds z, x untouched
    versions.merge_node(store, branch)
    assert versions.current(store, e0.id_hash)["tags"] == {"y", "z"}


def test_set_add_wins_over_concurrent_remove(store: Any) -> None:
    e0 = versions.store_versioned(store, note(tags={"x"}), timestamp_ms=T0)
    versions.store_versioned(store, note(tags=set()), timestamp_ms=T0 + 100)  # late remove
    b1 = fork(store, e0.node_hash, note(tags=set()), T0 + 1)
    b2 = fork(store, b1, note(tags={"x"}), T0 + 2)  # early re-add
    versions.merge_node(store, b2)
    assert versions.current(store, e0.id_hash)["tags"] == {"x"}


def test_set_add_wins_against_remote_edge(store: Any) -> None:
    versions.store_versioned(store, note(tags={"x"}), timestamp_ms=T0)
    versions.store_versioned(store, note(tags=set()), timestamp_ms=T0 + 100)
    r = versions.store_versioned(store, note(tags={"x", "w"}), mode="merge", timestamp_ms=T0 + 1)
    assert versions.current(store, r.id_hash)["tags"] == {"x", "w"}


def test_array_merge_loses_order_and_duplicates(store: Any) -> None:
    versions.store_versioned(store, note(items=["b", "a", "b"]), timestamp_ms=T0)
    r = versions.store_versioned(store, note(items=["c", "a"]), mode="merge", timestamp_ms=T0 + 1)
    assert versions.current(store, r.id_hash)["items"] == ["b", "a", "c"]


def test_optional_value_delete_and_set(store: Any) -> None:
    e0 = versions.store_versioned(store, note(title="t", note="n"), timestamp_ms=T0)
    versions.store_versioned(store, note(title="t"), timestamp_ms=T0 + 5)  # deletes note
    untouched = fork(store, e0.node_hash, note(title="t2", note="n"), T0 + 9)
    versions.merge_node(store, untouched)
    assert versions.current(store, e0.id_hash) == {"$type$": NOTE, "id": "n1", "title": "t2"}


def test_optional_value_set_beats_delete(store: Any) -> None:
    e0 = versions.store_versioned(store, note(note="n"), timestamp_ms=T0)
    versions.store_versioned(store, note(), timestamp_ms=T0 + 50)  # deletes note, later
    setter = fork(store, e0.node_hash, note(note="m"), T0 + 1)  # sets a new value, earlier
    versions.merge_node(store, setter)
    assert versions.current(store, e0.id_hash) == {"$type$": NOTE, "id": "n1", "note": "m"}


def test_map_entries_merge_per_key(store: Any) -> None:
    e0 = versions.store_versioned(store, note(props={"a": "1", "b": "1"}), timestamp_ms=T0)
    versions.store_versioned(store, note(props={"a": "1", "b": "1", "c": "3"}), timestamp_ms=T0 + 1)
    branch = fork(store, e0.node_hash, note(props={"b": "2"}), T0 + 2)  # deletes a, changes b
    versions.merge_node(store, branch)
    assert versions.current(store, e0.id_hash)["props"] == {"b": "2", "c": "3"}


def test_reference_to_obj_merges_referenced_objects(store: Any) -> None:
    p1 = {"$type$": PART, "a": "left"}
    p2 = {"$type$": PART, "b": "right"}
    store.put_objects([p1, p2])
    versions.store_versioned(store, note(ref=core.object_hash(p1)), timestamp_ms=T0)
    r = versions.store_versioned(store, note(ref=core.object_hash(p2)), mode="merge", timestamp_ms=T0 + 1)
    merged_ref = versions.current(store, r.id_hash)["ref"]
    assert store.get_object(merged_ref) == {"$type$": PART, "a": "left", "b": "right"}


def test_criss_cross_merge_uses_a_virtual_base(store: Any) -> None:
    e0 = versions.store_versioned(store, note(title="0", tags={"s"}), timestamp_ms=T0)
    a1 = versions.store_versioned(store, note(title="a", tags={"s"}), timestamp_ms=T0 + 1).node_hash
    b1 = fork(store, e0.node_hash, note(title="b", tags={"s", "t"}), T0 + 2)
    # two merges of a1 and b1 made independently (criss-cross)
    m1 = versions.merge_node(store, b1).head
    data = versions.load_node(store, m1).data
    m2_obj = {"$type$": "VersionNodeMerge", "nodes": {a1, b1}, "data": data, "depth": 2, "creationTime": T0 + 3}
    store.write_batch([m2_obj], [])
    c1 = versions.store_versioned(store, note(title="a", tags={"s", "t", "u"}), timestamp_ms=T0 + 4).node_hash
    m2 = core.object_hash(m2_obj)
    c2 = fork(store, m2, note(title="c", tags={"t"}), T0 + 5)
    assert c1 != c2
    versions.merge_node(store, c2)
    cur = versions.current(store, e0.id_hash)
    assert cur["title"] == "c" and cur["tags"] == {"t", "u"}
    assert not store.verify()


# ---------------------------------------------------------------------------------------------
# crdtConfig and custom algorithms (objects.md §4.4, app-layer.md §2.6)


def test_resolve_algorithm_id_patterns() -> None:
    cfg = [
        ("*", "Star"),
        ("a.*", "AnyB"),
        ("a.*#string", "AnyBString"),
        ("a.b", "ExactAB"),
        ("*.b", "StarB"),
        ("head#referenceToObj", "LinkedListCrdtAlgorithm"),
    ]
    r = crdt.resolve_algorithm_id
    assert r(cfg, ["head"], "referenceToObj") == "LinkedListCrdtAlgorithm"
    assert r(cfg, ["head"], "string") == "Star"
    assert r(cfg, ["a", "b"], "string") == "ExactAB"
    assert r(cfg, ["a", "c"], "string") == "AnyBString"
    assert r(cfg, ["a", "c"], "integer") == "AnyB"
    assert r(cfg, ["x", "b"], "integer") == "StarB"
    assert r(cfg, ["x", "c"], "integer") is None
    assert r(cfg, ["x", "y", "z"], "string") is None
    assert r({"x.*": "M"}, ["x", "key"], "string") == "M"
    assert r([], ["x"], "string") is None


def test_channel_info_head_uses_linked_list_algorithm_id() -> None:
    cfg = crdt._crdt_config("ChannelInfo")
    assert crdt.resolve_algorithm_id(cfg, ["head"], "referenceToObj") == "LinkedListCrdtAlgorithm"
    assert crdt.resolve_algorithm_id(cfg, ["id"], "string") is None


def test_custom_algorithm_registration(store: Any) -> None:
    calls: list[tuple] = []

    def concat(ctx: crdt.MergeContext, path: tuple, itemtype: dict, base: Any, left: Any, right: Any) -> Any:
        calls.append((path, itemtype["type"], base, left, right))
        return "+".join(sorted([left, right]))

    obj = {"$type$": CUSTOM, "id": "c", "title": "one", "other": "o1"}
    versions.store_versioned(store, obj, timestamp_ms=T0)
    with pytest.raises(RecipeError) as e:
        versions.store_versioned(store, {**obj, "title": "two", "other": "o2"}, mode="merge", timestamp_ms=T0 + 1)
    assert e.value.code == "LAMA-CRDT2"
    assert versions.current(store, core.id_hash(obj))["title"] == "one"  # nothing written
    crdt.register_algorithm(CUSTOM_ALG, concat)
    try:
        with pytest.raises(RecipeError):
            crdt.register_algorithm(CUSTOM_ALG, lambda *a: None)
        with pytest.raises(RecipeError):
            crdt.register_algorithm("Register", concat)
        assert CUSTOM_ALG in crdt.algorithm_ids()
        r = versions.store_versioned(store, {**obj, "title": "two", "other": "o2"}, mode="merge", timestamp_ms=T0 + 1)
        cur = versions.current(store, r.id_hash)
        assert cur["title"] == "one+two" and cur["other"] == "o2"
        # left is the head with the smaller node hash, whichever is local (versions._plan_merge)
        assert len(calls) == 1 and calls[0][:3] == (("title",), "string", crdt.ABSENT)
        assert sorted(calls[0][3:]) == ["one", "two"]
    finally:
        crdt.unregister_algorithm(CUSTOM_ALG)
    assert CUSTOM_ALG not in crdt.algorithm_ids()


# ---------------------------------------------------------------------------------------------
# Concurrency: per-ID lock + compare-and-set


def test_threads_racing_on_one_id_lose_no_update(store: Any) -> None:
    n_threads, per_thread = 4, 10
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(per_thread):
                versions.store_versioned(store, note(title=f"{k}-{i}"))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    hist = versions.history(store, core.id_hash(note()))
    assert len(hist) == n_threads * per_thread
    assert [v.depth for v in hist] == list(range(n_threads * per_thread))
    titles = {store.get_object(v.hash)["title"] for v in hist}
    assert titles == {f"{k}-{i}" for k in range(n_threads) for i in range(per_thread)}


class _RacingStore:
    """A real store whose next ``races`` write_batch calls each lose the race to a competing
    writer that moves the head first (as another process would)."""

    def __init__(self, store: Any, races: int):
        self._store = store
        self.races_left = races
        self.raced = 0

    def write_batch(self, objs: list, heads: list) -> Any:
        if self.races_left:
            self.races_left -= 1
            self.raced += 1
            id_hash, expected, _ = heads[0]
            theirs = note(title=f"theirs{self.raced}")
            change = {
                "$type$": "VersionNodeChange",
                "prev": expected,
                "data": core.object_hash(theirs),
                "depth": versions.load_node(self._store, expected).depth + 1,
                "creationTime": T0 + 500 + self.raced,
            }
            self._store.write_batch([theirs, change], [(id_hash, expected, core.object_hash(change))])
        return self._store.write_batch(objs, heads)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_lost_compare_and_set_is_retried(store: Any) -> None:
    versions.store_versioned(store, note(title="base"), timestamp_ms=T0)
    racing = _RacingStore(store, races=2)
    r = versions.store_versioned(racing, note(title="mine"), timestamp_ms=T0 + 600)
    assert racing.raced == 2
    titles = [store.get_object(v.hash)["title"] for v in versions.history(store, r.id_hash)]
    assert titles == ["base", "theirs1", "theirs2", "mine"]
    assert store.get_head(r.id_hash) == r.node_hash


def test_conflict_error_surfaces_when_the_race_never_ends(store: Any) -> None:
    versions.store_versioned(store, note(title="base"), timestamp_ms=T0)
    racing = _RacingStore(store, races=10_000)
    with pytest.raises(ConflictError) as e:
        versions.store_versioned(racing, note(title="mine"), timestamp_ms=T0 + 600)
    assert e.value.code == "LAMA-CONFLICT"
    assert racing.raced == versions.MAX_ATTEMPTS
    titles = [store.get_object(v.hash)["title"] for v in versions.history(store, core.id_hash(note()))]
    assert "mine" not in titles and len(titles) == 1 + versions.MAX_ATTEMPTS


def test_merge_uses_the_cores_resolved_inheritance(store: Any) -> None:
    """crdt takes rule types from core.resolved_recipe: a rule inheriting a set merges as a set;
    a rule inheriting from that rule is a plain string in ONE (objects.md §1.9, one level) and
    merges as a register."""
    name = "TestInheritNote"
    core.register_recipe(json.dumps({"$type$": "Recipe", "name": name, "rule": [
        {"itemprop": "id", "isId": True},
        {"itemprop": "labels", "inheritFrom": f"{NOTE}.tags"},
        {"itemprop": "plain", "inheritFrom": f"{name}.labels", "optional": True},
    ]}))

    def obj(**kw: Any) -> dict[str, Any]:
        return {"$type$": name, "id": "i1", **kw}

    e0 = versions.store_versioned(store, obj(labels={"x", "y"}, plain="a"), timestamp_ms=T0)
    versions.store_versioned(store, obj(labels={"y"}, plain="b"), timestamp_ms=T0 + 5)
    branch = fork(store, e0.node_hash, obj(labels={"x", "y", "z"}, plain="c"), T0 + 9)
    versions.merge_node(store, branch)
    assert versions.current(store, e0.id_hash) == {
        "$type$": name, "id": "i1", "labels": {"y", "z"}, "plain": "c"}


def test_two_peers_merging_the_same_nodes_agree(tmp_path: Path) -> None:
    """Two stores that share a base version and edit concurrently each merge the other's node
    (what CHUM's import does, lama.chum.handle_event): both compute the same merged object and
    the same VersionNodeMerge, whichever head is local, also for an array whose merge order
    depends on which side is "left" (objects.md §9 quirk 25).  A merge that depended on the
    local side would make two peers exchange ever-new merge nodes."""
    a = core.Store(str(tmp_path / "a"))
    b = core.Store(str(tmp_path / "b"))
    try:
        base = versions.store_versioned(a, note(title="t0", items=["x", "y"], tags={"x"}), timestamp_ms=T0)
        b.put_microdata([(a.get(h), h) for h in (base.hash, base.node_hash)])
        assert versions.merge_node(b, base.node_hash).head == base.node_hash  # adopted as is
        ra = versions.store_versioned(a, note(title="from a", items=["a", "x"], tags={"x", "a"}), timestamp_ms=T0 + 10)
        rb = versions.store_versioned(b, note(title="t0", items=["y", "b"], tags={"x", "b"}), timestamp_ms=T0 + 20)
        for src, dst, r in ((a, b, ra), (b, a, rb)):
            dst.put_microdata([(src.get(h), h) for h in (r.hash, r.node_hash)])
        ma = versions.merge_node(a, rb.node_hash)
        mb = versions.merge_node(b, ra.node_hash)
        assert ma.head == mb.head and ma.merged == mb.merged
        assert a.get(ma.head) == b.get(mb.head)
        merged = versions.current(a, base.id_hash)
        assert merged == versions.current(b, base.id_hash)
        assert merged["title"] == "from a" and sorted(merged["tags"]) == ["a", "b", "x"]
        assert sorted(merged["items"]) == ["a", "b"]  # both removed one of x, y; each added one
    finally:
        a.close()
        b.close()
