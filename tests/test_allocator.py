"""The CUDA caching allocator model on unit traces worked out by hand from PyTorch's source
(c10/cuda/CUDACachingAllocator.cpp, DeviceCachingAllocator; c10/core/AllocatorConfig.cpp, the conf parser)."""

import pytest

from vramfit.dryrun.allocator import (
    AllocConf,
    CachingAllocator,
    allocation_size,
    parse_alloc_conf,
    replay,
    round_size,
)
from vramfit.errors import VramfitError

MiB = 1 << 20


def trace(*sizes_and_frees):
    """('a', n) allocates n bytes as id a, ('a', 0) frees a: the tracker's (id, +bytes / -bytes) events."""
    live, out = {}, []
    for key, n in sizes_and_frees:
        if n:
            live[key] = n
            out.append((key, n))
        else:
            out.append((key, -live.pop(key)))
    return out


def test_round_size_and_segment_sizes_follow_the_source():
    """round_size: < 512 -> 512, else a multiple of 512; get_allocation_size: <= 1 MiB -> 2 MiB (kSmallBuffer),
    < 10 MiB -> 20 MiB (large_segment_size), else rounded up to 2 MiB (kRoundLarge)."""
    assert round_size(1) == 512 and round_size(512) == 512 and round_size(513) == 1024
    assert allocation_size(512) == 2 * MiB and allocation_size(MiB) == 2 * MiB
    assert allocation_size(MiB + 512) == 20 * MiB and allocation_size(10 * MiB - 512) == 20 * MiB
    assert allocation_size(10 * MiB) == 10 * MiB and allocation_size(10 * MiB + 1) == 12 * MiB
    assert allocation_size(3 * MiB, parse_alloc_conf("large_segment_size_mb:64")) == 64 * MiB


def test_roundup_power2_divisions():
    """roundup_power2_next_division: with 4 divisions, sizes in [1 MiB, 2 MiB) round up to a quarter MiB; below
    512 * divisions the plain 512 B rounding applies. Interval lists as in c10/test/core/AllocatorConfig_test.cpp."""
    conf = parse_alloc_conf("roundup_power2_divisions:4")
    assert round_size(1_300_000, conf) == MiB + MiB // 4
    assert round_size(2 * MiB, conf) == 2 * MiB  # a power of 2 stays
    assert round_size(1200, conf) == 1536
    conf = parse_alloc_conf("roundup_power2_divisions:[64:8,128:2,256:4,512:2,1024:4,>:1]")
    assert [conf.divisions(n * MiB) for n in (32, 64, 128, 256, 512, 1024, 2048)] == [8, 8, 2, 4, 2, 4, 1]
    conf = parse_alloc_conf("roundup_power2_divisions:[128:8,256:16,512:1,2048:8,>:2]")
    assert [conf.divisions(n * MiB) for n in (64, 128, 256, 512, 1024, 2048, 4096)] == [8, 8, 16, 1, 0, 8, 2]
    with pytest.raises(VramfitError, match="large_segment_size_mb"):
        parse_alloc_conf("max_split_size_mb:20,large_segment_size_mb:25")


def test_small_requests_share_a_2mib_segment():
    stats = replay(trace(("a", 100), ("b", 600_000), ("c", 400_000)))
    assert stats.peak_reserved == 2 * MiB and stats.segments == 1
    assert stats.peak_allocated == 512 + 600_064 + 400_384  # each rounded to 512 B
    stats = replay(trace(("a", 600_000), ("b", 600_000), ("c", 600_000), ("d", 600_000)))
    assert stats.peak_reserved == 4 * MiB  # three 600,064 B blocks fill a 2 MiB segment; the fourth opens one


def test_mid_size_requests_open_20mib_segments_and_split():
    """A 1-10 MiB request opens a 20 MiB segment; the remainder (> 1 MiB) is split off and serves the next."""
    stats = replay(trace(("a", 6 * MiB), ("b", 6 * MiB), ("c", 6 * MiB)))
    assert stats.peak_reserved == 20 * MiB and stats.peak_allocated == 18 * MiB
    stats = replay(trace(("a", 6 * MiB), ("b", 6 * MiB), ("c", 6 * MiB), ("d", 3 * MiB)))
    assert stats.peak_reserved == 40 * MiB  # the 2 MiB left is too small for 3 MiB


def test_large_remainder_of_1mib_or_less_is_not_split_and_counts_as_allocated():
    """should_split (large pool): remaining > kSmallSize. An 11 MiB request gets a 12 MiB segment whose 1 MiB
    rest stays in the block, so max_memory_allocated counts 12 MiB."""
    stats = replay(trace(("a", 11 * MiB)))
    assert (stats.peak_reserved, stats.peak_allocated, stats.peak_requested) == (12 * MiB, 12 * MiB, 11 * MiB)


