"""Model specs: every source (timm, smp, model.py, model.py:NAME, package.module:callable), the
classes / in_channels options, --pretrained passing through, and every bad spec's message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from cubesearch.core.errors import CubesearchError
from cubesearch.models.load import is_smp_model, load_model, parse_spec

ROOT = Path(__file__).resolve().parents[1]
UNET = ROOT / "examples" / "unet.py"
TINY = ROOT / "tests" / "assets" / "tiny_seg.py"


def _out(model: nn.Module, c: int = 3, hw: int = 64) -> torch.Size:
    with torch.no_grad():
        return model.eval()(torch.zeros(1, c, hw, hw)).shape


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "kind", "name", "encoder", "attr"), [
    ("timm:resnet18", "timm", "resnet18", "", None),
    ("smp:Unet:resnet34", "smp", "Unet", "resnet34", None),
    ("smp:UPerNet:tu-convnext_tiny", "smp", "UPerNet", "tu-convnext_tiny", None),
    ("examples/unet.py", "file", "examples/unet.py", "", None),
    ("examples/unet.py:UNet", "file", "examples/unet.py", "", "UNet"),
    ("model.py", "file", "model.py", "", None),
    ("pkg.sub.mod:factory", "import", "pkg.sub.mod", "", "factory"),
])
def test_parse_spec(spec, kind, name, encoder, attr):
    p = parse_spec(spec)
    assert (p.kind, p.name, p.encoder, p.attr) == (kind, name, encoder, attr)


# --- each source -------------------------------------------------------------------------------


def test_timm_model_classes_and_in_channels():
    m = load_model("timm:resnet18", num_classes=5, in_channels=4)
    assert m.conv1.in_channels == 4
    assert m.fc.out_features == 5
    assert _out(m, c=4) == (1, 5)


def test_smp_model_classes_and_in_channels():
    m = load_model("smp:Unet:resnet18", num_classes=3, in_channels=2)
    assert is_smp_model(m)
    assert m.encoder.conv1.in_channels == 2
    assert _out(m, c=2) == (1, 3, 64, 64)


def test_smp_architecture_name_is_case_insensitive():
    m = load_model("smp:unetplusplus:resnet18")
    assert type(m).__name__ == "UnetPlusPlus"


def test_file_build_model_with_options():
    m = load_model(str(UNET), num_classes=2, in_channels=1)
    assert type(m).__name__ == "UNet"
    assert m.encoder[0][0].in_channels == 1
    assert m.head.out_channels == 2
    assert _out(m, c=1, hw=32) == (1, 2, 32, 32)


def test_file_named_callable_and_kwargs(tmp_path):
    m = load_model(f"{UNET}:UNet", num_classes=2, width=4)
    assert type(m).__name__ == "UNet"
    assert m.encoder[0][0].out_channels == 4  # width passed through as an extra kwarg
    assert m.head.out_channels == 2


def test_file_module_level_model_is_copied(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from torch import nn\nmodel = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))\n")
    a = load_model(str(f))
    b = load_model(str(f))
    assert isinstance(a, nn.Sequential) and a is not b
    assert a[0].weight is not b[0].weight


def test_file_prefers_build_model_over_model(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(textwrap.dedent("""
        from torch import nn
        model = nn.Conv2d(3, 1, 1)
        def build_model():
            return nn.Conv2d(3, 7, 1)
    """))
    assert load_model(str(f)).out_channels == 7
    assert load_model(f"{f}:model").out_channels == 1


def test_file_can_import_its_siblings(tmp_path):
    (tmp_path / "helper_mod_xyz.py").write_text("from torch import nn\n"
                                               "def make():\n    return nn.Conv2d(3, 6, 1)\n")
    (tmp_path / "m.py").write_text("from helper_mod_xyz import make\ndef build_model():\n"
                                   "    return make()\n")
    assert load_model(str(tmp_path / "m.py")).out_channels == 6


def test_package_module_callable(tmp_path, monkeypatch):
    pkg = tmp_path / "cs_user_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent("""
        from torch import nn
        def factory(num_classes=1, in_channels=3):
            return nn.Conv2d(in_channels, num_classes, 3, padding=1)
        instance = nn.Conv2d(3, 9, 1)
        not_a_model = 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    m = load_model("cs_user_pkg.nets:factory", num_classes=4, in_channels=2)
    assert (m.in_channels, m.out_channels) == (2, 4)
    assert load_model("cs_user_pkg.nets:instance").out_channels == 9
    with pytest.raises(CubesearchError, match="is a int, not an nn.Module or a callable"):
        load_model("cs_user_pkg.nets:not_a_model")
    with pytest.raises(CubesearchError, match="module cs_user_pkg.nets has no 'factroy'.*factory"):
        load_model("cs_user_pkg.nets:factroy")


