"""Write a SAM checkpoint with seeded random weights, in the official layout.

    python benchmarks/random_checkpoint.py vit_b /tmp/samexport-bench/sam_vit_b_random.pth

No real checkpoint is downloaded for the published CPU benchmarks: latency does not depend on the
weights, and parity with random weights (perturbed so every parameter matters, as the test suite
does) exercises every layer. The weights are those of ``samexport.testing.random_state_dict`` with
the same seed, so the tests and the benchmarks see the same model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from samexport.testing import SEED, save_random_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="vit_b, vit_l, vit_h or tiny")
    parser.add_argument("output", type=Path, help="where to write the .pth file")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    save_random_checkpoint(args.variant, args.output, seed=args.seed)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
