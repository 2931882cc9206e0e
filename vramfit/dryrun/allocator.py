"""A model of PyTorch's CUDA caching allocator, replaying an allocation/free trace: peak allocated and reserved.

Written from `c10/cuda/CUDACachingAllocator.cpp` (DeviceCachingAllocator: malloc, get_free_block, should_split,
alloc_found_block, free_block, try_merge_blocks, alloc_block, release_available_cached_blocks,
release_cached_blocks, garbage_collect_cached_blocks, and the expandable-segment path: find_expandable_block,
map_block, unmap_block) and `c10/core/AllocatorConfig.{h,cpp}` (the `PYTORCH_CUDA_ALLOC_CONF` parser) of the
torch 2.13 era. One device, one stream (a training step runs forward and backward on the current stream), no
CUDA graphs, no cross-stream events.

- Sizes: every request is rounded up to 512 B (`round_size`, or to a power-of-2 division with
  `roundup_power2_divisions`); requests <= 1 MiB use the small pool, larger ones the large pool.
- A request no cached block satisfies opens a segment (`get_allocation_size`): 2 MiB for the small pool,
  `large_segment_size` (20 MiB) for 1-10 MiB requests, the request rounded up to 2 MiB above that.
- Best fit: the smallest free block of the pool that is large enough (ties: lowest address). The rest of the
  block is split off when >= 512 B (small pool, expandable segments) or > 1 MiB (large pool, and only for
  requests below `max_split_size`); otherwise the whole block is handed out and counts as allocated.
- Freed blocks merge with free neighbours of the same segment. Blocks >= `max_split_size` serve only requests
  >= `max_split_size` and within `max_non_split_rounding` (20 MiB) of their size.
- With a capacity (the card, or `set_per_process_memory_fraction`), a segment that does not fit first releases
  oversize cached blocks, then every unsplit cached segment (what `empty_cache` does), then raises OOM;
  `garbage_collection_threshold` frees old cached segments before that, as PyTorch does only with a capacity.
- `expandable_segments:True`: one growing segment per pool, mapped in 2 MiB (small) / `large_segment_size`
  pages; reserved = mapped pages.
"""

from __future__ import annotations

import bisect
import itertools
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from vramfit.errors import VramfitError

MiB = 1 << 20
K_MIN_BLOCK_SIZE = 512  # all sizes are rounded to at least 512 bytes
K_SMALL_SIZE = MiB  # largest "small" allocation is 1 MiB
K_SMALL_BUFFER = 2 * MiB  # "small" allocations are packed in 2 MiB blocks
K_MIN_LARGE_ALLOC = 10 * MiB  # allocations between 1 and 10 MiB may use the large segment size
K_ROUND_LARGE = 2 * MiB  # round up large allocations to 2 MiB
K_LARGE_BUFFER = 20 * MiB  # default large_segment_size and max_non_split_rounding
ROUNDUP_INTERVALS = 16  # roundup_power2_divisions intervals: [1 MiB, 2 MiB), ..., [32 GiB, 64 GiB)
NO_LIMIT = sys.maxsize
_EXPANDABLE_SPACE = 1 << 48  # virtual address space of one expandable segment (PyTorch: 1 1/8 x the card)


@dataclass(frozen=True)
class AllocConf:
    """The allocator settings `PYTORCH_CUDA_ALLOC_CONF` can change (defaults: PyTorch's)."""

    max_split_size: int = NO_LIMIT
    max_non_split_rounding: int = K_LARGE_BUFFER
    large_segment_size: int = K_LARGE_BUFFER
    roundup_power2_divisions: tuple[int, ...] = (0,) * ROUNDUP_INTERVALS
    garbage_collection_threshold: float = 0.0
    expandable_segments: bool = False
    backend: str = "native"

    def divisions(self, size: int) -> int:
        """`AllocatorConfig::roundup_power2_divisions(size)`: the divisions of size's power-of-2 interval."""
        index = size.bit_length() - 1 - 20  # log2(size) - log2(1 MiB)
        return self.roundup_power2_divisions[min(max(index, 0), ROUNDUP_INTERVALS - 1)]


