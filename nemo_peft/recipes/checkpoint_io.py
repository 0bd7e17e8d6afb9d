"""Lightning checkpoints written atomically and read without unpickling code. A checkpoint whose
adapter weights hold NaN/inf is never written, so a diverged run cannot replace the last good one."""
from __future__ import annotations

import os

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nemo_peft.core.adapter_io import atomic_write, check_finite


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        # state_dict holds the adapter weights only (SFTModule.on_save_checkpoint)
        check_finite(checkpoint.get("state_dict", {}),
                     f"Refusing to write checkpoint {str(path)!r} at global step {checkpoint.get('global_step')} "
                     "(the file there, if any, is kept)")
        atomic_write(str(path), lambda tmp: torch.save(checkpoint, tmp), what="the Lightning checkpoint")

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist; pass a .ckpt written by a "
                                    "previous run (its checkpoints/ folder) or 'last'.")
        # weights_only: tensors and plain containers only, never arbitrary pickled objects.
        checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=True)
        check_finite(checkpoint.get("state_dict", {}), f"Cannot resume from {str(path)!r}")
        return checkpoint
