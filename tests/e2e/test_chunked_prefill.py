"""A chunked prefill on a real tiny bundle (onnxruntime CPU) fills the same KV cache and gives the same
last-position logits as one prefill call, within the table's ("decoder", "fp32", "ort-chunked") entry
(huluexport/tolerances.py); chunk 1 included (every token its own call)."""

from __future__ import annotations

import hulurt
import numpy as np
import pytest
from e2e.bundles import bundle

from huluexport.tolerances import TOLERANCES

TOL = TOLERANCES[("decoder", "fp32", "ort-chunked")]


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_chunked_prefill_fills_the_same_cache(kind: str) -> None:
    m = hulurt.load(bundle(kind), provider="cpu", threads=1, verify_hashes=False)
    feed = m.prepare("What does the cache hold after a chunked prefill? " * 3)
    gen = m._gen(False)
    embeds = gen.embed(feed.input_ids)
    n = embeds.shape[1]
    got = {}
    for chunk in (n, 7, 4, 1):
        gen.prefill_chunk = chunk
        cache = gen.new_cache(n + 1)
        logits = gen.decode(embeds, 0, cache)
        got[chunk] = (np.array(logits), [np.array(x) for x in cache.feeds().values()])
        assert gen.last_prefill_chunk == chunk and cache.length == n
    ref_logits, ref_kv = got[n]
    for chunk in (7, 4, 1):
        logits, kv = got[chunk]
        assert int(np.argmax(logits)) == int(np.argmax(ref_logits)), f"chunk {chunk}"
        assert float(np.abs(logits - ref_logits).max()) <= TOL.max_abs, f"chunk {chunk}: logits"
        for a, b in zip(kv, ref_kv):
            assert a.shape == b.shape and a.shape[2] == n
            assert float(np.abs(a - b).max()) <= TOL.max_abs, f"chunk {chunk}: KV rows"
