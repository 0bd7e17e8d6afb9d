"""EpochShuffleSampler / ResumableDataLoader / Padded over data-parallel ranks: each rank's share of
the one global order, evaluation padding, and the data position (global samples) across a change of
the number of processes."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_peft.data.sampler import EpochShuffleSampler, Padded, ResumableDataLoader

SETTINGS = settings(max_examples=60, deadline=None, database=None)
SEED = 7

sizes = st.integers(min_value=0, max_value=70)
replica_counts = st.integers(min_value=1, max_value=8)


def ranks(n, replicas, seed=SEED, pad=False, epoch=0, start=0):
    samplers = [EpochShuffleSampler(n, seed=seed, replicas=replicas, rank=r, pad=pad) for r in range(replicas)]
    for s in samplers:
        s.epoch, s.start = epoch, start
    return samplers


def chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def loader(n, batch_size, replicas=1, rank=0, seed=SEED):
    dataset = list(range(n))
    return ResumableDataLoader(dataset, batch_size=batch_size, collate_fn=list,
                               sampler=EpochShuffleSampler(n, seed=seed, replicas=replicas, rank=rank))


# ---------------------------------------------------------------- training: drop the remainder

@SETTINGS
@given(n=sizes, replicas=replica_counts, epoch=st.integers(0, 3))
def test_train_ranks_split_the_global_order_evenly_and_disjointly(n, replicas, epoch):
    samplers = ranks(n, replicas, epoch=epoch)
    order = samplers[0].order()
    assert sorted(order) == list(range(n))
    shares = [list(s) for s in samplers]
    assert {len(share) for share in shares} == {n // replicas}
    assert all(len(s) == len(share) for s, share in zip(samplers, shares))
    flat = [i for share in shares for i in share]
    assert len(set(flat)) == len(flat)  # disjoint
    assert set(flat) == set(order[:n - n % replicas])
    for r, share in enumerate(shares):  # rank r takes positions r, r + replicas, ... of the global order
        assert share == order[r::replicas][:n // replicas]


@SETTINGS
@given(n=sizes, replicas=replica_counts, micro=st.integers(1, 6))
def test_a_step_over_ranks_holds_the_batch_of_one_process_with_a_replicas_times_larger_micro_batch(n, replicas, micro):
    """What makes DDP equal to one process: the k-th micro batches of all ranks together are the k-th
    batch of size micro x replicas of one process on the same seed (the last one without the dropped
    remainder, fewer than ``replicas`` samples)."""
    per_rank = [list(loader(n, micro, replicas, r)) for r in range(replicas)]
    single = list(loader(n, micro * replicas))
    kept = set(EpochShuffleSampler(n, seed=SEED).order()[:n - n % replicas])
    assert {len(batches) for batches in per_rank} == {-(-(n // replicas) // micro)}  # ranks step together
    assert len(per_rank[0]) <= len(single)
    for k in range(len(per_rank[0])):
        union = [i for batches in per_rank for i in batches[k]]
        assert len(set(union)) == len(union)
        assert set(union) == set(single[k]) & kept
        if (k + 1) * micro * replicas <= n - n % replicas:  # a full step: exactly the single process's batch
            assert set(union) == set(single[k])
    assert {i for batches in per_rank for b in batches for i in b} == kept


@SETTINGS
@given(n=st.integers(1, 70), replicas=replica_counts, data=st.data())
def test_resumed_position_is_split_over_the_ranks(n, replicas, data):
    start = data.draw(st.integers(0, n), label="start")
    samplers = ranks(n, replicas, epoch=1, start=start)
    rest = samplers[0].order()[start:]
    shares = [list(s) for s in samplers]
    share = len(rest) // replicas
    assert {len(x) for x in shares} == {share}
    for r, got in enumerate(shares):
        assert got == rest[r::replicas][:share]
    assert sorted(i for x in shares for i in x) == sorted(rest[:len(rest) - len(rest) % replicas])
    assert all(s.start == 0 for s in samplers)  # the start applies to one pass only
    assert all(len(list(s)) == n // replicas for s in samplers)


# ---------------------------------------------------------------- evaluation: pad with marked repeats

@SETTINGS
@given(n=sizes, replicas=replica_counts)
def test_eval_ranks_pad_to_equal_counts_and_score_every_sample_once(n, replicas):
    samplers = ranks(n, replicas, pad=True)
    shares = [list(s) for s in samplers]
    share = -(-n // replicas)
    assert {len(x) for x in shares} == {share}
    assert all(len(s) == share for s in samplers)
    flat = [i for x in shares for i in x]
    real = [i for i in flat if i < n]
    assert sorted(real) == list(range(n))  # each real sample exactly once
    padding = [i for i in flat if i >= n]
    assert len(padding) == share * replicas - n < replicas
    assert all(0 <= i - n < n for i in padding)  # a repeat of a real sample


@SETTINGS
@given(n=st.integers(1, 30), replicas=replica_counts)
def test_padded_dataset_marks_exactly_the_repeats(n, replicas):
    dataset = Padded([{"id": i} for i in range(n)])
    assert len(dataset) == n
    for s in ranks(n, replicas, pad=True):
        for i in s:
            item = dataset[i]
            assert item["duplicate"] == (i >= n)
            assert item["id"] == i % n


def test_padding_is_off_for_one_process():
    s = EpochShuffleSampler(5, seed=SEED, pad=True)
    assert sorted(s) == list(range(5)) and len(s) == 5


# ---------------------------------------------------------------- the data position in global samples

def test_state_counts_global_samples_over_replicas():
    n, b = 40, 3
    dl = loader(n, b, replicas=2, rank=0)
    it = iter(dl)
    for k in range(1, 4):
        next(it)
        state = dl.state_dict()
        assert (state["epoch"], state["start"]) == (0, k * b * 2)
        assert state["replicas"] == 2 and state["micro_batch_size"] == b
        assert (state["n"], state["seed"], state["shuffle"]) == (n, SEED, True)


@pytest.mark.parametrize("n", [12, 13])  # 13: one sample dropped, the epoch is still used up
def test_an_exhausted_epoch_resumes_at_the_next_one(n):
    dl = loader(n, 2, replicas=2, rank=1)
    batches = list(dl)
    assert sum(len(b) for b in batches) == n // 2
    state = dl.state_dict()
    assert (state["epoch"], state["start"]) == (1, 0)
    assert dl.sampler.epoch_done(n) and not dl.sampler.epoch_done(n - 2)


def test_a_two_process_position_resumes_in_one_process_at_the_same_global_sample(capsys):
    n, b = 40, 2
    two = loader(n, b, replicas=2, rank=0)
    it = iter(two)
    for _ in range(3):
        next(it)
    state = two.state_dict()
    assert state["start"] == 12 and state["replicas"] == 2

    one = loader(n, 5)
    one.load_state_dict(state)
    one.load_state_dict(state)  # Lightning hands the position to the data module and to the fit loop
    said = capsys.readouterr().out
    assert said.count("Data position: resuming epoch 0 at sample 12 of 40") == 1, said
    assert "no sample is replayed or skipped" in said
    one.sampler.set_epoch(0)
    got = [i for batch in one for i in batch]
    assert got == EpochShuffleSampler(n, seed=SEED).order()[12:]
    # together with what the two processes had trained on, the whole epoch once
    trained = [i for s in ranks(n, 2) for i in list(s)[:3 * b]]
    assert sorted(trained + got) == list(range(n))


def test_a_one_process_position_split_over_two_reports_the_dropped_sample(capsys):
    state = {"epoch": 0, "start": 5, "n": 40, "seed": SEED, "shuffle": True, "replicas": 1, "micro_batch_size": 5}
    rank0, rank1 = loader(40, 2, replicas=2, rank=0), loader(40, 2, replicas=2, rank=1)
    rank0.load_state_dict(state)
    rank1.load_state_dict(state)
    said = capsys.readouterr().out
    assert said.count("Data position:") == 1  # the first process speaks
    assert "the epoch's last 1 sample(s) are dropped" in said
    rest = EpochShuffleSampler(40, seed=SEED).order()[5:]
    got = [i for dl in (rank0, rank1) for batch in dl for i in batch]
    assert sorted(got) == sorted(rest[:34])


def test_same_replicas_resume_says_nothing(capsys):
    dl = loader(40, 2, replicas=2, rank=0)
    dl.load_state_dict({"epoch": 0, "start": 8, "n": 40, "seed": SEED, "shuffle": True, "replicas": 2})
    assert capsys.readouterr().out == ""


def test_set_epoch_after_a_restore_keeps_the_restored_position():
    """A run stopped by max_steps mid-epoch is saved as a finished epoch: Lightning calls set_epoch(1)
    on resume, yet the data position is epoch 0 at sample 24."""
    n = 40
    dl = loader(n, 4)
    dl.load_state_dict({"epoch": 0, "start": 24, "n": n, "seed": SEED, "shuffle": True})
    dl.sampler.set_epoch(1)
    assert (dl.sampler.epoch, dl.sampler.start) == (0, 24)
    first = next(iter(dl))
    epoch0 = EpochShuffleSampler(n, seed=SEED).order()
    assert first[0] == epoch0[24]
    assert first == epoch0[24:28]
    dl.sampler.set_epoch(2)  # Lightning's next epoch is the data's epoch 1, from its first sample
    assert (dl.sampler.epoch, dl.sampler.start) == (1, 0)
    nxt = EpochShuffleSampler(n, seed=SEED)
    nxt.set_epoch(1)
    assert [i for batch in dl for i in batch] == nxt.order() != epoch0
