"""Recorded reference peers for CHUM tests: answers taken from the transcripts in
tests/vectors (chum.md §9, vectors/README.md).  A :class:`RecordedExporter` plays the recorded
exporter of one peer: it answers each request with the response the reference gave to the
request of the same service and arguments (the n-th time with the n-th recorded answer), with
the response id of the request it answers.  It never sends requests of its own."""

from __future__ import annotations

import json
import struct
from typing import Any

Frame = "str | bytes"


def _binary(msg: dict[str, Any]) -> bytes | None:
    if msg.get("length") == 0:
        return b""
    if "hex" in msg:
        return bytes.fromhex(msg["hex"])
    return None  # a recorded binary message whose bytes are not in the recording


def recorded_answers(events: list[dict[str, Any]], importer: str) -> dict[tuple[int, str], list[list[Any]]]:
    """``(service, json(args)) -> [answer, ...]`` where an answer is the list of messages the
    importer ``importer`` ("A" or "B") received for one request of its own, in order: response
    dicts and binary stream chunks (bytes), seen from the importer's side of each connection."""
    other = "B" if importer == "A" else "A"
    sent = f"{importer}→{other}"
    got = f"{importer}←{other}"
    out: dict[tuple[int, str], list[list[Any]]] = {}
    by_conn: dict[str, dict[int, list[Any]]] = {}
    last_stream: dict[str, int] = {}
    for e in events:
        if e.get("layer") != "encrypted/chum":
            continue
        m = e.get("message")
        conn = e.get("conn", "")
        if not isinstance(m, dict):
            continue
        if e["direction"] == sent and m.get("type") == "request":
            answers: list[Any] = []
            by_conn.setdefault(conn, {})[m["requestId"]] = answers
            out.setdefault((m["serviceId"], json.dumps(m["args"])), []).append(answers)
            if m["serviceId"] == 8:
                last_stream[conn] = m["requestId"]
        elif e["direction"] == got and "responseId" in m:
            answers = by_conn.get(conn, {}).get(m["responseId"])
            if answers is not None:
                answers.append(m)
        elif e["direction"] == got and m.get("binary") and conn in last_stream:
            b = _binary(m)
            answers = by_conn[conn].get(last_stream[conn])
            if b is not None and answers is not None:
                answers.append(b)
    # a request whose send failed (or that the connection cut short) has no answer: only the
    # answered ones count, and a request never answered is not in the recording
    return {k: [a for a in v if a] for k, v in out.items() if any(v)}


class RecordedExporter:
    """A peer that answers requests from a recording (see module docstring)."""

    def __init__(self, answers: dict[tuple[int, str], list[list[Any]]]):
        self.answers = answers
        self.asked: dict[tuple[int, str], int] = {}
        self.requests: list[dict[str, Any]] = []
        self.unrecorded: list[dict[str, Any]] = []
        self._out: list[str | bytes] = []
        self._closed: str | None = None

    def receive_text(self, text: str, now: float) -> None:
        m = json.loads(text)
        if m.get("type") != "request":
            return
        self.requests.append(m)
        key = (m["serviceId"], json.dumps(m["args"]))
        rid = m["requestId"]
        recorded = self.answers.get(key)
        if m["serviceId"] not in (1, 2, 3, 4, 5, 6, 7, 8, 10):
            # chum.md §2.4: what the reference answers for a service it did not register
            self._out.append(json.dumps({"responseId": rid, "type": "error", "error": {
                "name": "TypeError", "message": f"Not a function: Servcie ID {m['serviceId']} [number]",
                "code": "UNKNOWN-SERVICE"}}, separators=(",", ":")))
            return
        if recorded is None:
            if m["serviceId"] == 10:
                # chum.md §4.7: FIN answers undefined (the recordings keep running, no FIN)
                self._out.append(json.dumps({"responseId": rid, "type": "data", "data": "$__undefined$"}))
                return
            self.unrecorded.append(m)
            self._out.append(json.dumps({"responseId": rid, "type": "error", "error": {
                "name": "Error", "message": "UNRECORDED: not in the recording", "code": "UNRECORDED"}}))
            return
        n = self.asked.get(key, 0)
        self.asked[key] = n + 1
        for msg in recorded[min(n, len(recorded) - 1)]:
            if isinstance(msg, bytes):
                self._out.append(struct.pack("<d", float(rid)) + msg[8:] if len(msg) >= 8 else msg)
            else:
                self._out.append(json.dumps({**msg, "responseId": rid}, ensure_ascii=False,
                                            separators=(",", ":")))

    def receive_binary(self, data: bytes, now: float) -> None:
        pass

    def handle_timeout(self, now: float) -> None:
        pass

    def connection_closed(self, reason: str, now: float) -> None:
        self._closed = reason

    def poll_timeout(self) -> float | None:
        return None

    def poll_transmit(self) -> list[str | bytes]:
        out, self._out = self._out, []
        return out

    def poll_events(self) -> list[tuple[str, dict[str, Any]]]:
        return []

    @property
    def finished(self) -> bool:
        return self._closed is not None

    @property
    def close_reason(self) -> str | None:
        return self._closed
