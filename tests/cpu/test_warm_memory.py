"""jaxgrpo.cpu.warm_memory: the free-page-reporting probe, the switch, the reserve's lending, and a
wrapped jitted function (same outputs, its need read from XLA without a second compile)."""
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo.cpu import warm_memory as wm
from jaxgrpo.errors import ConfigError

MIB = 1 << 20


def _virtio(root, name, device, features):
    d = root / name
    d.mkdir(parents=True)
    (d / "device").write_text(device + "\n")
    (d / "features").write_text(features + "\n")


def test_free_page_reporting_reads_the_balloon_feature_bit(tmp_path):
    # virtio-balloon (0x0005) with bits 1, 2, 5, 7 (stats, deflate-on-OOM, REPORTING, ...):
    # the string of the Firecracker VM these numbers come from. Bit 0 is the first character.
    _virtio(tmp_path / "yes", "virtio0", "0x0005", "01100101" + "0" * 24)
    _virtio(tmp_path / "yes", "virtio1", "0x0002", "0" * 32)
    assert wm.free_page_reporting(str(tmp_path / "yes"))
    _virtio(tmp_path / "no", "virtio0", "0x0005", "01100001" + "0" * 24)  # bit 5 off
    _virtio(tmp_path / "no", "virtio1", "0x0001", "00000100" + "0" * 24)  # a NIC with bit 5
    assert not wm.free_page_reporting(str(tmp_path / "no"))
    assert not wm.free_page_reporting(str(tmp_path / "missing"))


def test_switch():
    on, off = {wm.SWITCH: "1"}, {wm.SWITCH: "0"}
    assert wm.enabled(on, backend="cpu")
    assert not wm.enabled(on, backend="gpu")  # an accelerator's memory is its own
    assert not wm.enabled(off, backend="cpu")
    # auto follows the CPU settings switch (and the balloon probe)
    assert not wm.enabled({wm.SWITCH: "auto", "JAXGRPO_CPU_TUNING": "0"}, backend="cpu")
    with pytest.raises(ConfigError, match=wm.SWITCH):
        wm.enabled({wm.SWITCH: "sometimes"}, backend="cpu")
    assert wm.switch_mode({wm.SWITCH: " On "}) == "on"


def test_reserve_lends_what_is_asked_and_holds_the_largest_need():
    r = wm.WarmReserve(chunk_bytes=MIB)
    with r.lend(3 * MIB + 1):  # empty: nothing to lend; grows to 4 chunks afterwards
        assert r.held_bytes == 0
    assert r.held_bytes == 4 * MIB
    with r.lend(2 * MIB):
        assert r.held_bytes == 2 * MIB
    assert r.held_bytes == 4 * MIB  # never shrinks below the largest need
    with r.lend(6 * MIB):
        assert r.held_bytes == 0
    assert r.held_bytes == 6 * MIB
    with r.lend(0):
        assert r.held_bytes == 6 * MIB
    r.release()
    assert r.held_bytes == 0


def _update(state, x):
    w = state["w"]
    for _ in range(4):
        x = jnp.tanh(x @ w)
    return {"w": w - 1e-3 * jnp.outer(x.sum(0), x.sum(0))}, jnp.sum(x * x)


class _Spy:
    """A lowerable function that records the reserve's holding while it runs."""

    def __init__(self, fn, warm):
        self.fn, self.warm, self.held = fn, warm, []

    def __call__(self, *args):
        self.held.append(self.warm.held_bytes)
        return self.fn(*args)

    def lower(self, *args):
        return self.fn.lower(*args)


