"""Every benchmark figure of batchvid, each beside its contrast, in one command.

    .venv/bin/python bench/run.py            # the full set (under 10 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # the same figures at small sizes (~2 minutes)
    .venv/bin/python bench/run.py --runs 5 --figures 1 3

1. overhead: ``batchvid run`` vs a bare httpx loop, 2,000 jobs, no rate limit,
   simulator time scale 0.002 (``--context`` adds a run at 0.01): wall and CPU ratios;
2. rate fidelity: R = 600/min time-scaled to a 6 s window: most requests in any
   window / R, 429s against a simulator enforcing R, utilisation; vs a naive
   fixed-interval client;
3. turnaround: efficiency (Σ render / Σ seen-done - created, overall and last
   fifth), polls per job and wall time / ideal at 16 rendering, beside the docs'
   fixed 10 s loop; rate use with renders shorter than the docs' guess; CPU per
   job and seen-after of a 1,000- vs a 10,000-job batch;
4. scale: 100,000-job plan (time, peak RSS), the same from a 100,000-row CSV of
   prompts, resume decision on a 100,000-job ledger, ``status`` and ``report
   --format csv`` on it;
5. recovery: restart to first request after ``kill -9`` with 10,000 tasks in flight;
6. media: CPU per 720p 5 s video for probe + poster (a still clip and one with
   motion, beside decoding every frame of the first second), a 1,000-job run with
   probing vs ``--no-probe``, and a 500-video gallery in headless Chromium: time
   until every cell shows a picture, posters vs ``preload="metadata"``;
7. beyond one machine (a PostgreSQL ledger, needs Debian's ``postgresql``): one
   worker on SQLite vs PostgreSQL, CPU per job and wall; 1 vs 3 workers at one
   shared rate limit, requests used / allowed; a worker killed mid-batch, the
   time until its tasks are polled again, against its lease;
8. videos in an S3-compatible store (moto's server on 127.0.0.1) vs a folder:
   time and CPU per video, and the most videos the spool held at once against
   the downloads allowed in flight.

Each contender is a child process (its CPU time is its own) and the simulator
another; every comparison is a ratio within one run, summarised as the median
over runs (min-max in brackets).  Progress goes to stderr, the table to stdout
(Markdown, ready for the README).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bench_media
import bench_rate
import bench_recovery
import bench_run
import bench_scale
import bench_shared
import bench_store
import bench_turnaround
from harness import median, spread


@dataclass(frozen=True, slots=True)
class Sizes:
    overhead_jobs: int
    rate_windows: int
    turnaround_jobs: int
    long_jobs: tuple[int, int]
    scale_jobs: int
    recovery_jobs: int
    media_jobs: int
    gallery_videos: int
    shared_jobs: int
    store_jobs: int


FULL = Sizes(
    overhead_jobs=2000,
    rate_windows=2,
    turnaround_jobs=600,
    long_jobs=(1000, 10_000),
    scale_jobs=100_000,
    recovery_jobs=10_000,
    media_jobs=1000,
    gallery_videos=500,
    shared_jobs=2000,
    store_jobs=600,
)
QUICK = Sizes(
    overhead_jobs=300,
    rate_windows=2,
    turnaround_jobs=160,
    long_jobs=(300, 3000),
    scale_jobs=10_000,
    recovery_jobs=1_000,
    media_jobs=300,
    gallery_videos=500,
    shared_jobs=400,
    store_jobs=150,
)
CONTEXT_SCALE = 0.01
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    batchvid: str
    contrast: str
    goal: str
    met: bool | None  # None: no goal, context only


def met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**NO**")


def overhead_rows(label: str, fig: bench_run.Pairs, *, goal: bool) -> list[Row]:
    rows = []
    for name, key in (("wall", "wall"), ("CPU", "cpu")):
        ours = [getattr(t, key) for t in fig.ours]
        theirs = [getattr(t, key) for t in fig.theirs]
        per_run = [o / t for o, t in zip(ours, theirs, strict=True)]
        value = median(per_run)
        rows.append(
            Row(
                f"{label}: {name} time, batchvid / bare",
                f"{spread(per_run)}× ({median(ours):.2f} s)",
                f"bare httpx loop {median(theirs):.2f} s",
                "≤ 1.25×" if goal else "context",
                value <= 1.25 if goal else None,
            )
        )
    return rows


def turnaround_rows(tmp: Path, sizes: Sizes, progress: Progress) -> list[Row]:
    """Figure 3, once (each part measures hundreds to thousands of jobs)."""
    n = sizes.turnaround_jobs
    progress(f"figure 3: turnaround, {n} jobs at 16 rendering beside the docs' 10 s loop")
    ours, docs = bench_turnaround.turnaround(tmp, jobs=n, progress=progress)
    rate = bench_turnaround.rate_use(tmp, progress=progress)
    small, large = (
        bench_turnaround.long_run(tmp, jobs=j, progress=progress) for j in sizes.long_jobs
    )
    flat = large.cpu_per_job_ms / small.cpu_per_job_ms
    where = f"{ours.jobs} jobs, 16 rendering"
    return [
        Row(
            f"3 efficiency Σ render / Σ (seen − created), {where}",
            f"{ours.efficiency:.3f}, last fifth {ours.efficiency_last_fifth:.3f}",
            f"docs' 10 s loop {docs.efficiency:.3f}, last fifth {docs.efficiency_last_fifth:.3f}",
            "≥ 0.90, overall and last fifth",
            min(ours.efficiency, ours.efficiency_last_fifth) >= 0.90,
        ),
        Row(
            "3 polls per job, same run",
            f"{ours.polls_per_job:.2f}",
            f"docs' 10 s loop {docs.polls_per_job:.2f}",
            "≤ 1.5",
            ours.polls_per_job <= 1.5,
        ),
        Row(
            "3 wall time / ideal (⌈N/16⌉ × mean render), same run",
            f"{ours.wall_over_ideal:.2f} ({ours.wall_s:.0f} s)",
            f"docs' 10 s loop {docs.wall_over_ideal:.2f} ({docs.wall_s:.0f} s)",
            "≤ 1.1",
            ours.wall_over_ideal <= 1.1,
        ),
        Row(
            "3 rate use: 100 jobs at 300/min, renders 7-14 s (docs: 1-3 min): used / allowed",
            f"{rate.used_over_allowed:.2f}, {rate.rejected_429} × 429",
            f"{rate.requests} requests in {rate.span_s:.0f} s",
            "≥ 0.9, no 429",
            rate.used_over_allowed >= 0.9 and rate.rejected_429 == 0,
        ),
        Row(
            f"3 CPU per job, {large.jobs:,} vs {small.jobs:,} jobs (256 rendering)",
            f"{large.cpu_per_job_ms:.1f} ms vs {small.cpu_per_job_ms:.1f} ms ({flat:.2f}×)",
            f"seen after: first fifth {large.seen_after_first_s:.2f} s, last "
            f"{large.seen_after_last_s:.2f} s; {large.throughput_first:.0f} vs "
            f"{large.throughput_last:.0f} jobs/min",
            "within 10 %",
            abs(flat - 1) <= 0.10,
        ),
    ]


def media_rows(tmp: Path, sizes: Sizes, runs: int, progress: Progress) -> list[Row]:
    """Figure 6: probing's cost per video and per run; what posters buy the gallery."""
    progress(f"figure 6: media, {sizes.media_jobs} jobs, {runs} run(s)")
    fig = bench_media.media(
        tmp, jobs=sizes.media_jobs, gallery_videos=sizes.gallery_videos, runs=runs,
        progress=progress,
    )  # fmt: skip
    ms = fig.cpu_ms
    on = [w for w, _ in fig.probed]
    off = [w for w, _ in fig.unprobed]
    cpu_on, cpu_off = median([c for _, c in fig.probed]), median([c for _, c in fig.unprobed])
    rows = [
        Row(
            "6 probe + poster, CPU per 720p 5 s video (simulator's still clip / with motion)",
            f"{ms['still']:.1f} / {ms['motion']:.1f} ms",
            f"every frame of the first second: {ms['still, every frame to 1 s']:.1f} / "
            f"{ms['motion, every frame to 1 s']:.1f} ms",
            "— (report)",
            None,
        ),
        Row(
            f"6 run of {fig.jobs} jobs (720p, scale {bench_media.SCALE}): wall, probed",
            f"{spread(on)} s (CPU {cpu_on:.2f} s)",
            f"--no-probe {spread(off)} s (CPU {cpu_off:.2f} s): {median(on) / median(off):.2f}×",
            "— (report)",
            None,
        ),
    ]
    if fig.posters_shown or fig.metadata_shown:

        def shown(seconds: float | None, n: int) -> str:
            return (
                f"{seconds:.2f} s"
                if seconds is not None
                else f"{n} of {fig.gallery_videos} in 60 s"
            )

        rows.append(
            Row(
                f"6 gallery of {fig.gallery_videos} videos in Chromium: every cell shows a picture",
                f"posters {shown(fig.posters_s, fig.posters_shown)}",
                f'preload="metadata" {shown(fig.metadata_s, fig.metadata_shown)}',
                "posters faster",
                fig.posters_s is not None
                and (fig.metadata_s is None or fig.posters_s < fig.metadata_s),
            )
        )
    return rows


