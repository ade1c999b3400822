"""Before/after of the tracer (issue 11, benches/RESULTS.md session 7), in ONE process so both
see the same machine load: three apps - tracing off, the tracer of an older revision, the
current one - in rotating order, each round sequential sends then a gather of concurrent ones;
prints per app the process CPU per message and the CPU inside its tracer (posted + flush on the
loop thread, measured with thread_time, plus its writer thread).

Usage: git show REV:python/lama/trace.py > /tmp/trace_before.py
       LAMA_CORE=rust python benches/trace_ab_side.py /tmp/trace_before.py ROUNDS N_SEQ N_CONC
"""
import asyncio, importlib.util, statistics, sys, tempfile, time, os
from pathlib import Path
from lama import App, AppConfig
spec = importlib.util.spec_from_file_location("trace_before", sys.argv[1])
before = importlib.util.module_from_spec(spec); sys.modules["trace_before"] = before; spec.loader.exec_module(before)
PEER = "ab"*32
async def main(d, rounds, nseq, nconc):
    apps, topics, spent = {}, {}, {}
    for mode in ("off", "before", "after"):
        app = await App.create(d / mode, email=f"{mode}@example.com", name=mode, secret="s",
                               config=AppConfig(comm_server_url=None, trace=(mode != "off")))
        if mode == "before":
            old = app.tracer
            old.close()
            app.tracer = before.Tracer(app.instance.store, str(app.instance.person_id),
                                       Path(d / "before-traces.sqlite3"), limit=10_000)
        apps[mode] = app
        topics[mode] = app.chat.create_group("bench", [PEER]).id
        await app.send(topics[mode], "warm")
        spent[mode] = [0.0]
        tr = app.tracer
        for name in ("posted", "_flush") if tr is not None else ():
            fn = getattr(tr, name)
            def timed(*a, _fn=fn, _s=spent[mode], **k):
                t = time.thread_time()
                try: return _fn(*a, **k)
                finally: _s[0] += time.thread_time() - t
            setattr(tr, name, timed)
    cpu = {m: [] for m in apps}
    n = {m: 0 for m in apps}
    for r in range(rounds):
        order = list(apps)[r % 3:] + list(apps)[:r % 3]
        for mode in order:
            app, topic = apps[mode], topics[mode]
            c0 = time.process_time()
            for i in range(nseq):
                await app.send(topic, f"seq {r} {i}")
            await asyncio.gather(*(app.send(topic, f"conc {r} {i}") for i in range(nconc)))
            if app.tracer is not None:
                app.tracer._flush(); app.tracer._writer.flush()
            cpu[mode].append(time.process_time() - c0)
            n[mode] += nseq + nconc
    res = {}
    for mode, app in apps.items():
        w = app.tracer._writer.cpu if app.tracer is not None else 0.0
        tot = sum(cpu[mode])
        res[mode] = (tot / n[mode] * 1e6, (spent[mode][0] + w) / n[mode] * 1e6, (spent[mode][0] + w) / tot * 100)
        await app.close()
    print("load", os.getloadavg())
    for mode, (c, t, share) in res.items():
        print(f"{mode:7s} process CPU {c:7.1f} us/msg  tracer {t:5.2f} us/msg  share {share:5.2f} %  (vs off: {c / res['off'][0] * 100 - 100:+.1f} %)")
with tempfile.TemporaryDirectory() as d:
    asyncio.run(main(Path(d), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
