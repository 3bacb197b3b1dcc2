"""The worker's real work, bcrypt, checked with bcrypt itself; and the default number of slots."""

from __future__ import annotations

import os
import time

import bcrypt

from virtscale.worker.consumer import default_concurrency
from virtscale.worker.hashing import hash_license


def test_the_hash_is_the_bcrypt_2b_of_the_license_at_the_cost_asked():
    digest = hash_license("KL-01-AB-0001", 5).digest
    assert digest.startswith("$2b$05$") and len(digest) == 60
    assert bcrypt.checkpw(b"KL-01-AB-0001", digest.encode())
    assert not bcrypt.checkpw(b"KL-01-AB-0002", digest.encode())


def test_a_license_that_is_not_a_plate_hashes_all_the_same():
    for number in ("ç-日本-42", "x" * 72, "a"):
        digest = hash_license(number, 4).digest
        assert bcrypt.checkpw(number.encode("utf-8"), digest.encode())


def test_each_hash_has_a_salt_of_its_own():
    assert hash_license("KL-01-AB-0001", 4)[0] != hash_license("KL-01-AB-0001", 4)[0]


def test_the_milliseconds_are_those_of_the_hash():
    started = time.perf_counter()
    cpu_started = time.thread_time()
    hashed = hash_license("KL-01-AB-0001", 8)
    cpu_around = time.thread_time() - cpu_started
    around = (time.perf_counter() - started) * 1000.0
    assert 0 < hashed.ms <= around
    assert hashed.ms > around / 2, "the hash is nearly all of the call"
    assert 0 < hashed.cpu_seconds <= cpu_around
    assert hashed.cpu_seconds > cpu_around / 2, "the hash is nearly all of the thread's CPU"


def test_the_default_is_one_slot_per_cpu_this_process_may_use():
    assert default_concurrency() == len(os.sched_getaffinity(0))


def test_the_default_follows_the_affinity_not_the_machine(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {1})
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_concurrency() == 1


def test_without_affinity_the_default_is_the_cpu_count_or_one(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert default_concurrency() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_concurrency() == 1
