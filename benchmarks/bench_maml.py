"""MAML meta-iterations per second and peak memory: the same as `metagrad bench`, runnable from a
checkout without installing (``PYTHONPATH=src python benchmarks/bench_maml.py --list``).

    PYTHONPATH=src python benchmarks/bench_maml.py --threads 1 --only 5w1s-so-1step --only sine-so --iters 3

See docs/performance.md for the configurations, the columns and the measured tables.
"""

import argparse
import sys

from metagrad.bench import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench_maml.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
