"""jaxgrpo.executables (the hook compiled functions go through) and jaxgrpo.cpu.install, which
sets the CPU backend's warm-memory wrapper as that hook."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo import executables


@pytest.fixture(autouse=True)
def _no_wrapper():
    executables.set_wrapper(None)
    yield
    executables.set_wrapper(None)


def test_wrap_is_the_identity_without_a_wrapper():
    fn = jax.jit(lambda x: 2 * x)
    assert executables.wrap(fn) is fn
    assert executables.wrap(fn, donates_state=True) is fn
    executables.release()  # nothing set: nothing to do


def test_the_wrapper_that_was_set_wraps_and_releases():
    calls, released = [], []

    def wrapper(fn, *, donates_state):
        calls.append(donates_state)
        return lambda *a: fn(*a) + 1

    executables.set_wrapper(wrapper, release=lambda: released.append(True))
    fn = executables.wrap(jax.jit(lambda x: 2 * x), donates_state=True)
    np.testing.assert_array_equal(fn(jnp.arange(3)), [1, 3, 5])
    assert calls == [True]
    executables.release()
    assert released == [True]
    executables.set_wrapper(None)
    plain = jax.jit(lambda x: x)
    assert executables.wrap(plain) is plain  # later wraps see the new setting
    executables.release()
    assert released == [True]


def test_install_tunes_the_process_and_sets_warm_memorys_wrapper(monkeypatch):
    import jaxgrpo.cpu as cpu
    from jaxgrpo.cpu import warm_memory

    seen = []
    monkeypatch.setattr(cpu, "tune_process", lambda *, reexec: seen.append(reexec) or True)
    assert cpu.install(reexec=False) is True
    assert seen == [False]
    monkeypatch.setenv(warm_memory.SWITCH, "1")  # lend wherever the backend is the CPU
    fn = executables.wrap(jax.jit(lambda x: x + 1))
    assert isinstance(fn, warm_memory.WarmCall) == (jax.default_backend() == "cpu")
    np.testing.assert_array_equal(fn(jnp.arange(2)), [1, 2])
    monkeypatch.setenv(warm_memory.SWITCH, "0")
    plain = jax.jit(lambda x: x)
    assert executables.wrap(plain) is plain  # warm_memory.wrap: off -> the function itself
