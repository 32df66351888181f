r"""Answer equivalence with math-verify, run in a persistent, deadline-bounded process pool.

math-verify (github.com/huggingface/Math-Verify) parses LaTeX / plain answers to sympy and
compares them (fractions vs decimals, intervals, sets, percentages, units, equations). Two hazards
make it unsafe to call inline from a training loop: its own timeouts use ``signal.alarm`` (which
raises outside the main thread) and sympy can hang in C code that no signal interrupts. So
:class:`MathVerifier` runs it in its own worker processes:

* workers are long-lived (started lazily on the first batch, reused across steps) and, with the
  default ``"forkserver"`` start method, forked from a server that has already imported
  math-verify, so a replacement worker is ready in milliseconds;
* each item has a **soft deadline** (``item_timeout_s``: an ``ITIMER_REAL`` alarm inside the
  worker aborts the comparison and the worker survives) and a **hard deadline**
  (``item_timeout_s + kill_grace_s``: the parent SIGKILLs the worker and starts a replacement);
* the whole call has a **batch deadline** (``batch_timeout_s``): whatever is unfinished then is
  scored 0 and counted as a timeout, and busy workers are replaced;
* a crashed worker (segfault, ``os._exit``, OOM kill) scores its item 0, is counted in
  ``n_errors`` and replaced. Nothing raises into the caller for a bad item; workers that
  cannot start at all raise RuntimeError (a script without an ``if __name__ == "__main__":``
  guard is named before any worker starts: each worker would re-run it).

Identical (prediction, gold) pairs within a batch are verified once (groups repeat answers).

Scoring modes:

* ``"answer"`` (default): the answer is extracted in the parent with
  :func:`jaxgrpo.rewards.extract.extract_answer`; a completion with no answer scores 0 without a
  round trip. Prediction and gold are parsed as ``\boxed{<answer>}`` (unless the gold already has
  ``\boxed`` or ``$`` delimiters), which lets math-verify read ``50\%``, ``(1,2]``, ``\{1,2\}``.
* ``"open_r1"``: the full completion goes to math-verify with the exact parse configuration of
  the Open-R1 / Open-RS / DRA-GRPO ``accuracy_reward`` and ``cosine_scaled_reward``
  (github.com/xiwenc1/DRA-GRPO ``src/open_r1/rewards.py``): gold parsed with
  ``LatexExtractionConfig()`` first-match, completion with boxed-first LaTeX extraction.

Per-item status codes (``stats["status"]``): see :data:`STATUS_NAMES`.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import re
import signal
import threading
import time
import weakref
from multiprocessing.connection import wait as _mp_wait
from typing import Callable, Optional, Sequence

import numpy as np

from jaxgrpo.rewards.extract import SOURCES, extract_answer

__all__ = [
    "MathVerifier",
    "math_equal",
    "math_verify_score",
    "STATUS_OK",
    "STATUS_TIMEOUT",
    "STATUS_ERROR",
    "STATUS_GOLD_UNPARSED",
    "STATUS_NO_ANSWER",
    "STATUS_NAMES",
]

logger = logging.getLogger(__name__)

STATUS_OK = 0  # verified (score 0 or 1)
STATUS_TIMEOUT = 1  # soft, hard or batch deadline hit; score 0
STATUS_ERROR = 2  # exception in the verifier or a crashed worker; score 0
STATUS_GOLD_UNPARSED = 3  # math-verify found nothing in the gold; score 0
STATUS_NO_ANSWER = 4  # no answer extracted from the completion ("answer" mode); score 0
STATUS_NAMES = {0: "ok", 1: "timeout", 2: "error", 3: "gold_unparsed", 4: "no_answer"}

MODES = ("answer", "open_r1")


# --------------------------------------------------------------------------------------------
# What a worker computes (module-level so it pickles by reference).


def _as_latex(s: str) -> str:
    """Wraps a bare answer in ``\\boxed{}`` so math-verify's LaTeX extractor anchors on it."""
    if "\\boxed" in s or "$" in s or "\\(" in s or "\\[" in s:
        return s
    return "\\boxed{" + s + "}"


