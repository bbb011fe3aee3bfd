"""Every registered model (timm style): shapes, taps, gradients, batch independence, determinism, errors."""

import numpy as np
import pytest
import torch

from skelact.errors import SkelactError
from skelact.layouts import LAYOUTS
from skelact.models import create_model, list_models
from skelact.models.ctrgcn import UNITS
from skelact.models.graph import adjacency

MODELS = list_models()
# (layout, persons, frames, classes)
SETTINGS = [("ntu25", 2, 64, 60), ("ucla20", 1, 52, 10)]


def _model(name, layout="ntu25", persons=2, classes=60, seed=0, **kw):
    torch.manual_seed(seed)
    return create_model(name, layout=layout, num_classes=classes, num_persons=persons, **kw)


def _input(layout, persons, frames, n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, frames, LAYOUTS[layout].num_joints, persons, generator=g)


def test_registry_lists_the_required_models():
    assert {"ctrgcn", "stgcn", "stgcn_quarter"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("layout,persons,frames,classes", SETTINGS)
def test_output_and_tap_shapes(name, layout, persons, frames, classes):
    model = _model(name, layout, persons, classes)
    x = _input(layout, persons, frames)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (2, classes)
    assert feats["pooled"].shape == (2, model.feature_dim)
    assert set(feats) == {"pooled", *model.backbone.tap_names}
    shapes = model.tap_shapes(frames)
    for tap in model.backbone.tap_names:
        assert feats[tap].shape == (2 * persons, *shapes[tap]), tap
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("frames,expected_t", [(64, (64, 32, 16, 16)), (52, (52, 26, 13, 13))])
def test_ctrgcn_taps_follow_methods_1_1(frames, expected_t):
    model = _model("ctrgcn", "ucla20", 1, 10)
    shapes = model.tap_shapes(frames)
    assert [shapes[t] for t in ("low", "mid", "high", "final")] == [
        (c, t, 20) for c, t in zip((64, 128, 256, 256), expected_t)]


def test_ctrgcn_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(_model("ctrgcn", "ntu25", 2, 60)) == 1_446_672
    assert count(_model("ctrgcn", "ucla20", 1, 10)) == 1_426_892


def test_stgcn_quarter_is_the_ssl_encoder():
    model = _model("stgcn_quarter")
    assert model.backbone.channels == (16, 16, 16, 16, 32, 32, 32, 64, 64, 256)
    assert model.feature_dim == 256
    assert [m.tcn[-1].p for m in model.backbone.units] == [0.0] + [0.5] * 9
    assert _model("stgcn").backbone.channels == (64, 64, 64, 64, 128, 128, 128, 256, 256, 256)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(name):
    model = _model(name)
    with torch.no_grad():  # leave the zero / 1e-6 initialisations, which would hide gradient paths
        for mod in model.modules():
            if hasattr(mod, "alpha"):
                mod.alpha.fill_(0.5)
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.fill_(1.0)
    logits = model(_input("ntu25", 2, 20))
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", MODELS)
def test_eval_outputs_do_not_depend_on_the_batch(name):
    model = _model(name).eval()
    x = _input("ntu25", 2, 24, n=3)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_under_a_seed(name):
    a, b = _model(name, seed=3), _model(name, seed=3)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na
    x = _input("ntu25", 2, 20)
    torch.manual_seed(5)
    ya = a(x)
    torch.manual_seed(5)
    yb = b(x)
    assert torch.equal(ya, yb)
    assert not torch.equal(_model(name, seed=4).classifier.weight, a.classifier.weight)


@pytest.mark.parametrize("name", MODELS)
def test_input_mismatch_is_a_clear_error(name):
    model = _model(name, "ntu25", 2, 60)
    with pytest.raises(SkelactError, match="joints"):
        model(torch.zeros(1, 3, 16, 20, 2))
    with pytest.raises(SkelactError, match="channels"):
        model(torch.zeros(1, 2, 16, 25, 2))
    with pytest.raises(SkelactError, match="persons"):
        model(torch.zeros(1, 3, 16, 25, 1))
    with pytest.raises(SkelactError, match="5-d"):
        model(torch.zeros(3, 16, 25, 2))


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(SkelactError, match="ctrgcn.*stgcn"):
        create_model("resnet50", layout="ntu25", num_classes=60)
    with pytest.raises(SkelactError, match="layout"):
        create_model("ctrgcn", layout="smpl24", num_classes=60)
    with pytest.raises(SkelactError, match="no_such_option.*valid: dropout"):
        create_model("ctrgcn", layout="ntu25", num_classes=60, no_such_option=1)
    with pytest.raises(SkelactError, match="num_classes"):
        create_model("ctrgcn", layout="ntu25", num_classes=0)


@pytest.mark.parametrize("name", MODELS)
def test_parameters_are_backbone_plus_classifier(name):
    model = _model(name)
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"backbone", "classifier"}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_adjacency_three_subsets(layout):
    lay = LAYOUTS[layout]
    v = lay.num_joints
    a = adjacency(lay)
    assert a.shape == (3, v, v) and a.dtype == np.float32
    np.testing.assert_array_equal(a[0], np.eye(v))
    children = {p: [c for c, q in lay.edges if q == p] for p in range(v)}
    for child, parent in lay.edges:  # inward: the parent gathers from its child with weight 1
        assert a[1, parent, child] == 1.0
        assert a[2, child, parent] == pytest.approx(1.0 / len(children[parent]))
    assert (a[1] > 0).sum() == (a[2] > 0).sum() == v - 1
    s = adjacency(lay, "stgcn")  # rows average over each joint's neighbourhood
    np.testing.assert_allclose(s.sum((0, 2)), 1.0, rtol=1e-6)
    assert ((s > 0) == (a > 0)).all()


