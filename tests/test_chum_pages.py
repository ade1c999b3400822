"""The paged closure (docs/chum-fastpath.md "closure-pages", issue 8): a first sync asks 106
for pages of each root's closure and fetches from the first page on, instead of waiting for
the exporter to walk the whole closure.  Both cores: objects are stored before the last page
arrives; interop with a peer without the feature (whole closures either way); a hostile
exporter's page cannot make the importer store anything wrong; tokens and the bound on open
walks; an interrupted paged sync resumes; Rust <-> pure over WebSocket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest

from chum_graph import Chat, person_id, register_recipes, texts
from chum_pump import Pump
from lama._core import core
from lama.chum import SyncResult, handle_event

POSTS = 30
"""About 200 objects: with pages of 10 entries, a first sync takes about 20 pages."""


def _stores(tmp_path: Path, cores: tuple[Any, Any] = (core, core)) -> tuple[Any, Any, str, str]:
    a = cores[0].Store(str(tmp_path / "a"), durable=False)
    b = cores[1].Store(str(tmp_path / "b"), durable=False)
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    return a, b, pa, pb


def _chat(a: Any, pa: str, pb: str, posts: int = POSTS) -> Chat:
    register_recipes()
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    for i in range(posts):
        chat.post(f"message {i}")
    return chat


def _no_holes(store: Any) -> None:
    """chum.md §5.3: every reference of every stored object or ID object is stored."""
    hashes = set(store.hashes())
    for h in hashes:
        if store.kind(h) in ("object", "id"):
            for _path, _kind, r in core.references(store.get(h)):
                assert r in hashes, f"{h} references {r}, which is not stored"


class Watch:
    """Frame filters for a pump: B's requests (and their page argument rewritten to
    ``page``), and A's answers to 109 (a walk's last page: how much B had imported and asked
    for when it arrived); ``a_rewrite``/``b_rewrite`` may change a parsed message (None:
    drop it)."""

    def __init__(self, pump: Pump, page: int | None = 10,
                 a_rewrite: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
                 b_rewrite: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None):
        self.pump, self.page = pump, page
        self.a_rewrite, self.b_rewrite = a_rewrite, b_rewrite
        self.services: list[int] = []
        self.args106: list[list[Any]] = []
        self.page_ids: set[int] = set()
        self.asked = 0
        self.at_last_page: list[tuple[int, int]] = []  # (imported, asked)
        pump.filters[1] = self.from_b
        pump.filters[0] = self.from_a

    def imported(self) -> int:
        return sum(len(d["objects"]) + len(d["id_objects"]) for k, d in self.pump.events[1] if k == "imported")

    def from_b(self, f: str | bytes) -> str | bytes | None:
        if not isinstance(f, str):
            return f
        m = json.loads(f)
        if m.get("type") == "request":
            s = m["serviceId"]
            self.services.append(s)
            if s == 106:
                if self.page is not None and len(m["args"]) > 3:
                    m["args"][3] = {"page": self.page}
                self.args106.append(m["args"])
            if s in (101, 108):
                self.asked += len(m["args"][0])
            if s == 109:
                self.page_ids.add(m["requestId"])
        if self.b_rewrite is not None:
            m = self.b_rewrite(m)
            if m is None:
                return None
        return json.dumps(m, separators=(",", ":"))

    def from_a(self, f: str | bytes) -> str | bytes | None:
        if not isinstance(f, str):
            return f
        m = json.loads(f)
        if m.get("type") == "data" and m.get("responseId") in self.page_ids:
            if "more" not in json.loads(m["data"]):
                self.at_last_page.append((self.imported(), self.asked))
        if self.a_rewrite is not None:
            m = self.a_rewrite(m)
            if m is None:
                return None
        return json.dumps(m, separators=(",", ":"))


def _sync(a: Any, b: Any, pa: str, pb: str, cores: tuple[Any, Any] = (core, core),
          **watch: Any) -> tuple[Pump, Watch, Any, Any]:
    sa = cores[0].ChumSession(a, pa, pb, fast_path=True, importer=False)
    sb = cores[1].ChumSession(b, pb, pa, fast_path=True, exporter=False)
    stores, results = (a, b), (SyncResult(), SyncResult())

    def on_event(side: int, kind: str, d: dict[str, Any]) -> None:
        handle_event(stores[side], kind, d, results[side])  # merges move B's channel head

    pump = Pump(sa, sb, on_event=on_event)
    w = Watch(pump, **watch)
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run()
    return pump, w, sa, sb


def _codes(pump: Pump) -> list[str]:
    return [d["code"] for k, d in pump.events[1] if k == "error"]


def _probe_without_pages(m: dict[str, Any]) -> dict[str, Any]:
    """A probe answer as a lama from before "closure-pages" sends it."""
    if isinstance(m.get("data"), dict) and "features" in m["data"]:
        m["data"]["features"] = [f for f in m["data"]["features"] if f != "closure-pages"]
    return m


def test_a_paged_first_sync_stores_objects_before_the_last_page(tmp_path: Path) -> None:
    a, b, pa, pb = _stores(tmp_path)
    chat = _chat(a, pa, pb)
    pump, w, _sa, sb = _sync(a, b, pa, pb)
    assert _codes(pump) == []
    assert sb.close_reason == "chum finished"
    assert 106 in w.services and 105 not in w.services
    assert w.services.count(109) >= 10, w.services
    # one walk (the newest node's closure holds everything); before its last page arrived B
    # had asked for most objects and stored the first ones (the first fetched chunk of a
    # pass is committed at once, later ones by the thousand)
    total = len([h for h in a.children(chat.head)]) + 1
    assert len(w.at_last_page) == 1
    imported, asked = w.at_last_page[0]
    assert imported > 0 and asked >= total // 2, (w.at_last_page, total)
    assert texts(b, chat.ci) == [f"message {i}" for i in reversed(range(POSTS))]
    _no_holes(b)
    assert b.verify() == []
    # a second sync transfers nothing
    pump, w, _sa, sb = _sync(a, b, pa, pb)
    assert _codes(pump) == [] and w.imported() == 0
    assert not {101, 106, 108, 109} & set(w.services)
    assert sb.stats()["objects_received"] == 0


def test_an_exporter_without_pages_gets_whole_closure_requests(tmp_path: Path) -> None:
    """New importer, exporter that does not list "closure-pages": 106 as before (three
    arguments at most), no 109, the sync completes."""
    a, b, pa, pb = _stores(tmp_path)
    chat = _chat(a, pa, pb, 10)
    pump, w, _sa, sb = _sync(a, b, pa, pb, page=None, a_rewrite=_probe_without_pages)
    assert _codes(pump) == [] and sb.close_reason == "chum finished"
    assert w.args106 and all(len(args) <= 3 for args in w.args106)
    assert 109 not in w.services
    assert texts(b, chat.ci)[0] == "message 9"
    _no_holes(b)
    assert b.verify() == []


def test_an_importer_that_asks_no_pages_gets_whole_closures(tmp_path: Path) -> None:
    """Exporter with the feature, importer without: its 106 has no fourth argument, and every
    answer is a whole closure (no "more"), parents first as before."""
    a, b, pa, pb = _stores(tmp_path)
    chat = _chat(a, pa, pb, 10)
    answers: list[list[Any]] = []
    asked: list[list[str]] = []

    def old_importer(m: dict[str, Any]) -> dict[str, Any]:
        if m.get("type") == "request" and m.get("serviceId") == 106:
            m["args"] = m["args"][:2]
            asked.append(m["args"][0])
        return m

    def watch_answers(m: dict[str, Any]) -> dict[str, Any]:
        m = _probe_without_pages(m)  # so B asks as an importer from before the feature
        d = m.get("data")
        if isinstance(d, str) and d.startswith('[{"root"'):
            answers.append(json.loads(d))
        return m

    pump, w, _sa, _sb = _sync(a, b, pa, pb, page=None, a_rewrite=watch_answers, b_rewrite=old_importer)
    assert _codes(pump) == []
    assert answers and len(answers) == len(asked)
    assert all("more" not in r for ans in answers for r in ans if r)
    # each a whole closure, parents first (the 4/5 order: the store's walk reversed)
    for roots, ans in zip(asked, answers):
        for r, entry in zip(roots, ans):
            assert [e["hash"] for e in entry["children"]] == list(reversed(a.children(r)))
    assert 109 not in w.services
    assert texts(b, chat.ci)[0] == "message 9"
    _no_holes(b)
    assert b.verify() == []


def test_a_page_that_lists_an_unresolved_reference_is_refused(tmp_path: Path) -> None:
    """A page that leaves out an entry a later entry references (neither listed before nor
    held by B): CI-ACO, nothing that references the gap is stored, no hole, the session ends
    cleanly, and the next sync (an honest exporter) completes."""
    a, b, pa, pb = _stores(tmp_path)
    chat = _chat(a, pa, pb)
    pages = [0]
    dropped: list[str] = []

    def drop(m: dict[str, Any]) -> dict[str, Any]:
        d = m.get("data")
        if isinstance(d, str) and d.startswith('{"root"'):
            pages[0] += 1
            if pages[0] == 2:
                page = json.loads(d)
                i = next(i for i, e in enumerate(page["children"])
                         if '/ChatMessage"' in a.get(e["hash"]))
                dropped.append(page["children"].pop(i)["hash"])
                m["data"] = json.dumps(page, separators=(",", ":"))
        return m

    pump, _w, _sa, sb = _sync(a, b, pa, pb, a_rewrite=drop)
    assert len(dropped) == 1
    assert "CI-ACO" in _codes(pump), _codes(pump)
    assert sb.close_reason == "chum finished"
    assert not b.has(dropped[0]) and not b.has(chat.head)
    _no_holes(b)
    assert b.verify() == []
    pump, _w, _sa, _sb = _sync(a, b, pa, pb)
    assert _codes(pump) == []
    assert b.has(dropped[0]) and b.has(chat.head)
    _no_holes(b)
    assert b.verify() == []


def _ask(sa: Any, now: float, rid: int, service: int, args: list[Any]) -> dict[str, Any]:
    sa.receive_text(json.dumps({"requestId": rid, "type": "request", "serviceId": service, "args": args}), now)
    for f in sa.poll_transmit():
        m = json.loads(f)
        if m.get("responseId") == rid:
            return m
    raise AssertionError(f"no answer to {service}")


def _exporter(tmp_path: Path, posts: int) -> tuple[Any, Any, float, list[str]]:
    """A's store with ``posts`` chat posts, an exporter-only session on it and the version
    nodes its roots answer lists (oldest first)."""
    a, _b, pa, pb = _stores(tmp_path)
    _chat(a, pa, pb, posts)
    sa = core.ChumSession(a, pa, pb, fast_path=True, importer=False)
    now = 1000.0
    sa.start(now)
    roots = json.loads(_ask(sa, now, 1, 2, [])["data"])
    nodes = [r["node"] for r in roots if r["type"] == "version_node"]
    assert len(nodes) == posts + 1
    return a, sa, now, nodes


def test_page_tokens_and_the_bound_on_open_walks(tmp_path: Path) -> None:
    a, sa, now, nodes = _exporter(tmp_path, 12)
    # pages of one entry: 8 walks open, the other roots are answered whole
    ans = json.loads(_ask(sa, now, 2, 106, [nodes, [], None, {"page": 1}])["data"])
    tokens = [(r["more"], nodes[i]) for i, r in enumerate(ans) if "more" in r]
    assert len(tokens) == 8 and all(len(r["children"]) == 1 for r in ans if "more" in r)
    assert any(len(r["children"]) > 1 for r in ans if "more" not in r)
    # unknown, malformed: a clear error
    for rid, bad in enumerate(["99.1", "nonsense", 7, None], start=10):
        e = _ask(sa, now, rid, 109, [bad])
        assert e["type"] == "error" and e["error"]["code"] == "LAMA-CHUM-PAGE", e
    # follow the first walk; the previous token again (a retry) gets the same page
    (token, root), listed, rid = tokens[0], 1, 100
    while True:
        rid += 2
        p = _ask(sa, now, rid, 109, [token])
        again = _ask(sa, now, rid + 1, 109, [token])
        page = json.loads(p["data"])
        listed += len(page["children"])
        if "more" not in page:
            assert again["type"] == "error" and again["error"]["code"] == "LAMA-CHUM-PAGE"  # expired
            break
        assert again["data"] == p["data"]
        token = page["more"]
        assert rid < 10_000
    # dependencies first, each once: the root's whole closure
    assert listed == len(a.children(root))
    # one walk closed: one more may open, then the bound holds again
    assert "more" in json.loads(_ask(sa, now, 20_000, 106, [[nodes[12]], [], None, {"page": 1}])["data"])[0]
    assert "more" not in json.loads(_ask(sa, now, 20_001, 106, [[nodes[11]], [], None, {"page": 1}])["data"])[0]
    refused = _ask(sa, now, 20_002, 106, [[nodes[11]], [], None, {"page": 0}])
    assert refused["type"] == "error" and refused["error"]["code"] == "LAMA-CHUM-BATCH"


def test_a_page_lists_nothing_the_importer_said_it_holds_meanwhile(tmp_path: Path) -> None:
    """docs/chum-fastpath.md "Walk ahead": when ``known`` grows between two pages of a walk (a
    hint in a 106), the next page lists nothing in it, not even the older version nodes the
    walk had entered before (until session 17 they were listed), is full to the page size and
    holds the next entries of the closure in dependency order (the Rust exporter also walks
    that page ahead on a thread, with the ``known`` of before the hint)."""
    page = 20
    a, sa, now, nodes = _exporter(tmp_path, 30)
    newest = nodes[-1]
    first = json.loads(_ask(sa, now, 2, 106, [[newest], [], None, {"page": page}])["data"])[0]
    page1 = [c["hash"] for c in first["children"]]
    assert len(page1) == page and "more" in first
    hint = nodes[15]
    assert json.loads(_ask(sa, now, 3, 106, [[], [hint], None, {"page": page}])["data"]) == []
    known = set(a.children(hint)) | {hint}
    p = json.loads(_ask(sa, now, 4, 109, [first["more"]])["data"])
    page2 = [c["hash"] for c in p["children"]]
    assert not [h for h in page2 if h in known], "a page lists nothing the importer holds"
    want = [h for h in a.children(newest) if h not in known and h not in page1][:page]
    assert page2 == want


def test_an_interrupted_paged_sync_resumes_and_completes(tmp_path: Path) -> None:
    a, b, pa, pb = _stores(tmp_path)
    chat = _chat(a, pa, pb)
    pages = [0]

    def go_silent(m: dict[str, Any]) -> dict[str, Any] | None:
        d = m.get("data")
        if isinstance(d, str) and d.startswith('{"root"'):
            pages[0] += 1
        return None if pages[0] >= 4 else m

    before = set(b.hashes())
    pump, w, _sa, _sb = _sync(a, b, pa, pb, a_rewrite=go_silent)
    assert "LAMA-CHUM-TIMEOUT" in _codes(pump), _codes(pump)
    mid = set(b.hashes())
    first = w.imported()
    assert first > 0 and first == len(mid - before) and not b.has(chat.head)
    _no_holes(b)
    assert b.verify() == []
    pump, w, _sa, _sb = _sync(a, b, pa, pb)
    assert _codes(pump) == []
    assert texts(b, chat.ci) == [f"message {i}" for i in reversed(range(POSTS))]
    # only the rest was fetched: nothing stored by the first session came again
    assert w.imported() == len(set(b.hashes()) - mid)
    _no_holes(b)
    assert b.verify() == []


@pytest.mark.cross_core
@pytest.mark.parametrize("rust_side", [0, 1])
def test_rust_and_pure_page_over_websocket(tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType,
                                           rust_side: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rust <-> pure over WebSocket on 127.0.0.1 with small pages: the pure importer asks
    pages of 7, the pure exporter cuts the Rust importer's pages to 7."""
    from lama._pure.chum import exporter as pure_exporter
    from lama._pure.chum import importer as pure_importer
    monkeypatch.setattr(pure_importer, "CLOSURE_PAGE", 7)
    monkeypatch.setattr(pure_exporter, "CLOSURE_PAGE_MAX", 7)
    register_recipes()
    cores = (rust_core, pure_core) if rust_side == 0 else (pure_core, rust_core)
    a, b, pa, pb = _stores(tmp_path, cores)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    for i in range(15):
        chat.post(f"message {i}")

    async def side(c: ModuleType, store: Any, transport: Any, me: str, peer: str, imp: bool) -> SyncResult:
        session = c.ChumSession(store, me, peer, fast_path=True, importer=imp, exporter=not imp)
        task = c.spawn_session(session, transport, store=store)
        result = SyncResult()
        for _ in range(1_000_000):
            events = await task.events()
            if events is None:
                break
            for kind, data in events:
                handle_event(store, kind, data, result)
        result.stats = await task.wait()
        return result

    async def main() -> tuple[SyncResult, SyncResult]:
        listener = await cores[1].ws_listen("127.0.0.1", 0)
        try:
            ta = await cores[0].ws_connect(f"ws://127.0.0.1:{listener.port}/")
            tb = await listener.accept()
        finally:
            await listener.close()
        ra, rb = await asyncio.gather(side(cores[0], a, ta, pa, pb, False), side(cores[1], b, tb, pb, pa, True))
        return ra, rb

    ra, rb = asyncio.run(asyncio.wait_for(main(), 120))
    assert rb.reason == "chum finished", rb
    assert [e for e in rb.errors] == []
    # about 13 pages: without them the pass is version, probe, 102, 106, 108, 107 and FIN
    assert rb.stats["requests_sent"] > 15, rb.stats
    assert texts(b, chat.ci) == [f"message {i}" for i in reversed(range(15))]
    assert a.verify() == [] and b.verify() == []
    a.close()
    b.close()
