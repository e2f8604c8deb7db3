"""`huluexport plan`: will this model and input fit this device?

Parts: `huluexport/devices.py` (the device registry, with sources), `inputs` (what a request holds,
through the runtime's resize rule), `cost` (weight bytes, activation peaks, FLOPs), `planner` (the verdict
and bounds) and `render` (terminal tables). This module re-exports their public names.
"""

from __future__ import annotations

from huluexport.devices import DeviceProfile, GiB, device, host_profile, probe_memory_bandwidth
from huluexport.plan.cost import (
    INT4_GROUP,
    PRECISIONS,
    QUANT_POLICY,
    WEIGHT_BYTES,
    WeightBytes,
    compute_precision,
    decoder_matrices,
    prefill_activation_bytes,
    prefill_flops,
    vision_activation_bytes,
    vision_flops,
    weight_bytes,
)
from huluexport.plan.inputs import InputSpec, VisualLoad, image_input, visual_load
from huluexport.plan.planner import VOLUME_SEARCH_LIMIT, Plan, Schedule, plan
from huluexport.plan.render import fmt_bytes, render_plan

__all__ = [
    "INT4_GROUP",
    "PRECISIONS",
    "QUANT_POLICY",
    "VOLUME_SEARCH_LIMIT",
    "WEIGHT_BYTES",
    "DeviceProfile",
    "GiB",
    "InputSpec",
    "Plan",
    "Schedule",
    "VisualLoad",
    "WeightBytes",
    "compute_precision",
    "decoder_matrices",
    "device",
    "fmt_bytes",
    "host_profile",
    "image_input",
    "plan",
    "prefill_activation_bytes",
    "prefill_flops",
    "probe_memory_bandwidth",
    "render_plan",
    "vision_activation_bytes",
    "vision_flops",
    "visual_load",
    "weight_bytes",
]
