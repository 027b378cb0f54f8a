"""Hot-path ids: unique, well-formed, and a forked child never repeats its
parent's sequence."""

from __future__ import annotations

import os

from services.common.ids import random_hex_id


def test_ids_are_unique_32_hex_digits() -> None:
    ids = [random_hex_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)


def test_a_forked_child_draws_its_own_sequence() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids, then leave at once
        os.write(write, "".join(random_hex_id() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 4 * 32).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = "".join(random_hex_id() for _ in range(4))
    assert len(child) == 128 and child != parent
