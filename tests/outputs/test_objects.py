"""What an object of a video carries, and what it is called when its name is taken."""

from __future__ import annotations

from batchvid.outputs import object_name, output_target
from batchvid.outputs.objects import object_attributes, poster_name, stored_from
from batchvid.video import VideoFacts


def test_a_taken_name_gets_the_task_id_and_the_metadata_proves_whose_video_it_is() -> None:
    assert object_name("0001-a.mp4", "cgt-2026/x y", taken=False) == "0001-a.mp4"
    assert object_name("0001-a.mp4", "cgt-2026/x y", taken=True) == "0001-a.cgt-2026-x-y.mp4"
    facts = VideoFacts(864, 496, 5.0, 24.0, "h264", False)
    attributes = object_attributes("task-1", "ab" * 32, 123, facts, poster_name("0001-a.mp4"))
    target = output_target("s3://bv-out/night")
    meta = {"size": 123, "e_tag": '"e1"'}
    stored = stored_from(target, "0001-a.mp4", "task-1", attributes, meta)
    assert stored is not None
    assert (stored.uri, stored.size, stored.etag, stored.facts) == (
        "s3://bv-out/night/0001-a.mp4",
        123,
        '"e1"',
        facts,
    )
    assert stored.poster_uri == "s3://bv-out/night/posters/0001-a.jpg"
    assert stored_from(target, "0001-a.mp4", "task-2", attributes, meta) is None  # not its video
    assert stored_from(target, "0001-a.mp4", "task-1", {"Content-Type": "video/mp4"}, meta) is None
    cut_short = {"size": 100, "e_tag": '"e2"'}  # not as long as it says: not taken for it
    assert stored_from(target, "0001-a.mp4", "task-1", attributes, cut_short) is None