def test_stgcn_graph_conv_matches_the_einsum_definition():
    torch.manual_seed(0)
    unit = _model("stgcn").backbone.units[1]
    with torch.no_grad():
        unit.importance.uniform_(0.5, 1.5)
    x = torch.randn(2, 64, 7, 25)
    y = unit.gcn(x).view(2, 3, 64, 7, 25)  # (N, K, C, T, V), conv channel = k·C + c
    want = torch.einsum("nkctv,kuv->nctu", y, unit.A * unit.importance)
    torch.testing.assert_close(unit.graph_conv(x), want, atol=1e-5, rtol=1e-5)


def test_ctrgcn_tap_shapes_match_a_forward_pass_for_odd_lengths():
    model = _model("ctrgcn", "ucla20", 1, 10).eval()
    for frames in (1, 5, 13):
        with torch.no_grad():
            _, feats = model(_input("ucla20", 1, frames, n=1), return_features=True)
        assert {k: tuple(v.shape[1:]) for k, v in feats.items() if k != "pooled"} == model.tap_shapes(frames)


def _randomise_batchnorms(model, seed=0):
    """Non-trivial eval statistics and affine parameters, so that folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                c = bn.num_features
                bn.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def _num_batchnorms(model):
    return sum(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in model.modules())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("layout,persons,frames,classes", SETTINGS)
def test_folded_batchnorm_computes_the_same_function(name, layout, persons, frames, classes):
    from skelact.models import fold_batchnorm
    model = _randomise_batchnorms(_model(name, layout, persons, classes)).double().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    x = _input(layout, persons, frames, n=3).double()
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
        logits_f, feats_f = folded(x, return_features=True)
    torch.testing.assert_close(logits_f, logits, atol=1e-9, rtol=1e-8)
    for tap in feats:
        torch.testing.assert_close(feats_f[tap], feats[tap], atol=1e-9, rtol=1e-8)
    # the original is untouched; only input BNs and BNs that follow no linear layer remain
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # CTR-GCN keeps data_bn; ST-GCN also the BN of each unit that precedes a ReLU, not a linear layer
    assert _num_batchnorms(folded) == (1 if name == "ctrgcn" else 1 + len(model.backbone.units))
    with pytest.raises(SkelactError, match="folded"):
        folded.train()


def test_folded_ctrgcn_float32_close_and_parameters_fewer():
    from skelact.models import fold_batchnorm
    model = _randomise_batchnorms(_model("ctrgcn", "ucla20", 1, 10)).eval()
    folded = fold_batchnorm(model)
    x = _input("ucla20", 1, 52, n=4)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in folded.parameters()) < sum(p.numel() for p in model.parameters())


def test_folded_ctrgcn_keeps_the_autocast_dtype():
    """Under bf16 autocast the folded model's unit outputs stay bf16 like the unfolded model's: the
    pool branch's leftover BN affine must not promote them (and everything after) to fp32."""
    from skelact.models import fold_batchnorm
    model = _randomise_batchnorms(_model("ctrgcn", "ucla20", 1, 10)).eval()
    folded = fold_batchnorm(model)
    x = _input("ucla20", 1, 8, n=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, feats = model(x, return_features=True)
        logits_f, feats_f = folded(x, return_features=True)
    for tap in feats:
        assert feats_f[tap].dtype == feats[tap].dtype == torch.bfloat16, tap
    assert torch.isfinite(logits_f).all()


def test_ctr_aggregate_gradcheck_with_output_shift():
    from skelact.models.ctrgcn import CTRAggregate
    g = torch.Generator().manual_seed(0)
    b, ci, c, t, v, rel, k = 2, 3, 4, 5, 4, 2, 3

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()
    x = torch.randn(b, ci, t, v, generator=g, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    args = (x, rnd(k, 2, rel, b, v), rnd(k, c, ci), rnd(k, c), rnd(k, c, rel), rnd(k, c), rnd(k, v, v))
    assert torch.autograd.gradcheck(lambda *a: CTRAggregate.apply(*a), (*args, rnd(c)))
    assert torch.autograd.gradcheck(lambda *a: CTRAggregate.apply(*a), args)
    assert torch.autograd.gradcheck(lambda *a: CTRAggregate.apply(*a, None, True), args)  # x3 saved


def _saved_bytes(model, x):
    """Bytes of the distinct non-parameter storages autograd keeps for backward of model(x)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return out, sum(seen.values())


def test_ctrgcn_memory_efficient_same_results_less_saved_memory():
    """memory_efficient=True recomputes conv3's outputs in backward: logits and gradients bit for bit
    the same, and three (C, T, V) tensors per unit and sample fewer kept for backward."""
    x = _input("ucla20", 1, 12, n=3)
    runs = {}
    for me in (False, True):
        model = _model("ctrgcn", "ucla20", 1, 10, memory_efficient=me).train()
        out, saved = _saved_bytes(model, x)
        out.square().sum().backward()
        runs[me] = out, saved, {n: p.grad for n, p in model.named_parameters()}
    (out_f, saved_f, grads_f), (out_m, saved_m, grads_m) = runs[False], runs[True]
    assert torch.equal(out_f, out_m)
    assert grads_f.keys() == grads_m.keys()
    for name in grads_f:
        assert torch.equal(grads_f[name], grads_m[name]), name
    # the x3 of each unit: K = 3 tensors of (C_out, T_unit, V) floats per sample, T halved by units 5 and 8's TCN
    t_gcn = [12] * 5 + [6] * 3 + [3] * 2
    x3_bytes = sum(3 * co * t * 20 * 4 * 3 for (_, co, _), t in zip(UNITS, t_gcn))
    assert 0 <= (saved_f - saved_m) - x3_bytes <= len(UNITS) * 32 * 4  # + the pair kernel's row padding
    with torch.no_grad():  # inference keeps nothing either way
        assert torch.equal(_model("ctrgcn", "ucla20", 1, 10, memory_efficient=False).eval()(x),
                           _model("ctrgcn", "ucla20", 1, 10, memory_efficient=True).eval()(x))


def test_ctrgcn_shortcut_hooks_still_fire():
    """A forward hook on a down-sampling shortcut (an nn.Sequential of conv and BN) sees it run, in
    training too, where its BN otherwise goes through the fused kernel."""
    model = create_model("ctrgcn", layout="ucla20", num_classes=10, num_persons=1).train()
    calls = []
    model.backbone.units[4].residual.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    model(torch.randn(2, 3, 8, 20, 1))
    assert calls == [torch.Size([2, 128, 4, 20])]


def test_c_kernels_can_be_switched_off(tmp_path):
    """SKELACT_NO_C_KERNELS=1 makes every layer PyTorch's (for double backward or forward-mode AD)."""
    import os
    import subprocess
    import sys
    code = "from skelact.models import bnact; print(bnact._fused is None)"
    env = {**os.environ, "SKELACT_NO_C_KERNELS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
