"""`--overlay`: redraw a replayed video with each hop's face box and labels.

In:  the input video and the stream's results (one per hop, increasing `t`).
Out: an mp4 (OpenCV's mp4v codec) with the same size, frame rate and frame count, where
     every frame shows the result of the latest hop at or before its time.
"""
from __future__ import annotations

from pathlib import Path

from edge.errors import MediaError
from edge.face import _cv2
from edge.pipeline import Result, top_label

GREEN, WHITE, BLACK = (60, 200, 60), (255, 255, 255), (0, 0, 0)


def _text(frame, text: str, y: int) -> None:
    cv2 = _cv2()
    cv2.putText(frame, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, BLACK, 3, cv2.LINE_AA)
    cv2.putText(frame, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, WHITE, 1, cv2.LINE_AA)


def draw(frame, result: Result | None) -> None:
    """Draw one result onto a BGR frame in place."""
    if result is None:
        return
    cv2 = _cv2()
    if result.face:
        x, y, w, h = result.face["box"]
        cv2.rectangle(frame, (x, y), (x + w, y + h), GREEN, 2)
        cv2.putText(frame, result.face["label"], (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.6, GREEN, 2, cv2.LINE_AA)
    _text(frame, f"fused: {top_label(result.fused)}", 22)
    _text(frame, f"voice: {top_label(result.audio)}", 44)
    _text(frame, f"face: {top_label(result.face)}", 66)


def write_overlay(video: str | Path, results: list[Result], out: str | Path) -> Path:
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise MediaError(f"{video}: cannot open the video to draw the overlay")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer = None
    index, k = 0, -1
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            while k + 1 < len(results) and results[k + 1].t <= index / fps + 1e-9:
                k += 1
            draw(frame, results[k] if k >= 0 else None)
            if writer is None:
                writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (frame.shape[1], frame.shape[0]))
                if not writer.isOpened():
                    raise MediaError(f"{out}: cannot write an mp4 here (check the path and extension)")
            writer.write(frame)
            index += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if index == 0:
        raise MediaError(f"{video}: no frames to draw the overlay on")
    return Path(out)
