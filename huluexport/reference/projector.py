"""The `mlpNx_gelu` projector: N Linear layers with exact (erf) GELU between them (docs/model.md §1.3, §5.1).

Names equal the checkpoint's minus `model.mm_projector.`: readout.0, readout.2, ...
(odd indices are the GELUs).
Ported in our own words from ZJUI-AI4H/Hulu-Med src/hulumed/model/projector.py.
"""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    def __init__(self, vision_hidden: int, hidden: int, depth: int = 2) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Linear(vision_hidden, hidden)]
        for _ in range(depth - 1):
            mods += [nn.GELU(), nn.Linear(hidden, hidden)]  # nn.GELU() default = erf form
        self.readout = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(x)  # (..., Cv) -> (..., H)
