"""hulurt.tokenizer on the tiny fixture tokenizer: encoding (no BOS, atomic added tokens), streaming decode that
survives multi-byte characters split across tokens, skip_special_tokens, and <think> stripping (7.4)."""

from __future__ import annotations

import pytest
from hulurt.errors import UnsupportedInputError
from hulurt.tokenizer import Tokenizer, strip_think
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir) -> Tokenizer:
    return Tokenizer.from_file(tiny_tokenizer_dir)


def test_ids_and_encode(tok):
    assert [tok.token_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>")] == [
        286,
        287,
        288,
        290,
    ]
    ids = tok.encode("<|im_start|>user\n<image><image>hello<|im_end|>")
    assert ids[0] == 287 and ids[-1] == 288 and ids.count(290) == 2  # atomic, no BOS
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>user\n<image><image>hello<|im_end|>"
    assert tok.decode(ids) == "user\nhello"
    assert {286, 287, 288, 290} <= tok.special_ids and 284 not in tok.special_ids  # <think> is not special


def test_missing_tokenizer(tmp_path, tok):
    with pytest.raises(UnsupportedInputError, match="tokenizer.json not found"):
        Tokenizer.from_file(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(UnsupportedInputError, match="cannot load tokenizer"):
        Tokenizer.from_file(tmp_path)
    with pytest.raises(UnsupportedInputError, match="no token"):
        tok.require_id("<video>")


def test_stream_splits_utf8(tok):
    text = "Lésion: 12 mm → 肝 ✓ 🫁 done"
    ids = tok.encode(text)
    assert len(ids) > len(text.encode("utf-8")) // 2  # byte-level: multi-byte chars span several ids
    for i in range(1, len(ids)):  # at least one id alone is an incomplete character
        if "\ufffd" in tok.decode(ids[i : i + 1]):
            break
    else:
        pytest.fail("no split character in the sample; the test would pass trivially")
    s = tok.stream()
    deltas = [s.push(i) for i in ids] + [s.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40))
def test_stream_equals_decode(tok, text):
    ids = tok.encode(text)
    s = tok.stream(skip_special_tokens=False)
    out = "".join(s.push(i) for i in ids) + s.flush()
    assert out == tok.decode(ids, skip_special_tokens=False)


def test_stream_skips_special(tok):
    ids = tok.encode("<|im_start|>assistant\nThe answer is yes.<|im_end|><|endoftext|>")
    s = tok.stream()
    assert "".join(s.push(i) for i in ids) + s.flush() == "assistant\nThe answer is yes."


def test_flush_emits_incomplete_tail(tok):
    ids = tok.encode("ok 肝")
    s = tok.stream()
    out = "".join(s.push(i) for i in ids[:-1])
    assert "\ufffd" not in out
    assert out + s.flush() == tok.decode(ids[:-1])


def test_strip_think():
    assert strip_think("<think>\nreasoning\n\n</think>\n\nThe answer is yes.") == "The answer is yes."
    assert strip_think("A\n\n\n\nB") == "A\n\nB"
    assert strip_think("before <think>never closed") == "before"


def test_stream_hides_think(tok):
    text = "<think>\nThe lesion is hypodense.\n</think>\n\nThe answer is no. <think>x</think>Done"
    ids = tok.encode(text)
    assert 284 in ids and 285 in ids  # <think> and </think> are single added ids in the fixture
    for step in (1, 2, 3):  # tags arriving whole or inside bigger deltas
        s = tok.stream(hide_think=True)
        out = []
        for k in range(0, len(ids), step):
            out.append(s.push_many(ids[k : k + step]))
        out.append(s.flush())
        assert "".join(out) == "The answer is no. Done"


def test_stream_think_tags_split_across_text():
    """Tags spelled by several ordinary tokens (a tokenizer without <think> added tokens)."""
    from hulurt.tokenizer import StreamDecoder

    class Chars:  # a tokenizer whose ids are code points, one char per id
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    text = "<thi" + "nk>hidden</th" + "ink>shown <b>ok</b> <thin"
    s = StreamDecoder(Chars(), hide_think=True)  # type: ignore[arg-type]
    out = "".join(s.push(ord(c)) for c in text) + s.flush()
    assert out == "shown <b>ok</b> <thin"
