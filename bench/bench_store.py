"""Figure 8: videos kept in an S3-compatible store beside videos kept in a folder.

The same batch, run twice against one simulator in its own process: once into
a local folder, once into ``s3://`` on moto's S3 server (127.0.0.1, in this
process, so its CPU is not counted as batchvid's).  Each run: wall time per
video, CPU per video, and the most the spool held at once (sampled every
10 ms: video files and bytes), against the downloads allowed in flight.

    python bench/bench_store.py [--jobs 300]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import (
    SOURCE,
    Simulator,
    batchvid_env,
    batchvid_run_args,
    cpu_of_children,
    write_manifest,
)

#: CPU-bound: renders of a few tenths of a second, so the keeping of videos shows.
SCALE = 0.002
#: Downloads in flight (the run's --concurrency gives downloads as many slots).
CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class Kept:
    """One run: its wall and CPU seconds, and the most the spool held at once (videos,
    a ``.part`` and its video counted once; bytes of every file of a video)."""

    wall: float
    cpu: float
    spool_files: int
    spool_bytes: int


@dataclass(frozen=True, slots=True)
class StoreFigure:
    jobs: int
    folder: Kept
    store: Kept
    concurrency: int


def run_into(manifest: Path, sim: Simulator, ledger: Path, output: str, spool: Path) -> Kept:
    """``batchvid run`` into ``output``, sampling ``spool`` while it runs."""
    args = [
        *batchvid_run_args(manifest, time_scale=SCALE, concurrency=CONCURRENCY),
        "--output-dir",
        output,
    ]
    env = {**batchvid_env(sim, ledger), "BATCHVID_SPOOL": str(spool)}
    cpu, start = cpu_of_children(), time.perf_counter()
    process = subprocess.Popen(
        args, env=env, cwd=SOURCE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    files = size = 0
    while process.poll() is None:
        sizes = {}
        for path in spool.rglob("*.mp4*"):
            with contextlib.suppress(OSError):  # gone meanwhile: kept, or renamed
                sizes[path] = path.stat().st_size
        files = max(files, len({p.name.split(".mp4")[0] for p in sizes}))  # videos, not parts
        size = max(size, sum(sizes.values()))
        time.sleep(0.01)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"batchvid run into {output} exited {process.returncode}")
    return Kept(wall, cpu_of_children() - cpu, files, size)


def store_figure(tmp: Path, *, jobs: int, progress: Callable[[str], None] = print) -> StoreFigure:
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        aws = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }
        os.environ.update(aws)  # the child processes inherit it
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=bucket
        )
        found = []
        with Simulator(time_scale=SCALE, seed=8) as sim:
            for name, output in (("folder", str(tmp / "videos")), ("store", f"s3://{bucket}/b")):
                sim.reset()
                manifest = write_manifest(tmp / f"{name}.yaml", f"keep-{name}", jobs)
                kept = run_into(manifest, sim, tmp / f"{name}.db", output, tmp / f"spool-{name}")
                found.append(kept)
                per, cpu = 1000 * kept.wall / jobs, 1000 * kept.cpu / jobs
                progress(
                    f"  {name}: {jobs} videos in {kept.wall:.1f} s ({per:.1f} ms a video, "
                    f"CPU {cpu:.1f} ms); spool at most {kept.spool_files} files, "
                    f"{kept.spool_bytes / 1024:.0f} KB"
                )
    finally:
        server.stop()
    return StoreFigure(jobs, found[0], found[1], CONCURRENCY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchvid-bench-") as tmp:
        print(store_figure(Path(tmp), jobs=args.jobs))


if __name__ == "__main__":
    main()
