"""End-to-end: the `avemo-edge` command on real media, as a user runs it."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from conftest import DEMO_WAV, PORTRAIT, SHARED_DATA  # noqa: E402

CLI = [sys.executable, "-m", "edge.cli"]


def run(*args, timeout=180):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def models(bundles):
    return ["--audio-model", bundles["audio"], "--face-model", bundles["face"]]


def frame_count(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def test_video_with_speech_streams_both_modalities_and_overlay(bundles, speech_video, tmp_path):
    out = tmp_path / "overlay.mp4"
    p = run("run", "--video", speech_video, "--hop", "0.25", "--overlay", out, *models(bundles))
    assert p.returncode == 0, p.stderr
    lines = json_lines(p.stdout)
    cap = cv2.VideoCapture(str(speech_video))
    width, height = cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
    seconds = cap.get(cv2.CAP_PROP_FRAME_COUNT) / cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    # one line per hop over the media (its audio track may run a few frames past the video)
    assert int(seconds / 0.25 + 1e-6) <= len(lines) <= int(seconds / 0.25 + 1e-6) + 1
    ts = [r["t"] for r in lines]
    assert ts == sorted(ts) and len(set(ts)) == len(ts) and ts[0] == 0.25
    both = [r for r in lines if r["face"] and r["audio"] and r["audio"]["voiced"]]
    assert len(both) >= len(lines) // 2, "audio and face should both be present on most hops"
    for r in lines:
        assert set(r) == {"t", "audio", "face", "fused", "latency_ms", "counters", "events"}
        if r["face"]:
            x, y, w, h = r["face"]["box"]
            assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        assert r["latency_ms"]["total"] > 0
    assert frame_count(out) == frame_count(speech_video)
    assert "hops; fused labels:" in p.stderr


def test_audio_file_only(bundles):
    p = run("run", "--audio", DEMO_WAV, *models(bundles))
    assert p.returncode == 0, p.stderr
    lines = json_lines(p.stdout)
    assert lines and all(r["face"] is None for r in lines)
    assert any(r["audio"]["voiced"] and r["fused"] for r in lines)


def test_noise_file_gets_no_audio_label(bundles, tmp_path):
    """White noise at full scale, pink, mains hum at 50 and 100 Hz and a wobbling fan, back to
    back: loud on every hop, voiced and labelled on none."""
    from media import noise, write_wav
    parts = [noise(kind, 3.0, dbfs, seed=i) for i, (kind, dbfs) in enumerate(
        [("white", 0), ("pink", -20), ("hum50", -10), ("hum100", -30), ("fan", -10)])]
    p = run("run", "--audio", write_wav(tmp_path / "noise.wav", np.concatenate(parts), 16000),
            *models(bundles))
    assert p.returncode == 0, p.stderr
    audio = [r["audio"] for r in json_lines(p.stdout)]
    assert len(audio) == 30 and all(a["level_dbfs"] > -45 for a in audio)
    assert [(a["voiced"], a["label"], a["probs"]) for a in audio] == [(False, None, None)] * 30
    assert "no emotion" in p.stderr


def test_duration_and_pretty(bundles, speech_video):
    p = run("run", "--video", speech_video, "--duration", "1.0", "--pretty", *models(bundles))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("t=") and "fused:" in lines[0]


@pytest.mark.parametrize("args,message", [
    (["run", "--audio", "missing.wav"], "missing.wav"),
    (["run", "--video", "missing.mp4"], "missing.mp4"),
    (["run", "--audio", DEMO_WAV, "--profile", "rpi3"], "valid profiles"),
    (["run", "--audio", DEMO_WAV, "--audio-model", "/nonexistent/bundle"], "/nonexistent/bundle"),
    (["run", "--audio", DEMO_WAV, "--mic"], "not both"),
    (["run", "--audio", PORTRAIT], "portrait.jpg"),
    (["eval", "--data", "/nonexistent"], "labels.csv"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, bundles):
    if "--audio-model" not in args and args[0] == "run":
        args = [*args, *models(bundles)]
    if args[0] == "eval":
        args = [*args, "--model", bundles["audio"]]
    p = run(*args)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("avemo-edge: error:") and message in err[0], p.stderr


@pytest.mark.parametrize("args,message", [
    (["run", "--hop", "nan"], "hop (--hop) must be a number of seconds from 0.001 to 60, got nan"),
    (["run", "--hop", "inf"], "from 0.001 to 60, got inf"),
    (["run", "--hop=-inf"], "from 0.001 to 60, got -inf"),
    (["run", "--hop", "0"], "from 0.001 to 60, got 0.0"),
    (["run", "--hop", "61"], "from 0.001 to 60, got 61.0"),
    (["run", "--duration", "-5"], "duration (--duration) must be a number of seconds (one hop at least) "
                                  "from 0.5 to 31536000, got -5.0"),
    (["run", "--duration", "nan"], "from 0.5 to 31536000, got nan"),
    (["run", "--duration", "inf"], "from 0.5 to 31536000, got inf"),
    (["run", "--duration", "0.2", "--hop", "0.25"], "from 0.25 to 31536000, got 0.2"),
    (["run", "--hop", "abc"], "argument --hop: invalid float value: 'abc'"),
    (["run", "--camera", "-1"], "camera (--camera) index must be a whole number from 0 to 255, got -1"),
    (["run", "--mic", "-3"], "mic (--mic) index must be a whole number from 0 to 255, got -3"),
    (["run", "--mic", "999", "--camera", "0"], "mic (--mic) index must be a whole number from 0 to 255, got 999"),
    (["eval", "--limit", "0"], "limit (--limit) must be a whole number from 1 to 1000000000, got 0"),
    (["eval", "--limit", "-3"], "got -3"),
    (["eval", "--limit", "nan"], "argument --limit: invalid int value: 'nan'"),
])
def test_numeric_options_reject_nan_inf_and_out_of_range(args, message, bundles, capsys, tmp_path):
    """In-process `main(argv)`: exit 2, one line naming the option and its valid range, no hop run."""
    from edge.cli import main
    if args[0] == "run":
        live = "--camera" in args or "--mic" in args
        args = [*args, *models(bundles), *([] if live else ["--audio", str(DEMO_WAV)])]
    else:
        args = [*args, "--model", bundles["audio"], "--data", str(tmp_path)]  # --limit is checked first
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's own errors (not a number at all)
        code = stop.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("avemo-edge: error: ") and message in err, err


def test_corrupt_bundle_is_named(bundles, tmp_path):
    bad = tmp_path / "audio"
    shutil.copytree(bundles["audio"] if Path(bundles["audio"]).is_dir() else
                    Path(__file__).resolve().parents[1] / "edge" / "models" / "audio", bad)
    (bad / "model.npz").write_bytes(b"not a zip")
    p = run("run", "--audio", DEMO_WAV, "--audio-model", bad, "--backend", "numpy")
    assert p.returncode == 2 and "model.npz" in p.stderr and "Traceback" not in p.stderr


def test_info_lists_backends_profiles_and_devices():
    p = run("info", "--profile", "rpi4")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert "numpy" in info["backends_installed"]
    assert info["profile"]["name"] == "rpi4" and info["profile"]["arch"] == "aarch64"
    assert info["profile"]["budget"] == {"ram_mb": 60.0, "hop_ms": 60.0}   # every profile key is read somewhere
    assert "audio_input_devices" in info and "cameras" in info


def _data_folder(tmp_path):
    portrait = cv2.imread(str(PORTRAIT), cv2.IMREAD_GRAYSCALE)
    face = cv2.resize(portrait[30:230, 130:330], (48, 48))
    rows = ["path,label,speaker"]
    for i, label in enumerate(["happy", "sad", "angry", "neutral"]):
        cv2.imwrite(str(tmp_path / f"{i}.png"), face)
        rows.append(f"{i}.png,{label},s{i % 2}")
    shutil.copy(DEMO_WAV, tmp_path / "talk.wav")
    rows += ["talk.wav,happy,s0", "talk.wav,calm,s1", "talk.wav,boredom,s1"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_eval_face_writes_json_and_plot(bundles, tmp_path):
    data = _data_folder(tmp_path)
    p = run("eval", "--model", bundles["face"], "--data", data, "--json", tmp_path / "r.json",
            "--plot", tmp_path / "cm.png")
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert {"n", "accuracy", "uar", "macro_f1", "per_class", "confusion", "labels"} <= set(report)
    assert report["n"] == 4 and "UAR=" in p.stdout
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_audio_maps_and_reports_unknown_labels(bundles, tmp_path):
    data = _data_folder(tmp_path)
    p = run("eval", "--model", bundles["audio"], "--data", data, "--json", tmp_path / "r.json")
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 2  # happy, calm; boredom is left out and reported
    assert report["label_mapping"]["left_out"] == {"boredom": 1}
    assert "boredom" in p.stdout


def test_eval_answers_an_audio_file_the_way_run_does(bundles, tmp_path):
    """An audio item's answer is the mean of the probabilities `run --audio` prints on its
    voiced hops; noise gets no answer (counted as an error in the "none" column); --json lists items."""
    from media import noise, write_wav
    shutil.copy(DEMO_WAV, tmp_path / "talk.wav")
    write_wav(tmp_path / "hiss.wav", noise("white", 3.0, -20.0), 16000)
    (tmp_path / "labels.csv").write_text("path,label\ntalk.wav,happy\nhiss.wav,sad\n")
    p = run("eval", "--model", bundles["audio"], "--data", tmp_path, "--json", tmp_path / "r.json")
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    talk, hiss = report["items"]
    assert hiss["predicted"] is None and hiss["probs"] is None and report["no_answer"] == 1
    assert report["labels"][-1] == "none" and report["confusion"][report["labels"].index("sad")][-1] == 1
    hops = [json.loads(line) for line in run("run", "--audio", tmp_path / "talk.wav", "--audio-model",
                                             bundles["audio"]).stdout.splitlines()]
    voiced = [h["audio"]["probs"] for h in hops if h["audio"]["voiced"]]
    assert voiced and talk["truth"] == "happy" and talk["path"].endswith("talk.wav")
    for label, p_eval in talk["probs"].items():
        assert p_eval == pytest.approx(np.mean([v[label] for v in voiced]), abs=2e-4)
    assert talk["predicted"] == max(talk["probs"], key=talk["probs"].get)


@pytest.mark.parametrize("table,message", [
    ("file,emotion\na.wav,happy\n", "missing columns ['label', 'path']"),
    ("path,label\na.wav,happy\n", "row 2: missing file 'a.wav'"),
])
def test_eval_rejects_a_bad_labels_csv(bundles, tmp_path, table, message):
    (tmp_path / "labels.csv").write_text(table)
    p = run("eval", "--model", bundles["audio"], "--data", tmp_path)
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(err) == 1 and message in err[0], p.stderr


@pytest.mark.skipif(not (SHARED_DATA / "emodb_2s" / "labels.csv").is_file(), reason="needs ../shared/data")
def test_eval_on_a_real_corpus_folder(bundles):
    p = run("eval", "--model", bundles["audio"], "--data", SHARED_DATA / "emodb_2s", "--limit", "20")
    assert p.returncode == 0, p.stderr
    n = int(p.stdout.split("n=")[1].split()[0])
    assert 15 <= n <= 20   # the first 20 rows minus boredom


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("avemo-edge")
    assert exe.exists()
    p = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "run" in p.stdout


def test_first_signal_asks_the_loop_to_stop_a_second_forces_it():
    from edge.cli import _stop_on_signals
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        requested = _stop_on_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        assert requested.is_set()   # no exception: the loop ends after its hop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
