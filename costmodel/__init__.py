"""Cost models: how long one engine iteration takes on a given GPU for a given
model, and how much KV cache the engine gets. The engine model hands a
:class:`StepBatch` to a :class:`CostModel` and gets seconds back."""

from driftsim.costmodel.base import CostModel
from driftsim.costmodel.batch import StepBatch, chunk_attn_tokens
from driftsim.costmodel.fit import LinearFit, batch_grid, linearize, linearize_profile
from driftsim.costmodel.hardware import GpuSpec, ModelArch
from driftsim.costmodel.kv import KvCapacity, kv_capacity_blocks
from driftsim.costmodel.linear import LinearCostModel
from driftsim.costmodel.profiles import Profile, ProfileError, list_profiles, load_profile
from driftsim.costmodel.roofline import RooflineCostModel

__all__ = [
    "CostModel",
    "GpuSpec",
    "KvCapacity",
    "LinearCostModel",
    "LinearFit",
    "ModelArch",
    "Profile",
    "ProfileError",
    "RooflineCostModel",
    "StepBatch",
    "batch_grid",
    "chunk_attn_tokens",
    "kv_capacity_blocks",
    "linearize",
    "linearize_profile",
    "list_profiles",
    "load_profile",
]
