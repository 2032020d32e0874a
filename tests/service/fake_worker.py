"""`python -m tests.service.fake_worker`: a Redis Streams worker process running FakeUpscaler.

Settings come from the environment (REDIS_URL, RSD_MODEL, RSD_LEASE_S, ...), like `rsd worker`.
`--policy fcfs` swaps the batching policy for the one fairness replaced (fakes.fcfs_next_batch).
"""

from __future__ import annotations

import argparse
import logging

from service import worker
from service.settings import ServiceSettings
from service.worker_process import run_worker
from tests.service.fakes import FakeUpscaler, fcfs_next_batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per tile")
    parser.add_argument("--log", default=None, help="append computed tile seeds here (one batch per line)")
    parser.add_argument("--crash-seed", type=int, default=None, help="os._exit on a tile with this seed")
    parser.add_argument("--policy", choices=("round-robin", "fcfs"), default="round-robin", help="batching policy")
    args = parser.parse_args()
    if args.policy == "fcfs":
        worker.next_batch = fcfs_next_batch
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    upscaler = FakeUpscaler(delay_s_per_tile=args.delay, log_path=args.log, crash_seed=args.crash_seed)
    run_worker(ServiceSettings(), upscaler=upscaler)


if __name__ == "__main__":
    main()
