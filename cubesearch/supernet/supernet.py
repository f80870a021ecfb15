"""`Supernet`: one set of weights holding every plan of a search space.

`build_supernet(model, report, space)` wraps every searchable site of `model` in an
`ElasticSite` (the original conv plus the block weights of every configuration the space allows
there; see `cubesearch.supernet.elastic` for what is shared). `set_plan(plan)` activates one path
per site; `extract(plan)` returns the ordinary `convert(model, plan)` model with the active path's
weights copied in, equal to the supernet under that plan (eval mode, float rounding): a plan
scored in the supernet is exactly the model that would be exported.

Saved as a folder: `supernet.safetensors` (every weight and BatchNorm statistic) and
`supernet.json` (model spec, search space, site names, SHA-256 of the weights); nothing pickled.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from cubesearch.blocks import CubeBlock, CubeConfig
from cubesearch.conversion import convert
from cubesearch.cost import CostModel
from cubesearch.errors import CubesearchError
from cubesearch.helpers import atomic_path, atomic_write, file_sha256
from cubesearch.models import load_model, load_model_from
from cubesearch.plan import Plan
from cubesearch.sites import Site, find_sites
from cubesearch.space import SearchSpace
from cubesearch.supernet.elastic import ElasticSite
from cubesearch.supernet.score import Scorer
from cubesearch.supernet.train import SupernetTrainConfig, SupernetTrainResult, train_supernet

FORMAT = "cubesearch-supernet"
FORMAT_VERSION = 1
WEIGHTS = "supernet.safetensors"
MANIFEST = "supernet.json"


def _close(name: str, names: Sequence[str]) -> str:
    import difflib

    near = difflib.get_close_matches(name, list(names), n=3)
    return f" (did you mean {', '.join(map(repr, near))}?)" if near else ""


def _swap(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` wherever `root` holds `old` (a module may be registered under several names)."""
    found = False
    for parent in list(root.modules()):
        for key, child in list(parent._modules.items()):
            if child is old:
                parent._modules[key] = new
                found = True
    if not found:
        raise CubesearchError("internal: module to replace not found")


def _as_sites(plan: Any) -> dict[str, CubeConfig]:
    """site → CubeConfig from a `Plan`, a mapping (of configs or knob dicts) or None."""
    if plan is None:
        return {}
    if hasattr(plan, "sites"):
        if getattr(plan, "insertions", None):
            raise CubesearchError("the supernet scores replacements only; this plan inserts blocks "
                                  f"after {sorted(plan.insertions)[0]!r}")
        plan = plan.sites
    if not isinstance(plan, Mapping):
        raise CubesearchError(f"a plan is a Plan or a mapping site → CubeConfig, not "
                              f"{type(plan).__name__}")
    out = {}
    for name, cfg in plan.items():
        if not isinstance(cfg, CubeConfig):
            try:
                cfg = CubeConfig.from_dict(cfg)
            except ValueError as exc:
                raise CubesearchError(f"site {name!r}: {exc}") from None
        out[str(name)] = cfg
    return out


