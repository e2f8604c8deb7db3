"""The reference side: the PyTorch model on the same request, in the same process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from huluexport.bench.config import BenchConfig
from huluexport.bench.inputs import ByteIds, Tok, prepare_request
from huluexport.bench.measure import MemorySampler, PreparedSide, RunRecord, StageClock
from huluexport.bench.schema import STAGES
from huluexport.errors import ConfigError

# Reference side: the PyTorch model on the same request, same process


def load_reference(m: Any, checkpoint: Path | None, dtype: str) -> tuple[Any, Any]:
    """The reference HuluMed with the bundle's weights: rebuilt from the manifest's weight record (random
    seed or checkpoint path, layer slice), as `huluexport verify` does."""
    import torch

    from huluexport.config import from_checkpoint, preset
    from huluexport.export.pipeline import (
        WeightSpec,
        config_from_dict,
        reference_model,
        slice_layers,
        weight_source,
    )

    w = dict(m.model.get("weights") or {})
    cfg_b = config_from_dict({k: v for k, v in m.model.items() if k != "weights"})
    if checkpoint is not None:
        w = {"kind": "checkpoint", "checkpoint": str(checkpoint), "seed": 0, "layers": w.get("layers"),
             "vision_layers": w.get("vision_layers")}
    if w.get("kind") == "checkpoint":
        full = from_checkpoint(w["checkpoint"])
    elif w.get("kind") == "random":
        full = preset(cfg_b.name)
    else:
        raise ConfigError(
            f"{m.path}: the manifest does not say where the weights came from; pass --checkpoint"
        )
    spec = WeightSpec(
        w["kind"], w.get("checkpoint"), int(w.get("seed", 0)), w.get("layers"), w.get("vision_layers")
    )
    cfg = slice_layers(full, spec.layers, spec.vision_layers)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    return reference_model(cfg, weight_source(full, spec), dtype=torch_dtype), cfg


def prepare_reference(cfg: BenchConfig, m: Any, media: list[Any], dtype: str = "float32") -> PreparedSide:
    """The reference on `cfg.extra["reference_device"]` ("cpu" default, or "cuda": fp16 there unless
    `reference_dtype` says otherwise, the PyTorch eager fp16 baseline of a GPU bundle)."""
    import torch

    from huluexport.plan import weight_bytes
    from huluexport.reference.model import VisualInput

    device = str(cfg.extra.get("reference_device") or "cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--reference-device cuda: this PyTorch sees no CUDA device")
        dtype = str(cfg.extra.get("reference_dtype") or "float16")
    elif device != "cpu":
        raise ConfigError(f"--reference-device {device!r}: expected cpu or cuda")
    dev = torch.device(device)

    def sync() -> None:  # stage clocks read the host clock: wait for queued device work first
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rss_before = MemorySampler()._rss()
    t0 = time.perf_counter()
    model, mcfg = load_reference(m, cfg.checkpoint, dtype)
    model = model.to(dev)
    sync()
    load_s = time.perf_counter() - t0
    rss_after = MemorySampler()._rss()
    tok_path = m.file_path(m.tokenizer.tokenizer)
    tok: Any = Tok(tok_path) if tok_path is not None and tok_path.is_file() else ByteIds()
    enc, km = model.encode, model.keep_mask
    holder = {"model": model}

    @torch.inference_mode()
    def once() -> RunRecord:
        clock = StageClock()
        start = time.perf_counter()
        # the model computes its own keep mask (timed below): no reduction in the shared preprocessing
        req = prepare_request(cfg, tok, m.tokens.image, {"enabled": False}, clock, media)

        def timed_encode(v: Any) -> Any:
            with clock("vision"):
                out = enc(v)
                sync()
                return out

        def timed_keep(v: Any) -> Any:
            with clock("reduction"):
                return km(v)

        model.encode, model.keep_mask = timed_encode, timed_keep  # instance attributes: timing only
        visuals = [
            # (T, G, g, 588) -> (T, n, 588): merge-grouped token order, as the reference takes it
            VisualInput(
                v.patches.reshape(v.patches.shape[0], -1, v.patches.shape[-1]), v.grid_hw, v.merge, v.modal
            )
            for v in req.visuals
        ]
        t_prep = time.perf_counter()
        prep = model.prepare_inputs(torch.from_numpy(req.ids_full), visuals)
        sync()
        clock.t["embed"] = (
            time.perf_counter() - t_prep - clock.t.get("vision", 0.0) - clock.t.get("reduction", 0.0)
        )
        with clock("prefill"):
            logits, past = model.decoder(prep.inputs_embeds, prep.position_ids)
            tok_id = int(torch.argmax(logits[0, -1].float()))
        t_first = time.perf_counter()
        out = [tok_id]
        pos = prep.inputs_embeds.shape[1]
        for _ in range(cfg.max_new_tokens - 1):
            emb = model.decoder.embed(torch.tensor([[tok_id]], dtype=torch.int64, device=dev))
            logits, past = model.decoder(emb, torch.tensor([[pos]], dtype=torch.int64, device=dev), past)
            tok_id = int(torch.argmax(logits[0, -1].float()))
            out.append(tok_id)
            pos += 1
        end = time.perf_counter()
        clock.t["ttft"], clock.t["decode"], clock.t["e2e"] = t_first - start, end - t_first, end - start
        for st in STAGES:
            clock.t.setdefault(st, 0.0)  # e.g. no vision call for a text-only request
        n_vis = int(prep.keep.size)
        return RunRecord(
            dict(clock.t),
            len(out) - 1,
            len(out),
            int(prep.input_ids.numel()),
            n_vis,
            int(prep.keep.sum()),
            tuple(out),
        )

    def close() -> None:
        model.encode, model.keep_mask = enc, km
        holder.clear()

    prec = {"float32": "fp32", "float16": "fp16"}.get(dtype, "bf16")
    wb = weight_bytes(mcfg, prec)
    return PreparedSide(
        name="reference",
        description=f"huluexport.reference PyTorch {torch.__version__} eager ({dtype}, "
        + (f"{torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else f"{torch.get_num_threads()} threads")
        + "), same process",
        load_s=load_s,
        once=once,
        weights_read_per_token_bytes=wb.read_per_decoded_token,
        kv_bytes_per_token=mcfg.decoder.kv_bytes_per_token(4 if dtype == "float32" else 2),
        rss_before_load=rss_before,
        rss_after_load=rss_after,
        close=close,
    )
