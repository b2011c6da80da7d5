"""The CLI's malloc settings: applied on glibc, skipped where the user chose their own."""

import ctypes

from lowprec import allocator


def test_applies_on_glibc_and_respects_user_settings(monkeypatch):
    for var in allocator._USER_SETTINGS:
        monkeypatch.delenv(var, raising=False)
    assert allocator.keep_buffers_in_heap() is True  # this machine runs glibc
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert allocator.keep_buffers_in_heap() is False


def test_no_mallopt_is_not_an_error(monkeypatch):
    for var in allocator._USER_SETTINGS:
        monkeypatch.delenv(var, raising=False)

    def no_libc(name):
        raise OSError("no such library")
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert allocator.keep_buffers_in_heap() is False


