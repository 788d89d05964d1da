"""`python -m vlm_jax.generate`: the generation CLI (`vlm_jax.inference.cli`)."""
import sys

from vlm_jax.inference.cli import main

if __name__ == "__main__":
    sys.exit(main())