def test_callable_without_options_refuses_non_default_options(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from torch import nn\ndef build_model():\n    return nn.Conv2d(3, 1, 1)\n")
    assert load_model(str(f)).out_channels == 1
    with pytest.raises(CubesearchError, match="does not take num_classes, so num_classes=3"):
        load_model(str(f), num_classes=3)


def test_callable_returning_non_module(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def build_model():\n    return 'hello'\n")
    with pytest.raises(CubesearchError, match="expected a torch.nn.Module, got str"):
        load_model(str(f))


# --- pretrained passes through -----------------------------------------------------------------


def test_pretrained_passes_through_to_timm(monkeypatch):
    import timm

    seen = {}

    def fake_create(name, **kw):
        seen.update(kw, name=name)
        return nn.Identity()

    monkeypatch.setattr(timm, "create_model", fake_create)
    load_model("timm:resnet18", pretrained=True, num_classes=3, in_channels=2)
    assert seen == {"name": "resnet18", "pretrained": True, "num_classes": 3, "in_chans": 2}
    load_model("timm:resnet18")
    assert seen["pretrained"] is False


def test_pretrained_passes_through_to_smp(monkeypatch):
    import segmentation_models_pytorch as smp

    seen = {}

    def fake_create(arch, **kw):
        seen.clear()
        seen.update(kw, arch=arch)
        return nn.Identity()

    monkeypatch.setattr(smp, "create_model", fake_create)
    load_model("smp:unet:resnet18", pretrained=True, num_classes=2, in_channels=4)
    assert seen == {"arch": "Unet", "encoder_name": "resnet18", "encoder_weights": "imagenet",
                    "in_channels": 4, "classes": 2}
    load_model("smp:Unet:resnet18")
    assert seen["encoder_weights"] is None


def test_pretrained_passes_through_to_user_callable(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from torch import nn\ndef build_model(pretrained=False):\n"
                 "    return nn.Conv2d(3, 2 if pretrained else 1, 1)\n")
    assert load_model(str(f), pretrained=True).out_channels == 2
    assert load_model(str(f)).out_channels == 1


def test_download_failure_is_one_clear_line(monkeypatch):
    import timm

    def offline(name, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(CubesearchError, match=r"could not download pretrained weights .*"
                                              r"try without --pretrained"):
        load_model("timm:resnet18", pretrained=True)


# --- bad specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ("timm:resnet1", r"unknown timm model 'resnet1'; did you mean resnet18"),
    ("smp:Unett:resnet18", r"unknown smp architecture 'Unett'; did you mean Unet"),
    ("smp:Unet:resnet1", r"unknown smp encoder 'resnet1'; did you mean resnet18"),
    ("smp:Unet:tu-resnet1", r"unknown smp encoder 'tu-resnet1'; did you mean tu-resnet18"),
    ("smp:Unet", r"expected smp:ARCH:ENCODER"),
    ("timm:", r"missing timm model name"),
    ("", r"empty model spec"),
    ("whatever", r"cannot understand model spec 'whatever'"),
    ("does/not/exist.py", r"no such file: does/not/exist.py"),
    ("nosuchmod_zz.x:y", r"no module named 'nosuchmod_zz'"),
])
def test_bad_specs(spec, message):
    with pytest.raises(CubesearchError, match=message):
        load_model(spec)


def test_bad_options():
    with pytest.raises(CubesearchError, match="num_classes must be ≥ 1"):
        load_model("timm:resnet18", num_classes=0)
    with pytest.raises(CubesearchError, match="in_channels must be ≥ 1"):
        load_model("timm:resnet18", in_channels=0)


def test_syntax_error_names_file_and_line(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("import torch\n\ndef build_model(:\n    pass\n")
    with pytest.raises(CubesearchError, match=rf"^{f}:3: syntax error"):
        load_model(str(f))


def test_exception_at_import_names_file_and_line(tmp_path):
    f = tmp_path / "raises.py"
    f.write_text("x = 1\ny = 2\nraise RuntimeError('boom at import')\n")
    with pytest.raises(CubesearchError,
                       match=rf"^{f}:3: RuntimeError: boom at import \(while importing {f}\)"):
        load_model(str(f))


def test_exception_in_factory_names_file_and_line(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def build_model():\n    return 1 / 0\n")
    with pytest.raises(CubesearchError, match=rf"^{f}:2: ZeroDivisionError"):
        load_model(str(f))


def test_file_without_build_model_or_model(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from torch import nn\ndef make_net():\n    return nn.Conv2d(3, 1, 1)\n")
    with pytest.raises(CubesearchError,
                       match=r"defines neither build_model\(\) nor a module-level `model` "
                             r"\(it defines: make_net; pick one with .*:NAME\)"):
        load_model(str(f))
    with pytest.raises(CubesearchError, match=r"has no 'make_nett'; did you mean make_net"):
        load_model(f"{f}:make_nett")


def test_directory_is_not_a_model(tmp_path):
    d = tmp_path / "dir.py"
    d.mkdir()
    with pytest.raises(CubesearchError, match="is a directory"):
        load_model(str(d))


def test_unknown_factory_kwarg(tmp_path):
    with pytest.raises(CubesearchError, match="does not accept colour"):
        load_model(str(UNET), colour="red")
