"""distill.models.teacher: branches alone and together, shapes, checkpoint round trip."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from distill.models.teacher import Teacher, TeacherConfig, load_teacher, save_teacher  # noqa: E402
from edge.errors import AvemoError  # noqa: E402

CONFIG = TeacherConfig(labels=("neutral", "happy", "sad"), embed_dim=8, audio_channels=(4, 8), face_channels=(4, 8),
                       fusion_hidden=16)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return Teacher(CONFIG).eval()


def test_branches_alone_and_fused(model):
    wave, faces = torch.randn(3, 8000) * 0.1, torch.randint(0, 256, (3, 2, 48, 48)).float()
    logits, emb = model.audio_logits_and_embedding(wave)
    assert logits.shape == (3, 3) and emb.shape == (3, 8)
    flogits, femb = model.face_logits_and_embedding(faces)
    assert flogits.shape == (3, 3) and femb.shape == (3, 8)
    out = model(wave, faces, torch.tensor([0, 2, -1]))
    assert set(out) == {"audio_logits", "audio_emb", "face_logits", "face_emb", "fused_logits", "label_emb"}
    torch.testing.assert_close(out["audio_emb"], emb)
    assert set(model(faces=faces)) == {"face_logits", "face_emb"}
    assert model.embed_labels(torch.tensor([1, 1])).shape == (2, 8)


def test_faces_are_standardized_and_pooled_over_time(model):
    face = torch.randint(0, 256, (2, 48, 48)).float()
    single, _ = model.face_logits_and_embedding(face)
    repeated, _ = model.face_logits_and_embedding(face[:, None].repeat(1, 3, 1, 1))
    brighter, _ = model.face_logits_and_embedding(face * 0.5 + 40)  # affine gray change (std above the floor)
    torch.testing.assert_close(single, repeated)
    torch.testing.assert_close(single, brighter, rtol=1e-4, atol=1e-4)


def test_audio_branch_takes_any_length(model):
    assert model.audio_logits_and_embedding(torch.randn(1, 16000 * 3 + 37))[0].shape == (1, 3)


def test_checkpoint_round_trip(model, tmp_path):
    path = tmp_path / "t.pt"
    save_teacher(path, model, {"trained_on": {"audio_branch": {"x": 1}}}, epoch=4)
    loaded, meta = load_teacher(path)
    assert meta["trained_on"] == {"audio_branch": {"x": 1}} and meta["epoch"] == 4
    assert loaded.labels == CONFIG.labels and loaded.config == CONFIG and not loaded.training
    wave = torch.randn(2, 4000)
    torch.testing.assert_close(loaded.audio_logits_and_embedding(wave)[0], model.audio_logits_and_embedding(wave)[0])


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(AvemoError, match="junk.pt"):
        load_teacher(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(AvemoError, match="not a teacher checkpoint"):
        load_teacher(tmp_path / "other.pt")
