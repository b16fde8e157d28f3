"""edge.labels_csv: good tables read as written, bad ones fail with one line naming the table, the rows and
the fix. Only file names matter to the reader, so the media files here are empty."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge.errors import MediaError
from edge.labels_csv import LabelRow, media_kind, read_labels


def _folder(root: Path, table: str | bytes, files: tuple[str, ...] = ("a.wav", "b.flac", "f.png", "v.mp4")) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    (root / "labels.csv").write_bytes(table if isinstance(table, bytes) else table.encode())
    return root


def _error(folder: Path, unlabeled_ok: bool = False) -> str:
    with pytest.raises(MediaError) as err:
        read_labels(folder, unlabeled_ok)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(folder / "labels.csv"))
    return message


def test_rows_with_metadata_speaker_corpus_and_pairs(tmp_path):
    table = ("path,label,speaker,corpus,path_audio,path_video,intensity\n"
             "a.wav,Happy,s1,mine,,,strong\n"
             ",calm,s2,,b.flac,v.mp4,\n"
             f"{tmp_path / 'f.png'},boredom,,,,,\n")
    rows = read_labels(_folder(tmp_path, table))
    assert rows[0] == LabelRow(2, "happy", {"path": tmp_path / "a.wav"}, "s1", "mine")
    assert rows[1].paths == {"path_audio": tmp_path / "b.flac", "path_video": tmp_path / "v.mp4"}
    assert (rows[1].label, rows[1].corpus) == ("calm", "")
    assert rows[2].paths == {"path": tmp_path / "f.png"} and rows[2].label == "boredom"


def test_bom_spaces_header_case_and_blank_lines(tmp_path):
    table = "\ufeff Path , LABEL ,speaker\r\n\r\n a.wav , sad , s1 \r\n,,\r\nf.png,fearful,s2\r\n"
    rows = read_labels(_folder(tmp_path, table.encode("utf-8")))
    assert [(r.row, r.label, r.speaker) for r in rows] == [(3, "sad", "s1"), (5, "fearful", "s2")]
    assert rows[0].paths == {"path": tmp_path / "a.wav"}


def test_quoted_cells_and_spreadsheet_row_numbers(tmp_path):
    rows = read_labels(_folder(tmp_path, 'path,label,note\na.wav,happy,"two\nlines, one cell"\nb.flac,sad,\n'))
    assert [(r.row, r.label) for r in rows] == [(2, "happy"), (3, "sad")]


def test_unlabeled_rows_only_when_allowed(tmp_path):
    folder = _folder(tmp_path, "path,label\na.wav,\nb.flac,angry\n")
    assert [r.label for r in read_labels(folder, unlabeled_ok=True)] == ["", "angry"]
    assert "1 bad entry: row 2: empty label (fix or delete those rows" in _error(folder)


def test_missing_and_empty_tables(tmp_path):
    assert "labels.csv: missing; a data folder needs labels.csv" in _error(tmp_path)
    for text in ("", "\n \n,,\n"):
        assert "labels.csv: empty; a data folder needs" in _error(_folder(tmp_path, text))
    assert "a header but no rows" in _error(_folder(tmp_path, "path,label\n"))
    assert "not UTF-8 text" in _error(_folder(tmp_path, b"path,label\n\xff\xfe,happy\n"))


@pytest.mark.parametrize("header,message", [
    ("file,emotion", "missing columns ['label', 'path'] (header is ['file', 'emotion']); a data folder needs"),
    ("path,speaker", "missing columns ['label']"),
    ("label,speaker", "missing columns ['path']"),
    ("path,label,Label", "columns ['label'] appear more than once in the header; rename or delete the copies"),
    ("path,label,path_img", "unknown path columns ['path_img']; rename them to one of path, path_audio"),
])
def test_bad_headers(tmp_path, header, message):
    assert message in _error(_folder(tmp_path, f"{header}\na.wav,happy,x\n"))


def test_every_bad_row_is_counted_and_named(tmp_path):
    table = ("path,label,path_image\n"
             "a.wav,happy,\n"
             "a.wav,,\n"
             "a.wav,joy,\n"
             "missing.wav,sad,\n"
             "notes.txt,sad,\n"
             ",sad,\n"
             "a.wav,sad,f.png,extra\n"
             "a.wav,happy,\n"
             "b.flac,happiness,f.png\n")
    message = _error(_folder(tmp_path, table))
    assert ": 7 bad entries: row 3: empty label; row 4: unknown label 'joy'; row 5: missing file 'missing.wav'; " \
           "row 6: 'notes.txt' is not audio, an image or a video (.wav" in message
    assert "row 7: no file in path or path_image; " in message
    assert "row 8: 4 cells but the header has 3 (quote a cell that holds a comma); " in message
    assert "row 9: same files and label as row 2 (fix or delete those rows; " in message
    assert "labels are one of neutral calm happy sad angry fear disgust surprise boredom" in message


def test_at_most_eight_rows_are_listed(tmp_path):
    message = _error(_folder(tmp_path, "path,label\n" + "".join(f"x{i}.wav,happy\n" for i in range(11))))
    assert message.count("missing file") == 8 and "11 bad entries" in message and "; ... and 3 more (" in message


def test_media_kind():
    assert [media_kind(p) for p in ("a.WAV", "b.jpeg", "c/d.webm", "e.txt", "f")] == ["audio", "image", "video",
                                                                                       None, None]
