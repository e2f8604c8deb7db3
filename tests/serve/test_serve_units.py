"""Pieces of the server without HTTP: stop strings held back across pieces, request validation naming the field,
media of an earlier turn rendered in that turn, data URLs and zips of the upload workspace."""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

import pytest
from hulurt.serve.engine import StopStrings
from hulurt.serve.schemas import APIError, Part, parse_chat_request
from hulurt.serve.uploads import Workspace


def test_stop_strings_cut_before_the_first_stop_across_pieces() -> None:
    s = StopStrings(["END", "##"])
    out = [s.push(p) for p in ("abc E", "N", "xyz#", "#tail")]
    # "E", then "EN" could begin "END" and "#" could begin "##": held back until they cannot
    assert out == [("abc ", False), ("", False), ("ENxyz", False), ("", True)]
    s = StopStrings(["END"])
    assert s.push("abcE") == ("abc", False) and s.push("ND more") == ("", True)
    s = StopStrings([])
    assert s.push("x") == ("x", False) and s.flush() == ""
    s = StopStrings(["zz"])
    assert s.push("az") == ("a", False) and s.flush() == "z"


@pytest.mark.parametrize("body, field", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["a", ""]}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "messages[1].role"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_data": "data:,x"}}]}]},
     "messages[0].content[0].file.filename"),
    ({"messages": [{"role": "user", "content": "bad \udc80 text"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
])
def test_bad_requests_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(APIError) as e:
        parse_chat_request(body, "m")
    assert e.value.status == 400 and e.value.param == field and field.split(".")[-1].split("[")[0] in e.value.message


def test_request_fields_are_read() -> None:
    r = parse_chat_request({"model": "m", "messages": [{"role": "developer", "content": "be brief"},
                                                       {"role": "user", "content": "hi"}],
                            "max_completion_tokens": 5, "max_tokens": 9, "stop": "x", "seed": -1, "stream": True,
                            "stream_options": {"include_usage": True}}, "m")
    assert r.messages[0].role == "system" and r.max_tokens == 5 and r.stop == ("x",) and r.greedy
    assert r.seed == 2**32 - 1 and r.stream and r.include_usage


def test_media_of_an_earlier_turn_stays_in_that_turn(tmp_path: Path) -> None:
    import numpy as np
    from hulurt.inputs import build_inputs, content_item
    from hulurt.media import image_from_array

    class Chars:
        def encode(self, text: str) -> list[int]:
            return [ord(c) % 250 for c in text]

    img = image_from_array(np.zeros((32, 32), np.uint8))
    history = [{"role": "user", "content": [content_item(img), {"type": "text", "text": "Look."}]},
               {"role": "assistant", "content": "Seen."}]
    inputs = build_inputs([img], "And now?", Chars(), 255, history=history, history_media=1)
    assert inputs.prompt.startswith("<|im_start|>user\n<image>\nLook.<|im_end|>\n<|im_start|>assistant\nSeen.")
    assert inputs.prompt.endswith("<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n")
    assert int((inputs.input_ids == 255).sum()) == inputs.n_kept > 0
    with pytest.raises(ValueError, match="history_media"):
        build_inputs([img], "?", Chars(), 255, history=history, history_media=2)


def _b64(data: bytes, mime: str = "application/zip") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def test_zip_members_cannot_escape_and_sizes_are_checked(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../../evil.dcm", b"x" * 10)
        z.writestr("a/evil.dcm", b"y" * 10)
        z.writestr("__MACOSX/._evil.dcm", b"z")
    with Workspace(tmp_path, 2**20, 2**20) as ws:
        up = ws.save(Part("file", "m[0]", data_url=_b64(buf.getvalue()), filename="C:\\exports\\series.zip"))
        assert up.kind == "dicom" and up.display == "series.zip"
        assert sorted(p.name for p in up.path.iterdir()) == ["00001_evil.dcm", "evil.dcm"]
        assert all(p.resolve().is_relative_to(ws.dir) for p in up.path.iterdir())
        assert ws.client_names(f"{up.path}/evil.dcm: bad") == "series.zip/evil.dcm: bad"
    assert not ws.dir.exists()
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.dcm", b"\0" * (3 * 2**20))
    with Workspace(tmp_path, 2**20, 2**20) as ws, pytest.raises(APIError) as e:
        ws.save(Part("file", "m[0]", data_url=_b64(bomb.getvalue()), filename="big.zip"))
    assert e.value.status == 413 and "big.zip" in e.value.message
    with Workspace(tmp_path, 100, 2**20) as ws, pytest.raises(APIError) as e:
        ws.save(Part("image_url", "m[0]", data_url=_b64(b"\x89PNG" * 100, "image/png")))
    assert e.value.status == 413
    with Workspace(tmp_path, 2**20, 2**20) as ws, pytest.raises(APIError, match="unsupported image type"):
        ws.save(Part("image_url", "m[0]", data_url=_b64(b"GIF89a", "image/gif")))
    assert list(tmp_path.iterdir()) == []
