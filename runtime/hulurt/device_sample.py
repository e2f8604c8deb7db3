"""Sampling next to the decoder: hulurt/graphs/sampler.onnx (hulurt.contract.SAMPLER) on the decoder's provider,
reading the gqa-static decoder's logits buffer where it lies, so a sampled token costs 8 bytes to the host instead
of a [1, vocab] float32 row (608 KB for Qwen2.5) and the host sampler's pass over it.

The graph applies hulurt.sampling's rule to the same uniform number the host sampler would have drawn
(`Sampler.uniform`), so a seeded run gives the same tokens either way. Where the graph cannot be sure - a row
with NaN/+inf, or a decision within SAMPLER_MARGIN of its threshold, where a sum taken in the host's order
might fall the other way - it says so (`exact` false) and the row is sampled on the host with that same
number, here. The graph file is written by
huluexport/export/sampler.py (a test holds the shipped file equal to it).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.backends.base import BackendOptions
from hulurt.contract import SAMPLER_PARAMS
from hulurt.sampling import Sampler

log = logging.getLogger(__name__)

GRAPH = Path(__file__).resolve().parent / "graphs" / "sampler.onnx"


class DeviceSampler:
    """The sampling graph bound once to a decoder's logits buffer (an OrtValue on that decoder's device)."""

    def __init__(self, options: BackendOptions, logits: Any, vocab: int) -> None:
        """options: the decoder session's (its provider and device); logits: the OrtValue [1, vocab] float32 the
        decoder writes, on that device."""
        import onnxruntime as ort

        from hulurt.backends.ort import OrtSession

        self.session = OrtSession(GRAPH, replace(options, cuda_graph=False, release_after_run=False))
        self.vocab = vocab
        self._token = np.zeros(1, dtype=np.int64)  # host buffers: onnxruntime copies the outputs into them
        self._exact = np.zeros(1, dtype=bool)
        self._no_seen = np.zeros(1, dtype=np.int64)
        b = self.session.session.io_binding()
        self.logits = logits
        b.bind_ortvalue_input("logits", logits)
        b.bind_ortvalue_output("token", ort.OrtValue.ortvalue_from_numpy(self._token))
        b.bind_ortvalue_output("exact", ort.OrtValue.ortvalue_from_numpy(self._exact))
        self._binding = b
        self.calls = 0
        self.host_rows = 0  # rows the graph could not sample exactly (sampled on the host instead)
        log.info("sampling on %s (%s)", self.session.provider, GRAPH.name)

    def __call__(self, sampler: Sampler, seen: NDArray[np.int64]) -> int:
        """The next token from the row in the logits buffer by `sampler`'s rule; `seen` are the sequence's ids so
        far. A row the graph cannot sample exactly is copied and sampled on the host with the uniform number the
        graph was given (one per sampled token from the sampler's stream; greedy takes none)."""
        cfg = sampler.config
        u = 0.0 if cfg.greedy else sampler.uniform()
        ids = self._no_seen
        if cfg.repetition_penalty != 1.0 and seen.size:
            ids = np.unique(seen)
            ids = ids[(ids >= 0) & (ids < self.vocab)] if ids[0] < 0 or ids[-1] >= self.vocab else ids
            if not ids.size:
                ids = self._no_seen
        values = {"temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
                  "repetition_penalty": cfg.repetition_penalty if ids is not self._no_seen else 1.0,
                  "greedy": float(cfg.greedy), "uniform": u}
        params = np.array([values[n] for n in SAMPLER_PARAMS], dtype=np.float64)
        self._binding.bind_cpu_input("seen_ids", ids)
        self._binding.bind_cpu_input("params", params)
        self.session.session.run_with_iobinding(self._binding)
        self.calls += 1
        if self._exact[0]:
            return int(self._token[0])
        self.host_rows += 1
        return sampler(self.logits.numpy(), seen, u)  # Sampler reads the row, never writes it
