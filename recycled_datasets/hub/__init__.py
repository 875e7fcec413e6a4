"""Hub releases: the dataset repo tree, its card and plots, atomic pushes, and model cards for checkpoints.

Everything heavy (pyarrow, matplotlib, huggingface_hub) is imported inside the functions that use it.
"""

from recycled_datasets.hub.model_card import push_model, write_model_card
from recycled_datasets.hub.publish import PushResult, hub_errors, push_release
from recycled_datasets.hub.tree import ReleaseTree, write_release_tree

__all__ = [
    "PushResult",
    "ReleaseTree",
    "hub_errors",
    "push_model",
    "push_release",
    "write_model_card",
    "write_release_tree",
]
