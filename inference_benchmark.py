"""Standard inference benchmark: `python inference_benchmark.py` = `liteinfer bench`.

A plain entry point so the classic
    perf stat -e cycles,instructions,cache-misses python inference_benchmark.py
works (`liteinfer bench --perf` does the same, counting only the measured run).
"""

from liteinfer.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
