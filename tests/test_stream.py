import threading

import pytest
import torch

from lit_linreg.stream import RowGroupStream

# 10 row groups of 7 to 16 rows: group g holds rows whose value encodes (group, row).
SIZES = [7, 16, 9, 12, 8, 15, 10, 11, 13, 14]
GROUPS = list(range(len(SIZES)))


def read(group: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = group * 100.0 + torch.arange(SIZES[group], dtype=torch.float32)[:, None]
    return x, 2 * x


def stream(**kwargs) -> RowGroupStream:
    return RowGroupStream(read, GROUPS, sum(SIZES), **{"batch_size": 8, "shuffle": True, "buffer_rows": 20} | kwargs)


def epoch(loader: RowGroupStream, n: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(n)
    return [x for x, _ in loader]


def test_each_epoch_visits_every_row_once_in_a_fresh_order_replayed_from_the_seed():
    loader = stream()
    orders = [torch.cat(epoch(loader, n)).flatten() for n in (0, 1, 0)]
    everything = torch.cat([read(g)[0] for g in GROUPS]).flatten()
    assert sorted(orders[0].tolist()) == sorted(everything.tolist())
    assert not torch.equal(orders[0], orders[1]) and torch.equal(orders[0], orders[2])
    assert not torch.equal(torch.cat(epoch(stream(seed=1), 0)).flatten(), orders[0])
    for x, y in stream():
        assert torch.equal(y, 2 * x)  # inputs and targets stay paired


def test_rows_are_shuffled_within_windows_of_whole_row_groups():
    order = torch.cat(epoch(stream(), 0)).flatten()
    groups = (order // 100).long()
    first_window = set(groups[:20].tolist())  # the window holds whole groups: at least 20 rows
    assert sum(SIZES[g] for g in first_window) >= 20
    assert groups[:20].tolist() != sorted(groups[:20].tolist())  # rows of its groups are interleaved
    in_order = torch.cat(epoch(stream(shuffle=False), 0)).flatten()
    assert torch.equal(in_order, torch.cat([read(g)[0] for g in GROUPS]).flatten())


def test_a_training_stream_cuts_the_batches_every_rank_agrees_on_and_resumes_mid_epoch():
    loader = stream(n_batches=20)
    batches = epoch(loader, 3)
    assert len(loader) == len(batches) == 20 and {len(b) for b in batches} <= {5, 6}
    resumed = stream(n_batches=20)
    resumed.load_state_dict({"epoch": 3, "batches": 12})
    rest = epoch(resumed, 3)
    assert len(rest) == 8 and all(torch.equal(a, b) for a, b in zip(batches[12:], rest, strict=True))
    assert resumed.state_dict() == {"epoch": 3, "batches": 20}


def test_a_read_error_in_the_background_is_raised_in_the_loop_and_the_reader_stops():
    def failing(group: int):
        if group == 4:
            raise ValueError("bad cell in group 4")
        return read(group)

    loader = RowGroupStream(failing, GROUPS, sum(SIZES), batch_size=8)
    with pytest.raises(ValueError, match="bad cell in group 4"):
        list(loader)
    before = threading.active_count()
    next(iter(stream()))  # an epoch abandoned after one batch ...
    assert threading.active_count() <= before  # ... leaves no reader thread behind
