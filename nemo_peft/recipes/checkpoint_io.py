"""Lightning checkpoints written atomically and read without unpickling code."""
from __future__ import annotations

import os

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nemo_peft.core.adapter_io import atomic_write


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_write(str(path), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist; pass a .ckpt written by a "
                                    "previous run (its checkpoints/ folder) or 'last'.")
        # weights_only: tensors and plain containers only, never arbitrary pickled objects.
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