def _bool(key: str, value: str) -> bool:
    if value not in ("True", "False", "true", "false"):
        raise VramfitError(f"PYTORCH_CUDA_ALLOC_CONF: expected True or False for {key}, got {value!r}")
    return value in ("True", "true")


def _mb_at_least_20(key: str, value: str) -> int:
    mb = _int(key, value)
    if mb < K_LARGE_BUFFER // MiB:
        raise VramfitError(f"PYTORCH_CUDA_ALLOC_CONF: {key} too small, must be >= {K_LARGE_BUFFER // MiB}")
    return mb * MiB


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise VramfitError(f"PYTORCH_CUDA_ALLOC_CONF: {key} needs an integer, got {value!r}") from None


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _parse_divisions(value: str) -> tuple[int, ...]:
    """`parseRoundUpPower2Divisions`: one power of 2 for every interval, or `[64:8,256:4,>:1]` (MiB: divisions;
    the first entry also covers the intervals below it, unnamed intervals in between keep 0, '>' the rest)."""
    if not value.startswith("["):
        d = _int("roundup_power2_divisions", value)
        if not _is_pow2(d):
            raise VramfitError("PYTORCH_CUDA_ALLOC_CONF: roundup_power2_divisions must be a power of 2")
        return (d,) * ROUNDUP_INTERVALS
    out = [0] * ROUNDUP_INTERVALS
    last, first = 0, True
    for item in value.strip("[]").split(","):
        key, sep, div = item.partition(":")
        d = _int("roundup_power2_divisions", div.strip()) if sep else -1
        if not (d == 0 or _is_pow2(d)):
            raise VramfitError(f"PYTORCH_CUDA_ALLOC_CONF: bad roundup_power2_divisions entry {item!r}")
        if key.strip() == ">":  # the intervals after the last one named
            start = last + 1 if not first else 0
            out[start:] = [d] * (ROUNDUP_INTERVALS - start)
            continue
        mb = _int("roundup_power2_divisions", key.strip())
        if not _is_pow2(mb):
            raise VramfitError("PYTORCH_CUDA_ALLOC_CONF: roundup_power2_divisions intervals must be powers of 2")
        index = min(mb.bit_length() - 1, ROUNDUP_INTERVALS - 1)
        if first:
            out[:index] = [d] * index
            first = False
        out[index] = d
        last = index
    return tuple(out)


def _split_items(text: str) -> list[str]:
    items, depth, cur = [], 0, ""
    for ch in text.replace(" ", ""):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return [*items, cur] if cur else items


def parse_alloc_conf(text: str | None) -> AllocConf:
    """`PYTORCH_CUDA_ALLOC_CONF` (`key:value,...`) as `AllocConf`, validated like `AllocatorConfig::parseArgs`."""
    kw: dict = {}
    for item in _split_items(text or ""):
        key, sep, value = item.partition(":")
        if not sep or not value:
            raise VramfitError(f"PYTORCH_CUDA_ALLOC_CONF: expected key:value, got {item!r}")
        if key == "max_split_size_mb":
            kw["max_split_size"] = _mb_at_least_20(key, value)
        elif key == "max_non_split_rounding_mb":
            kw["max_non_split_rounding"] = _mb_at_least_20(key, value)
        elif key == "large_segment_size_mb":
            kw["large_segment_size"] = _int(key, value) * MiB
            if kw["large_segment_size"] <= 0:
                raise VramfitError("PYTORCH_CUDA_ALLOC_CONF: large_segment_size_mb must be positive")
        elif key == "garbage_collection_threshold":
            try:
                t = float(value)
            except ValueError:
                t = -1.0
            if not 0.0 < t < 1.0:
                raise VramfitError("PYTORCH_CUDA_ALLOC_CONF: garbage_collection_threshold must be in (0.0, 1.0)")
            kw["garbage_collection_threshold"] = t
        elif key == "roundup_power2_divisions":
            kw["roundup_power2_divisions"] = _parse_divisions(value)
        elif key == "expandable_segments":
            kw["expandable_segments"] = _bool(key, value)
        elif key == "backend":
            if value not in ("native", "cudaMallocAsync"):
                raise VramfitError("PYTORCH_CUDA_ALLOC_CONF: backend must be native or cudaMallocAsync")
            kw["backend"] = value
        elif key in ("release_lock_on_cudamalloc", "pinned_use_cuda_host_register", "pinned_use_background_threads"):
            _bool(key, value)  # no effect on device memory
        elif key == "pinned_num_register_threads":
            _int(key, value)
        else:
            raise VramfitError(f"PYTORCH_CUDA_ALLOC_CONF: unrecognized option {key!r}")
    conf = AllocConf(**kw)
    if conf.max_split_size < conf.large_segment_size:
        raise VramfitError("PYTORCH_CUDA_ALLOC_CONF: max_split_size_mb must be >= large_segment_size_mb")
    return conf


