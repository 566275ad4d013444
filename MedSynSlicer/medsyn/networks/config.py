"""Network configurations: JSON-friendly dataclasses, the official full-size configs, the official kwargs mapping."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Union

from torch import nn

from ..errors import MedSynError
from .lowres_unet import LowResUNet3D
from .sr_unet import SRUNet3D
from .unet_levels import check_up_order


class _NetworkConfig:
    """Shared dict round-trip; subclasses are dataclasses whose fields are the network's constructor arguments."""

    def __post_init__(self) -> None:
        self.dim_mults = tuple(self.dim_mults)
        check_up_order(self.up_order)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dim_mults"] = list(self.dim_mults)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "_NetworkConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MedSynError(f"unknown {cls.__name__} field(s) {unknown}; allowed: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise MedSynError(f"invalid {cls.__name__}: {exc}") from exc


@dataclass
class LowResConfig(_NetworkConfig):
    """Constructor arguments of :class:`LowResUNet3D`."""

    dim: int
    cond_dim: int
    dim_mults: tuple[int, ...]
    channels: int = 4
    attn_heads: int = 8
    resnet_groups: int = 8
    init_kernel_size: int = 7
    up_order: str = "eval"
    parameterization: str = "x0"  # demo-model option "v" (see LowResUNet3D); official weights predict x0

    def build(self) -> LowResUNet3D:
        return LowResUNet3D(**asdict(self))


@dataclass
class SRConfig(_NetworkConfig):
    """Constructor arguments of :class:`SRUNet3D`."""

    dim: int
    dim_mults: tuple[int, ...]
    channels: int = 4
    attn_heads: int = 4
    resnet_groups: int = 8
    init_kernel_size: int = 7
    up_order: str = "eval"
    residual: bool = False  # demo-model option (see SRUNet3D); official weights are plain x0 predictors

    def build(self) -> SRUNet3D:
        return SRUNet3D(**asdict(self))


NetworkConfig = Union[LowResConfig, SRConfig]

OFFICIAL_LOWRES = LowResConfig(dim=160, cond_dim=768, dim_mults=(1, 2, 4, 8), attn_heads=8, resnet_groups=8)
OFFICIAL_SR = SRConfig(dim=56, dim_mults=(1, 2, 4, 8), attn_heads=4, resnet_groups=8)

# Official constructor arguments that create no parameters and change nothing in the released configurations.
_IGNORED_OFFICIAL_ARGS = {"attn_dim_head", "use_bert_text_cond", "block_type", "total_slices", "init_dim",
                          "use_sparse_linear_attn"}
_CONFIG_CLASSES = {"lowres": LowResConfig, "sr": SRConfig}


def _check_official_variant(kind: str, kwargs: Mapping[str, Any]) -> None:
    """Reject official arguments whose non-default values would build a different module tree than ours."""
    if kwargs.get("init_dim") not in (None, kwargs.get("dim")):
        raise MedSynError("init_dim different from dim is not supported (the official head assumes init_dim == dim)")
    if kwargs.get("block_type", "resnet") != "resnet":
        raise MedSynError(f"block_type {kwargs['block_type']!r} is not supported; only 'resnet' was released")
    if kind == "sr" and kwargs.get("use_sparse_linear_attn", False):
        raise MedSynError("SR networks with use_sparse_linear_attn=True are not supported (the released SR has it off)")


def from_official_kwargs(kind: str, kwargs: Mapping[str, Any]) -> NetworkConfig:
    """Config from the official ``Unet3D(**kwargs)`` (``kind`` "lowres" or "sr"), e.g. a fixture manifest's."""
    if kind not in _CONFIG_CLASSES:
        raise MedSynError(f"unknown network kind {kind!r}; use 'lowres' or 'sr'")
    _check_official_variant(kind, kwargs)
    ignored = _IGNORED_OFFICIAL_ARGS | ({"cond_dim"} if kind == "sr" else set())
    return _CONFIG_CLASSES[kind].from_dict({k: v for k, v in kwargs.items() if k not in ignored})


def count_parameters(module: nn.Module) -> int:
    """Unique parameters (the shared spatial attention counts once)."""
    return sum(p.numel() for p in module.parameters())
