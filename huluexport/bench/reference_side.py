"""The reference side: the PyTorch model the bundle was built from (huluexport/export/bundle_reference.py) on
the same request, in the same process. Its input is built by the runtime's own input code (the same tokenizer,
chat template and preprocessing, without token reduction: the model reduces itself), and its stages are timed
by the same clock as the runtime's (hulurt.clock)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from huluexport.bench.config import BenchConfig
from huluexport.bench.measure import MemorySampler, PreparedSide, RunRecord
from huluexport.bench.runtime_side import open_model
from huluexport.bench.schema import STAGES


def prepare_reference(cfg: BenchConfig, m: Any, media: list[Any], dtype: str = "float32") -> PreparedSide:
    """The reference on `cfg.extra["reference_device"]`: "cpu" (default, in `dtype`), or "cuda", in fp16 there:
    PyTorch eager fp16 on the same GPU, the baseline of a GPU bundle; `cfg.extra["reference_dtype"]` overrides
    either (`--reference-dtype`; fp16 on the CPU: the GPU baseline's dtype in scripts/gpu_bench.py's rehearsal)."""
    import torch
    from hulurt.clock import StageClock

    from huluexport.errors import ConfigError
    from huluexport.export.bundle_reference import reference_for_bundle
    from huluexport.plan import weight_bytes
    from huluexport.reference.model import VisualInput

    device = str(cfg.extra.get("reference_device") or "cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--reference-device cuda: this PyTorch sees no CUDA device")
        dtype = str(cfg.extra.get("reference_dtype") or "float16")
    elif device != "cpu":
        raise ConfigError(f"--reference-device {device!r}: expected cpu or cuda")
    else:
        dtype = str(cfg.extra.get("reference_dtype") or dtype)
    dev = torch.device(device)

    def sync() -> None:  # stage clocks read the host clock: wait for the queued device work first
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    class SyncClock(StageClock):
        """hulurt's stage clock, synchronising the device before each stage's end is read."""

        @contextmanager
        def __call__(self, stage: str) -> Iterator[None]:
            with StageClock.__call__(self, stage):
                try:
                    yield
                finally:
                    sync()

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rss_before = MemorySampler()._rss()
    t0 = time.perf_counter()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    mcfg, model = reference_for_bundle(m, cfg.checkpoint, torch_dtype)
    model = model.to(dev)
    sync()
    load_s = time.perf_counter() - t0
    rss_after = MemorySampler()._rss()
    inputs = open_model(cfg, m, sessions=False)  # hulurt's input code only; no graph is opened
    holder = {"model": model}

    def visuals_of(mi: Any) -> list[Any]:
        return [
            # (T, G, g, 588) -> (T, n, 588): merge-grouped token order, as the reference takes it
            VisualInput(
                v.patches.reshape(v.patches.shape[0], -1, v.patches.shape[-1]),
                (v.grid_thw[1], v.grid_thw[2]),
                v.merge_size,
                v.modal,
            )
            for v in mi.visuals
        ]

    @torch.inference_mode()
    def trace(n: int) -> tuple[list[int], list[Any]]:
        mi = inputs.media_inputs(cfg.prompt, media, token_reduction=False)
        prep = holder["model"].prepare_inputs(torch.from_numpy(mi.input_ids.reshape(-1)), visuals_of(mi))
        run = holder["model"].steps(prep)
        tokens, rows = [], []
        for _ in range(n):
            st = next(run)
            tokens.append(st.token)
            rows.append(st.logits.float().cpu().numpy().reshape(-1))
        return tokens, rows

    @torch.inference_mode()
    def once() -> RunRecord:
        model = holder["model"]
        clock = SyncClock()
        start = time.perf_counter()
        with clock("preprocess"):
            mi = inputs.media_inputs(cfg.prompt, media, token_reduction=False)
        visuals = visuals_of(mi)
        with clock("embed"):  # the vision tower and the keep masks inside are timed as their own stages
            prep = model.prepare_inputs(torch.from_numpy(mi.input_ids.reshape(-1)), visuals, clock=clock)
        run = model.steps(prep)
        with clock("prefill"):
            out = [next(run).token]
        t_first = time.perf_counter()
        for _ in range(cfg.max_new_tokens - 1):
            out.append(next(run).token)
        end = time.perf_counter()
        stages = {st: clock.get(st) for st in STAGES}  # e.g. no vision call for a text-only request: 0
        stages.update(ttft=t_first - start, decode=end - t_first, e2e=end - start)
        return RunRecord(
            stages,
            len(out) - 1,
            len(out),
            int(prep.input_ids.numel()),
            int(prep.keep.size),
            int(prep.keep.sum()),
            tuple(out),
        )

    prec = {"float32": "fp32", "float16": "fp16"}.get(dtype, "bf16")
    wb = weight_bytes(mcfg, prec)
    return PreparedSide(
        name="reference",
        description=f"huluexport.reference PyTorch {torch.__version__} eager ({dtype}, "
        + (torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads")
        + "), same process",
        load_s=load_s,
        once=once,
        weights_read_per_token_bytes=wb.read_per_decoded_token,
        kv_bytes_per_token=mcfg.decoder.kv_bytes_per_token(4 if dtype == "float32" else 2),
        rss_before_load=rss_before,
        rss_after_load=rss_after,
        close=holder.clear,
        trace=trace,
    )
