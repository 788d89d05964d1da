"""Test-wide settings: 8 simulated CPU devices so sharding is exercised without accelerators, and LLVM's
optimisation level 0 for the XLA:CPU code of the tiny test models: the same HLO programs (XLA's own passes
unchanged), compiled in about half the CPU time, which is most of the suite's time. Tests that start
`python -m vlm_jax.train` for many steps set their own XLA_FLAGS and run optimised code."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