def math_verify_score(pred: str, gold: str, mode: str = "answer") -> tuple[int, float]:
    """(status, score) of one prediction against one gold with math-verify, run inline.

    ``pred`` is an extracted answer in ``"answer"`` mode and a full completion in ``"open_r1"``
    mode. math-verify's own signal timeouts are disabled: the caller (the pool worker) owns the
    deadline. Score is 1.0 if equivalent else 0.0.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if mode == "open_r1":
        from latex2sympy2_extended import NormalizationConfig

        gold_p = parse(gold, extraction_mode="first_match",
                       extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
        if not gold_p:
            return STATUS_GOLD_UNPARSED, 0.0
        pred_p = parse(
            pred,
            extraction_config=[
                LatexExtractionConfig(
                    normalization_config=NormalizationConfig(
                        nits=False, malformed_operators=False, basic_latex=True,
                        equations=True, boxed=True, units=True),
                    boxed_match_priority=0,
                    try_extract_without_anchor=False,
                )
            ],
            extraction_mode="first_match",
            parsing_timeout=None,
        )
    else:
        configs = [LatexExtractionConfig(), ExprExtractionConfig()]
        gold_p = parse(_as_latex(gold), extraction_config=configs, parsing_timeout=None)
        if not gold_p:
            gold_p = parse(gold, extraction_config=configs, parsing_timeout=None)
        if not gold_p:
            return STATUS_GOLD_UNPARSED, 0.0
        pred_p = parse(_as_latex(pred), extraction_config=configs, parsing_timeout=None)
        if not pred_p:
            pred_p = parse(pred, extraction_config=configs, parsing_timeout=None)
    if not pred_p:
        return STATUS_OK, 0.0
    return STATUS_OK, float(bool(verify(gold_p, pred_p, timeout_seconds=None)))


def _testing_verify_fn(pred: str, gold: str, mode: str = "answer") -> tuple[int, float]:
    """Fault injection for the tests: gold ``__sleep__`` sleeps (soft timeout), ``__hang__``
    blocks SIGALRM then sleeps (only the parent's SIGKILL ends it), ``__crash__`` exits the
    worker, ``__raise__`` raises; anything else is :func:`math_verify_score`."""
    if gold == "__sleep__":
        time.sleep(3600)
    elif gold == "__hang__":
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        time.sleep(3600)
    elif gold == "__crash__":
        os._exit(13)
    elif gold == "__raise__":
        raise RuntimeError("injected failure")
    return math_verify_score(pred, gold, mode)


_INT_RE = re.compile(r"[+-]?\d+")


def _fast_compare(pred: str, gold: str) -> Optional[float]:
    """Decides the obvious cases without sympy: identical strings (modulo surrounding spaces and
    ``$``) are equivalent; two plain integers compare as integers. Else None (ask math-verify)."""
    p, g = pred.strip().strip("$").strip(), gold.strip().strip("$").strip()
    if p and p == g:
        return 1.0
    if _INT_RE.fullmatch(p) and _INT_RE.fullmatch(g) and len(p) < 4000 and len(g) < 4000:
        return float(int(p) == int(g))
    return None


class _SoftTimeout(BaseException):
    """Raised by the worker's alarm. A BaseException so math-verify's `except Exception` blocks
    do not swallow it."""


def _on_alarm(signum, frame):
    raise _SoftTimeout()


def _worker_main(conn, verify_fn: Callable, mode: str, soft_timeout_s: float) -> None:
    """Worker loop: receive (task_id, pred, gold), reply (task_id, status, score); None stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    signal.signal(signal.SIGALRM, _on_alarm)
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    try:
        math_verify_score("1", "1", mode)  # warm imports and sympy caches before "ready"
    except Exception:  # noqa: BLE001 - a broken verifier shows up per item instead
        pass
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg is None:
            return
        tid, pred, gold = msg
        result, done = (STATUS_ERROR, 0.0), False
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, soft_timeout_s)
                out = verify_fn(pred, gold, mode)
                result = out if isinstance(out, tuple) else (STATUS_OK, float(out))
                done = True
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:
            if not done:
                result = (STATUS_TIMEOUT, 0.0)
        except Exception:  # noqa: BLE001 - any verifier failure scores 0
            result = (STATUS_ERROR, 0.0)
        try:
            conn.send((tid, int(result[0]), float(result[1])))
        except (OSError, ValueError):
            return


