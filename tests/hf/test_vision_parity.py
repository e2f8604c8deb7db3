"""Our vision encoder + merge vs transformers VideoLlama3VisionModel (the parent model's native port)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hulurt.rope import vision_rope

from huluexport.checkpoint import checkpoint_name, from_checkpoint
from huluexport.reference.vision import merge
from huluexport.reference.weights import iter_tensors, load_model
from huluexport.tolerances import get

pytestmark = pytest.mark.hf

PREFIX = "model.vision_encoder."


def _hf_vision(d: Path) -> torch.nn.Module:
    from transformers.models.video_llama_3.configuration_video_llama_3 import VideoLlama3VisionConfig
    from transformers.models.video_llama_3.modeling_video_llama_3 import VideoLlama3VisionModel

    cfg = from_checkpoint(d)
    v = cfg.vision
    hf_cfg = VideoLlama3VisionConfig(
        hidden_size=v.hidden,
        intermediate_size=v.intermediate,
        num_hidden_layers=v.layers,
        num_attention_heads=v.heads,
        num_channels=v.channels,
        patch_size=v.patch,
        layer_norm_eps=v.eps,
        rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta},
    )
    model = VideoLlama3VisionModel(hf_cfg)
    state = {}
    for ref, t in iter_tensors(d, cfg, torch.float32):
        name = checkpoint_name(ref)
        if name.startswith(PREFIX):
            state[name[len(PREFIX) :]] = t
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def models(ckpt_dirs: dict[str, Path]) -> tuple[torch.nn.Module, torch.nn.Module]:
    d = ckpt_dirs["qwen2"]
    return load_model(d, "float32"), _hf_vision(d)


# (T, gh, gw, m): image m=1 non-square, multi-frame m=2 non-square both ways
CASES = [(1, 4, 6, 1), (1, 5, 3, 1), (3, 4, 6, 2), (2, 6, 2, 2)]


@pytest.mark.parametrize(("t", "gh", "gw", "m"), CASES)
def test_vision_encoder_and_merge_match_videollama3(models, t: int, gh: int, gw: int, m: int) -> None:
    ours, hf = models
    tol = get("vision", "fp32", "transformers")
    rng = np.random.default_rng(gh * 100 + gw * 10 + t)
    patches = rng.uniform(-1, 1, size=(t, gh * gw, 588)).astype(np.float32)  # merge-grouped token order
    with torch.no_grad():
        ref = hf(
            pixel_values=torch.from_numpy(patches.reshape(-1, 588)),
            grid_thw=torch.tensor([[t, gh, gw]]),
            merge_sizes=torch.tensor([m]),
        ).last_hidden_state  # (T * nb, C), merged raster order per frame
        cos, sin = (torch.from_numpy(np.array(a)) for a in vision_rope(gh, gw, m, ours.cfg.vision.head_dim))
        h = ours.vision_encoder(torch.from_numpy(patches), cos, sin)  # (T, n, C)
        got = merge(h, m).reshape(-1, h.shape[-1])  # (T, nb, C) -> (T * nb, C)
    assert got.shape == ref.shape == (t * gh * gw // (m * m), ours.cfg.vision.hidden)
    assert float(got.std()) > 1e-2
    assert float((got[0] - got[-1]).abs().max()) > 1e-2, "tokens must differ (positions and pixels vary)"
    err = float((got - ref).abs().max())
    assert err <= tol.max_abs, f"vision max abs diff {err:.3g} > {tol.max_abs}"


def test_two_inputs_packed_in_one_transformers_call(models) -> None:
    """Packed (two inputs of different grids, block-diagonal) == our per-input batched runs."""
    ours, hf = models
    tol = get("vision", "fp32", "transformers")
    rng = np.random.default_rng(7)
    a = rng.uniform(-1, 1, size=(2, 4 * 4, 588)).astype(np.float32)
    b = rng.uniform(-1, 1, size=(1, 2 * 6, 588)).astype(np.float32)
    with torch.no_grad():
        ref = hf(
            pixel_values=torch.from_numpy(np.concatenate([a.reshape(-1, 588), b.reshape(-1, 588)])),
            grid_thw=torch.tensor([[2, 4, 4], [1, 2, 6]]),
            merge_sizes=torch.tensor([2, 1]),
        ).last_hidden_state
        outs = []
        for x, (gh, gw), m in ((a, (4, 4), 2), (b, (2, 6), 1)):
            cos, sin = (
                torch.from_numpy(np.array(z)) for z in vision_rope(gh, gw, m, ours.cfg.vision.head_dim)
            )
            h = ours.vision_encoder(torch.from_numpy(x), cos, sin)
            outs.append(merge(h, m).reshape(-1, h.shape[-1]))
    got = torch.cat(outs)
    assert got.shape == ref.shape
    err = float((got - ref).abs().max())
    assert err <= tol.max_abs, f"packed vs batched max abs diff {err:.3g}"