class Supernet(nn.Module):
    """A model whose searchable convs are `ElasticSite`s; one plan active at a time.

    Build it with `Supernet.build` / `build_supernet`. The wrapped model is `self.net`; calling
    the supernet runs it under the active plan (`set_plan`, `plan` / `using`).
    """

    def __init__(self, net: nn.Module, sites: Sequence[Site], space: SearchSpace, *,
                 model_spec: str = "", model_kwargs: Mapping[str, Any] | None = None,
                 input_size: Sequence[int] = (3, 512, 512), cost: CostModel | None = None) -> None:
        super().__init__()
        self.net = net
        self.site_info = {s.name: s for s in sites}
        self.space = space
        self.model_spec = model_spec
        self.model_kwargs = dict(model_kwargs or {})
        self.input_size = tuple(int(v) for v in input_size)
        self.cost = cost
        self._plan: dict[str, CubeConfig] = {}
        self._order: list[nn.Module] | None = None  # execution order (BatchNorms and sites)

    # --- building -------------------------------------------------------------------------------

    @classmethod
    def build(cls, model: nn.Module | str, report: Any = None, space: Any = "default", *,
              model_kwargs: Mapping[str, Any] | None = None,
              input_size: Sequence[int] | None = None) -> Supernet:
        """Wrap every site of `space` in `model` (an nn.Module, or a model spec such as
        `smp:Unet:resnet18`). `report` is `find_sites(model, input_size)` (traced here when
        None); `space` a `SearchSpace`, a shipped space's name or a YAML path. `model` itself
        is not modified."""
        spec = ""
        kwargs = dict(model_kwargs or {"num_classes": 1, "in_channels": 3})
        if isinstance(model, str):
            spec = model
            model = load_model(spec, **kwargs)
        if not isinstance(space, SearchSpace):
            space = SearchSpace.load(space)
        if report is None:
            report = find_sites(model, input_size=tuple(input_size or (3, 512, 512)))
        size = tuple(getattr(report, "input_size", None) or input_size or (3, 512, 512))
        searchable = space.searchable(list(getattr(report, "sites", report)))
        if not searchable:
            raise CubesearchError("no searchable site: the space's sites match none of the model's "
                                  "eligible convs")
        cost = None
        if getattr(report, "base_flops", None) is not None:
            cost = CostModel(report)
        net = copy.deepcopy(model)
        modules = dict(net.named_modules())
        for site in searchable:
            conv = modules.get(site.name)
            if not isinstance(conv, nn.Conv2d):
                raise CubesearchError(f"site {site.name!r} is not an nn.Conv2d of this model")
            elastic = ElasticSite(conv, space.site_combos(site), name=site.name)
            elastic.train(conv.training)
            _swap(net, conv, elastic)
        return cls(net, searchable, space, model_spec=spec or getattr(report, "model", ""),
                   model_kwargs=kwargs, input_size=size, cost=cost)

    # --- sites and plans ----------------------------------------------------------------------

    @property
    def sites(self) -> dict[str, ElasticSite]:
        """Site name → its ElasticSite (in the order of the model's modules)."""
        return {n: m for n, m in self.net.named_modules() if isinstance(m, ElasticSite)}

    @property
    def site_names(self) -> list[str]:
        return list(self.site_info)

    @property
    def plan(self) -> dict[str, CubeConfig]:
        return dict(self._plan)

    def check_plan(self, plan: Any) -> dict[str, CubeConfig]:
        """The plan as site → CubeConfig; a clear error for a site the supernet does not have or
        a config outside the space at that site."""
        sites_cfg = _as_sites(plan)
        sites = self.sites
        for name, cfg in sites_cfg.items():
            if name not in sites:
                raise CubesearchError(f"plan names site {name!r}, which this supernet does not have"
                                      f"{_close(name, list(sites))} ({len(sites)} searchable sites)")
            sites[name].check(cfg)
        return sites_cfg

    def set_plan(self, plan: Any) -> Supernet:
        """Activate `plan` (Plan, mapping site → CubeConfig, or None / {} = the unconverted model)."""
        sites_cfg = self.check_plan(plan)
        for name, site in self.sites.items():
            site.set_config(sites_cfg.get(name))
        self._plan = sites_cfg
        return self

    @contextlib.contextmanager
    def using(self, plan: Any) -> Iterator[Supernet]:
        """`with supernet.using(plan): ...` — the previous plan comes back afterwards."""
        previous = self._plan
        self.set_plan(plan)
        try:
            yield self
        finally:
            self.set_plan(previous)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)

    def flops(self, plan: Any = None) -> float | None:
        """Cost-model FLOPs of `plan` (the active one by default), None without a cost model."""
        if self.cost is None:
            return None
        return self.cost.flops(self._plan if plan is None else self.check_plan(plan))

    def sample_plan(self, rng: random.Random, budget_flops: float | None = None,
                    tries: int = 200) -> dict[str, CubeConfig]:
        """A random plan: each site replaced with probability p (p uniform per plan, so dense and
        sparse plans both come up), its config uniform over the space there; within
        `budget_flops` when given (rejection, then the cheapest plan)."""
        sites = list(self.site_info.values())
        for _ in range(tries):
            plan = self.space.random_plan(sites, rng)
            if budget_flops is None or self.cost is None or self.cost.flops(plan) <= budget_flops:
                return plan
        return self.cheapest_plan()

    def cheapest_plan(self) -> dict[str, CubeConfig]:
        """The lowest-FLOPs plan (sites priced independently; a site stays a conv when no block
        is cheaper). Needs the cost model."""
        if self.cost is None:
            raise CubesearchError("the cheapest plan needs FLOPs: build the supernet from "
                                  "find_sites(..., flops=True)")
        cost = self.cost
        base = cost.flops({})
        return self.space.best_plan(list(self.site_info.values()),
                                    lambda name, cfg: cost.flops({name: cfg}) - base)

    # --- parameters ---------------------------------------------------------------------------

    def block_parameters(self) -> list[nn.Parameter]:
        """The block weights (new); everything else is the wrapped model's (`base_parameters`)."""
        return [p for site in self.sites.values() for p in site.block_parameters()]

    def base_parameters(self) -> list[nn.Parameter]:
        block = {id(p) for p in self.block_parameters()}
        return [p for p in self.net.parameters() if id(p) not in block]

    def load_baseline(self, source: nn.Module | Mapping[str, Tensor]) -> int:
        """Copy a trained unconverted model's weights (module or state dict) into the conv paths
        and the rest of the model. Returns the number of tensors loaded; every one must match."""
        state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
        own = self.net.state_dict()
        renamed = {}
        for key, value in state.items():
            name = key
            if name not in own:
                parent, _, leaf = key.rpartition(".")
                name = f"{parent}.conv.{leaf}" if parent in self.site_info else key
            if name not in own or tuple(own[name].shape) != tuple(value.shape):
                raise CubesearchError(f"baseline tensor {key!r} has no match in the supernet "
                                      "(another architecture?)")
            renamed[name] = value
        self.net.load_state_dict(renamed, strict=False)
        return len(renamed)

    # --- execution order and BatchNorms ---------------------------------------------------------

    def record_order(self, x: Tensor) -> None:
        """Record in which order one forward pass (the unconverted path) calls the model's
        BatchNorms and the sites (for `changed_norms`)."""
        order: list[nn.Module] = []
        seen: set[int] = set()

        def pre(module: nn.Module, _args: Any) -> None:
            if id(module) not in seen:
                seen.add(id(module))
                order.append(module)

        inside = {id(m) for s in self.sites.values() for m in s.units.modules()}
        watch = [m for m in self.net.modules()
                 if isinstance(m, (ElasticSite, nn.modules.batchnorm._BatchNorm))
                 and id(m) not in inside]
        handles = [m.register_forward_pre_hook(pre) for m in watch]
        try:
            with self.using({}), torch.no_grad():
                was = self.net.training
                self.net.eval()
                self.net(x)
                self.net.train(was)
        finally:
            for h in handles:
                h.remove()
        self._order = order

    def changed_norms(self, plan: Any = None) -> list[nn.modules.batchnorm._BatchNorm]:
        """The BatchNorms whose inputs `plan` changes relative to the unconverted model: those of
        the blocks it runs, and every BatchNorm of the model that the forward pass calls after the
        first replaced site (nothing before it can see the change). Needs `record_order`."""
        sites_cfg = self._plan if plan is None else self.check_plan(plan)
        if not sites_cfg:
            return []
        if self._order is None:
            raise CubesearchError("changed_norms needs the execution order: call record_order(x)")
        sites = self.sites
        replaced = {id(sites[n]) for n in sites_cfg}
        first = next((i for i, m in enumerate(self._order) if id(m) in replaced), len(self._order))
        norms = [m for m in self._order[first:] if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for name, cfg in sites_cfg.items():
            norms.extend(sites[name].norms(cfg))
        return norms

    # --- extraction -----------------------------------------------------------------------------

    def plain(self) -> nn.Module:
        """A copy of the wrapped model with every site back to its conv (the unconverted model
        with the supernet's current conv-path weights and statistics)."""
        net = copy.deepcopy(self.net)
        for site in [m for m in net.modules() if isinstance(m, ElasticSite)]:
            _swap(net, site, site.conv)
        return net

    def make_plan(self, plan: Any = None) -> Any:
        """A `cubesearch.Plan` for `plan` (default: the active one) on this supernet's model."""
        sites_cfg = self._plan if plan is None else self.check_plan(plan)
        return Plan(model=self.model_spec or "model", model_kwargs=dict(self.model_kwargs),
                    input_size=self.input_size, sites=dict(sites_cfg))

    def extract(self, plan: Any = None) -> nn.Module:
        """`convert(model, plan)` with the supernet's weights for `plan` (default: the active
        one) copied in: the conv paths, the rest of the model and every block's active path.
        Same train/eval mode as the supernet."""
        p = self.make_plan(plan)
        model = convert(self.plain(), p)
        sites = self.sites
        for name, cfg in p.sites.items():
            block = model.get_submodule(name)
            if not isinstance(block, CubeBlock):  # pragma: no cover - convert's contract
                raise CubesearchError(f"convert put {type(block).__name__} at {name!r}")
            sites[name].copy_into(block, cfg)
        return model.train(self.net.training)

    # --- training and scoring (cubesearch.supernet.train / .score) --------------------------------

    def train(self, mode: bool = True) -> Supernet:
        """nn.Module's mode switch, as everywhere in PyTorch; the supernet trains with `fit`."""
        if not isinstance(mode, bool):
            raise TypeError("Supernet.train(mode) switches train/eval mode; train the supernet "
                            "on data with Supernet.fit(data, ...)")
        return super().train(mode)

    def fit(self, data: Any, config: SupernetTrainConfig | None = None, *,
            out: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
            **overrides: Any) -> SupernetTrainResult:
        """Train from the baseline the conv paths hold (`load_baseline`): `data` is the training
        set or a (train, val) pair; `out` a folder for resumable checkpoints; `overrides` are
        `SupernetTrainConfig` fields (epochs, distill_steps, random_paths, kd_weight, …)."""
        train_ds, val_ds = (data[0], data[1]) if isinstance(data, (tuple, list)) else (data, None)
        self._data = (train_ds, val_ds if val_ds is not None else getattr(self, "_data", (None, None))[1])
        self._scorer = None
        return train_supernet(self, train_ds, config, out=out, log=log, **overrides)

    def score(self, plan: Any, data: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Validation metrics of `plan` in the supernet (IoU, F1, …, seconds): BatchNorms it
        changes re-estimated on fixed training batches, restored afterwards. `data`: a (train,
        val) pair (default: the one given to `fit`); `kwargs` go to `Scorer`."""
        if data is not None or kwargs or getattr(self, "_scorer", None) is None:
            train_ds, val_ds = data if data is not None else getattr(self, "_data", (None, None))
            if train_ds is None or val_ds is None:
                raise CubesearchError("score() needs data: a (train, val) pair of datasets")
            self._scorer = Scorer(self, train_ds, val_ds, **kwargs)
        return self._scorer(plan)

    # --- save / load ----------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, Tensor]:
        """The state dict as independent contiguous CPU tensors (safetensors refuses aliases)."""
        return {k: v.detach().cpu().contiguous().clone() for k, v in self.net.state_dict().items()}

    def manifest(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "model": self.model_spec,
                "model_kwargs": self.model_kwargs, "input_size": list(self.input_size),
                "space": self.space.model_dump(mode="json"), "sites": self.site_names}

    def save(self, folder: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write `supernet.safetensors` and `supernet.json` into `folder` (each atomically, the
        JSON last: it records the weights' SHA-256, so a half-written pair is detected)."""
        dest = Path(folder)
        with atomic_path(dest / WEIGHTS) as tmp:
            save_file(self.state_tensors(), str(tmp), metadata={"format": FORMAT})
            digest = file_sha256(tmp)
        info = dict(self.manifest(), sha256=digest, **dict(extra or {}))
        atomic_write(dest / MANIFEST, json.dumps(info, indent=1, default=str) + "\n")
        return dest

    @classmethod
    def load(cls, folder: str | os.PathLike, model: nn.Module | None = None, *,
             report: Any = None) -> Supernet:
        """Rebuild a saved supernet: its model from the saved spec (or `model`, the unconverted
        module it was built from), its space, then the weights (checked against the SHA-256)."""
        src = Path(folder)
        info = read_manifest(src)
        weights = src / WEIGHTS
        if not weights.is_file():
            raise CubesearchError(f"{weights} is missing")
        if file_sha256(weights) != info.get("sha256"):
            raise CubesearchError(f"{weights} does not match the SHA-256 in {MANIFEST} (altered or "
                                  "half-written)")
        space = SearchSpace.from_dict(info["space"], source=str(src / MANIFEST))
        if model is None:
            if not info.get("model"):
                raise CubesearchError(f"{src}: the supernet was built from a module, not a model "
                                      "spec; pass the model: Supernet.load(folder, model)")
            # a spec read from a file: model code runs only as cubesearch.trust allows
            model = load_model_from(info["model"], source=src / MANIFEST, folder=src,
                                    **info.get("model_kwargs", {}))
        sup = cls.build(model, report, space, model_kwargs=info.get("model_kwargs"),
                        input_size=info.get("input_size"))
        if info.get("model"):
            sup.model_spec = info["model"]
        if sup.site_names != list(info["sites"]):
            raise CubesearchError(f"{src}: the model's searchable sites differ from the saved "
                                  "supernet's (another model or space?)")
        state = load_file(str(weights))
        missing, unexpected = sup.net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise CubesearchError(f"{weights}: the weights do not fit the rebuilt supernet "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        return sup

    def extra_repr(self) -> str:
        return f"sites={len(self.site_info)}, model={self.model_spec!r}"


def build_supernet(model: nn.Module | str, report: Any = None, space: Any = "default",
                   **kwargs: Any) -> Supernet:
    """`Supernet.build(model, report, space)`."""
    return Supernet.build(model, report, space, **kwargs)


def read_manifest(folder: Path) -> dict[str, Any]:
    file = folder / MANIFEST
    if not file.is_file():
        raise CubesearchError(f"{folder} is not a saved supernet (no {MANIFEST})")
    try:
        info = json.loads(file.read_text())
    except ValueError:
        raise CubesearchError(f"{file} is not valid JSON (altered or truncated)") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CubesearchError(f"{file} is not a cubesearch supernet manifest")
    if info.get("version") != FORMAT_VERSION:
        raise CubesearchError(f"{file}: supernet format version {info.get('version')!r} is not "
                              f"supported (this cubesearch reads {FORMAT_VERSION})")
    return info
