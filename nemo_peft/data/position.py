"""Resuming on another number of data-parallel processes or another micro-batch size.

The data position is kept in global samples (``sampler.ResumableDataLoader``), but Lightning's
fit loop also counts this epoch's micro-batches, and places gradient-accumulation windows by that
count. When the split of a batch changed since the checkpoint, the count is recomputed from the
data position, so the resumed run's optimizer steps take the samples an uninterrupted run with
the new split would have.
"""
from __future__ import annotations

import lightning as L


class AlignBatchCount(L.Callback):
    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        loops = checkpoint.get("loops", {}).get("fit_loop")
        data = trainer.datamodule
        if not loops or data is None or not hasattr(data, "data_parallel") or data.configs.get("train") is None:
            return
        position = (loops.get("state_dict", {}).get("combined_loader") or [{}])[0]
        if "start" not in position:
            return
        replicas, rank = data.data_parallel()
        micro = int(data.configs["train"]["micro_batch_size"])
        saved = (int(position.get("replicas", 1)), int(position.get("micro_batch_size", micro)))
        if saved == (replicas, micro):
            return
        progress = loops["epoch_loop.batch_progress"]
        batches = position["start"] // (micro * replicas)
        for counter in ("ready", "started", "processed", "completed"):
            progress["total"][counter] += batches - progress["current"][counter]
            progress["current"][counter] = batches
        accumulate = trainer.accumulate_grad_batches
        if rank == 0:
            print(f"Batch split changed since the checkpoint (data-parallel processes x micro batch: {saved[0]} x "
                  f"{saved[1]} -> {replicas} x {micro}): this epoch's batch count is now {batches}"
                  + ("" if batches % accumulate == 0 else
                     f", not a multiple of the {accumulate} accumulation steps, so the first step after the resume "
                     "takes fewer samples")
                  + ".")
