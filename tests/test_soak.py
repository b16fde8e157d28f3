"""Soak: a minute of stream time through the full pipeline keeps RSS and threads flat."""
import subprocess
import threading

import pytest

from conftest import DEMO_VIDEO, rss_kb
from edge.stream import Stream

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minute_video(tmp_path_factory):
    """The demo clip eight times over (64 s), stream-copied by ffmpeg's concat demuxer."""
    folder = tmp_path_factory.mktemp("soak")
    (folder / "list.txt").write_text(f"file '{DEMO_VIDEO}'\n" * 8)
    out = folder / "minute.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(folder / "list.txt"),
                    "-c", "copy", str(out)], check=True)
    return out


def test_one_minute_of_accelerated_replay_is_flat(bundles, minute_video):
    threads = threading.active_count()
    samples = []
    with Stream(video=str(minute_video), backend="numpy", hop=0.25,
                audio_model=bundles["audio"], face_model=bundles["face"]) as stream:
        for result in stream:
            if result.t % 4.0 == 0:
                samples.append(rss_kb())
    assert result.t >= 60.0
    warm = samples[2:]  # after the first 8 s
    assert max(warm) - warm[0] <= 2048, f"RSS (kB) every 4 s of stream: {samples}"
    assert threading.active_count() == threads
