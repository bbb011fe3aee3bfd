"""The fast CTR-GCN computes the same function as a straightforward reference-structured CTR-GCN
(bench/reference_ctrgcn.py: three CTRGC modules per unit, full-sequence conv1/conv2, per-branch convs):
outputs, gradients and BN statistics agree after mapping the weights."""

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from reference_ctrgcn import ReferenceCTRGCN, load_into_fast  # noqa: E402

from skelact.models import create_model  # noqa: E402
from skelact.models.graph import adjacency  # noqa: E402

CASES = [("ntu25", 2, 16, 60), ("ucla20", 1, 13, 10)]  # layout, persons, frames, classes


def _pair(layout, persons, classes, dtype):
    torch.manual_seed(0)
    ref = ReferenceCTRGCN(adjacency(layout), classes, persons)
    bns = [m for m in ref.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    with torch.no_grad():  # move away from the zero / 1e-6 / unit initialisations so every path matters
        for mod in ref.modules():
            if hasattr(mod, "alpha"):
                mod.alpha.normal_(0.0, 0.5)
        for bn in bns:
            bn.weight.normal_(1.0, 0.2)
            bn.bias.normal_(0.0, 0.2)
            bn.momentum = 1.0  # running statistics := those of one calibration batch
        v = adjacency(layout).shape[-1]
        ref(torch.randn(4, 3, 16, v, persons, generator=torch.Generator().manual_seed(2)))
        for bn in bns:
            bn.momentum = 0.1
    fast = create_model("ctrgcn", layout=layout, num_classes=classes, num_persons=persons)
    load_into_fast(ref, fast)
    return ref.to(dtype), fast.to(dtype)


def _mapped(ref, fast, attr):
    """The reference's gradients (attr='grad') mapped onto the fast model's parameter layout."""
    holder, src = copy.deepcopy(fast), copy.deepcopy(ref)
    with torch.no_grad():
        for p, p_ref in zip(src.parameters(), ref.parameters()):
            p.copy_(getattr(p_ref, attr))
    load_into_fast(src, holder)
    return dict(holder.named_parameters())


def test_same_parameter_count():
    ref, fast = _pair("ntu25", 2, 60, torch.float32)
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in fast.parameters()) == 1_446_672


def _input(layout, persons, frames, dtype=torch.float32):
    v = adjacency(layout).shape[-1]
    return torch.randn(3, 3, frames, v, persons, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize("layout,persons,frames,classes", CASES)
@pytest.mark.parametrize("train", [True, False])
def test_outputs_match_float32(layout, persons, frames, classes, train):
    ref, fast = _pair(layout, persons, classes, torch.float32)
    ref.train(train)
    fast.train(train)
    x = _input(layout, persons, frames)
    logits_ref, pooled_ref = ref(x, return_features=True)
    logits, feats = fast(x, return_features=True)
    for got, want in ((feats["pooled"], pooled_ref), (logits, logits_ref)):  # 1e-5 of the output's scale
        torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max().item(), rtol=1e-5)
    if train:  # BN running statistics were updated identically
        mapped = copy.deepcopy(fast)
        load_into_fast(ref, mapped)
        for (name, b), (_, b_ref) in zip(fast.named_buffers(), mapped.named_buffers()):
            torch.testing.assert_close(b.float(), b_ref.float(), atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("layout,persons,frames,classes", CASES)
def test_gradients_match_float64(layout, persons, frames, classes):
    """Every parameter gradient, in float64 so that the comparison is tight (float32 sums such as the
    one for ``alpha`` lose digits to cancellation in both implementations)."""
    ref, fast = _pair(layout, persons, classes, torch.float64)
    x = _input(layout, persons, frames, torch.float64)
    target = torch.arange(3) % classes
    torch.nn.functional.cross_entropy(ref(x), target).backward()
    torch.nn.functional.cross_entropy(fast(x), target).backward()
    want = _mapped(ref, fast, "grad")
    for name, p in fast.named_parameters():
        scale = want[name].abs().max().clamp_min(1e-4)  # conv biases before a BN have ~0 gradient
        torch.testing.assert_close(p.grad / scale, want[name] / scale, atol=1e-9, rtol=1e-9, msg=name)


def test_float64_outputs_agree_to_rounding():
    ref, fast = _pair("ntu25", 2, 60, torch.float64)
    x = _input("ntu25", 2, 16, torch.float64)
    torch.testing.assert_close(fast(x), ref(x), atol=1e-11, rtol=1e-11)


def _bf16_error(model, x, target):
    """Relative error of logits and of the whole gradient vector under bf16 autocast, against float32."""
    def run(bf16):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        torch.nn.functional.cross_entropy(logits.float(), target).backward()
        return logits.float().detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    (l32, g32), (l16, g16) = run(False), run(True)
    return ((l16 - l32).norm() / l32.norm()).item(), ((g16 - g32).norm() / g32.norm()).item()


@pytest.mark.parametrize("layout,persons,frames,classes", CASES)
def test_bf16_autocast_as_accurate_as_reference(layout, persons, frames, classes):
    """The mixed-precision path (the fused aggregation runs in the autocast dtype, as on a GPU with
    ``amp: bf16``) loses no more accuracy than plain PyTorch layers do under the same autocast."""
    ref, fast = _pair(layout, persons, classes, torch.float32)
    x, target = _input(layout, persons, frames), torch.arange(3) % classes
    (logit_ref, grad_ref), (logit_fast, grad_fast) = _bf16_error(ref, x, target), _bf16_error(fast, x, target)
    assert 0 < logit_fast < 0.05 and 0 < grad_fast < 1  # bf16 was really used, and is sane
    assert logit_fast <= 1.5 * logit_ref + 1e-3
    assert grad_fast <= 1.5 * grad_ref + 1e-2
