import pytest
import torch

from nemo_peft.modules.kv_cache import KVCache


def test_keep_rows_matches_index_select_in_place():
    cache = KVCache(num_layers=3, batch_size=6, max_len=5, num_kv_heads=2, head_dim=4, dtype=torch.float32,
                    device="cpu")
    cache.k.normal_(generator=torch.Generator().manual_seed(0))
    cache.v.normal_(generator=torch.Generator().manual_seed(1))
    for keep in ([0, 2, 3, 5], [1, 3], [0]):  # shrink twice more from the shrunk cache
        rows = torch.tensor(keep)
        want_k, want_v = cache.k.index_select(1, rows), cache.v.index_select(1, rows)
        ptr = cache.k.data_ptr()
        cache.keep_rows(rows)
        assert torch.equal(cache.k, want_k) and torch.equal(cache.v, want_v)
        assert cache.k.data_ptr() == ptr  # no new cache: the rows moved within the old one
    with pytest.raises(ValueError, match="ascending, distinct"):
        cache.keep_rows(torch.tensor([0, 0]))
