"""The KV block pool: which physical blocks each request owns, and the prefix cache.

A request's block list is its block table. Blocks are handed out on demand (paged), or up to a
reservation (reserve_max / reserve_predicted: the scheduler passes `reserve_tokens`).

Prefix caching: once a block is full and computed it is registered under a chained hash of
(parent block's hash, its token ids). A new request walks its prompt's full blocks from the
start; a block is a hit only if the hash is registered *and* the stored (parent hash, tokens)
equal the request's, so a hash collision can never serve another prompt's KV. Hit blocks are
shared by reference count. A block whose count drops to zero keeps its content and goes to an
LRU list of cached free blocks: it is reused on a later hit, or evicted (oldest first) when a
fresh block is needed and no plain free block is left.
"""
from __future__ import annotations

import collections

from llmserve.core.request import Request

_ROOT_HASH = 0x5EED


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        if num_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {num_blocks}")
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self._free = collections.deque(range(num_blocks))
        # Prefix cache: hash -> block; per block its hash and (parent hash, tokens) to verify.
        self._cached: dict[int, int] = {}
        self._block_hash: list[int | None] = [None] * num_blocks
        self._block_key: list[tuple | None] = [None] * num_blocks
        self._cached_free: collections.OrderedDict[int, None] = collections.OrderedDict()
        # Sum over blocks of (ref_count - 1) where positive: extra owners of shared blocks.
        self.num_shared_refs = 0
        self.num_lookup_tokens = 0      # prompt tokens looked up in the cache
        self.num_hit_tokens = 0         # of which found
        self.num_evictions = 0

    # ---- counts ----------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free) + len(self._cached_free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free) - len(self._cached_free)

    @property
    def num_cached_free_blocks(self) -> int:
        return len(self._cached_free)

    @property
    def hit_rate(self) -> float:
        return self.num_hit_tokens / self.num_lookup_tokens if self.num_lookup_tokens else 0.0

    # ---- allocation ------------------------------------------------------------------------
    def blocks_needed(self, req: Request, num_new_tokens: int, reserve_tokens: int = 0) -> int:
        tokens = max(req.num_computed_tokens + num_new_tokens, reserve_tokens)
        return max(0, -(-tokens // self.block_size) - len(req.block_ids))

    def can_allocate(self, req: Request, num_new_tokens: int, reserve: int = 0,
                     reserve_tokens: int = 0) -> bool:
        return self.blocks_needed(req, num_new_tokens, reserve_tokens) + reserve \
            <= self.num_free_blocks

    def allocate_slots(self, req: Request, num_new_tokens: int, reserve: int = 0,
                       reserve_tokens: int = 0, hit_blocks=(), lookup_tokens: int = 0) -> bool:
        """Give req blocks for num_new_tokens more tokens; False (and no change) if short.

        reserve: blocks that must stay free after this allocation (admission watermark).
        reserve_tokens: allocate up to this many token slots at least (reservation modes).
        hit_blocks: prefix-cache hits from match_prefix (req must own no block yet); they are
        attached first and req.num_computed_tokens jumps over them.
        lookup_tokens: tokens that were looked up in the cache (counted for the hit rate only
        when the allocation succeeds, so a retried admission is counted once).
        """
        bs = self.block_size
        have = len(req.block_ids) + len(hit_blocks)
        computed = req.num_computed_tokens + len(hit_blocks) * bs
        tokens = computed + num_new_tokens
        if reserve_tokens > tokens:
            tokens = reserve_tokens
        need = -(-tokens // bs) - have
        if need < 0:
            need = 0
        ref = self.ref_counts
        # Hit blocks that sit in the free list leave it when taken.
        revived = sum(1 for b in hit_blocks if ref[b] == 0) if hit_blocks else 0
        if need + reserve + revived > len(self._free) + len(self._cached_free):
            return False
        self.num_lookup_tokens += lookup_tokens
        if hit_blocks:
            for b in hit_blocks:
                if ref[b] == 0:
                    del self._cached_free[b]
                else:
                    self.num_shared_refs += 1
                ref[b] += 1
                req.block_ids.append(b)
            req.num_computed_tokens = computed
            req.num_hashed_blocks = len(req.block_ids)
            req.num_cached_tokens += len(hit_blocks) * bs
            self.num_hit_tokens += len(hit_blocks) * bs
        free = self._free
        append = req.block_ids.append
        for _ in range(need):
            if free:
                b = free.popleft()
            else:
                b = self._evict()
            ref[b] = 1
            append(b)
        return True

    def grow(self, req: Request, num_new_tokens: int) -> bool:
        """allocate_slots(req, num_new_tokens) with no reserve and no cache hits (a running
        request's next tokens), without its general case: the scheduler calls it for most
        requests every block_size steps."""
        blocks = req.block_ids
        need = -(-(req.num_computed_tokens + num_new_tokens) // self.block_size) - len(blocks)
        if need <= 0:
            return True
        free = self._free
        if need > len(free) + len(self._cached_free):
            return False
        ref = self.ref_counts
        for _ in range(need):
            b = free.popleft() if free else self._evict()
            ref[b] = 1
            blocks.append(b)
        return True

    def take_blocks(self, blocks: list, n: int) -> None:
        """Append n fresh blocks (ref count 1) to a block table: plain free blocks first,
        then the oldest cached free ones evicted (grow's order, without its checks; the
        simulator's decode runs grow through it after checking the pool themselves)."""
        free = self._free
        ref = self.ref_counts
        for _ in range(n):
            b = free.popleft() if free else self._evict()
            ref[b] = 1
            blocks.append(b)

    def _evict(self) -> int:
        b, _ = self._cached_free.popitem(last=False)
        h = self._block_hash[b]
        if self._cached.get(h) == b:
            del self._cached[h]
        self._block_hash[b] = None
        self._block_key[b] = None
        self.num_evictions += 1
        return b

    def free(self, req: Request) -> None:
        ref = self.ref_counts
        ids = req.block_ids
        if not self.enable_prefix_caching and set(map(ref.__getitem__, ids)) <= {1}:
            # No cache, so no sharing: every block goes back to the plain free list, in the
            # order of the general case below (a simulation frees ~70 blocks per request).
            for b in ids:
                ref[b] = 0
            self._free.extend(reversed(ids))
            req.block_ids = []
            req.num_hashed_blocks = 0
            return
        block_hash = self._block_hash
        to_free = self._free.append
        # Reverse order: the tail blocks (least likely shared) go back first, so LRU evicts
        # them before the prefix blocks other prompts are likelier to hit.
        for b in reversed(req.block_ids):
            c = ref[b] - 1
            ref[b] = c
            if c == 0:
                if block_hash[b] is None:
                    to_free(b)
                else:
                    self._cached_free[b] = None
            elif c > 0:
                self.num_shared_refs -= 1
            else:
                raise AssertionError(f"block {b} freed twice")
        req.block_ids = []
        req.num_hashed_blocks = 0

    # ---- prefix cache ----------------------------------------------------------------------
    def _hash_blocks(self, req: Request, upto: int) -> list[int]:
        """req.block_hashes extended to its first `upto` full blocks (computed once)."""
        hashes = req.block_hashes
        bs = self.block_size
        toks = req.token_ids
        parent = hashes[-1] if hashes else _ROOT_HASH
        for i in range(len(hashes), upto):
            parent = hash((parent, tuple(toks[i * bs:(i + 1) * bs])))
            hashes.append(parent)
        return hashes

    def match_prefix(self, req: Request) -> list[int]:
        """Cached blocks holding req's longest cached prefix; changes nothing.

        At most (num_tokens - 1) tokens are matched, so the last token is always computed
        and the step samples from it.
        """
        if not self.enable_prefix_caching or req.block_ids:
            return []
        bs = self.block_size
        n = (req.num_tokens - 1) // bs
        if n == 0:
            return []
        hashes = self._hash_blocks(req, n)
        toks = req.token_ids
        out = []
        parent = _ROOT_HASH
        for i in range(n):
            h = hashes[i]
            b = self._cached.get(h)
            if b is None or self._block_key[b] != (parent, tuple(toks[i * bs:(i + 1) * bs])):
                break
            out.append(b)
            parent = h
        return out

    def cache_full_blocks(self, req: Request) -> None:
        """Register req's computed full blocks that are not registered yet."""
        bs = self.block_size
        upto = min(req.num_computed_tokens // bs, len(req.block_ids))
        start = req.num_hashed_blocks
        if upto <= start:
            return
        hashes = self._hash_blocks(req, upto)
        toks = req.token_ids
        for i in range(start, upto):
            b = req.block_ids[i]
            h = hashes[i]
            if self._block_hash[b] is None and h not in self._cached:
                self._cached[h] = b
                self._block_hash[b] = h
                parent = hashes[i - 1] if i else _ROOT_HASH
                self._block_key[b] = (parent, tuple(toks[i * bs:(i + 1) * bs]))
        req.num_hashed_blocks = upto

    def forget_cached_prefixes(self) -> None:
        """The runner lost its KV cache's contents: no block holds a reusable prefix any
        more. Cached free blocks become plain free blocks (call with every request freed)."""
        self._free.extend(self._cached_free)
        self._cached_free.clear()
        self._cached.clear()
        self._block_hash = [None] * self.num_blocks
        self._block_key = [None] * self.num_blocks

    # ---- invariants (tests) ----------------------------------------------------------------
    def check_all_free(self) -> None:
        """Invariant for tests: nothing allocated, every ref count zero."""
        if self.num_free_blocks != self.num_blocks or any(self.ref_counts):
            raise AssertionError(f"{self.num_used_blocks} KV blocks still allocated")

    def check_owners(self, owners) -> None:
        """owners: the block lists of every request holding blocks. Each block's ref count must
        equal its number of owners, a block owned twice must be a shared cached block, and no
        free block may be owned."""
        count = collections.Counter(b for blocks in owners for b in blocks)
        for b in range(self.num_blocks):
            c = count.get(b, 0)
            if c != self.ref_counts[b]:
                raise AssertionError(f"block {b}: ref count {self.ref_counts[b]}, {c} owners")
            if c > 1 and self._block_hash[b] is None:
                raise AssertionError(f"block {b} owned {c} times but is not a cached block")
        free = set(self._free) | set(self._cached_free)
        if len(free) != self.num_free_blocks or free & set(count):
            raise AssertionError("the free lists overlap each other or owned blocks")
        if self.num_shared_refs != sum(max(0, c - 1) for c in count.values()):
            raise AssertionError("num_shared_refs out of step with the ref counts")
