"""distill.qat: fake int8 on the students, the agreement loss, and QAT fine-tuning through the
students CLI (a run with --qat leaves a plain student that exports like any other)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill import students  # noqa: E402
from distill.data.synthetic import make_synthetic_corpus  # noqa: E402
from distill.models.students import AudioStudent, FaceStudent  # noqa: E402
from distill.qat import ActivationFakeQuant, FakeQuant, WeightFakeQuant, agreement_loss  # noqa: E402


def _face() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return FaceStudent().eval(), torch.randn(3, 1, 48, 48)


def test_off_is_the_float_model_and_remove_restores_it():
    model, x = _face()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = model(x)[0]
    quant = FakeQuant(model)
    torch.testing.assert_close(model(x)[0], reference)
    with quant.enabled():
        assert not torch.allclose(model(x)[0], reference)
    torch.testing.assert_close(model(x)[0], reference)  # off again after the block
    quant.remove()
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_on_rounds_weights_per_channel_and_activations_to_256_levels():
    w = torch.randn(4, 3, 3, 3) * torch.tensor([0.01, 0.1, 1.0, 10.0]).reshape(-1, 1, 1, 1)
    fq = WeightFakeQuant()
    assert torch.equal(fq(w), w)
    fq.on = True
    q = fq(w)
    for row, qrow in zip(w, q):
        step = row.abs().max() / 127
        levels = torch.round(qrow / step)
        torch.testing.assert_close(qrow, levels * step)
        assert levels.abs().max() <= 127 and (qrow - row).abs().max() <= step / 2 + 1e-6
    act = ActivationFakeQuant()
    act.on = True
    x = torch.linspace(-1.0, 3.0, 5000)
    y = act(x)
    assert len(torch.unique(y)) <= 256 and (y - x).abs().max() <= 4.0 / 255
    assert 0.0 in y  # zero is exact, as in the uint8 zero point


def test_every_quantized_tensor_of_the_students_is_covered():
    """The hooks quantize the tensors onnxruntime's QDQ graph quantizes: for the face student
    35 conv outputs, 4 residual sums and the head's input, hidden and output (46 + 1 for the
    classifier input after ReLU = 47); the audio student: 5 conv outputs and the head's 4
    tensors (9). The stem Conv and its input stay float, as in the export. (Not emulated: the
    audio graph also re-quantizes its mel-mean, time-mean/max and their Concat.)"""
    assert len(FakeQuant(FaceStudent()).activations) == 47
    student = AudioStudent()
    quant = FakeQuant(student)
    assert len(quant.activations) == 9 and len(quant.weights) == 6  # 4 convs + 2 linears
    stem = next(m for m in student.body.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(module is not stem for module, _ in quant.weights)


def test_agreement_loss_is_symmetric_and_zero_only_on_agreement():
    a, b = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, -1.0]])
    assert agreement_loss(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert agreement_loss(a, b).item() == pytest.approx(agreement_loss(b, a).item())
    assert agreement_loss(a, b).item() > 0.1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_synthetic_corpus(tmp_path_factory.mktemp("synth"), n_speakers=5, per_class=2,
                                 labels=("neutral", "happy", "sad"), seconds=0.6)


def test_qat_fine_tuning_through_the_students_cli(corpus, tmp_path):
    base, tuned = tmp_path / "base", tmp_path / "qat"
    common = ["--data", str(corpus), "--modality", "audio", "--epochs", "1", "--no-kd"]
    assert students.students_main([*common, "--out", str(base)]) == 0
    assert students.students_main([*common, "--out", str(tuned), "--init", str(base / "audio.pt"),
                               "--qat", "2.0", "--lr", "1e-3"]) == 0
    result = json.loads((tuned / "audio.json").read_text())
    assert result["config"]["qat"] == 2.0 and result["init"] == str(base / "audio.pt")
    student = students.load_student(tuned / "audio.pt")  # plain state dict: no fake-quant leftovers
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 32000)).astype(np.float32) * 0.1)
    assert torch.isfinite(student(wave)[0]).all()
