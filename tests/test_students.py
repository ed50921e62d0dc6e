"""Students, the distillation loss, int8 quantization and ONNX export (models/)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from fedgate.models import onnx_export as ox
from fedgate.models.data import common_test_split, transfer_split
from fedgate.models.distill import (
    DistillConfig,
    Setting,
    _Batched,
    adjust_teacher,
    distill_pair,
    kd_loss,
    train_student,
)
from fedgate.models.students import PROFILES, build_student, parameter_count


def test_profiles_name_their_sizes() -> None:
    sizes = {p: parameter_count(build_student(p)) for p in PROFILES}
    assert sizes == {"pi": 1210, "phone": 760}
    with pytest.raises(ValueError, match="unknown edge profile 'watch'"):
        build_student("watch")


def test_kd_loss_blends_soft_and_hard_terms() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=gen), torch.randn(16, 10, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    hard = F.cross_entropy(s, y)
    assert torch.allclose(kd_loss(s, t, y, 4.0, 0.0), hard)
    assert float(kd_loss(t, t, y, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-6)  # student = teacher
    soft = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean")
    assert torch.allclose(kd_loss(s, t, y, 4.0, 0.7), 0.7 * 16 * soft + 0.3 * hard, atol=1e-5)
    s.requires_grad_(True)
    kd_loss(s, t, y, 4.0, 1.0).backward()  # the soft term pulls the student towards the teacher
    assert float((s.grad * (s.detach() - t)).sum()) > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
        ({"steps": 0}, "steps"),
        ({"alphas": (0.1, 2.0)}, "alpha"),
        ({"noises": ()}, "non-empty"),
        ({"baseline_noises": (-0.1,)}, "noise"),
        ({"folds": 1}, "folds"),
        ({"cv_lr": 0}, "lr"),
    ],
)
def test_distill_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DistillConfig(**kwargs)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_knowledge_adjustment_puts_the_label_on_top_and_keeps_the_rest(n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    out = adjust_teacher(logits, labels)
    assert torch.equal(out.argmax(1), labels)
    assert torch.equal(out.sort(1).values, logits.sort(1).values)  # the same values, swapped
    right = logits.argmax(1) == labels
    assert torch.equal(out[right], logits[right])  # a teacher already right is left as it is
    changed = (out != logits).sum(1)
    assert bool(((changed == 0) | (changed == 2)).all())  # at most the two logits trade places


def test_batched_students_are_the_students_they_export() -> None:
    template = build_student("phone", seed=3)
    batched = _Batched(template, 3)
    assert torch.equal(batched.w1[2], template.fc1.weight.T)  # every copy starts as the template
    with torch.no_grad():
        for p in batched.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = torch.from_numpy(transfer_split(0).x[:20])
    with torch.no_grad():
        out = batched(x.expand(3, -1, -1))
        for i in range(3):
            single = batched.export(i, build_student("phone"))
            assert torch.allclose(single(x), out[i], atol=1e-6)


def test_distill_pair_chooses_among_its_candidates_on_the_transfer_split() -> None:
    torch.set_num_threads(1)
    transfer = transfer_split(0)
    teacher = build_student("pi", seed=1)
    train_student(teacher, transfer, None, DistillConfig(steps=200))
    config = DistillConfig(steps=40, cv_steps=20, copies=2, alphas=(0.3, 0.9), noises=(0.1,))
    result = distill_pair(lambda: build_student("phone", seed=0), teacher, transfer, config)
    assert set(result.cv_accuracy) == {Setting(0.0, 0.0), Setting(0.0, 0.05), Setting(0.0, 0.1),
                                       Setting(0.3, 0.1), Setting(0.9, 0.1)}  # fmt: skip
    assert result.student_setting.alpha in (0.3, 0.9) and result.baseline_setting.alpha == 0.0
    assert all(0.0 < a <= 1.0 for a in result.cv_accuracy.values())
    assert result.student_setting == max(
        (s for s in result.cv_accuracy if s.alpha > 0), key=lambda s: result.cv_accuracy[s]
    )
    with pytest.raises(ValueError, match="too few"):
        distill_pair(lambda: build_student("phone"), teacher, transfer.take(np.arange(5)), config)


def test_int8_onnx_student_runs_in_onnxruntime_and_matches_torch() -> None:
    import onnx

    torch.set_num_threads(1)
    transfer, test = transfer_split(0), common_test_split(0)
    student = build_student("phone")
    train_student(student, transfer, None, DistillConfig(steps=150))
    float_proto = ox.export_float(student)
    with torch.no_grad():
        ref = student(torch.from_numpy(test.x)).numpy()
    # the float export is the torch student up to rounding
    float_bytes = ox.compact(float_proto).SerializeToString()
    assert np.abs(ox.run(float_bytes, test.x) - ref).max() <= ox.TOLERANCE.float_atol
    data = ox.quantize_int8(float_proto, transfer.x)
    agreement = ox.check_against(data, student, test)
    assert agreement.within(), agreement
    acc_torch = float((ref.argmax(1) == test.y).mean())
    assert abs(ox.accuracy(data, test) - acc_torch) <= 0.02
    # one self-contained file: int8 weights inside, nothing external, standard operators only
    model = onnx.load_model_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    inits = {i.name: i for i in model.graph.initializer}
    assert all(i.data_location != onnx.TensorProto.EXTERNAL for i in inits.values())
    int8 = [i for i in inits.values() if i.data_type == onnx.TensorProto.INT8 and i.dims]
    assert sorted(tuple(i.dims) for i in int8) == [(10, 10), (10, 64)]
    assert {n.op_type for n in model.graph.node} <= {"QuantizeLinear", "DequantizeLinear", "Gemm",
                                                      "Relu"}  # fmt: skip
    assert {d.domain for d in model.opset_import} == {""}
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert (inp.name, dims) == ("input", ["batch", 64])
    assert len(data) < 2000  # compaction: mostly the int8 weights, not names
    assert ox.latency_per_sample(data, test.x, runs=50) > 0
