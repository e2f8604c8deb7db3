"""The gqa-static decoder piece in PyTorch (export/gqa.py, eager `hulu::gqa`) equals the v1 piece, and the build
options that choose forms and slices are checked. No onnxruntime here: tests/export/test_gqa_parity.py runs
the exported graph."""

from __future__ import annotations

import pytest
import torch

from huluexport.config import preset
from huluexport.errors import ConfigError
from huluexport.export.gqa import DecoderGQAPiece
from huluexport.export.pieces import DecoderPiece
from huluexport.export.pipeline import BuildOptions, resolve, slice_layers
from huluexport.reference.model import HuluMed


@pytest.mark.parametrize("size", ["tiny", "tiny-qwen3"])
def test_gqa_piece_equals_v1_piece(size: str) -> None:
    torch.manual_seed(0)
    model = HuluMed(preset(size)).eval()
    for p in model.parameters():  # default init leaves norms at 1 and biases at 0: perturb everything
        p.data.add_(0.05 * torch.randn_like(p))
    cfg = model.cfg.decoder
    v1, gqa = DecoderPiece(model.decoder).eval(), DecoderGQAPiece(model.decoder).eval()
    cap = 16
    bufs = [torch.zeros(1, cfg.kv_heads, cap, cfg.head_dim) for _ in range(2 * cfg.layers)]
    past = [torch.zeros(1, cfg.kv_heads, 0, cfg.head_dim) for _ in range(2 * cfg.layers)]
    pos = 0
    with torch.no_grad():
        for n in (5, 1, 1, 3, 1):  # prefill, decode steps, a chunk after cached rows
            x = torch.randn(1, n, cfg.hidden)
            ids = torch.arange(pos, pos + n)[None]
            want, *past = v1(x, ids, *past)
            total = pos + n
            got, tok, *bufs = gqa(x, ids, torch.tensor([total - 1], dtype=torch.int32),
                                  torch.tensor(cap, dtype=torch.int32), *bufs)
            pos = total
            assert torch.equal(got, want), (n, (got - want).abs().max())  # the same fp32 ops in the same order
            assert int(tok[0]) == int(want[0].argmax())
            for b, p in zip(bufs, past):
                assert torch.equal(b[:, :, :total], p) and not b[:, :, total:].any()


def test_slice_layers_with_a_separate_vision_depth() -> None:
    full = preset("7b")
    both = slice_layers(full, 4)
    assert (both.decoder.layers, both.vision.layers) == (4, 4)
    tower = slice_layers(full, 4, 27)
    assert (tower.decoder.layers, tower.vision.layers) == (4, 27)
    only_vision = slice_layers(full, None, 2)
    assert (only_vision.decoder.layers, only_vision.vision.layers) == (full.decoder.layers, 2)
    with pytest.raises(ConfigError, match=r"--vision-layers 28: expected 1\.\.27"):
        slice_layers(full, 4, 28)


def test_unknown_decoder_form_is_refused(tmp_path) -> None:
    opts = BuildOptions(out=tmp_path / "b", size="tiny", random_weights=True, decoder_forms=("gqa",))
    with pytest.raises(ConfigError, match="--decoder-form gqa: expected one or more of v1-concat, gqa-static"):
        resolve(opts)
    with pytest.raises(ConfigError, match="--decoder-form"):
        resolve(BuildOptions(out=tmp_path / "b", size="tiny", random_weights=True, decoder_forms=()))


def test_fp16_norm_weights_stay_fp32_in_both_decoder_forms() -> None:
    """build converts the pieces in place one after the other (copy_first=False) and decoder and decoder_gqa
    share their modules: the second conversion must not leave the norm weights in fp16."""
    import torch

    from huluexport.config import preset
    from huluexport.export.pieces import make_pieces, to_precision
    from huluexport.reference.model import HuluMed

    with torch.device("meta"):
        model = HuluMed(preset("tiny-qwen3"))
    pieces = make_pieces(model, ("v1-concat", "gqa-static"))
    for name in ("decoder", "decoder_gqa"):
        to_precision(pieces[name], "fp16", copy_first=False)
    for name in ("decoder", "decoder_gqa"):
        dtypes = {n: p.dtype for n, p in pieces[name].named_parameters()}
        norms = {n for n in dtypes if "norm" in n}
        assert len(norms) == 2 * 4 + 1, norms  # per layer: 2 RMSNorms + Qwen3's q/k norms; the final norm
        assert all(dtypes[n] == torch.float32 for n in norms), dtypes
        assert dtypes["layers.0.mlp.up_proj.weight"] == torch.float16
