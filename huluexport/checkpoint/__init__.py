"""Checkpoint directories on disk: reading them without torch, and writing random ones in the same layout.

Torch-free (import-linter holds this): `paths` (every read stays inside the directory), `jsonfile` (bounded
JSON), `values` (typed config.json values), `names` (stored / canonical / reference tensor names), `layout`
(every parameter's name and shape for a config), `tensors` (headers, the weight index, `plan`), `reader`
(`from_checkpoint`). Torch: `random_weights` (the one random initialisation) and `fixtures` (the checkpoint
and tokenizer writers); import those modules directly.
"""

from __future__ import annotations

from huluexport.checkpoint.jsonfile import read_json
from huluexport.checkpoint.layout import parameter_shapes
from huluexport.checkpoint.names import (
    EMBED,
    LAYOUTS,
    LM_HEAD,
    PREFIX_ALIASES,
    checkpoint_name,
    normalize_name,
    reference_name,
)
from huluexport.checkpoint.paths import inside, root_of, side_file
from huluexport.checkpoint.reader import check_config_json, from_checkpoint, read_config_json
from huluexport.checkpoint.tensors import (
    INDEX_FILES,
    SINGLE_FILES,
    CheckpointPlan,
    TensorEntry,
    file_tensors,
    plan,
    scan,
    weight_files,
)

__all__ = [
    "EMBED",
    "INDEX_FILES",
    "LAYOUTS",
    "LM_HEAD",
    "PREFIX_ALIASES",
    "SINGLE_FILES",
    "CheckpointPlan",
    "TensorEntry",
    "check_config_json",
    "checkpoint_name",
    "file_tensors",
    "from_checkpoint",
    "inside",
    "normalize_name",
    "parameter_shapes",
    "plan",
    "read_config_json",
    "read_json",
    "reference_name",
    "root_of",
    "scan",
    "side_file",
    "weight_files",
]