def test_wrapped_call_gives_the_same_results_and_compiles_once():
    n = 128
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, n)), jnp.float32)
    w0 = np.random.default_rng(1).normal(size=(n, n)).astype(np.float32) / np.sqrt(n)
    ref = jax.jit(_update, donate_argnums=(0,))
    s_ref = {"w": jnp.asarray(w0)}
    expect = []
    for _ in range(3):
        s_ref, loss = ref(s_ref, x)
        expect.append(float(loss))

    def fresh(state, x):  # a function of its own: its compilation is not in the cache yet
        return _update(state, x)

    jitted = jax.jit(fresh, donate_argnums=(0,))
    warm = wm.WarmReserve(chunk_bytes=MIB)
    spy = _Spy(jitted, warm)
    call = wm.WarmCall(spy, donates_state=True, warm=warm, min_kernel_s_per_gb=0.0,
                       min_kernel_s=0.0)  # pays
    compiles = []

    class Catch(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Finished XLA compilation of jit(fresh)"):
                compiles.append(record)

    handler = Catch(logging.WARNING)
    logging.getLogger("jax").addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    try:
        s = {"w": jnp.asarray(w0)}
        got = []
        for _ in range(3):
            s, loss = call(s, x)
            got.append(float(loss))
    finally:
        jax.config.update("jax_log_compiles", False)
        logging.getLogger("jax").removeHandler(handler)
    assert got == expect  # the same program on the same inputs
    np.testing.assert_array_equal(np.asarray(s["w"]), np.asarray(s_ref["w"]))
    assert len(compiles) == 1  # reading the need after the first call is a cache hit
    (need,) = call.needs.values()
    m = jitted.lower(s, x).compile().memory_analysis()
    assert need == m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes > 0
    chunks = -(-need // MIB) * MIB
    # first call: nothing held; the second runs without the reserve (measured) and fills it to
    # the need; the third borrows it all
    assert spy.held == [0, 0, 0] and list(call.lends.values()) == [True]
    assert warm.held_bytes == chunks
    with warm.lend(chunks + 3 * MIB):  # hold more than the call needs: it lends only the need
        pass
    s, _ = call(s, x)
    assert spy.held[-1] == 3 * MIB and warm.held_bytes == chunks + 3 * MIB
    warm.release()


def test_a_call_that_does_not_pay_borrows_only_what_others_hold():
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0))
    x = jnp.ones((256, 256), jnp.float32)
    warm = wm.WarmReserve(chunk_bytes=MIB)
    spy = _Spy(f, warm)
    call = wm.WarmCall(spy, warm=warm, min_kernel_s_per_gb=float("inf"))  # never pays
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(call(x)), np.asarray(f(x)))
    assert list(call.lends.values()) == [False] and warm.held_bytes == 0  # never filled
    (need,) = call.needs.values()
    with warm.lend(need + 2 * MIB):  # held for another function
        pass
    held = warm.held_bytes
    call(x)
    assert spy.held[-1] == held - -(-need // MIB) * MIB  # lent up to its need, paced or not
    assert warm.held_bytes == held
    warm.release()


def test_paced_lending_follows_the_resident_size(monkeypatch):
    warm = wm.WarmReserve(chunk_bytes=MIB)
    with warm.lend(64 * MIB):
        pass
    assert warm.held_bytes == 64 * MIB
    # The resident size the pacing thread reads: what the reserve gave back lowers it, what the
    # body takes up raises it (a model of /proc/self/statm, free of the test process's noise).
    base, taken = 1 << 30, [0]
    monkeypatch.setattr(wm, "_rss_bytes",
                        lambda fd: base - (64 * MIB - warm.held_bytes) + taken[0])
    with warm.lend(64 * MIB, ahead=4 * MIB, poll_s=0.001):
        time.sleep(0.05)
        # only the lead is handed out before the body touches anything
        assert warm.held_bytes == 60 * MIB
        taken[0] = 32 * MIB  # the body takes up 32 MiB
        deadline = 200
        while warm.held_bytes > 28 * MIB and deadline:
            time.sleep(0.01)
            deadline -= 1
        time.sleep(0.05)
        # 32 MiB taken up and 4 MiB ahead: 36 chunks out, no more
        assert warm.held_bytes == 28 * MIB, warm.held_bytes
    assert warm.held_bytes == 64 * MIB  # all taken back
    warm.release()


def test_wrap_is_the_identity_when_off(monkeypatch):
    f = jax.jit(lambda x: x + 1)
    monkeypatch.setenv(wm.SWITCH, "0")
    assert wm.wrap(f) is f
    monkeypatch.setenv(wm.SWITCH, "1")
    assert isinstance(wm.wrap(f), wm.WarmCall)
    plain = lambda x: x  # noqa: E731  (no .lower: nothing to read the need from)
    assert wm.wrap(plain) is plain