def test_best_fit_and_merging_on_free():
    """get_free_block takes the smallest cached block that fits; free_block merges free neighbours."""
    stats = replay(trace(("a", 30 * MiB), ("b", 24 * MiB), ("a", 0), ("b", 0), ("c", 22 * MiB), ("d", 29 * MiB)))
    assert stats.peak_reserved == 54 * MiB  # c took b's 24 MiB block, d a's 30 MiB one: no new segment
    stats = replay(trace(("a", 30 * MiB), ("b", 24 * MiB), ("a", 0), ("b", 0), ("c", 29 * MiB), ("d", 23 * MiB)))
    assert stats.peak_reserved == 54 * MiB
    # b, c and the 12 MiB tail of one 20 MiB segment, freed, merge back into one block that serves 18 MiB
    # (unmerged, the largest free piece would be 12 MiB and the request would open a third segment)
    stats = replay(trace(("a", 12 * MiB), ("b", 4 * MiB), ("c", 4 * MiB), ("b", 0), ("c", 0), ("d", 18 * MiB)))
    assert stats.peak_reserved == 32 * MiB and stats.segments == 2


def test_max_split_size_keeps_oversize_blocks_whole():
    """max_split_size_mb:40: a cached 60 MiB block does not serve a 30 MiB request (new segment), serves a
    50 MiB one (within max_non_split_rounding 20 MiB of it) but not a 40 MiB one (60 >= 40 + 20)."""
    conf = parse_alloc_conf("max_split_size_mb:40")
    assert replay(trace(("a", 60 * MiB), ("a", 0), ("b", 30 * MiB)), conf).peak_reserved == 90 * MiB
    assert replay(trace(("a", 60 * MiB), ("a", 0), ("b", 50 * MiB)), conf).peak_reserved == 60 * MiB
    assert replay(trace(("a", 60 * MiB), ("a", 0), ("b", 40 * MiB)), conf).peak_reserved == 100 * MiB
    assert replay(trace(("a", 60 * MiB), ("a", 0), ("b", 30 * MiB))).peak_reserved == 60 * MiB  # default: split
    with pytest.raises(VramfitError, match="too small"):
        parse_alloc_conf("max_split_size_mb:10")


def test_oom_releases_cached_segments_and_retries():
    """alloc_block fails -> release_cached_blocks (empty_cache) -> retry (num_alloc_retries)."""
    a = CachingAllocator(capacity=64 * MiB)
    b = a.malloc(40 * MiB)
    a.free(b)
    a.malloc(50 * MiB)
    assert a.stats.num_alloc_retries == 1 and a.stats.reserved == 50 * MiB and a.stats.peak_reserved == 50 * MiB
    stats = replay(trace(("a", 40 * MiB), ("b", 30 * MiB)), capacity=64 * MiB)
    assert stats.num_ooms == 1


def test_garbage_collection_threshold_frees_old_cached_segments_before_growing():
    """garbage_collect_cached_blocks runs only with a capacity (set_fraction): above threshold x capacity it frees
    unsplit cached large blocks at least as old as the average, so reserved stays lower than without it."""
    steps = trace(("a", 30 * MiB), ("a", 0), ("b", 32 * MiB), ("b", 0), ("c", 34 * MiB))
    plain = replay(steps, capacity=200 * MiB)
    gc = replay(steps, "garbage_collection_threshold:0.25", capacity=200 * MiB)
    assert plain.peak_reserved == 96 * MiB
    assert gc.peak_reserved < plain.peak_reserved and gc.num_alloc_retries == 0
    assert replay(steps, "garbage_collection_threshold:0.25").peak_reserved == 96 * MiB  # no capacity: no GC


def test_expandable_segments_map_pages_and_fill_holes():
    """expandable_segments:True: one segment per pool grows by 20 MiB pages (large pool); a freed hole next to
    the mapped end is reused together with new pages, so no second segment opens."""
    conf = parse_alloc_conf("expandable_segments:True")
    steps = trace(("a", 30 * MiB), ("b", 30 * MiB), ("b", 0), ("c", 50 * MiB))
    assert replay(steps).peak_reserved == 110 * MiB  # a: 30, b: 30, c: a new 50 MiB segment
    stats = replay(steps, conf)
    assert stats.peak_reserved == 80 * MiB and stats.segments == 1  # 30 + 50 rounded to 20 MiB pages
    small = replay(trace(("a", 600_000), ("b", 600_000), ("c", 600_000), ("d", 600_000)), conf)
    assert small.peak_reserved == 4 * MiB  # 2 MiB pages, packed back to back
    a = CachingAllocator(conf)
    blk = a.malloc(50 * MiB)
    a.free(blk)
    a.empty_cache()
    assert a.stats.reserved == 0  # whole free pages are unmapped


def test_resize_and_zero_size_events():
    stats = replay([("z", 0), ("a", 2 * MiB), ("a", 2 * MiB), ("a", -4 * MiB)])
    assert stats.allocated == 0 and stats.peak_allocated == 6 * MiB  # the new storage exists before the old dies


@pytest.mark.parametrize("text,msg", [
    ("colour:red", "unrecognized"), ("garbage_collection_threshold:1.5", "(0.0, 1.0)"),
    ("expandable_segments:yes", "True or False"), ("roundup_power2_divisions:3", "power of 2"),
    ("max_split_size_mb", "key:value"), ("backend:cudaMallocAsync", None),
])
def test_conf_parser_rejects_what_pytorch_rejects(text, msg):
    if msg is None:
        assert parse_alloc_conf(text).backend == "cudaMallocAsync"
        with pytest.raises(VramfitError, match="not modelled"):
            CachingAllocator(parse_alloc_conf(text))
        return
    with pytest.raises(VramfitError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        parse_alloc_conf(text)


def test_defaults():
    assert parse_alloc_conf("") == AllocConf() == parse_alloc_conf(None)
