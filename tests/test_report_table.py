"""tools/report_table.py: rows from students reports, truncated, and one line for a bad file."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "report_table.py"


def report(acc: float, fear: float) -> dict:
    per_class = {"fear": {"recall": fear}, "disgust": {"recall": 0.5}, "happy": {"recall": 0.9}}
    return {"n": 1353, "accuracy": acc, "uar": 0.59999, "macro_f1": 0.1, "per_class": per_class}


def test_rows_are_truncated_never_rounded_up(tmp_path):
    path = tmp_path / "teacher-long" / "face.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"reports": {"val": report(1089 / 1353, 0.25), "test": report(0.7, 0.80519)}}))
    out = subprocess.run([sys.executable, str(TOOL), str(path)], capture_output=True, text=True, check=True).stdout
    header, rule, row = out.splitlines()
    assert header.startswith("| model | val | test |") and rule == "|---|---|---|---|---|"
    assert row == "| teacher-long | 0.8048 / 0.5999 | 0.7000 / 0.5999 | 0.1000, 0.1000 | 0.8051, 0.5000 |"


def test_a_file_without_reports_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text("[]")
    run = subprocess.run([sys.executable, str(TOOL), str(bad)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "notes.json" in run.stderr


def test_files_with_different_splits_share_one_header_with_empty_cells(tmp_path):
    face, audio = tmp_path / "teacher.json", tmp_path / "cv.json"
    face.write_text(json.dumps({"reports": {"val": report(0.6, 0.3), "test": report(0.7, 0.4)}}))
    audio.write_text(json.dumps({"reports": {"test": report(0.5, 0.2), "emodb": report(0.4, 0.1)}}))
    out = subprocess.run([sys.executable, str(TOOL), str(face), str(audio)], capture_output=True, text=True,
                         check=True).stdout
    header, rule, face_row, audio_row = out.splitlines()
    assert header.startswith("| model | val | test | emodb |") and rule == "|" + "---|" * 6
    assert face_row == "| teacher | 0.6000 / 0.5999 | 0.7000 / 0.5999 |  | 0.1000, 0.1000, - | 0.4000, 0.5000 |"
    assert audio_row == "| cv |  | 0.5000 / 0.5999 | 0.4000 / 0.5999 | -, 0.1000, 0.1000 | 0.2000, 0.5000 |"
