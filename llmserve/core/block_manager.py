"""The KV block pool: which physical blocks each request owns.

Blocks are handed out on demand ("paged") as a request's tokens are scheduled; a request's
block list is its block table. Ref counts are kept per block so shared (prefix-cached) blocks
can be supported without changing callers.
"""
from __future__ import annotations

import collections

from llmserve.core.request import Request


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {num_blocks}")
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self._free = collections.deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_needed(self, req: Request, num_new_tokens: int) -> int:
        total = -(-(req.num_computed_tokens + num_new_tokens) // self.block_size)
        return max(0, total - len(req.block_ids))

    def can_allocate(self, req: Request, num_new_tokens: int, reserve: int = 0) -> bool:
        return self.blocks_needed(req, num_new_tokens) + reserve <= len(self._free)

    def allocate_slots(self, req: Request, num_new_tokens: int, reserve: int = 0) -> bool:
        """Give req blocks for num_new_tokens more tokens; False (and no change) if short.

        reserve: blocks that must stay free after this allocation (admission watermark).
        """
        need = self.blocks_needed(req, num_new_tokens)
        if need + reserve > len(self._free):
            return False
        for _ in range(need):
            b = self._free.popleft()
            self.ref_counts[b] = 1
            req.block_ids.append(b)
        return True

    def free(self, req: Request) -> None:
        # Reverse order: the tail blocks (least likely shared) go back first.
        for b in reversed(req.block_ids):
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self._free.append(b)
            elif self.ref_counts[b] < 0:
                raise AssertionError(f"block {b} freed twice")
        req.block_ids = []

    def check_all_free(self) -> None:
        """Invariant for tests: nothing allocated, every ref count zero."""
        if len(self._free) != self.num_blocks or any(self.ref_counts):
            raise AssertionError(f"{self.num_used_blocks} KV blocks still allocated")
