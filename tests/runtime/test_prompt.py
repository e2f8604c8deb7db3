"""hulurt.prompt: the template strings of docs/model.md §7.2 byte for byte (Jinja2 and the plain-Python
renderer), chat_template.json loading, and placeholder expansion (7.3, 5.2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hulurt import prompt as pr
from hulurt.errors import UnsupportedInputError

# (messages, kwargs, expected) -- the rendered examples of docs/model.md §7.2, verbatim
CASES = [
    (
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "Describe this image in detail."}],
            }
        ],
        {},
        "<|im_start|>user\n<image>\nDescribe this image in detail.<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        [{"role": "user", "content": [{"type": "video", "num_frames": 3}, {"type": "text", "text": "Q?"}]}],
        {},
        "<|im_start|>user\n<image>,<image>,<image>\nQ?<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        [
            {
                "role": "user",
                "content": [
                    {"type": "video", "num_frames": 3, "timestamps": [0.0, 1.0, 2.5]},
                    {"type": "text", "text": "Q?"},
                ],
            }
        ],
        {},
        "<|im_start|>user\nTime 0.0s:<image>,Time 1.0s:<image>,Time 2.5s:<image>\nQ?<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    (
        [{"role": "user", "content": "hello"}],
        {},
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Yo"},
            {"role": "user", "content": "again"},
        ],
        {},
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    (  # a timestamped single image: "Time X.Xs: " WITH a space (trap 24); 12.345 -> 12.3
        [
            {
                "role": "user",
                "content": [{"type": "image", "timestamp": 12.345}, {"type": "text", "text": "Q"}],
            }
        ],
        {},
        "<|im_start|>user\nTime 12.3s: <image>\nQ<|im_end|>\n<|im_start|>assistant\n",
    ),
    (  # original-path key "time"; integer-valued floats print as "2.0"
        [{"role": "user", "content": [{"type": "image", "time": 2.0}, {"type": "text", "text": "Q"}]}],
        {"add_generation_prompt": False},
        "<|im_start|>user\nTime 2.0s: <image>\nQ<|im_end|>\n",
    ),
    (  # HF system branch
        [{"role": "user", "content": [{"type": "3d", "num_frames": 2}, {"type": "text", "text": "Q"}]}],
        {"add_system_prompt": True, "system_prompt": "You are Hulu-Med."},
        "<|im_start|>system\nYou are Hulu-Med.<|im_end|>\n<|im_start|>user\n<image>,<image>\nQ<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    (  # an explicit system message is not doubled
        [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}],
        {"add_system_prompt": True, "system_prompt": "default"},
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n",
    ),
]


@pytest.mark.parametrize("messages, kwargs, expected", CASES)
def test_builtin_template_bytes(messages, kwargs, expected):
    assert pr.render(messages, **kwargs) == expected
    assert pr.render_builtin(messages, **kwargs) == expected


def test_template_independent_of_trim_options():
    """The built-in template gives the same bytes with plain Jinja2 defaults (no trim/lstrip)."""
    import jinja2

    tpl = jinja2.Environment().from_string(pr.BUILTIN_CHAT_TEMPLATE)
    for messages, kwargs, expected in CASES:
        args = {"add_generation_prompt": True, "add_system_prompt": False, "system_prompt": None, **kwargs}
        assert tpl.render(messages=messages, image_token="<image>", **args) == expected


def test_format_time():
    assert [pr.format_time(x) for x in (0, 2, 12.345, 0.25, 0.35, 59.96)] == [
        "0.0",
        "2.0",
        "12.3",
        "0.2",
        "0.3",
        "60.0",
    ]


def test_chat_template_json(tmp_path):
    tpl = "{% for m in messages %}[{{ m['role'] }}]\n{{ m['content'] }}\n{% endfor %}"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": tpl}))
    loaded = pr.load_chat_template(tmp_path)
    assert loaded == tpl
    # trim_blocks + lstrip_blocks as transformers renders: no stray newline after the block tags
    assert pr.render([{"role": "user", "content": "x"}], loaded) == "[user]\nx\n"
    assert pr.load_chat_template(None) == pr.BUILTIN_CHAT_TEMPLATE
    (tmp_path / "empty").mkdir()
    assert pr.load_chat_template(tmp_path / "empty") == pr.BUILTIN_CHAT_TEMPLATE


def test_chat_template_errors(tmp_path):
    bad = tmp_path / "chat_template.json"
    bad.write_text("{not json")
    with pytest.raises(UnsupportedInputError, match="chat_template.json: not valid JSON"):
        pr.load_chat_template(bad)
    bad.write_text(json.dumps({"template": "x"}))
    with pytest.raises(UnsupportedInputError, match="'chat_template'"):
        pr.load_chat_template(bad)
    with pytest.raises(UnsupportedInputError, match="chat template: no images here"):
        pr.render([{"role": "user", "content": "x"}], "{{ raise_exception('no images here') }}")
    with pytest.raises(UnsupportedInputError, match="rendering failed"):
        pr.render([{"role": "user", "content": "x"}], "{% if %}")


def _fake_encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_expand():
    prompt = "<|im_start|>user\n<image>,<image>\nQ<|im_end|>\n"
    ids = pr.expand(prompt, [3, 1], _fake_encode, 999)
    expected = (
        _fake_encode("<|im_start|>user\n") + [999] * 3 + [ord(",")] + [999] + _fake_encode("\nQ<|im_end|>\n")
    )
    assert ids.tolist() == expected and ids.dtype == np.int64
    assert pr.expand("<image>", [0], _fake_encode, 999).tolist() == []
    with pytest.raises(UnsupportedInputError, match="2 '<image>' placeholders but the visual inputs have 3"):
        pr.expand(prompt, [1, 1, 1], _fake_encode, 999)


def test_expand_equals_encoding_the_expanded_string(tiny_tokenizer_dir):
    """5.2: inserting ids == tokenising the string with each <image> repeated, when <image> is an added token."""
    from hulurt.tokenizer import Tokenizer

    tok = Tokenizer.from_file(tiny_tokenizer_dir)
    image_id = tok.require_id("<image>")
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "video", "num_frames": 3, "timestamps": [0.0, 1.5, 3.0]},
                {"type": "image"},
                {"type": "text", "text": "What abnormality is visible?"},
            ],
        }
    ]
    prompt = pr.render(msgs, add_system_prompt=True, system_prompt="You are a helpful medical assistant.")
    counts = [4, 1, 2, 9]
    ids = pr.expand(prompt, counts, tok.encode, image_id)
    pieces = prompt.split("<image>")
    expanded = pieces[0] + "".join("<image>" * n + p for n, p in zip(counts, pieces[1:]))
    assert ids.tolist() == tok.encode(expanded)
    assert int((ids == image_id).sum()) == sum(counts)
