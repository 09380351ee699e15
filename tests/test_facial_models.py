"""Facial models (SISTCM, ResNet baseline, TLSTM head, joint loss) against slow references."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from models.facial import FacialModel, resnet_tlstm, sistcm
from models.sistcm import (
    BasicBlock,
    SuperImageBlock,
    load_imagenet_weights,
    resnet18_frames,
    sistcm_resnet18,
    sistcm_resnet34,
)
from models.tlstm import TwoStreamLSTM, joint_loss

# torchvision resnet18's published ImageNet file (resnet18-f37072fd.pth): 102 keys, no
# num_batches_tracked (it predates them). Written out here so the test does not trust the model.
TORCHVISION_RESNET18 = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.bias": (64,),
    "bn1.running_mean": (64,),
    "bn1.running_var": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.bn1.bias": (64,),
    "layer1.0.bn1.running_mean": (64,),
    "layer1.0.bn1.running_var": (64,),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.bn2.weight": (64,),
    "layer1.0.bn2.bias": (64,),
    "layer1.0.bn2.running_mean": (64,),
    "layer1.0.bn2.running_var": (64,),
    "layer1.1.conv1.weight": (64, 64, 3, 3),
    "layer1.1.bn1.weight": (64,),
    "layer1.1.bn1.bias": (64,),
    "layer1.1.bn1.running_mean": (64,),
    "layer1.1.bn1.running_var": (64,),
    "layer1.1.conv2.weight": (64, 64, 3, 3),
    "layer1.1.bn2.weight": (64,),
    "layer1.1.bn2.bias": (64,),
    "layer1.1.bn2.running_mean": (64,),
    "layer1.1.bn2.running_var": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.bn1.weight": (128,),
    "layer2.0.bn1.bias": (128,),
    "layer2.0.bn1.running_mean": (128,),
    "layer2.0.bn1.running_var": (128,),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.bn2.weight": (128,),
    "layer2.0.bn2.bias": (128,),
    "layer2.0.bn2.running_mean": (128,),
    "layer2.0.bn2.running_var": (128,),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.weight": (128,),
    "layer2.0.downsample.1.bias": (128,),
    "layer2.0.downsample.1.running_mean": (128,),
    "layer2.0.downsample.1.running_var": (128,),
    "layer2.1.conv1.weight": (128, 128, 3, 3),
    "layer2.1.bn1.weight": (128,),
    "layer2.1.bn1.bias": (128,),
    "layer2.1.bn1.running_mean": (128,),
    "layer2.1.bn1.running_var": (128,),
    "layer2.1.conv2.weight": (128, 128, 3, 3),
    "layer2.1.bn2.weight": (128,),
    "layer2.1.bn2.bias": (128,),
    "layer2.1.bn2.running_mean": (128,),
    "layer2.1.bn2.running_var": (128,),
    "layer3.0.conv1.weight": (256, 128, 3, 3),
    "layer3.0.bn1.weight": (256,),
    "layer3.0.bn1.bias": (256,),
    "layer3.0.bn1.running_mean": (256,),
    "layer3.0.bn1.running_var": (256,),
    "layer3.0.conv2.weight": (256, 256, 3, 3),
    "layer3.0.bn2.weight": (256,),
    "layer3.0.bn2.bias": (256,),
    "layer3.0.bn2.running_mean": (256,),
    "layer3.0.bn2.running_var": (256,),
    "layer3.0.downsample.0.weight": (256, 128, 1, 1),
    "layer3.0.downsample.1.weight": (256,),
    "layer3.0.downsample.1.bias": (256,),
    "layer3.0.downsample.1.running_mean": (256,),
    "layer3.0.downsample.1.running_var": (256,),
    "layer3.1.conv1.weight": (256, 256, 3, 3),
    "layer3.1.bn1.weight": (256,),
    "layer3.1.bn1.bias": (256,),
    "layer3.1.bn1.running_mean": (256,),
    "layer3.1.bn1.running_var": (256,),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer3.1.bn2.weight": (256,),
    "layer3.1.bn2.bias": (256,),
    "layer3.1.bn2.running_mean": (256,),
    "layer3.1.bn2.running_var": (256,),
    "layer4.0.conv1.weight": (512, 256, 3, 3),
    "layer4.0.bn1.weight": (512,),
    "layer4.0.bn1.bias": (512,),
    "layer4.0.bn1.running_mean": (512,),
    "layer4.0.bn1.running_var": (512,),
    "layer4.0.conv2.weight": (512, 512, 3, 3),
    "layer4.0.bn2.weight": (512,),
    "layer4.0.bn2.bias": (512,),
    "layer4.0.bn2.running_mean": (512,),
    "layer4.0.bn2.running_var": (512,),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.0.downsample.1.weight": (512,),
    "layer4.0.downsample.1.bias": (512,),
    "layer4.0.downsample.1.running_mean": (512,),
    "layer4.0.downsample.1.running_var": (512,),
    "layer4.1.conv1.weight": (512, 512, 3, 3),
    "layer4.1.bn1.weight": (512,),
    "layer4.1.bn1.bias": (512,),
    "layer4.1.bn1.running_mean": (512,),
    "layer4.1.bn1.running_var": (512,),
    "layer4.1.conv2.weight": (512, 512, 3, 3),
    "layer4.1.bn2.weight": (512,),
    "layer4.1.bn2.bias": (512,),
    "layer4.1.bn2.running_mean": (512,),
    "layer4.1.bn2.running_var": (512,),
    "fc.weight": (1000, 512),
    "fc.bias": (1000,),
}


def _small(factory, **kwargs) -> FacialModel:
    return factory(num_classes=4, lstm1=16, lstm2=8, **kwargs)


def _randomize_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine parameters and running statistics (eval differs from identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def slow_super_image_block(blk: SuperImageBlock, x: torch.Tensor, k: int) -> torch.Tensor:
    """The super-image block (Wei et al. 2024, §1.2) written element by element (frames of a
    clip consecutive in x)."""
    shortcut = x if blk.downsample is None else blk.downsample(x)
    y = F.relu(blk.bn1(blk.conv1(x)))
    n, ch, h, w = y.shape
    bc = n // k
    sup_a = torch.zeros(bc, ch, w, h * k)
    sup_b = torch.zeros(bc, ch, h, w * k)
    for i in range(bc):
        for c in range(ch):
            for kk in range(k):
                for hh in range(h):
                    for ww in range(w):
                        v = y[i * k + kk, c, hh, ww]
                        sup_a[i, c, ww, hh * k + kk] = v
                        sup_b[i, c, hh, ww * k + kk] = v
    za = F.relu(blk.bn2(blk.conv2(sup_a)))
    zb = F.relu(blk.bn2(blk.conv2(sup_b)))
    back_a = torch.zeros(n, ch, h, w)
    back_b = torch.zeros(n, ch, h, w)
    for i in range(bc):
        for c in range(ch):
            for kk in range(k):
                for hh in range(h):
                    for ww in range(w):
                        back_a[i * k + kk, c, hh, ww] = za[i, c, ww, hh * k + kk]
                        back_b[i * k + kk, c, hh, ww] = zb[i, c, hh, ww * k + kk]
    return F.relu(back_a + back_b + shortcut)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize(
    "in_planes,planes,stride,hw",
    [(4, 4, 1, (4, 4)), (3, 5, 2, (8, 8)), (4, 4, 1, (3, 5)), (3, 4, 1, (5, 3))],
    ids=["identity", "downsample", "identity-nonsquare", "downsample-nonsquare"],
)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_super_image_block_matches_slow_reference(
    k, in_planes, planes, stride, hw, train, channels_last
):
    torch.manual_seed(k)
    blk = SuperImageBlock(in_planes, planes, stride)
    assert (blk.downsample is not None) == (stride != 1 or in_planes != planes)
    _randomize_bn(blk, seed=k)
    ref = copy.deepcopy(blk)
    blk.train(train)
    ref.train(train)
    x = torch.randn(2 * k, in_planes, *hw)
    x_in = x.contiguous(memory_format=torch.channels_last) if channels_last else x.clone()
    x_in.requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    got = blk(x_in, k)
    want = slow_super_image_block(ref, x_ref, k)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Same gradients for the input and every parameter (the fast path has its own backward).
    grad_out = torch.randn_like(want)
    got.backward(grad_out)
    want.backward(grad_out)
    torch.testing.assert_close(x_in.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    ref_params = dict(ref.named_parameters())
    for name, p in blk.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-5, msg=name)
    # bn2 sees A and B separately: two running-stat updates with separate batch statistics.
    torch.testing.assert_close(blk.bn2.running_mean, ref.bn2.running_mean)
    torch.testing.assert_close(blk.bn2.running_var, ref.bn2.running_var)
    assert int(blk.bn2.num_batches_tracked) == int(ref.bn2.num_batches_tracked)


def test_super_image_block_rejects_partial_clip():
    blk = SuperImageBlock(2, 2)
    with pytest.raises(ValueError, match="clips"):
        blk(torch.randn(5, 2, 4, 4), 2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("factory", [sistcm, resnet_tlstm], ids=["sistcm", "resnet"])
def test_shapes_full_grid_small_frames(factory):
    model = _small(factory).eval()
    with torch.no_grad():
        for k in range(1, 5):
            for c in range(1, 7):
                x = torch.randint(0, 256, (1, c, k, 3, 64, 64), dtype=torch.uint8)
                feats = model.forward_features(x)
                assert feats.shape == (1, c, 512)
                out = model.forward_head(feats)
                assert set(out) == {"p1", "p2", "p3", "fused", "sum"}
                for v in out.values():
                    assert v.shape == (1, 4)
                    assert torch.isfinite(v).all()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "factory,b,c,k,s",
    [
        (sistcm, 1, 1, 2, 224),
        (sistcm, 2, 2, 3, 112),
        (sistcm, 1, 3, 1, 112),
        (resnet_tlstm, 1, 1, 3, 224),
        (resnet_tlstm, 2, 2, 1, 112),
    ],
)
def test_shapes_large_frames(factory, b, c, k, s):
    model = _small(factory).eval()
    x = torch.rand(b, c, k, 3, s, s)
    with torch.no_grad():
        assert model.forward_features(x).shape == (b, c, 512)
        out = model(x)
    assert all(v.shape == (b, 4) for v in out.values())


def test_factories_record_defaults_and_accept_other_clip_lengths():
    model = sistcm(num_classes=7)
    assert (model.config.clips, model.config.frames, model.num_classes) == (5, 2, 7)
    assert model.config.to_dict()["name"] == "sistcm"
    base = resnet_tlstm(num_classes=7)
    assert (base.config.clips, base.config.frames) == (5, 3)
    assert all(isinstance(b, SuperImageBlock) for b in model.backbone.blocks())
    assert all(isinstance(b, BasicBlock) for b in base.backbone.blocks())
    deep = sistcm_resnet34()
    assert [len(getattr(deep, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    with torch.no_grad():
        assert deep.eval()(torch.rand(1, 2, 3, 3, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize("k", [2, 3])
def test_frame_order_matters_for_sistcm_only(k):
    torch.manual_seed(0)
    x = torch.rand(2, 2, k, 3, 64, 64)
    reversed_x = x.flip(2)  # frames inside each clip reversed
    for factory, order_matters in ((sistcm_resnet18, True), (resnet18_frames, False)):
        net = factory().eval()
        _randomize_bn(net)
        with torch.no_grad():
            a, b = net(x), net(reversed_x)
        if order_matters:
            assert (a - b).abs().max() > 1e-3 * a.abs().max()
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_plain_baseline_averages_frame_features():
    torch.manual_seed(0)
    net = resnet18_frames().eval()
    x = torch.rand(1, 2, 3, 3, 64, 64)
    with torch.no_grad():
        clip_feats = net(x)  # (2, 512)
        per_frame = torch.stack(
            [net(x[:, i : i + 1, j : j + 1]) for i in range(2) for j in range(3)]
        ).view(2, 3, 512)
    torch.testing.assert_close(clip_feats, per_frame.mean(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factory", [sistcm, resnet_tlstm], ids=["sistcm", "resnet"])
@pytest.mark.parametrize("faithful", [True, False])
def test_every_parameter_gets_a_finite_gradient(factory, faithful):
    torch.manual_seed(0)
    model = _small(factory).train()
    x = torch.rand(2, 3, 2, 3, 64, 64)
    loss = joint_loss(model(x), torch.tensor([1, 3]), faithful=faithful)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_eval_is_deterministic_and_uint8_equals_float():
    torch.manual_seed(0)
    model = _small(sistcm).eval()
    x8 = torch.randint(0, 256, (2, 2, 2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        first = model(x8)
        second = model(x8)
        as_float = model(x8.float() / 255.0)
    for key in first:
        assert torch.equal(first[key], second[key]), key
        torch.testing.assert_close(first[key], as_float[key], rtol=1e-5, atol=1e-6)


def test_normalize_switch_applies_imagenet_statistics():
    torch.manual_seed(0)
    raw = sistcm_resnet18().eval()
    norm = sistcm_resnet18(normalize=True).eval()
    norm.load_state_dict(raw.state_dict())
    x = torch.rand(1, 1, 2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(norm(x), raw((x - mean) / std), rtol=1e-5, atol=1e-5)


def test_channels_last_switch_does_not_change_results():
    torch.manual_seed(0)
    fast = sistcm_resnet18().eval()
    plain = sistcm_resnet18(channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    x = torch.rand(1, 2, 2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)


def _torchvision_file(tmp_path, keys=TORCHVISION_RESNET18, name="resnet18.pth", extra=None):
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(s, generator=g) for k, s in keys.items()}
    state.update(extra or {})
    path = tmp_path / name
    torch.save(state, path)
    return path, state


def test_torchvision_resnet18_state_dict_loads_by_name(tmp_path):
    assert len(TORCHVISION_RESNET18) == 102
    path, state = _torchvision_file(tmp_path)
    model = sistcm(num_classes=7)
    backbone = load_imagenet_weights(model, path)
    assert backbone is model.backbone
    got = model.backbone.state_dict()
    assert torch.equal(got["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
    assert torch.equal(
        got["layer2.0.downsample.1.running_var"], state["layer2.0.downsample.1.running_var"]
    )
    assert {k for k in got if not k.endswith("num_batches_tracked")} == {
        k for k in TORCHVISION_RESNET18 if not k.startswith("fc.")
    }
    # A current torchvision state_dict() also carries num_batches_tracked (122 keys).
    counters = {
        k.rsplit(".", 1)[0] + ".num_batches_tracked": torch.tensor(7)
        for k in TORCHVISION_RESNET18
        if k.endswith("running_mean")
    }
    assert len(counters) == 20
    path2, _ = _torchvision_file(tmp_path, name="resnet18-122.pth", extra=counters)
    baseline = resnet18_frames()
    load_imagenet_weights(baseline, path2)
    assert int(baseline.state_dict()["layer4.1.bn2.num_batches_tracked"]) == 7


@pytest.mark.parametrize(
    "change,needle",
    [
        ("missing", "layer2.0.downsample.0.weight"),
        ("shape", "layer1.0.conv1.weight"),
        ("unexpected", "layer5.0.conv1.weight"),
    ],
)
def test_wrong_weight_file_is_a_clear_error(tmp_path, change, needle):
    keys = dict(TORCHVISION_RESNET18)
    extra = None
    if change == "missing":
        del keys[needle]
    elif change == "shape":
        keys[needle] = (64, 64, 5, 5)
    else:
        extra = {needle: torch.zeros(3)}
    path, _ = _torchvision_file(tmp_path, keys=keys, name="wrong.pth", extra=extra)
    model = sistcm(num_classes=7)
    before = copy.deepcopy(model.backbone.state_dict())
    with pytest.raises(ValueError) as info:
        load_imagenet_weights(model, path)
    assert needle in str(info.value)
    assert "wrong.pth" in str(info.value)
    assert {"missing": "missing", "shape": "shape", "unexpected": "unexpected"}[change] in str(
        info.value
    )
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded


def _slow_lstm_last(lstm: torch.nn.LSTM, seq: torch.Tensor) -> torch.Tensor:
    """One-layer LSTM, step by step from the textbook equations; returns the last output."""
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    hidden = w_hh.shape[1]
    h = torch.zeros(seq.shape[0], hidden)
    c = torch.zeros(seq.shape[0], hidden)
    for t in range(seq.shape[1]):
        gates = seq[:, t] @ w_ih.T + h @ w_hh.T + bias
        i, f, g, o = gates.split(hidden, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    return h


def test_tlstm_head_matches_its_definition():
    torch.manual_seed(0)
    head = TwoStreamLSTM(5, in_features=12, lstm1=7, lstm2=6, fusion_weight=0.3).eval()
    feats = torch.randn(3, 4, 12)
    with torch.no_grad():
        out = head(feats)
        clip_probs = torch.softmax(feats @ head.clip_fc.weight.T + head.clip_fc.bias, dim=-1)
        p1 = clip_probs.mean(1)
        p2 = head.fc2(_slow_lstm_last(head.lstm2, clip_probs))
        p3 = head.fc3(_slow_lstm_last(head.lstm1, feats))
    torch.testing.assert_close(out["p1"], p1)
    torch.testing.assert_close(out["p2"], p2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["p3"], p3, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["fused"], 0.3 * p1 + 0.7 * p2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["sum"], p1 + p2 + p3, rtol=1e-5, atol=1e-5)
    # exactly the sum of the three heads it returns, in this order
    assert torch.equal(out["sum"], out["p1"] + out["p2"] + out["p3"])
    torch.testing.assert_close(out["p1"].sum(1), torch.ones(3))


def test_tlstm_default_fusion_and_dropout():
    head = TwoStreamLSTM(3)
    assert head.fusion_weight == 0.2 and head.dropout.p == 0.5
    assert head.lstm1.hidden_size == 1024 and head.lstm2.hidden_size == 512


def test_joint_loss_by_hand():
    outputs = {
        "p1": torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]),
        "p2": torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]),
        "p3": torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 3.0]]),
    }
    target = torch.tensor([0, 2])

    def ce(row, t):
        return -(row[t] - math.log(sum(math.exp(v) for v in row)))

    rows = {k: v.tolist() for k, v in outputs.items()}
    ce2 = sum(ce(rows["p2"][i], t) for i, t in enumerate((0, 2))) / 2
    ce3 = sum(ce(rows["p3"][i], t) for i, t in enumerate((0, 2))) / 2
    faithful_p1 = (ce([0.7, 0.2, 0.1], 0) + ce([0.25, 0.25, 0.5], 2)) / 2
    nll_p1 = (-math.log(0.7) - math.log(0.5)) / 2
    got = joint_loss(outputs, target)
    assert got.item() == pytest.approx(faithful_p1 + ce2 + ce3, rel=1e-6)
    got = joint_loss(outputs, target, faithful=False)
    assert got.item() == pytest.approx(nll_p1 + ce2 + ce3, rel=1e-6)