# --------------------------------------------------------------------------------------------
# The parent side.


class _Worker:
    __slots__ = ("proc", "conn", "ready", "task", "started")

    def __init__(self, proc, conn):
        self.proc = proc
        self.conn = conn
        self.ready = False
        self.task: Optional[int] = None  # unique-item index in flight
        self.started = 0.0  # monotonic time the task was sent


def _kill(w: _Worker) -> None:
    try:
        w.proc.kill()
    except Exception:  # noqa: BLE001 - already gone
        pass
    try:
        w.conn.close()
    except Exception:  # noqa: BLE001
        pass
    try:
        w.proc.join(timeout=1.0)
    except Exception:  # noqa: BLE001
        pass


def _shutdown(workers: list) -> None:
    """Stops workers politely (None), then kills what did not exit. Used by close() and GC."""
    for w in workers:
        try:
            w.conn.send(None)
        except Exception:  # noqa: BLE001
            pass
    deadline = time.monotonic() + 0.5
    for w in workers:
        try:
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001
            pass
        if w.proc.is_alive():
            _kill(w)
        else:
            try:
                w.conn.close()
            except Exception:  # noqa: BLE001
                pass
    workers.clear()


_PRELOAD_SET = False


def _main_module_guard_problem() -> Optional[str]:
    """Why worker processes would fail to start, or None.

    With the ``forkserver`` / ``spawn`` start methods every worker re-imports the main script
    (as ``__mp_main__``); a script without an ``if __name__ == "__main__":`` guard then re-runs
    its top level in each worker, which starts a pool of its own and dies ("bootstrapping
    phase"). Without this check every reward scores 0 after the start retries (18-36 s each).
    Two cases are caught: we ARE such a re-run (a worker bootstrapping), or the main script has
    no ``__name__`` test at its top level (checked with ``ast``; interactive sessions, ``-c``
    and ``-m package`` entry points are not re-imported and pass)."""
    import ast
    import sys

    if getattr(mp.process.current_process(), "_inheriting", False):
        return ("a MathVerifier was started while this process was being bootstrapped as a "
                "worker: the main script runs it at import time")
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None:
        if name == "__main__" or name.endswith(".__main__"):
            return None  # multiprocessing does not re-import such a main module
        path = getattr(spec, "origin", None)
    else:
        path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py") or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.If) and any(isinstance(n, ast.Name) and n.id == "__name__"
                                            for n in ast.walk(node.test)):
            return None
    return (f"the main script {path} has no `if __name__ == \"__main__\":` guard, so each "
            "math-verify worker process re-runs it on start-up (multiprocessing start method "
            "forkserver/spawn) and fails")


def check_main_guard() -> None:
    """Raises RuntimeError naming the cause when worker processes could not start because the
    main script lacks an ``if __name__ == "__main__":`` guard (see above)."""
    why = _main_module_guard_problem()
    if why is not None:
        raise RuntimeError(f"math-verify pool cannot start: {why}; put the script's top-level "
                           "code under `if __name__ == \"__main__\":`")


