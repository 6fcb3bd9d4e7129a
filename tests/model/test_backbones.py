from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from models.backbones import build_backbone
from models.net import OceanNet
from models.zoo import ZOO, get_spec


@pytest.mark.parametrize("name", sorted({spec.backbone for spec in ZOO.values()} |
                                        {"resnet18", "mobilenet_v3_small"}))
def test_every_backbone_builds_headless_and_feeds_a_sized_head(name: str) -> None:
    backbone, features = build_backbone(name)
    net = OceanNet(backbone, features, 3, "classification").eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 3)


def test_byte_images_are_scaled_as_the_float_images_they_stand_for() -> None:
    backbone, features = build_backbone("resnet18")
    net = OceanNet(backbone, features, 3, "classification").eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        as_bytes, as_floats, unscaled = net(images), net(images.float() / 255), net(images.float())
    assert torch.allclose(as_bytes, as_floats, atol=1e-5)
    assert not torch.allclose(as_floats, unscaled, atol=1e-3)  # so the scaling is what matched


def test_regression_outputs_stay_in_the_unit_interval() -> None:
    spec = get_spec("water-quality", backbone="resnet18")
    backbone, features = build_backbone(spec.backbone)
    out = OceanNet(backbone, features, spec.num_outputs, spec.task)(torch.randn(4, 3, 32, 32) * 5)
    assert out.shape == (4, spec.num_outputs) and out.min() >= 0 and out.max() <= 1


def test_local_pretrained_weights_are_loaded(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = tvm.resnet18(weights=None)
    path = tmp_path / "resnet18-local.pt"
    torch.save(reference.state_dict(), path)
    backbone, _ = build_backbone("resnet18", path)
    assert torch.equal(backbone.conv1.weight, reference.conv1.weight)
    fresh, _ = build_backbone("resnet18")
    assert not torch.equal(fresh.conv1.weight, reference.conv1.weight)


def test_unknown_model_names_say_what_exists() -> None:
    with pytest.raises(KeyError, match="plastic-detector"):
        get_spec("kraken-detector")


def test_weights_of_another_backbone_are_refused_naming_the_keys(tmp_path: Path) -> None:
    from models.backbones import WeightsError

    path = tmp_path / "resnet34.pt"
    torch.save(tvm.resnet34(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match=r"does not match backbone resnet18: \d+ unexpected "
                                           r"keys \(layer1\.2\.bn1\.bias"):
        build_backbone("resnet18", path)


def test_weights_with_a_missing_key_and_a_wrong_shape_are_refused(tmp_path: Path) -> None:
    from models.backbones import WeightsError

    state = tvm.resnet18(weights=None).state_dict()
    del state["layer4.1.bn2.weight"]
    state["fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError) as refused:
        build_backbone("resnet18", path)
    message = str(refused.value)
    assert "1 missing keys (layer4.1.bn2.weight)" in message
    assert "1 keys with another shape (fc.weight)" in message


def test_torchvision_weights_are_read_from_the_torch_cache_never_downloaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.backbones import WeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    name = "ResNet18_Weights.IMAGENET1K_V1"
    with pytest.raises(WeightsError, match=r"not in the torch cache .* does not download: fetch "
                                           r"https://download\.pytorch\.org/.*resnet18"):
        build_backbone("resnet18", name)
    torch.manual_seed(3)
    cached = tvm.resnet18(weights=None)
    url = tvm.get_weight(name).url
    target = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.save(cached.state_dict(), target)
    backbone, _ = build_backbone("resnet18", name)
    assert torch.equal(backbone.conv1.weight, cached.conv1.weight)
    with pytest.raises(WeightsError, match="neither a file nor a torchvision weights name"):
        build_backbone("resnet18", "no-such-weights.pt")


def test_densenet_weights_in_torchvisions_old_key_names_load(tmp_path: Path) -> None:
    """torchvision's DenseNet-121 file names layers "denselayer1.norm.1.weight"; its own
    loader renames them, and so does OceanML's, so the zoo's water-quality backbone loads."""
    import re

    torch.manual_seed(5)
    reference = tvm.densenet121(weights=None)
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
           for k, v in reference.state_dict().items()
           if not k.endswith("num_batches_tracked")}  # as torchvision's file: none of them
    assert any(".norm.1." in k for k in old)
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(old, path)
    backbone, _ = build_backbone("densenet121", path)
    assert torch.equal(backbone.features.denseblock1.denselayer1.norm1.weight,
                       reference.features.denseblock1.denselayer1.norm1.weight)