def round_size(size: int, conf: AllocConf = AllocConf()) -> int:
    """`round_size`: 512 B granularity, or the next power-of-2 division when configured."""
    if size < K_MIN_BLOCK_SIZE:
        return K_MIN_BLOCK_SIZE
    divisions = conf.divisions(size)
    if divisions > 1 and size > K_MIN_BLOCK_SIZE * divisions:
        if _is_pow2(size):
            return size
        floor = 1 << (size.bit_length() - 1)
        step = floor >> (divisions.bit_length() - 1)
        if step == 0:
            return floor << 1
        low = size & ~(step - 1)
        return size if low == size else low + step
    return -(-size // K_MIN_BLOCK_SIZE) * K_MIN_BLOCK_SIZE


def allocation_size(size: int, conf: AllocConf = AllocConf()) -> int:
    """`get_allocation_size`: the segment a (rounded) request opens when no cached block fits."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return conf.large_segment_size
    return -(-size // K_ROUND_LARGE) * K_ROUND_LARGE


class Block:
    """A range of device memory: allocated, cached (free, mapped) or, in an expandable segment, unmapped."""

    __slots__ = ("ptr", "size", "small", "allocated", "mapped", "prev", "next", "segment", "gc_base", "requested")

    def __init__(self, ptr: int, size: int, small: bool, segment: object = None, mapped: bool = True) -> None:
        self.ptr, self.size, self.small, self.segment, self.mapped = ptr, size, small, segment, mapped
        self.allocated = False
        self.prev: Block | None = None
        self.next: Block | None = None
        self.gc_base = 0
        self.requested = 0

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


class _Pool:
    """A BlockPool: free mapped blocks ordered by (size, address); unmapped ones by address."""

    def __init__(self, small: bool) -> None:
        self.small = small
        self.keys: list[tuple[int, int]] = []
        self.blocks: dict[int, Block] = {}
        self.unmapped: dict[int, Block] = {}
        self.calls = 0  # get_free_blocks_call_count

    def insert(self, b: Block) -> None:
        b.gc_base = self.calls
        bisect.insort(self.keys, (b.size, b.ptr))
        self.blocks[b.ptr] = b

    def erase(self, b: Block) -> None:
        i = bisect.bisect_left(self.keys, (b.size, b.ptr))
        del self.keys[i]
        del self.blocks[b.ptr]

    def lower_bound(self, size: int) -> Block | None:
        i = bisect.bisect_left(self.keys, (size, -1))
        return self.blocks[self.keys[i][1]] if i < len(self.keys) else None


class AllocatorOOM(Exception):
    """The emulated allocator could not serve a request within the capacity."""


@dataclass
class AllocatorStats:
    """What the replay found, in the names of `torch.cuda.memory_stats()` where one exists."""

    peak_allocated: int = 0  # max_memory_allocated(): block sizes, including unsplit remainders
    peak_reserved: int = 0  # max_memory_reserved(): segments (or mapped pages)
    peak_requested: int = 0  # the requests themselves (rounded to 512 B by the tracker)
    allocated: int = 0
    reserved: int = 0
    requested: int = 0
    segments: int = 0
    num_device_alloc: int = 0
    num_device_free: int = 0
    num_alloc_retries: int = 0
    num_ooms: int = 0
    peak_event: int = -1  # index into the trace where reserved peaked
    conf: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Reserved over allocated at their peaks (>= 1: what fragmentation and segment rounding cost)."""
        return self.peak_reserved / self.peak_allocated if self.peak_allocated else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = round(self.ratio, 6)
        return d


class CachingAllocator:
    """The DeviceCachingAllocator's state machine for one device and stream; `capacity`: bytes the allocator
    may reserve (None: unbounded, i.e. no OOM and no garbage collection)."""

    def __init__(self, conf: AllocConf = AllocConf(), capacity: int | None = None) -> None:
        if conf.backend != "native":
            raise VramfitError("PYTORCH_CUDA_ALLOC_CONF backend:cudaMallocAsync is not modelled (native only)")
        self.conf, self.capacity = conf, capacity
        self.small, self.large = _Pool(True), _Pool(False)
        self.stats = AllocatorStats(conf=asdict(conf))
        self._addr = itertools.count(1)  # next segment base, in units of 2^40 bytes: segments never overlap
        self._expandable: dict[bool, Block] = {}

    # --- malloc ------------------------------------------------------------------------------------------------
    def malloc(self, orig_size: int) -> Block:
        size = round_size(orig_size, self.conf)
        pool = self.small if size <= K_SMALL_SIZE else self.large
        alloc_size = allocation_size(size, self.conf)
        block = self._get_free_block(pool, size)
        if block is None:
            if self.capacity is not None and self.conf.garbage_collection_threshold > 0:
                self._garbage_collect()
            block = (self._alloc_block(pool, size, alloc_size)
                     or (self._release_available(pool, size) and self._alloc_block(pool, size, alloc_size))
                     or self._retry_after_release(pool, size, alloc_size))
        if block is None:
            self.stats.num_ooms += 1
            raise AllocatorOOM(f"cannot allocate {alloc_size} bytes with {self.stats.reserved} reserved")
        return self._alloc_found_block(pool, block, size, orig_size)

    def _retry_after_release(self, pool: _Pool, size: int, alloc_size: int) -> Block | None:
        self.empty_cache()
        self.stats.num_alloc_retries += 1
        return self._alloc_block(pool, size, alloc_size)

    def _get_free_block(self, pool: _Pool, size: int) -> Block | None:
        conf = self.conf
        if self.capacity is not None and conf.garbage_collection_threshold > 0:
            pool.calls += 1
        b = pool.lower_bound(size)
        if b is None:
            return None
        if b.segment is not None and conf.expandable_segments:
            # best fit counts what a block can grow into by mapping the unmapped space after it
            def grow(x: Block) -> int:
                return x.size + (x.next.size if x.next is not None and not x.next.mapped else 0)
            i = bisect.bisect_left(pool.keys, (b.size, b.ptr)) + 1
            while b.segment is not None and i < len(pool.keys):
                nxt = pool.blocks[pool.keys[i][1]]
                if grow(nxt) >= grow(b):
                    break
                b, i = nxt, i + 1
        if size < conf.max_split_size <= b.size:
            return None  # do not return an oversized block for a small request
        if size >= conf.max_split_size and b.size >= size + conf.max_non_split_rounding:
            return None
        pool.erase(b)
        return b

    def _should_split(self, block: Block, size: int) -> bool:
        remaining = block.size - size
        if block.small or self.conf.expandable_segments:
            return remaining >= K_MIN_BLOCK_SIZE
        return size < self.conf.max_split_size and remaining > K_SMALL_SIZE

    def _alloc_found_block(self, pool: _Pool, block: Block, size: int, orig_size: int) -> Block:
        if self._should_split(block, size):
            rest = Block(block.ptr + size, block.size - size, pool.small, block.segment)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, size
            pool.insert(rest)
        block.allocated, block.requested = True, orig_size
        st = self.stats
        st.allocated += block.size
        st.requested += orig_size
        st.peak_allocated = max(st.peak_allocated, st.allocated)
        st.peak_requested = max(st.peak_requested, st.requested)
        return block

    # --- new memory ------------------------------------------------------------------------------------------
    def _fits(self, nbytes: int) -> bool:
        return self.capacity is None or self.stats.reserved + nbytes <= self.capacity

    def _add_reserved(self, nbytes: int) -> None:
        st = self.stats
        st.reserved += nbytes
        st.num_device_alloc += 1
        if st.reserved > st.peak_reserved:
            st.peak_reserved = st.reserved
            st.peak_event = self._event

    _event = -1

    def _alloc_block(self, pool: _Pool, size: int, alloc_size: int) -> Block | None:
        if self.conf.expandable_segments:
            return self._alloc_expandable(pool, size)
        if not self._fits(alloc_size):
            return None
        block = Block(next(self._addr) << 40, alloc_size, pool.small)
        self.stats.segments += 1
        self._add_reserved(alloc_size)
        return block

    def _release_available(self, pool: _Pool, size: int) -> bool:
        """`release_available_cached_blocks`: with max_split_size set, free oversize cached segments."""
        conf = self.conf
        if conf.max_split_size == NO_LIMIT:
            return False
        key = max(size, conf.max_split_size)
        b = pool.lower_bound(key)
        if b is not None:
            self._release_block(pool, b)
            return True
        released = 0
        for sz, ptr in reversed(list(pool.keys)):
            if released >= key or sz < conf.max_split_size:
                break
            released += sz
            self._release_block(pool, pool.blocks[ptr])
        return released >= key

    def _release_block(self, pool: _Pool, b: Block) -> None:
        pool.erase(b)
        self.stats.reserved -= b.size
        self.stats.segments -= 1
        self.stats.num_device_free += 1

    def empty_cache(self) -> None:
        """`release_cached_blocks`: free every unsplit cached segment; unmap free pages of expandable ones."""
        for pool in (self.large, self.small):
            for _, ptr in list(pool.keys):
                b = pool.blocks[ptr]
                if b.segment is not None:
                    self._unmap(pool, b)
                elif not b.is_split():
                    self._release_block(pool, b)

    def _garbage_collect(self) -> None:
        """`garbage_collect_cached_blocks`: above threshold x capacity, free the large pool's unsplit cached
        segments at least as old (in get_free_block calls) as the average, until enough is reclaimed."""
        threshold = int(self.conf.garbage_collection_threshold * self.capacity)
        if self.stats.reserved <= threshold:
            return
        target, reclaimed = self.stats.reserved - threshold, 0
        pool = self.large
        free = [pool.blocks[p] for _, p in pool.keys if not pool.blocks[p].is_split()]
        total_age = sum(pool.calls - b.gc_base for b in free)
        count = len(free)
        freed = True
        while reclaimed < target and freed and count > 0:
            age = total_age / count
            freed = False
            for _, p in list(pool.keys):
                b = pool.blocks[p]
                if not b.is_split() and pool.calls - b.gc_base >= age:
                    freed = True
                    reclaimed += b.size
                    total_age -= pool.calls - b.gc_base
                    count -= 1
                    self._release_block(pool, b)

    # --- free ------------------------------------------------------------------------------------------------
    def free(self, block: Block) -> None:
        pool = self.small if block.small else self.large
        block.allocated = False
        self.stats.allocated -= block.size
        self.stats.requested -= block.requested
        for other in (block.prev, block.next):
            self._merge(pool, block, other)
        pool.insert(block)

    def _merge(self, pool: _Pool, dst: Block, src: Block | None) -> int:
        """`try_merge_blocks`: absorb a free neighbour in the same mapping state."""
        if src is None or src.allocated or src.mapped != dst.mapped:
            return 0
        if src.mapped:
            pool.erase(src)
        else:
            del pool.unmapped[src.ptr]
        if dst.prev is src:
            dst.ptr, dst.prev = src.ptr, src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        return src.size

    # --- expandable segments ---------------------------------------------------------------------------------
    def _page(self, pool: _Pool) -> int:
        return K_SMALL_BUFFER if pool.small else self.conf.large_segment_size

    def _alloc_expandable(self, pool: _Pool, size: int) -> Block | None:
        """`try_allocate_expandable_block`: the lowest-address run of free + unmapped space that fits, mapped."""
        c = self._find_expandable(pool, size)
        if not c.mapped and not self._map(pool, c, min(c.size, size)):
            return None
        while c.size < size:
            nxt = c.next
            if nxt is None or not self._map(pool, nxt, min(size - c.size, nxt.size)):
                return None
            c = nxt
        pool.erase(c)
        return c

    def _find_expandable(self, pool: _Pool, size: int) -> Block:
        def allocatable(b: Block | None) -> bool:
            return b is not None and not b.allocated

        for ptr in sorted(pool.unmapped):
            c = pool.unmapped[ptr]
            if allocatable(c.prev):
                c = c.prev
            room, b = 0, c
            while room < size and allocatable(b):
                room += b.size
                b = b.next
            if room >= size:
                return c
        seg = Block(next(self._addr) << 50, _EXPANDABLE_SPACE, pool.small, mapped=False)
        seg.segment = seg.ptr
        self.stats.segments += 1
        pool.unmapped[seg.ptr] = seg
        return seg

    def _map(self, pool: _Pool, b: Block, size: int) -> bool:
        """`map_block`: map whole pages from b's start; an unmapped remainder stays after it."""
        page = self._page(pool)
        offset = b.ptr - b.segment
        mapped = -(-(offset + size) // page) * page - offset
        mapped = min(mapped, b.size)
        if not self._fits(mapped):
            return False
        del pool.unmapped[b.ptr]
        b.mapped = True
        if mapped < b.size:
            rest = Block(b.ptr + mapped, b.size - mapped, pool.small, b.segment, mapped=False)
            rest.prev, rest.next = b, b.next
            if b.next is not None:
                b.next.prev = rest
            b.next, b.size = rest, mapped
            pool.unmapped[rest.ptr] = rest
        self._merge(pool, b, b.prev)
        self._merge(pool, b, b.next)
        pool.insert(b)
        self._add_reserved(mapped)
        return True

    def _unmap(self, pool: _Pool, b: Block) -> None:
        """`unmap_block`: return the whole pages inside a free block; the partial pages at its ends stay mapped."""
        page = self._page(pool)
        start = -(-(b.ptr - b.segment) // page) * page + b.segment
        end = (b.ptr + b.size - b.segment) // page * page + b.segment
        if end <= start:
            return
        pool.erase(b)
        if start > b.ptr:
            before = Block(b.ptr, start - b.ptr, pool.small, b.segment)
            before.prev, before.next = b.prev, b
            if b.prev is not None:
                b.prev.next = before
            b.prev = before
            pool.insert(before)
        if end < b.ptr + b.size:
            after = Block(end, b.ptr + b.size - end, pool.small, b.segment)
            after.prev, after.next = b, b.next
            if b.next is not None:
                b.next.prev = after
            b.next = after
            pool.insert(after)
        b.ptr, b.size, b.mapped = start, end - start, False
        self._merge(pool, b, b.prev)
        self._merge(pool, b, b.next)
        pool.unmapped[b.ptr] = b
        self.stats.reserved -= end - start
        self.stats.num_device_free += 1


def replay(events: Iterable[tuple[int, int]], conf: AllocConf | str | None = None,
           capacity: int | None = None) -> AllocatorStats:
    """Replay a trace of (id, +bytes | -bytes) events (a tracker's: an id's first positive event allocates, the
    event that brings it to 0 frees it, any other change reallocates) through `CachingAllocator`.

    An OOM within `capacity` stops the replay; `stats.num_ooms` says so."""
    if not isinstance(conf, AllocConf):
        conf = parse_alloc_conf(conf)
    alloc = CachingAllocator(conf, capacity)
    live: dict[int, tuple[Block | None, int]] = {}
    try:
        for i, (key, delta) in enumerate(events):
            alloc._event = i
            block, size = live.pop(key, (None, 0))
            new = size + delta
            nb = alloc.malloc(new) if new > 0 else None  # a resize allocates the new storage first
            if block is not None:
                alloc.free(block)
            if new > 0:
                live[key] = (nb, new)
    except AllocatorOOM:
        pass
    return alloc.stats