def shared_rows(tmp: Path, sizes: Sizes, progress: Progress) -> list[Row]:
    """Figure 7: a PostgreSQL ledger, by one worker and by several."""
    fig = bench_shared.shared(tmp, jobs=sizes.shared_jobs, progress=progress)
    sq, pg = fig.sqlite, fig.postgres
    per_job = [1000 * t.cpu / fig.jobs for t in (sq, pg)]
    used = {n: fig.rate[n] for n in (1, 3)}
    leases = fig.takeover_s / fig.lease_s
    return [
        Row(
            f"7a one worker, {fig.jobs:,} jobs: CPU per job, PostgreSQL vs SQLite",
            f"{per_job[1]:.2f} ms vs {per_job[0]:.2f} ms ({per_job[1] / per_job[0]:.2f}×)",
            f"wall {pg.wall:.1f} s vs {sq.wall:.1f} s ({pg.wall / sq.wall:.2f}×)",
            "— (report)",
            None,
        ),
        Row(
            f"7b requests used / allowed at a shared {bench_shared.RATE}/min, "
            f"{fig.rate_jobs} jobs, scale {bench_shared.RATE_SCALE}, 3 workers",
            f"{used[3][0]:.2f}, {used[3][1]} × 429",
            f"1 worker {used[1][0]:.2f}, {used[1][1]} × 429",
            "≥ 0.9, no 429",
            min(used[1][0], used[3][0]) >= 0.9 and used[1][1] + used[3][1] == 0,
        ),
        Row(
            "7c a worker killed: until every task it held is polled again",
            f"{fig.takeover_s:.2f} s ({leases:.2f} leases), {fig.takeover_held} tasks",
            f"lease {fig.lease_s:.2f} s (--lease 60 at scale {bench_shared.SCALE})",
            "about one lease (≤ 1.5)",
            leases <= 1.5,
        ),
    ]


