"""Figure 6: what probing every download costs, and what posters buy the gallery.

1. **CPU per video**: :func:`batchvid.media.inspect` (open, read the facts, decode
   the first second's keyframes) plus the poster (a 320 px JPEG), on a 720p 5 s
   H.264 file: the simulator's (a still frame) and one with motion and x264's
   default settings, like a real render; beside decoding every frame of the first
   second, the obvious way.
2. **End to end**: ``batchvid run`` of N jobs (720p, 5 s) against the simulator,
   with probing (the default) and with ``--no-probe``: wall and CPU time.
3. **Gallery**: a report of 500 downloaded videos opened in headless Chromium: the
   time until every cell shows a picture, with posters (``preload="none"``) and the
   old way (no posters, ``preload="metadata"``: each video's first frame).

    python bench/bench_media.py [--jobs 1000] [--gallery 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
from harness import ROOT, SOURCE, Simulator, batchvid_run, median, spread, write_manifest
from PIL import Image, ImageDraw

from batchvid.ledger import Ledger
from batchvid.media import POSTER_WIDTH, inspect, poster_path, save_poster
from batchvid.media.synth import make_video
from batchvid.report import gallery, load_report

sys.path.insert(0, str(ROOT / "tests"))  # the DevTools client the browser test uses
from browser import Cdp

Progress = Callable[[str], None]
SCALE = 0.002  # figure 1's: the run is CPU-bound, so the probe's cost shows in full
WAIT_S = 60.0  # the gallery gets this long to show every picture


@dataclass(slots=True)
class Media:
    cpu_ms: dict[str, float] = field(default_factory=dict)
    jobs: int = 0
    probed: list[tuple[float, float]] = field(default_factory=list)  # (wall, cpu) per run
    unprobed: list[tuple[float, float]] = field(default_factory=list)
    gallery_videos: int = 0
    posters_s: float | None = None
    posters_shown: int = 0
    metadata_s: float | None = None
    metadata_shown: int = 0


def moving_video(width: int = 1280, height: int = 720, seconds: int = 5) -> bytes:
    """A 720p clip with motion everywhere, encoded with x264's defaults (GOP 250, B-frames)."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        base = Image.effect_mandelbrot((width, height), (-2.2, -1.2, 1.0, 1.2), 64).convert("RGB")
        for n in range(seconds * 24):
            frame = base.rotate(n * 1.5, resample=Image.Resampling.BILINEAR)
            ImageDraw.Draw(frame).ellipse((n * 9, 200, n * 9 + 160, 360), fill=(240, 140, 60))
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def every_frame_of_the_first_second(path: Path) -> None:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time >= 1.0:
                frame.to_image(width=POSTER_WIDTH, height=POSTER_WIDTH * 9 // 16)
                break


def cpu_ms(action: Callable[[], object], n: int) -> float:
    action()  # warm
    start = time.process_time()
    for _ in range(n):
        action()
    return (time.process_time() - start) / n * 1000


def probe_cost(tmp: Path, n: int = 100) -> dict[str, float]:
    """CPU ms per 720p 5 s video: probe + poster, for a still and a moving clip."""
    found = {}
    for name, data in (("still", make_video(1280, 720, 5)), ("motion", moving_video())):
        path = tmp / f"{name}.mp4"
        path.write_bytes(data)

        def probe_and_poster(path: Path = path) -> None:
            seen = inspect(path, poster_width=POSTER_WIDTH)
            assert seen.poster is not None
            save_poster(seen.poster, poster_path(path))

        found[name] = cpu_ms(probe_and_poster, n)
        found[f"{name}, every frame to 1 s"] = cpu_ms(
            lambda path=path: every_frame_of_the_first_second(path), n // 4
        )
        found[f"{name} size KB"] = len(data) / 1000
    return found


def end_to_end(tmp: Path, jobs: int, runs: int, progress: Progress) -> Media:
    result = Media(jobs=jobs)
    with Simulator(time_scale=SCALE) as sim:
        for run in range(runs):
            for probe in (True, False):
                sim.reset()
                ledger = tmp / f"media-{run}-{probe}.db"
                manifest = write_manifest(
                    tmp / f"media-{run}-{probe}.yaml", f"media{run}{int(probe)}", jobs,
                    resolution="720p",
                )  # fmt: skip
                took = batchvid_run(
                    sim, manifest, ledger, time_scale=SCALE, concurrency=16, probe=probe
                )
                (result.probed if probe else result.unprobed).append((took.wall, took.cpu))
                progress(
                    f"  run {run + 1}: {'probed' if probe else '--no-probe'} "
                    f"{took.wall:.2f} s wall, {took.cpu:.2f} s CPU"
                )
    return result


# -- the gallery in Chromium ------------------------------------------------------------

# Resolves when every <video> shows its first frame (readyState >= 2), or after WAIT_S:
# [seconds since navigation start, how many show one].
FIRST_FRAMES = """
new Promise((resolve) => {
  const videos = [...document.querySelectorAll("video")];
  const shown = () => videos.filter((v) => v.readyState >= 2).length;
  const tick = () => {
    const n = shown();
    if (n === videos.length || performance.now() > %d) resolve([performance.now() / 1000, n]);
    else setTimeout(tick, 10);
  };
  tick();
})
"""


def gallery_pages(tmp: Path, videos: int) -> tuple[Path, Path, int]:
    """A batch of ``videos`` downloaded (and probed) jobs, its gallery with posters, and
    the same gallery the old way (no posters, ``preload="metadata"``)."""
    with Simulator(time_scale=SCALE) as sim:
        ledger = tmp / "gallery.db"
        manifest = write_manifest(tmp / "gallery.yaml", "gallery", videos, resolution="720p")
        batchvid_run(sim, manifest, ledger, time_scale=SCALE, concurrency=16)
    with Ledger(ledger, read_only=True) as store:
        data = load_report(store, "gallery")
    assert data.jobs[0].poster_path
    out = Path(data.batch.output_dir)
    with_posters = out / "posters.html"
    with_posters.write_text(gallery.render_html(data, with_posters, base=SOURCE))
    plain = dataclasses.replace(data, jobs=tuple(j._replace(poster_path=None) for j in data.jobs))
    limit, gallery.PRELOAD_LIMIT = gallery.PRELOAD_LIMIT, 10**9  # the old page at any size
    try:
        old_way = out / "metadata.html"
        old_way.write_text(gallery.render_html(plain, old_way, base=SOURCE))
    finally:
        gallery.PRELOAD_LIMIT = limit
    return with_posters, old_way, len(data.jobs)


def time_to_pictures(tmp: Path, videos: int, progress: Progress) -> Media:
    from browser import chromium, headless_chromium, open_page

    result = Media(gallery_videos=videos)
    exe = chromium()
    if exe is None:
        progress("  no Chromium: the gallery figure is skipped (apt-get install chromium)")
        return result
    with_posters, old_way, result.gallery_videos = gallery_pages(tmp, videos)
    with headless_chromium(exe, tmp) as browser:
        ready = "Page.domContentEventFired"  # (videos loading metadata hold "load" back)
        with open_page(browser, with_posters.as_uri(), until=ready) as page:
            start = next(
                e["params"]["timestamp"] for e in page.events
                if e.get("method") == "Network.requestWillBeSent"
                and e["params"]["request"]["url"] == with_posters.as_uri()
            )  # fmt: skip
            posters = {v for v in page.evaluate(
                "[...document.querySelectorAll('video')].map((v) => v.poster)")}  # fmt: skip
            finished = _poster_loads(page, posters, start)
            result.posters_shown = len(finished)
            result.posters_s = max(finished.values()) if len(finished) == len(posters) else None
        with open_page(browser, old_way.as_uri(), until=ready) as page:
            seconds, shown = page.evaluate(FIRST_FRAMES % (WAIT_S * 1000))
            result.metadata_shown = shown
            result.metadata_s = seconds if shown == result.gallery_videos else None
    return result


def _poster_loads(page: Cdp, posters: set[str], start: float) -> dict[str, float]:
    """Seconds from the page's request to each poster's load, from the DevTools events."""
    deadline = time.monotonic() + WAIT_S
    urls: dict[str, str] = {}
    done: dict[str, float] = {}
    seen = 0
    while time.monotonic() < deadline:
        for event in page.events[seen:]:
            params = event.get("params", {})
            if event.get("method") == "Network.requestWillBeSent":
                if params["request"]["url"] in posters:
                    urls[params["requestId"]] = params["request"]["url"]
            elif event.get("method") == "Network.loadingFinished":
                url = urls.get(params["requestId"])
                if url is not None:
                    done[url] = params["timestamp"] - start
        seen = len(page.events)
        if len(done) == len(posters):
            break
        page.drain(0.2)
    return done


def media(
    tmp: Path, *, jobs: int, gallery_videos: int, runs: int, progress: Progress = print
) -> Media:
    progress("  CPU per video: probe + poster")
    costs = probe_cost(tmp)
    result = end_to_end(tmp, jobs, runs, progress)
    result.cpu_ms = costs
    if gallery_videos:
        progress(f"  gallery of {gallery_videos} videos in headless Chromium")
        shown = time_to_pictures(tmp, gallery_videos, progress)
        result.gallery_videos = shown.gallery_videos
        result.posters_s, result.posters_shown = shown.posters_s, shown.posters_shown
        result.metadata_s, result.metadata_shown = shown.metadata_s, shown.metadata_shown
    return result


def describe(fig: Media) -> list[str]:
    wall_on = median([w for w, _ in fig.probed])
    wall_off = median([w for w, _ in fig.unprobed])
    cpu_on = median([c for _, c in fig.probed])
    cpu_off = median([c for _, c in fig.unprobed])
    lines = [f"CPU per 720p 5 s video, probe + poster: {json.dumps(fig.cpu_ms)}"]
    lines.append(
        f"{fig.jobs} jobs end to end: wall {spread([w for w, _ in fig.probed])} s probed vs "
        f"{spread([w for w, _ in fig.unprobed])} s --no-probe ({wall_on / wall_off:.2f}x); "
        f"CPU {cpu_on:.2f} vs {cpu_off:.2f} s"
    )
    lines.append(
        f"gallery of {fig.gallery_videos}: posters {fig.posters_s} s ({fig.posters_shown} shown); "
        f"preload=metadata {fig.metadata_s} s ({fig.metadata_shown} shown within {WAIT_S:g} s)"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--gallery", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchvid-bench-media-") as tmp:
        fig = media(Path(tmp), jobs=args.jobs, gallery_videos=args.gallery, runs=args.runs)
    print("\n".join(describe(fig)))


if __name__ == "__main__":
    main()
