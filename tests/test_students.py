"""distill/models/students.py: parameter budgets, output shapes, BatchNorm folding, exportable ops."""
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill.models.students import (EMBEDDING_DIM, AudioStudent, FaceStudent, count_params,  # noqa: E402
                                     fold_batchnorm)
from edge.settings import FACE  # noqa: E402

INT8_FRIENDLY = {"Conv", "Relu", "Clip", "MaxPool", "Add", "GlobalAveragePool", "Gemm", "Flatten",
                 "Reshape", "AveragePool", "Constant"}


def _randomize_bn(model):
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def test_param_budgets():
    assert count_params(AudioStudent()) <= 100_000
    assert count_params(FaceStudent()) <= 500_000
    assert count_params(AudioStudent()) > 20_000          # not a degenerate net


@pytest.mark.parametrize("n_samples", [32000, 16000])
def test_audio_shapes(n_samples):
    logits, emb = AudioStudent(n_labels=8).eval()(torch.randn(3, n_samples) * 0.1)
    assert logits.shape == (3, 8) and emb.shape == (3, EMBEDDING_DIM)


def test_face_shapes():
    logits, emb = FaceStudent(n_labels=7).eval()(torch.randn(2, 1, FACE.size, FACE.size))
    assert logits.shape == (2, 7) and emb.shape == (2, EMBEDDING_DIM)


def test_audio_is_gain_invariant():
    """Per-utterance normalization: a louder copy of the same clip gives the same output."""
    model = AudioStudent().eval()
    wave = torch.randn(1, 32000) * 0.05
    a, b = model(wave)[0], model(wave * 8.0)[0]
    assert torch.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("make, shape", [(AudioStudent, (2, 32000)), (FaceStudent, (2, 1, 48, 48))])
def test_fold_batchnorm_keeps_outputs(make, shape):
    model = _randomize_bn(make())
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(*shape) * (0.1 if len(shape) == 2 else 1.0)
    with torch.no_grad():
        for a, b in zip(model(x), folded(x)):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())   # original untouched


def test_face_export_is_integer_friendly():
    onnx = pytest.importorskip("onnx")
    buf = io.BytesIO()
    torch.onnx.export(fold_batchnorm(_randomize_bn(FaceStudent())), (torch.zeros(1, 1, 48, 48),), buf, dynamo=False,
                      opset_version=17, input_names=["face"], output_names=["logits", "embedding"])
    ops = {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    assert ops <= INT8_FRIENDLY, ops - INT8_FRIENDLY
    assert not ops & {"HardSwish", "HardSigmoid", "BatchNormalization", "Sigmoid"}


def test_students_are_deterministic_in_eval():
    model = AudioStudent().eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 32000)).astype(np.float32) * 0.1)
    assert torch.equal(model(x)[0], model(x)[0])


@pytest.mark.parametrize("make", [AudioStudent, FaceStudent])
def test_width_scales_channels_and_hgr_adds_a_label_embedding(make):
    plain, wide = make(), make(width=1.5, hgr=True)
    assert count_params(wide) > 1.8 * count_params(plain) and plain.label_embedding is None
    n_labels = wide.head.classifier.out_features
    assert wide.label_embedding(torch.eye(n_labels)).shape == (n_labels, EMBEDDING_DIM)
