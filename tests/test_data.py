"""distill.data: layout detection, label/row validation, speaker splits, decoding and cache."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
cv2 = pytest.importorskip("cv2")

from distill.data import CorpusError, Item, load_corpus, read_split, speaker_folds, split_by_speaker, write_split  # noqa: E402
from distill.data.cache import decode_audio, load_face_clips, load_faces, load_waveforms  # noqa: E402
from edge.audio import read_audio  # noqa: E402
from edge.face import FaceStage, make_detector, standardize_crops  # noqa: E402
from edge.video import VideoFileReader  # noqa: E402
from media import face_video, need  # noqa: E402
from edge.errors import AvemoError, MediaError  # noqa: E402

DATA = Path(os.environ.get("AVEMO_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SR = 16000


def _wav(path: Path, seconds: float = 0.2, rate: int = SR, freq: float = 220.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


def _png(path: Path, value: int = 128, size: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size), value, np.uint8))
    return path


def _avi(path: Path, n_frames: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(n_frames):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    return path


def test_labels_csv_audio_image_and_pairs(tmp_path):
    _wav(tmp_path / "a.wav"), _png(tmp_path / "f.png"), _wav(tmp_path / "av.wav"), _avi(tmp_path / "av.avi")
    (tmp_path / "labels.csv").write_text(
        "path,label,speaker,path_audio,path_video\n"
        "a.wav,Surprised,s1,,\n"
        "f.png,calm,s2,,\n"
        ",happiness,s3,av.wav,av.avi\n"
        "a.wav,,s1,,\n")
    items = load_corpus(tmp_path)
    assert [it.label for it in items] == ["surprise", "calm", "happy", None]
    assert items[0].audio == str(tmp_path / "a.wav") and items[0].corpus == tmp_path.name
    assert items[1].image and not items[1].has_audio
    assert items[2].audio.endswith("av.wav") and items[2].video.endswith("av.avi")


def test_labels_csv_lists_every_bad_row(tmp_path):
    _wav(tmp_path / "a.wav")
    (tmp_path / "labels.csv").write_text("path,label\na.wav,happy\nb.wav,happy\na.wav,joy\nnotes.txt,sad\n")
    with pytest.raises(CorpusError) as err:
        load_corpus(tmp_path)
    msg = str(err.value)
    assert "3 bad entries" in msg and "missing file" in msg and "'joy'" in msg and "row 5" in msg
    assert isinstance(err.value, AvemoError) and "\n" not in msg


def test_labels_csv_missing_columns(tmp_path):
    (tmp_path / "labels.csv").write_text("file,emotion\na.wav,happy\n")
    with pytest.raises(CorpusError, match="missing columns"):
        load_corpus(tmp_path)


def test_unknown_folder_and_kind(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(CorpusError, match="labels.csv"):
        load_corpus(tmp_path)
    with pytest.raises(CorpusError, match="unknown corpus kind"):
        load_corpus(tmp_path, kind="iemocap")


def test_ravdess_names(tmp_path):
    _wav(tmp_path / "Actor_03" / "03-01-02-01-01-01-03.wav")
    _avi(tmp_path / "Actor_03" / "01-01-08-02-01-01-03.mp4")
    _avi(tmp_path / "Actor_04" / "02-01-05-01-01-01-04.mp4")
    items = sorted(load_corpus(tmp_path), key=lambda it: Path(it.audio or it.video).name)
    assert [(it.label, it.speaker) for it in items] == [("surprise", "Actor_03"), ("angry", "Actor_04"), ("calm", "Actor_03")]
    assert items[0].audio == items[0].video and items[1].audio is None and items[2].video is None
    _wav(tmp_path / "Actor_04" / "03-01-09-01-01-01-04.wav")
    with pytest.raises(CorpusError, match="emotion 09"):
        load_corpus(tmp_path, kind="ravdess")


def test_cremad_names_pair_audio_with_video(tmp_path):
    _wav(tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav")
    (tmp_path / "VideoFlash").mkdir()
    for name in ("1001_DFA_ANG_XX.flv", "1002_IEO_HAP_HI.flv"):
        (tmp_path / "VideoFlash" / name).write_bytes(b"FLV")  # the loader reads names only
    items = load_corpus(tmp_path)
    assert [(it.label, it.speaker, Path(it.audio).suffix, Path(it.video).suffix) for it in items] == [
        ("angry", "1001", ".wav", ".flv"), ("happy", "1002", ".flv", ".flv")]
    _wav(tmp_path / "AudioWAV" / "1003_DFA_XYZ_XX.wav")
    with pytest.raises(CorpusError, match="1003_DFA_XYZ_XX"):
        load_corpus(tmp_path, kind="cremad")


def test_enterface_layout(tmp_path):
    _avi(tmp_path / "subject 1" / "anger" / "sentence 1" / "s1_an_1.avi")
    _avi(tmp_path / "subject 6" / "happiness" / "s6_ha_1.avi")
    items = load_corpus(tmp_path)
    assert sorted((it.label, it.speaker) for it in items) == [("angry", "subject 1"), ("happy", "subject 6")]
    _avi(tmp_path / "subject 2" / "joy" / "sentence 1" / "s2_jo_1.avi")
    with pytest.raises(CorpusError, match="joy"):
        load_corpus(tmp_path)


def test_fer_class_folders(tmp_path):
    _png(tmp_path / "train" / "happy" / "1.png"), _png(tmp_path / "train" / "surprised" / "2.png")
    items = load_corpus(tmp_path)
    assert sorted((it.label, it.speaker, it.corpus) for it in items) == [("happy", "1", "fer2013"), ("surprise", "2", "fer2013")]


def _items(n_speakers: int) -> list[Item]:
    return [Item(label="happy", speaker=f"s{i}", corpus="t", audio=f"{i}_{j}.wav") for i in range(n_speakers) for j in range(3)]


def test_speaker_folds_deterministic_disjoint(tmp_path):
    items = _items(11)
    folds = speaker_folds(items, k=3, seed=7)
    assert folds == speaker_folds(items, k=3, seed=7) and folds != speaker_folds(items, k=3, seed=8)
    flat = [s for f in folds for s in f]
    assert sorted(flat) == sorted({it.speaker for it in items}) and len(flat) == len(set(flat))
    train, val, test = split_by_speaker(items, folds[0], folds[1])
    assert {it.speaker for it in test} == set(folds[0]) and not {it.speaker for it in train} & set(folds[0] + folds[1])
    assert len(train) + len(val) + len(test) == len(items)
    path = write_split(tmp_path / "split.json", test=folds[0], val=folds[1])
    assert read_split(path) == {"test": folds[0], "val": folds[1]}
    with pytest.raises(CorpusError):
        speaker_folds(_items(2), k=3)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(CorpusError):
        read_split(tmp_path / "bad.json")


def test_decode_is_edges_read_audio_exactly(tmp_path):
    """Training hears what the runtime hears: same decoder, same polyphase resampler, via the cache."""
    path = _wav(tmp_path / "a.wav", seconds=0.3, rate=44100)
    item = Item(label="sad", speaker="s", corpus="t", audio=str(path))
    edge_wave = read_audio(path)
    np.testing.assert_array_equal(decode_audio(path), edge_wave)
    for _ in range(2):  # decoded, then read back from the cache
        np.testing.assert_array_equal(load_waveforms([item], cache_dir=tmp_path / "cache")[0], edge_wave)


def test_decode_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    with pytest.raises(MediaError, match="bad.wav"):
        decode_audio(bad)
    with pytest.raises(MediaError, match="bad.mp3"):
        decode_audio(bad.rename(tmp_path / "bad.mp3"))


def test_cache_decodes_once_and_tracks_content(tmp_path):
    path = _wav(tmp_path / "a.wav", seconds=0.1, rate=8000)
    item = Item(label="sad", speaker="s", corpus="t", audio=str(path))
    cache = tmp_path / "cache"
    (first,) = load_waveforms([item], cache_dir=cache)
    assert first.dtype == np.float32 and len(first) == SR // 10
    assert len(list(cache.rglob("*.npy"))) == 1
    np.testing.assert_array_equal(load_waveforms([item], cache_dir=cache)[0], first)
    _wav(path, seconds=0.2, rate=8000)
    assert len(load_waveforms([item], cache_dir=cache)[0]) == SR // 5
    assert len(list(cache.rglob("*.npy"))) == 2
    with pytest.raises(CorpusError, match="no audio"):
        load_waveforms([Item(label=None, speaker="s", corpus="t", image="x.png")], cache_dir=cache)


def test_faces_from_images_and_video(tmp_path):
    need("ffmpeg", "ffprobe")
    img = Item(label="sad", speaker="s", corpus="t", image=str(_png(tmp_path / "f.png", value=77, size=40)))
    vid = Item(label="sad", speaker="s", corpus="t", video=str(_avi(tmp_path / "v.avi")))
    faces = load_faces([img, vid], size=32, cache_dir=tmp_path / "cache")
    assert faces.shape == (2, 32, 32) and faces.dtype == np.uint8 and faces[0].mean() == 77
    clips = load_face_clips([img, vid], frames=3, size=32, cache_dir=tmp_path / "cache")
    assert clips.shape == (2, 3, 32, 32) and clips[1, 0].mean() < clips[1, 2].mean()


def test_video_face_crop_is_the_runtime_face_stage_input(tmp_path):
    """Training sees what the runtime sees: edge's frame decode, CNN detector and crop."""
    need("ffmpeg", "ffprobe")
    path = face_video(tmp_path / "face.mp4", seconds=1.0)
    clip = load_face_clips([Item(label="sad", speaker="s", corpus="t", video=str(path))], frames=1, cache_dir=None)[0]
    with VideoFileReader(path) as reader:
        frame = [f for _, f in reader][reader.n_frames // 2]
    stage = FaceStage(make_detector("cnn"), detect_every=1)
    assert stage.process(frame) is not None  # the crop is the detector's box, not the centred fallback
    np.testing.assert_array_equal(clip[0], stage.cropper.small)
    np.testing.assert_allclose(standardize_crops(clip)[0], stage.input[0, 0], rtol=0, atol=1e-5)


needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared corpora not present")


@needs_data
def test_real_corpora_load():
    ravdess = load_corpus(DATA / "ravdess_speech")
    assert len(ravdess) == 1200 and len({it.speaker for it in ravdess}) == 24 - 4
    by_name = load_corpus(DATA / "ravdess_speech", kind="ravdess")  # file names, not labels.csv
    assert sorted((it.audio, it.label, it.speaker) for it in by_name) == sorted((it.audio, it.label, it.speaker) for it in ravdess)
    assert {it.label for it in ravdess} == {"neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise"}
    fer = load_corpus(DATA / "fer2013" / "train")
    assert "calm" not in {it.label for it in fer} and all(it.image for it in fer[:10])
    emodb = {it.label for it in load_corpus(DATA / "emodb_2s")}
    assert emodb == {"neutral", "boredom", "happy", "sad", "angry", "fear", "disgust"}


@needs_data
def test_cremad_fixture_decodes(tmp_path):
    items = load_corpus(DATA / "cremad_fixture")
    av = [it for it in items if it.video]
    assert len(av) == 6 and {it.speaker for it in av} == {"1001"}
    by_name = load_corpus(DATA / "cremad_fixture", kind="cremad")
    assert len(by_name) == 12 and all(it.audio.endswith(".wav") for it in by_name)
    assert {(it.label, it.audio) for it in by_name if it.video} == {(it.label, it.audio) for it in av}
    mp3 = [it for it in items if it.audio.endswith(".mp3")][:1]
    wave = load_waveforms(mp3, cache_dir=tmp_path)[0]
    assert 1.5 * SR < len(wave) < 4 * SR and 0.01 < np.abs(wave).max() <= 1.0
    clips = load_face_clips(av[:1], frames=2, cache_dir=tmp_path)
    assert clips.shape == (1, 2, 48, 48) and clips.std() > 10


def test_folds_spread_every_corpus():
    items = _items(8) + [Item(label="sad", speaker=f"img{i}", corpus="faces", image=f"{i}.png") for i in range(400)]
    for fold in speaker_folds(items, k=4, seed=0):
        assert sum(s.startswith("s") for s in fold) == 2