def store_rows(tmp: Path, sizes: Sizes, progress: Progress) -> list[Row]:
    """Figure 8: videos kept in an S3-compatible store, beside a folder."""
    fig = bench_store.store_figure(tmp, jobs=sizes.store_jobs, progress=progress)
    folder, store = fig.folder, fig.store
    per = [1000 * k.wall / fig.jobs for k in (folder, store)]
    cpu = [1000 * k.cpu / fig.jobs for k in (folder, store)]
    return [
        Row(
            f"8 time per video, {fig.jobs:,} jobs, scale {bench_store.SCALE}: s3 store vs folder",
            f"{per[1]:.1f} ms vs {per[0]:.1f} ms ({per[1] / per[0]:.2f}×)",
            f"CPU {cpu[1]:.1f} ms vs {cpu[0]:.1f} ms a video",
            "— (report)",
            None,
        ),
        Row(
            "8 most videos in the spool at once (s3 store)",
            f"{store.spool_files} ({store.spool_bytes / 1024:.0f} KB)",
            f"downloads in flight allowed: {fig.concurrency}",
            f"≤ {fig.concurrency}",
            store.spool_files <= fig.concurrency,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; --quick: 1)")
    parser.add_argument(
        "--context", action="store_true", help="figure 1 once more at time scale 0.01 (+80 s)"
    )
    parser.add_argument(
        "--figures",
        type=int,
        nargs="+",
        default=[1, 2, 3, 4, 5, 6, 7, 8],
        choices=[1, 2, 3, 4, 5, 6, 7, 8],
        metavar="N",
        help="which figures (1-8)",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    runs = args.runs or (1 if args.quick else 3)
    # The longest figures run fewer times: their figures vary little between runs.
    long_runs = max(1, runs // 3)
    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - began:5.0f} s] {message}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="batchvid-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        if 1 in args.figures:
            progress(f"figure 1: overhead, {sizes.overhead_jobs} jobs, {runs} runs")
            fig1 = bench_run.overhead(tmp, jobs=sizes.overhead_jobs, runs=runs, progress=progress)
            rows += overhead_rows(
                f"1 overhead, {fig1.jobs} jobs, scale {bench_run.OVERHEAD_SCALE}", fig1, goal=True
            )
        if 1 in args.figures and args.context:
            progress(f"figure 1, context: time scale {CONTEXT_SCALE}, {long_runs} run(s)")
            ctx = bench_run.overhead(
                tmp,
                jobs=sizes.overhead_jobs,
                runs=long_runs,
                scale=CONTEXT_SCALE,
                progress=progress,
            )
            rows += overhead_rows(f"1 context, scale {CONTEXT_SCALE}", ctx, goal=False)
        if 2 in args.figures:
            progress(f"figure 2: rate fidelity, {sizes.rate_windows} windows, {long_runs} run(s)")
            fig2 = bench_rate.rate_fidelity(
                tmp, runs=long_runs, windows=sizes.rate_windows, progress=progress
            )
            where = f"R = {fig2.rate}/min in {fig2.window:g} s windows"
            free, enforcing = "free", "enforcing"
            max_ours = fig2.med(fig2.ours[free], "max_window_ratio")
            max_naive = fig2.med(fig2.naive[free], "max_window_ratio")
            r429_ours = fig2.med(fig2.ours[enforcing], "rejected_429")
            r429_naive = fig2.med(fig2.naive[enforcing], "rejected_429")
            util_ours = fig2.med(fig2.ours[free], "utilisation")
            util_naive = fig2.med(fig2.naive[free], "utilisation")
            rows += [
                Row(
                    f"2 rate: most requests in any window / R ({where})",
                    f"{max_ours:.3f}",
                    f"naive fixed-interval {max_naive:.3f}",
                    "≤ 1.00",
                    max_ours <= 1.0,
                ),
                Row(
                    "2 rate: 429s, simulator enforcing R",
                    f"{r429_ours:.0f}",
                    f"naive fixed-interval {r429_naive:.0f}",
                    "0",
                    r429_ours == 0,
                ),
                Row(
                    "2 rate: utilisation while work remained",
                    f"{util_ours:.3f}",
                    f"naive fixed-interval {util_naive:.3f}",
                    "≥ 0.95",
                    util_ours >= 0.95,
                ),
            ]
        if 3 in args.figures:
            rows += turnaround_rows(tmp, sizes, progress)
        if 4 in args.figures:
            progress(f"figure 4: scale, {sizes.scale_jobs:,} jobs, {runs} runs")
            fig4 = bench_scale.scale(tmp, jobs=sizes.scale_jobs, runs=runs, progress=progress)
            n = f"{fig4.jobs:,}"
            floor = f"CLI start-up alone {median(fig4.cli_floor_s):.2f} s"
            rows += [
                Row(
                    f"4 plan, {n} jobs (fresh process)",
                    f"{spread(fig4.plan_s)} s",
                    "—",
                    "< 2 s",
                    median(fig4.plan_s) < 2,
                ),
                Row(
                    "4 plan: peak RSS of that process",
                    f"{fig4.plan_rss_mb:.0f} MB",
                    "—",
                    "< 300 MB",
                    fig4.plan_rss_mb < 300,
                ),
                Row(
                    f"4 validate a {n}-row CSV of prompts (id, model, seconds, size, a "
                    "template column each; fresh process)",
                    f"{spread(fig4.csv_plan_s)} s, peak RSS {fig4.csv_plan_rss_mb:.0f} MB",
                    "—",
                    "< 2 s, < 300 MB",
                    median(fig4.csv_plan_s) < 2 and fig4.csv_plan_rss_mb < 300,
                ),
                Row(
                    f"4 ledger of {sizes.scale_jobs:,} jobs: open + decide what is due",
                    f"{spread(fig4.resume_s, '.3f')} s",
                    "—",
                    "< 0.5 s",
                    median(fig4.resume_s) < 0.5,
                ),
                Row(
                    "4 `batchvid status` on that ledger",
                    f"{spread(fig4.status_s)} s",
                    floor,
                    "< 0.5 s",
                    median(fig4.status_s) < 0.5,
                ),
                Row(
                    "4 `batchvid report --format csv` on it",
                    f"{spread(fig4.report_csv_s)} s",
                    floor,
                    "< 0.5 s",
                    median(fig4.report_csv_s) < 0.5,
                ),
            ]
        if 5 in args.figures:
            progress(f"figure 5: recovery, {sizes.recovery_jobs:,} jobs, {long_runs} run(s)")
            fig5 = bench_recovery.recovery(
                tmp, runs=long_runs, jobs=sizes.recovery_jobs, progress=progress
            )
            in_flight = f"{median(fig5.in_flight_at_kill):,.0f}"
            rows += [
                Row(
                    f"5 recovery: restart to first request, kill -9 with {in_flight} in flight",
                    f"{spread(fig5.to_first_request)} s",
                    f"bare loop {spread(fig5.bare_to_first_request)} s, re-creating every task",
                    "— (report)",
                    None,
                ),
                Row(
                    "5 recovery: in doubt after the kill / creates repeated",
                    f"{median(fig5.in_doubt):.0f} / {median(fig5.duplicate_creates):.0f}",
                    f"bare loop: {median(fig5.bare_repeated_creates):.0f} repeated before stopped",
                    "repeated: 0",
                    median(fig5.duplicate_creates) == 0,
                ),
            ]
        if 6 in args.figures:
            rows += media_rows(tmp, sizes, long_runs, progress)
        if 7 in args.figures:
            rows += shared_rows(tmp, sizes, progress)
        if 8 in args.figures:
            progress(f"figure 8: videos in a store vs a folder, {sizes.store_jobs} jobs")
            rows += store_rows(tmp, sizes, progress)
    elapsed = time.monotonic() - began
    progress(f"done in {elapsed:.0f} s")
    print(
        f"\nbatchvid benchmarks: {'quick' if args.quick else 'full'} set, median of runs "
        f"(min-max); {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}, {elapsed / 60:.1f} min\n"
    )
    print_table(rows)


def print_table(rows: list[Row]) -> None:
    header = ("figure", "batchvid", "contrast", "goal", "met?")
    cells = [header] + [(r.figure, r.batchvid, r.contrast, r.goal, met(r.met)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))


if __name__ == "__main__":
    main()
