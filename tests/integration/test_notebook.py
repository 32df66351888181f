"""notebooks/quickstart.ipynb runs top to bottom, offline, in a kernel on this interpreter.

The kernel is a kernelspec written into a temporary directory whose argv is ``sys.executable``,
so the notebook sees exactly the environment the tests run in (not whatever ``python3`` kernel
a Jupyter data dir happens to hold). The committed notebook has no outputs; it is regenerated
from notebooks/make_quickstart.py, which this test also checks.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
KERNEL = "jaxgrpo-test"

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def _load_generator():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "make_quickstart", os.path.join(ROOT, "notebooks", "make_quickstart.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _kernel_manager(tmp_path):
    """A KernelManager whose only kernelspec runs ipykernel on sys.executable."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kdir = tmp_path / "kernels" / KERNEL
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxgrpo test", "language": "python"}))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    assert ksm.find_kernel_specs()[KERNEL] == str(kdir)
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm)


def _text(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            parts.append(o.get("text", ""))
        elif o.get("output_type") in ("execute_result", "display_data"):
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_notebook_matches_generator():
    """The committed .ipynb is what make_quickstart.py writes (and carries no outputs)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    gen = _load_generator().build()
    assert [c.source for c in nb.cells] == [c.source for c in gen.cells], (
        "notebooks/quickstart.ipynb is stale: run `python notebooks/make_quickstart.py`")
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    # A last cell (test only) confirms which interpreter the kernel runs.
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL_PYTHON=' + sys.executable)"))
    client = nbclient.NotebookClient(
        nb, km=_kernel_manager(tmp_path), kernel_name=KERNEL, timeout=600,
        allow_errors=False, resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
    client.execute()  # raises CellExecutionError, with the traceback, if any cell fails

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) == n_code + 1
    for c in code:
        assert c.execution_count is not None, c.source[:80]
        assert not [o for o in c.outputs if o.output_type == "error"], c.source[:80]
    out = "\n".join(_text(c) for c in code)

    assert f"KERNEL_PYTHON={sys.executable}" in out
    # 1. the packaged model
    assert "SmolLM2-135M-Instruct" in out and "30 layers" in out
    # 2. 2 prompts x G=4 decoded completions
    assert len(re.findall(r"^\[p[01] g[0-3]\] ", out, flags=re.M)) == 8
    # 3. rewards [P, G]
    assert "rewards [P, G]" in out and "pass@1" in out
    # 4. the advantages table: header plus P*G rows of 7 finite numbers
    header = next(line for line in out.splitlines() if line.startswith("advantages"))
    for name in ("reward", "grpo", "dr_grpo", "dra+grpo", "dagrpo", "progrpo", "c(o|q)"):
        assert name in header.split()
    rows = re.findall(r"^p(\d) g(\d)\s+((?:\s*-?\d+\.\d+){7})\s*$", out, flags=re.M)
    assert len(rows) == 8, out
    assert all(math.isfinite(float(x)) for *_, nums in rows for x in nums.split())
    # 5. one update step: finite loss and grad norm, on-policy ratios ~ 1
    metric = {k: float(v) for k, v in re.findall(r"^\s*([\w/]+): (\S+)$", out, flags=re.M)}
    for k in ("loss", "grad_norm", "ratio_min", "ratio_mean", "ratio_max", "clip_frac"):
        assert k in metric and math.isfinite(metric[k]), (k, metric)
    assert metric["grad_norm"] > 0
    assert abs(metric["ratio_min"] - 1) < 1e-3 and abs(metric["ratio_max"] - 1) < 1e-3
    assert metric["clip_frac"] == 0.0
