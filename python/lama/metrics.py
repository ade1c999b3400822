"""Metrics in the Prometheus text exposition format (version 0.0.4), with no dependency.

Anything in lama may count what it does::

    from lama import metrics

    SENT = metrics.counter("lama_example_sent_total", "Things sent.", ["kind"])
    SENT.inc(kind="text")
    metrics.gauge("lama_example_queue", "Items queued now.", fn=lambda: len(queue))
    LAT = metrics.histogram("lama_example_seconds", "How long it took.")
    LAT.observe(0.012)

``metrics.counter/gauge/histogram`` register in the process-wide :data:`REGISTRY` (what the
``/metrics`` endpoints of ``lama serve --http`` and ``lama comm-server --metrics`` serve,
besides their own families); registering a name again returns the existing metric when its
type and labels agree (so a module may register at import or on first use), and raises
``InvalidArgumentError`` when they do not. A :class:`Registry` of one's own holds metrics
that belong to one object (one App's connections) rather than to the process.

A gauge is set (``set``, ``inc``, ``dec``) or computed at scrape time (``fn``: returns a
number, or a dict from label-value tuples to numbers). ``Registry.collector(fn)`` adds
families computed at scrape time (``fn() -> list[Family]``), e.g. from a server's counters.
The metric names lama itself exports are listed in docs/metrics.md.

Updates take a lock (the chat layer reports from its own thread); an increment costs about a
microsecond.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from lama.errors import InvalidArgumentError

__all__ = ["Registry", "Counter", "Gauge", "Histogram", "Family", "REGISTRY", "counter",
           "gauge", "histogram", "render", "CONTENT_TYPE", "DEFAULT_BUCKETS"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# seconds: from a local round trip to a message that waited a minute for its peer
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

LabelValues = tuple[str, ...]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgumentError(f"LAMA-ARG: not a Prometheus metric name: {name!r}")


def _check_labels(labels: Sequence[str], reserved: Sequence[str] = ()) -> tuple[str, ...]:
    out = tuple(labels)
    for lab in out:
        if not isinstance(lab, str) or not _LABEL.match(lab) or lab.startswith("__") \
                or lab in reserved:
            raise InvalidArgumentError(f"LAMA-ARG: not a usable label name: {lab!r}")
    if len(set(out)) != len(out):
        raise InvalidArgumentError(f"LAMA-ARG: label names repeat: {out!r}")
    return out


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _num(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _labels_text(names: Sequence[str], values: Sequence[str],
                 extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{n}="{_escape_label(str(v))}"' for n, v in zip(names, values)]
    if extra is not None:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


@dataclass
class Family:
    """One metric family as it is exposed: ``samples`` are ``(suffix, labels, value)`` with
    ``labels`` a mapping (ordered) and ``suffix`` appended to the name (``""``,
    ``"_bucket"``, ``"_sum"``, ``"_count"``)."""

    name: str
    type: str          # counter, gauge, histogram, untyped
    help: str
    samples: list[tuple[str, Mapping[str, str], float]] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.type}"]
        for suffix, labels, value in self.samples:
            lab = _labels_text(list(labels.keys()), list(labels.values()))
            lines.append(f"{self.name}{suffix}{lab} {_num(value)}")
        return "\n".join(lines) + "\n"


class _Metric:
    type = "untyped"

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        _check_name(name)
        self.name = name
        self.help = help
        self.labelnames = _check_labels(labels, ("le",) if self.type == "histogram" else ())
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, Any]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise InvalidArgumentError(
                f"LAMA-ARG: {self.name} takes the labels {list(self.labelnames)}, "
                f"not {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def family(self) -> Family:  # pragma: no cover - every subclass has its own
        raise NotImplementedError


class Counter(_Metric):
    """A value that only goes up (a total since the process started)."""

    type = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {}
        if not self.labelnames:
            self._values[()] = 0

    def inc(self, amount: float = 1, **labels: Any) -> None:
        if amount < 0:
            raise InvalidArgumentError(f"LAMA-ARG: {self.name}: a counter cannot go down")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: Any) -> float:
        return self._values.get(self._key(labels), 0)

    def family(self) -> Family:
        with self._lock:
            items = sorted(self._values.items())
        return Family(self.name, self.type, self.help,
                      [("", dict(zip(self.labelnames, k)), v) for k, v in items])


class Gauge(_Metric):
    """A value that goes up and down, set by its owner or computed by ``fn`` at scrape
    time."""

    type = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 fn: Callable[[], float | Mapping[LabelValues, float]] | None = None) -> None:
        super().__init__(name, help, labels)
        self.fn = fn
        self._values: dict[LabelValues, float] = {}
        if not self.labelnames and fn is None:
            self._values[()] = 0

    def set(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value

    def inc(self, amount: float = 1, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def dec(self, amount: float = 1, **labels: Any) -> None:
        self.inc(-amount, **labels)

    def remove(self, **labels: Any) -> None:
        with self._lock:
            self._values.pop(self._key(labels), None)

    def value(self, **labels: Any) -> float:
        return self._values.get(self._key(labels), 0)

    def family(self) -> Family:
        if self.fn is not None:
            got = self.fn()
            if isinstance(got, Mapping):
                items = sorted((tuple(str(x) for x in k), float(v)) for k, v in got.items())
            else:
                items = [((), float(got))]
        else:
            with self._lock:
                items = sorted(self._values.items())
        for k, _ in items:
            if len(k) != len(self.labelnames):
                raise InvalidArgumentError(f"LAMA-ARG: {self.name}: label values {k!r} do not "
                                           f"match the labels {list(self.labelnames)}")
        return Family(self.name, self.type, self.help,
                      [("", dict(zip(self.labelnames, k)), v) for k, v in items])


class Histogram(_Metric):
    """Observations counted into cumulative buckets (``le``), with their sum and count."""

    type = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help, labels)
        bs = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bs or len(set(bs)) != len(bs):
            raise InvalidArgumentError(f"LAMA-ARG: {name}: buckets must be distinct numbers")
        self.buckets = tuple(bs)
        # per label values: [count per bucket (not cumulative) + overflow, sum]
        self._data: dict[LabelValues, tuple[list[int], list[float]]] = {}
        if not self.labelnames:
            self._data[()] = ([0] * (len(bs) + 1), [0.0])

    def observe(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        i = 0
        while i < len(self.buckets) and value > self.buckets[i]:
            i += 1
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[i] += 1
            total[0] += value

    def count(self, **labels: Any) -> int:
        d = self._data.get(self._key(labels))
        return sum(d[0]) if d else 0

    def family(self) -> Family:
        samples: list[tuple[str, Mapping[str, str], float]] = []
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._data.items())
        for key, (counts, total) in items:
            base = dict(zip(self.labelnames, key))
            acc = 0
            for b, n in zip(self.buckets + (math.inf,), counts):
                acc += n
                samples.append(("_bucket", {**base, "le": _num(b)}, acc))
            samples.append(("_sum", base, total))
            samples.append(("_count", base, acc))
        return Family(self.name, self.type, self.help, samples)


class Registry:
    """A set of metrics and collectors rendered together."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], Iterable[Family]]] = []
        self._lock = threading.Lock()

    def _register(self, cls: type, name: str, help: str, labels: Sequence[str],
                  **kw: Any) -> Any:
        with self._lock:
            old = self._metrics.get(name)
            if old is not None:
                if type(old) is not cls or old.labelnames != tuple(labels):
                    raise InvalidArgumentError(
                        f"LAMA-ARG: metric {name} is registered already as a {old.type} with "
                        f"the labels {list(old.labelnames)}")
                return old
            m = cls(name, help, labels, **kw)
            self._metrics[name] = m
            return m

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        c: Counter = self._register(Counter, name, help, labels)
        return c

    def gauge(self, name: str, help: str, labels: Sequence[str] = (),
              fn: Callable[[], Any] | None = None) -> Gauge:
        g: Gauge = self._register(Gauge, name, help, labels, fn=fn)
        if fn is not None:
            g.fn = fn  # the newest owner's view (a server restarted in the same process)
        return g

    def histogram(self, name: str, help: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        h: Histogram = self._register(Histogram, name, help, labels, buckets=buckets)
        return h

    def unregister(self, name: str) -> None:
        with self._lock:
            self._metrics.pop(name, None)

    def collector(self, fn: Callable[[], Iterable[Family]]) -> Callable[[], None]:
        """Add families computed at scrape time; returns a function that removes them."""
        self._collectors.append(fn)

        def remove() -> None:
            if fn in self._collectors:
                self._collectors.remove(fn)
        return remove

    def families(self) -> list[Family]:
        with self._lock:
            metrics = list(self._metrics.values())
        out = [m.family() for m in metrics]
        for fn in list(self._collectors):
            out.extend(fn())
        return out


REGISTRY = Registry()


def counter(name: str, help: str, labels: Sequence[str] = ()) -> Counter:
    """A counter in the process-wide :data:`REGISTRY` (the existing one if registered)."""
    return REGISTRY.counter(name, help, labels)


def gauge(name: str, help: str, labels: Sequence[str] = (),
          fn: Callable[[], Any] | None = None) -> Gauge:
    """A gauge in the process-wide :data:`REGISTRY` (``fn``: computed at scrape time)."""
    return REGISTRY.gauge(name, help, labels, fn)


def histogram(name: str, help: str, labels: Sequence[str] = (),
              buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
    """A histogram in the process-wide :data:`REGISTRY`."""
    return REGISTRY.histogram(name, help, labels, buckets)


def render(*registries: Registry) -> str:
    """The exposition text of ``registries`` (default: :data:`REGISTRY`). A family name that
    appears twice is rendered once (the first), so the text stays valid."""
    seen: set[str] = set()
    parts = []
    for reg in registries or (REGISTRY,):
        for fam in reg.families():
            if fam.name in seen:
                continue
            seen.add(fam.name)
            parts.append(fam.render())
    return "".join(parts)