class MathVerifier:
    """Batched math-verify equivalence in a persistent pool of worker processes.

    Args:
      num_workers: worker processes (each verifies one item at a time).
      item_timeout_s: soft per-item deadline, measured in the worker; the parent kills a worker
        that overruns it by ``kill_grace_s``.
      batch_timeout_s: deadline of one :meth:`verify_batch` call; unfinished items score 0.
      mode: ``"answer"`` (extract the answer here, then verify it) or ``"open_r1"`` (math-verify
        extracts from the full completion with Open-R1's configuration). See the module doc.
      sources: answer-extraction precedence for ``"answer"`` mode (see ``extract_answer``).
      start_method: ``"forkserver"`` (default; workers fork from a server that pre-imported
        math-verify) or ``"spawn"``. ``"fork"`` is refused: the parent runs JAX threads.
      kill_grace_s: extra time after the soft deadline before the hard kill.
      verify_fn: a module-level function ``(pred, gold, mode) -> (status, score) | float`` to run
        instead of :func:`math_verify_score` (for custom checkers and fault-injection tests).
      dedupe: verify identical (pred, gold) pairs once per batch.
      fast_path: in ``"answer"`` mode, decide identical strings and integer-vs-integer pairs in
        the parent without a worker round trip (``n_fast`` counts them); off with ``verify_fn``.

    ``verify_batch`` returns float32 scores ``[N]`` (1.0 equivalent, else 0.0) and a stats dict:
    ``n``, ``n_unique`` (items sent to workers), ``n_ok``, ``n_timeouts``, ``n_errors``,
    ``n_gold_unparsed``, ``n_no_answer``, ``n_fast`` (decided by the fast path), ``n_restarts``
    (workers replaced), ``seconds``, and
    ``status`` (int8 ``[N]``, codes in :data:`STATUS_NAMES`). ``self.totals`` accumulates the
    counters over the verifier's life.
    """

    def __init__(
        self,
        num_workers: int = 2,
        item_timeout_s: float = 5.0,
        batch_timeout_s: float = 60.0,
        mode: str = "answer",
        sources: Sequence[str] = SOURCES,
        start_method: str = "forkserver",
        kill_grace_s: float = 1.0,
        verify_fn: Optional[Callable] = None,
        dedupe: bool = True,
        fast_path: bool = True,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not item_timeout_s > 0 or not batch_timeout_s > 0 or kill_grace_s < 0:
            raise ValueError(
                f"timeouts must be positive: item_timeout_s={item_timeout_s}, "
                f"batch_timeout_s={batch_timeout_s}, kill_grace_s={kill_grace_s}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r}")
        extract_answer("", sources)  # validates the source names now
        self.num_workers = int(num_workers)
        self.item_timeout_s = float(item_timeout_s)
        self.batch_timeout_s = float(batch_timeout_s)
        self.kill_grace_s = float(kill_grace_s)
        self.mode = mode
        self.sources = tuple(sources)
        self.start_method = start_method
        self.verify_fn = verify_fn if verify_fn is not None else math_verify_score
        self.dedupe = dedupe
        self.fast_path = fast_path and verify_fn is None
        self._ctx = None
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()  # one batch at a time per verifier
        self._closed = False
        self._tid = 0
        self.totals = {k: 0 for k in ("n", "n_unique", "n_ok", "n_timeouts", "n_errors",
                                      "n_gold_unparsed", "n_no_answer", "n_fast",
                                      "n_restarts")}
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    # -- lifecycle ------------------------------------------------------------------------------

    def _context(self):
        global _PRELOAD_SET
        if self._ctx is None:
            self._ctx = mp.get_context(self.start_method)
            if self.start_method == "forkserver" and not _PRELOAD_SET:
                # Takes effect when the (process-wide) forkserver first starts.
                self._ctx.set_forkserver_preload(["math_verify", __name__])
                _PRELOAD_SET = True
        return self._ctx

    def _spawn(self) -> _Worker:
        ctx = self._context()
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=_worker_main,
            args=(child, self.verify_fn, self.mode, self.item_timeout_s),
            daemon=True,
            name="jaxgrpo-math-verify",
        )
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def start(self) -> "MathVerifier":
        """Starts the workers now (otherwise the first :meth:`verify_batch` does)."""
        if self._closed:
            raise RuntimeError("MathVerifier is closed")
        if not self._workers:
            check_main_guard()
        while len(self._workers) < self.num_workers:
            self._workers.append(self._spawn())
        return self

    def close(self) -> None:
        """Stops the workers. Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    # -- the batch --------------------------------------------------------------------------------

    def verify_batch(self, completions: Sequence[str], golds: Sequence[str], *,
                     pre_extracted: bool = False) -> tuple[np.ndarray, dict]:
        """Scores completions against golds; see the class doc for the returned stats.

        Args:
          completions: N completion texts (``"answer"`` mode extracts their final answers).
          golds: N gold answers (plain or LaTeX).
          pre_extracted: ``completions`` are already answers (``"answer"`` mode only): skip
            extraction; None or blank counts as no answer.

        Returns:
          (scores float32 [N] in {0, 1}, stats dict).
        """
        if self._closed:
            raise RuntimeError("MathVerifier is closed")
        if pre_extracted and self.mode != "answer":
            raise ValueError("pre_extracted=True needs mode='answer'")
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        with self._lock:
            return self._verify_batch(list(completions), list(golds), pre_extracted)

    def _verify_batch(self, completions: list, golds: list, pre_extracted: bool = False):
        t0 = time.monotonic()
        n = len(completions)
        scores = np.zeros(n, np.float32)
        status = np.full(n, STATUS_OK, np.int8)
        # Build unique work items.
        items: list[tuple[str, str]] = []
        members: list[list[int]] = []
        index: dict[tuple[str, str], int] = {}
        n_fast = 0
        for i, (c, g) in enumerate(zip(completions, golds)):
            g = "" if g is None else str(g)
            if self.mode == "answer":
                if pre_extracted:
                    c = None if c is None or not str(c).strip() else str(c).strip()
                else:
                    c = extract_answer(c, self.sources)
                if c is None:
                    status[i] = STATUS_NO_ANSWER
                    continue
            c = "" if c is None else str(c)
            if self.fast_path and self.mode == "answer":
                fast = _fast_compare(c, g)
                if fast is not None:
                    scores[i] = fast
                    n_fast += 1
                    continue
            key = (c, g)
            j = index.get(key) if self.dedupe else None
            if j is None:
                j = len(items)
                items.append(key)
                members.append([])
                if self.dedupe:
                    index[key] = j
            members[j].append(i)
        u_status = np.full(len(items), -1, np.int16)
        u_score = np.zeros(len(items), np.float32)
        n_restarts = 0
        if items:
            n_restarts = self._run(items, u_status, u_score, t0 + self.batch_timeout_s)
        for j, idx in enumerate(members):
            status[idx] = u_status[j]
            scores[idx] = u_score[j]
        stats = {
            "n": n,
            "n_unique": len(items),
            "n_ok": int((status == STATUS_OK).sum()),
            "n_timeouts": int((status == STATUS_TIMEOUT).sum()),
            "n_errors": int((status == STATUS_ERROR).sum()),
            "n_gold_unparsed": int((status == STATUS_GOLD_UNPARSED).sum()),
            "n_no_answer": int((status == STATUS_NO_ANSWER).sum()),
            "n_fast": n_fast,
            "n_restarts": n_restarts,
        }
        for k, v in stats.items():
            self.totals[k] += v
        stats["seconds"] = time.monotonic() - t0
        stats["status"] = status
        if stats["n_timeouts"] or stats["n_errors"]:
            logger.warning("math-verify batch: %d timeouts, %d errors of %d items",
                           stats["n_timeouts"], stats["n_errors"], n)
        return scores, stats

    def _run(self, items, u_status, u_score, deadline: float) -> int:
        """Dispatch loop. Fills u_status / u_score; returns the number of workers replaced."""
        self.start()
        pending = list(range(len(items) - 1, -1, -1))  # a stack: pop() yields 0, 1, 2, ...
        tid_to_item: dict[int, int] = {}
        restarts = 0
        start_failures = 0
        hard = self.item_timeout_s + self.kill_grace_s

        def replace(k: int) -> None:
            nonlocal restarts
            _kill(self._workers[k])
            restarts += 1
            self._workers[k] = self._spawn()

        def finish(item: Optional[int], st: int, sc: float) -> None:
            # item is None for a task left over from an interrupted earlier call.
            if item is not None and u_status[item] < 0:
                u_status[item] = st
                u_score[item] = sc

        while True:
            now = time.monotonic()
            # Hand work to idle, ready workers.
            for w in self._workers:
                if pending and w.ready and w.task is None:
                    item = pending.pop()
                    self._tid += 1
                    try:
                        w.conn.send((self._tid, items[item][0], items[item][1]))
                    except (OSError, ValueError):
                        pending.append(item)  # the worker is dead: the wait below notices
                        w.ready = False
                        continue
                    tid_to_item[self._tid] = item
                    w.task, w.started = self._tid, now
            busy = [w for w in self._workers if w.task is not None]
            if not pending and not any(w.task in tid_to_item for w in busy):
                return restarts  # (a busy worker may still run a task of an interrupted call)
            if now >= deadline or start_failures > 3 * self.num_workers:
                why = STATUS_TIMEOUT if now >= deadline else STATUS_ERROR
                for item in pending:
                    finish(item, why, 0.0)
                for k, w in enumerate(self._workers):
                    if w.task is not None:
                        finish(tid_to_item.pop(w.task, None), why, 0.0)
                        replace(k)
                if why == STATUS_ERROR:
                    check_main_guard()  # the usual cause, named
                    raise RuntimeError(
                        f"math-verify workers keep exiting before they are ready ({start_failures}"
                        f" failed starts, start method {self.start_method!r}); see their stderr "
                        "above. Rewards cannot be computed.")
                return restarts
            next_event = min([deadline] + [w.started + hard for w in busy])
            waitables = []
            for w in self._workers:
                waitables.append(w.conn)
                waitables.append(w.proc.sentinel)
            _mp_wait(waitables, timeout=max(0.0, next_event - now))
            now = time.monotonic()
            for k, w in enumerate(list(self._workers)):
                dead = False
                try:
                    while w.conn.poll():
                        msg = w.conn.recv()
                        if msg[0] == "ready":
                            w.ready = True
                            start_failures = 0
                        else:
                            tid, st, sc = msg
                            item = tid_to_item.pop(tid, None)
                            if item is not None:
                                finish(item, st, sc)
                            if w.task == tid:
                                w.task = None
                except (EOFError, OSError):
                    dead = True
                if not dead and not w.proc.is_alive():
                    dead = True
                if dead:
                    if w.task is not None:
                        finish(tid_to_item.pop(w.task, None), STATUS_ERROR, 0.0)
                        w.task = None
                    elif not w.ready:
                        start_failures += 1
                    replace(k)
                elif w.task is not None and now - w.started >= hard:
                    finish(tid_to_item.pop(w.task, None), STATUS_TIMEOUT, 0.0)
                    replace(k)


# --------------------------------------------------------------------------------------------

_DEFAULT: Optional[MathVerifier] = None
_DEFAULT_LOCK = threading.Lock()


def math_equal(pred: str, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether answer ``pred`` is equivalent to ``gold`` (math-verify, ``"answer"`` mode).

    ``pred`` is an answer, not a completion: it is used as is, never extracted. Runs in a shared
    one-worker :class:`MathVerifier` created on first use (reused, closed at exit); a timeout or
    crash gives False.
    """
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT._closed or _DEFAULT.item_timeout_s != timeout_s:
            if _DEFAULT is not None:
                _DEFAULT.close()
            _DEFAULT = MathVerifier(num_workers=1, item_timeout_s=timeout_s,
                                    batch_timeout_s=timeout_s + 30.0)
        v = _DEFAULT
    scores, _ = v.verify_batch([pred], [gold], pre_extracted=True)
    return bool(scores[0] > 0.5)
