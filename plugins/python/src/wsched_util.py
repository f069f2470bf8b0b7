"""Helpers shared by the Python policies: the Python side of what
`plugins/sdk-rust/src/helpers.rs` and `lib.rs` give Rust policies.

Kept tiny and dependency-free: everything here is bundled into each
component, and each function mirrors its Rust counterpart exactly, because
the Python ports must make the very same decisions as the Rust originals.
"""

from typing import List, Optional

from wit_world.imports import host
from wit_world.imports.types import Level

# Rust's `str::trim` strips the characters with the Unicode White_Space
# property. Python's `str.strip()` strips a slightly different set (it also
# takes U+001C..U+001F), so name the set explicitly: a config string must be
# accepted or refused exactly as the Rust policy would.
_WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def rust_trim(s: str) -> str:
    """`s.trim()` as Rust defines it."""
    return s.strip(_WHITE_SPACE)


def take_gpus(free: List[int], k: int) -> Optional[List[int]]:
    """Take `k` GPUs from the front of `free` (lowest ids first, as the host
    lists them), or None if fewer than `k` are left. A gang is all or
    nothing. Mutates `free`, like the SDK's `take_gpus`."""
    if k == 0 or len(free) < k:
        return None
    gpus = free[:k]
    del free[:k]
    return gpus


def log(level: Level, message: str) -> None:
    """Write to the host's log, asking first whether it would be kept (one
    cheap call instead of shipping a string the host drops)."""
    if host.log_enabled(level):
        host.log(level, message)
