"""The RPC layer's message encoding (chum.md §2) through a session's public interface: request
shapes, the undefined sentinel, classification of what arrives, bad constructor arguments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lama._core import core
from lama.errors import InvalidArgumentError, LamaError

P1 = "11" * 32
P2 = "22" * 32


def test_version_request_is_the_first_frame(tmp_path: Path) -> None:
    s = core.ChumSession(core.Store(str(tmp_path / "s")), P1, P2)
    s.start(5.0)
    assert s.poll_transmit() == ['{"requestId":0,"type":"request","serviceId":1,"args":[]}']
    assert s.poll_timeout() == pytest.approx(35.0)  # request_timeout default 30 s


def test_services_answer_with_the_reference_encoding(tmp_path: Path) -> None:
    s = core.ChumSession(core.Store(str(tmp_path / "s")), P1, P2, importer=False)
    s.start(0.0)
    s.receive_text('{"requestId":3,"type":"request","serviceId":1,"args":[]}', 0.0)
    s.receive_text('{"type":"request","requestId":4,"serviceId":3,"args":[1,"$__undefined$"]}', 0.0)
    s.receive_text('{"requestId":5,"type":"request","serviceId":6,"args":["nothex"]}', 0.0)
    s.receive_text('{"requestId":6,"type":"request","serviceId":8,"args":["%s","latin1"]}' % ("ab" * 32), 0.0)
    s.receive_text('{"requestId":7,"type":"request","serviceId":10,"args":[]}', 0.0)
    out = s.poll_transmit()
    assert out[0] == '{"responseId":3,"type":"data","data":8}'
    # service 3 is not registered without the importer
    assert json.loads(out[1])["error"]["code"] == "UNKNOWN-SERVICE"
    assert json.loads(out[2]) == {"responseId": 5, "type": "error", "error": {
        "name": "Error", "message": 'UTC-EHASH: Not a valid hash: "nothex"', "code": "UTC-EHASH"}}
    assert json.loads(out[3])["error"]["code"] == "CES-GBL2"
    assert out[4] == '{"responseId":7,"type":"data","data":"$__undefined$"}'  # FIN: undefined
    # FIN ends the exporter; without an importer the session is done (chum.md §3.2)
    assert len(out) == 5 and s.finished and s.close_reason == "chum finished"
    (fin,) = [d for k, d in s.poll_events() if k == "finished"]
    assert fin["log"]["statistics"] == {"requestsSentTotal": 0, "requestsReceivedTotal": 5,
                                        "requestsReceivedInvalid": 0}


@pytest.mark.parametrize("text", ["not json", "[1,2]", '{"type":"data","data":1}',
                                  '{"requestId":"1","type":"request","serviceId":1,"args":[]}',
                                  '{"responseId":1.5,"type":"data"}', "{}"])
def test_invalid_messages_are_counted_not_answered(tmp_path: Path, text: str) -> None:
    s = core.ChumSession(core.Store(str(tmp_path / "s")), P1, P2, importer=False)
    s.start(0.0)
    s.receive_text(text, 0.0)
    assert s.poll_transmit() == []
    assert s.stats()["requests_invalid"] == 1
    ev = s.poll_events()
    assert ev[0][0] == "error" and ev[0][1]["code"] == "LAMA-CHUM-FRAME" and not ev[0][1]["fatal"]
    assert not s.finished


def test_binary_frames_for_no_stream_are_dropped(tmp_path: Path) -> None:
    s = core.ChumSession(core.Store(str(tmp_path / "s")), P1, P2, exporter=False)
    s.start(0.0)
    s.poll_transmit()
    for frame in (b"", b"\x01\x02", b"\x00" * 8 + b"payload", b"\xff" * 16):
        s.receive_binary(frame, 0.0)
    assert [d["code"] for k, d in s.poll_events()] == ["LAMA-CHUM-FRAME"] * 4
    assert not s.finished


def test_version_mismatch_is_fatal(tmp_path: Path) -> None:
    s = core.ChumSession(core.Store(str(tmp_path / "s")), P1, P2, exporter=False)
    s.start(0.0)
    s.poll_transmit()
    s.receive_text('{"responseId":0,"type":"data","data":7}', 0.0)
    assert s.finished and s.close_reason is not None and s.close_reason.startswith("CS-MISMATCH")
    kinds = [k for k, _ in s.poll_events()]
    assert kinds == ["error", "finished"]


def test_version_retry_gives_up_after_15_retries(tmp_path: Path) -> None:
    s = core.ChumSession(core.Store(str(tmp_path / "s")), P1, P2, exporter=False)
    now = 0.0
    s.start(now)
    for i in range(16):
        (req,) = s.poll_transmit()
        assert json.loads(req)["requestId"] == i
        s.receive_text('{"responseId":%d,"type":"error","error":{"name":"TypeError","message":"x",'
                       '"code":"UNKNOWN-SERVICE"}}' % i, now)
        if i < 15:
            assert s.poll_timeout() == pytest.approx(now + 0.3)
            now += 0.3
            s.handle_timeout(now)
    assert s.finished and "UNKNOWN-SERVICE" in (s.close_reason or "")


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"request_timeout": -1}, {"max_retries": 1.5},
                                    {"poll_interval": float("nan")}, {"max_message": "big"}])
def test_bad_options_are_lama_errors(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    store = core.Store(str(tmp_path / "s"))
    with pytest.raises(InvalidArgumentError) as e:
        core.ChumSession(store, P1, P2, **kwargs)
    assert isinstance(e.value, LamaError) and isinstance(e.value, ValueError)


def test_bad_person_is_a_lama_error(tmp_path: Path) -> None:
    store = core.Store(str(tmp_path / "s"))
    with pytest.raises(InvalidArgumentError):
        core.ChumSession(store, "nope", P2)
