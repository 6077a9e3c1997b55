"""futex(2) on a shared mapping: sleep until woken or until the word changes."""

from __future__ import annotations

import ctypes
import mmap

import pytest
from transports_testing import Call

from raycg.transports._futex import fence, futex_wait, futex_wake

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def word() -> ctypes.c_uint32:
    # A shared mapping, as the rings' memfds are; anonymous, so it holds no fd and goes
    # with the last reference to it.
    return ctypes.c_uint32.from_buffer(mmap.mmap(-1, mmap.PAGESIZE))


def test_wake_ends_a_wait_in_another_thread(word: ctypes.c_uint32) -> None:
    addr = ctypes.addressof(word)
    waiter = Call(lambda: futex_wait(addr, 0, 600))  # only a wake-up can end it in time
    woken = 0
    while not woken:  # until the waiter is inside the kernel's wait, nobody is woken
        waiter.wait_blocked()
        woken = futex_wake(addr)
    waiter.outcome()
    assert woken == 1
    assert word.value == 0  # a wake-up, not a change of the word


def test_changed_word_returns_at_once(word: ctypes.c_uint32) -> None:
    word.value = 7
    futex_wait(ctypes.addressof(word), 6, 600)  # 6 is stale: no sleep at all


def test_wait_ends_at_its_timeout(word: ctypes.c_uint32) -> None:
    futex_wait(ctypes.addressof(word), 0, 0.01)
    futex_wait(ctypes.addressof(word), 0, 0)  # zero: does not sleep


def test_wake_with_nobody_waiting(word: ctypes.c_uint32) -> None:
    assert futex_wake(ctypes.addressof(word)) == 0


def test_fence_is_callable_from_many_threads() -> None:
    calls = [Call(lambda: [fence() for _ in range(1000)]) for _ in range(4)]
    for c in calls:
        c.outcome()
