"""Every parameter of a Hulu-Med checkpoint for a given config: reference name -> shape, without torch.

This is the checkpoint format as a table (what `plan` checks the files against before any tensor is read,
and what the fixture writer and random weights produce). huluexport.reference builds its modules with
exactly these names and shapes; tests/unit/test_checkpoint_layout.py holds the two equal for every preset.
"""

from __future__ import annotations

from huluexport.config import HuluConfig


def parameter_shapes(cfg: HuluConfig) -> dict[str, tuple[int, ...]]:
    """reference name -> shape, in the reference module order (vision, projector, decoder)."""
    v, d = cfg.vision, cfg.decoder
    out: dict[str, tuple[int, ...]] = {}

    def linear(name: str, n_in: int, n_out: int, bias: bool = True) -> None:
        out[f"{name}.weight"] = (n_out, n_in)
        if bias:
            out[f"{name}.bias"] = (n_out,)

    def layer_norm(name: str, n: int) -> None:
        out[f"{name}.weight"] = (n,)
        out[f"{name}.bias"] = (n,)

    ve = "vision_encoder."
    out[ve + "embeddings.patch_embedding.weight"] = (v.hidden, v.channels, v.patch, v.patch)
    out[ve + "embeddings.patch_embedding.bias"] = (v.hidden,)
    for i in range(v.layers):
        p = f"{ve}encoder.layers.{i}."
        layer_norm(p + "layer_norm1", v.hidden)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(p + "self_attn." + proj, v.hidden, v.hidden)
        layer_norm(p + "layer_norm2", v.hidden)
        linear(p + "mlp.fc1", v.hidden, v.intermediate)
        linear(p + "mlp.fc2", v.intermediate, v.hidden)
    layer_norm(ve + "post_layernorm", v.hidden)

    # mlpNx_gelu: Linear, GELU, Linear, ... -> Linear k sits at index 2k of the Sequential
    for k in range(cfg.projector.depth):
        linear(f"mm_projector.readout.{2 * k}", v.hidden if k == 0 else d.hidden, d.hidden)

    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    out["decoder.embed_tokens.weight"] = (d.vocab, d.hidden)
    for i in range(d.layers):
        p = f"decoder.layers.{i}."
        out[p + "input_layernorm.weight"] = (d.hidden,)
        linear(p + "self_attn.q_proj", d.hidden, q, d.qkv_bias)
        linear(p + "self_attn.k_proj", d.hidden, kv, d.qkv_bias)
        linear(p + "self_attn.v_proj", d.hidden, kv, d.qkv_bias)
        linear(p + "self_attn.o_proj", q, d.hidden, bias=False)
        if d.qk_norm:
            out[p + "self_attn.q_norm.weight"] = (d.head_dim,)
            out[p + "self_attn.k_norm.weight"] = (d.head_dim,)
        out[p + "post_attention_layernorm.weight"] = (d.hidden,)
        linear(p + "mlp.gate_proj", d.hidden, d.intermediate, bias=False)
        linear(p + "mlp.up_proj", d.hidden, d.intermediate, bias=False)
        linear(p + "mlp.down_proj", d.intermediate, d.hidden, bias=False)
    out["decoder.norm.weight"] = (d.hidden,)
    out["decoder.lm_head.weight"] = (d.vocab, d.hidden)
    return out
