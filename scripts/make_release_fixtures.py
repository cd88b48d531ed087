"""Write tests/fixtures/openocr_svtr_release.pt and vitstr_release.pt once, from the references' own code (run by
hand, not by the tests).

    python scripts/make_release_fixtures.py --openocr /path/to/OpenOCR-checkout   # needs timm 0.9.16 too
    python scripts/make_release_fixtures.py --parseq /path/to/parseq-checkout     # parseq_baselines_release.pt

ViTSTR (``vitstr_release.pt``): timm's ``VisionTransformer`` as baudm/parseq's ``strhub/models/vitstr`` builds it
(reduced: width 32, depth 2, 2 heads, 4 x 8 patches on 32 x 128, 36 characters), its forward as
``ViTSTR.forward`` and the system's ``forward`` write it (the first ``max_length + 2`` tokens through the head,
the first dropped), weights from the same seeded generator, saved as the release saves a Lightning system's
``state_dict`` (``model.`` prefixed), on the same crops preprocessed as parseq does (RGB, bicubic).

OpenOCR's ``BaseRecognizer`` is built as ``configs/rec/svtrs/svtrnet_ctc_syn.yml`` builds SVTR-Tiny + CTC (94
characters of ``EN_symbol_dict.txt`` + blank), its weights are drawn from a seeded generator
(``tests/helpers.release_weights``, which the test calls again, so the fixture holds no weights), and it reads the crops of
``../shared/data/real/parseq_demo`` and ``dtrb_demo`` preprocessed as OpenOCR's ``resize_norm_img`` does (BGR, bilinear to
32 x 100, /255, -0.5, /0.5; the resize here is ``dataset.resize_bilinear``, since cv2 is not a dependency). The
fixture keeps the file layout (every key and shape of OpenOCR's ``state_dict``), the uint8 input and the
reference's probabilities (its CTCDecoder applies softmax in eval mode).

baudm/parseq's baselines (``parseq_baselines_release.pt``): ``strhub/models/trba/model.py``'s TRBA and TRBC and
``strhub/models/crnn/model.py``'s CRNN, imported from the checkout's files alone (they need torch and numpy, not
Lightning), reduced where their constructors allow (ResNet 64 wide, LSTMs 32, 36 characters; CRNN's VGG is fixed at
512), weights from ``tests/helpers.parseq_baseline_weights`` (``model.``-prefixed, as the systems' state_dict), read
as the systems' ``forward`` reads in eval mode (TRBA: from ``[B]``, 25 characters), on the same crops preprocessed
as parseq does (RGB, bicubic to 32 x 128).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import _root  # noqa: F401  the repository root on sys.path

sys.path.insert(1, str(_root.ROOT / "tests"))
from helpers import SVTR_TINY, parseq_baseline_weights, release_weights  # noqa: E402  (the test draws the same weights)

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "openocr_svtr_release.pt"
VITSTR_FIXTURE = FIXTURE.with_name("vitstr_release.pt")
BASELINES_FIXTURE = FIXTURE.with_name("parseq_baselines_release.pt")
VITSTR_SMALL = {"img_size": (32, 128), "patch_size": (4, 8), "depth": 2, "mlp_ratio": 4, "qkv_bias": True,
                "embed_dim": 32, "num_heads": 2, "num_classes": 37}


def write_vitstr(images: list[str]) -> None:
    from timm.models.vision_transformer import VisionTransformer

    from dataset import AlignCollate, DataConfig, RawDataset

    reference = VisionTransformer(**VITSTR_SMALL)
    layout = {"model." + k: tuple(v.shape) for k, v in reference.state_dict().items()}
    reference.load_state_dict({k.removeprefix("model."): v for k, v in release_weights(layout).items()})
    data = DataConfig(imgH=32, imgW=128, rgb=True)
    items = [item for item in RawDataset(images, data) if item is not None]
    batch, paths = AlignCollate.for_data(data)(items)
    with torch.inference_mode():
        x = reference.eval().forward_features(batch)[:, :25 + 2]  # ViTSTR.forward(x, seqlen=max_length + 2)
        logits = reference.head(x)[:, 1:]  # the system drops the class token's position
    torch.save({"layout": layout, "seed": 0, "config": VITSTR_SMALL, "logits": logits,
                "images": ((batch + 1) / 2 * 255).round().to(torch.uint8)}, VITSTR_FIXTURE)
    print(f"wrote {VITSTR_FIXTURE}: {len(paths)} crops, logits {tuple(logits.shape)}")


def parseq_module(checkout: Path, name: str):
    """``strhub.<name>`` imported from its file alone (``strhub/models/__init__.py`` would import Lightning)."""
    import importlib.util
    import types

    parts = name.split(".")
    for i in range(1, len(parts)):
        package = "strhub." + ".".join(parts[:i])
        sys.modules.setdefault("strhub", types.ModuleType("strhub"))
        if package not in sys.modules:
            sys.modules[package] = types.ModuleType(package)
            sys.modules[package].__path__ = []
    spec = importlib.util.spec_from_file_location(f"strhub.{name}", checkout / "strhub" / (name.replace(".", "/") + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"strhub.{name}"] = module
    spec.loader.exec_module(module)
    return module


def write_parseq_baselines(checkout: Path, images: list[str]) -> None:
    from dataset import AlignCollate, DataConfig, RawDataset
    from utils import DEFAULT_CHARACTER

    parseq_module(checkout, "models.modules")
    for part in ("transformation", "feature_extraction", "prediction"):
        parseq_module(checkout, f"models.trba.{part}")
    trba, crnn = parseq_module(checkout, "models.trba.model"), parseq_module(checkout, "models.crnn.model")
    chars = len(DEFAULT_CHARACTER)
    references = {"trba": trba.TRBA(32, 128, chars + 3, 20, 3, output_channel=64, hidden_size=32),  # [E] ... [B] [P]
                  "trbc": trba.TRBA(32, 128, chars + 1, 20, 3, output_channel=64, hidden_size=32, use_ctc=True),
                  "crnn": crnn.CRNN(32, 3, chars + 1, 32)}
    data = DataConfig(imgH=32, imgW=128, rgb=True)
    items = [item for item in RawDataset(images, data) if item is not None]
    batch, paths = AlignCollate.for_data(data)(items)
    out = {"seed": 0, "charset": DEFAULT_CHARACTER, "images": ((batch + 1) / 2 * 255).round().to(torch.uint8),
           "names": [Path(p).name for p in paths]}
    for name, reference in references.items():
        layout = {"model." + k: tuple(v.shape) for k, v in reference.state_dict().items()}
        weights = parseq_baseline_weights(name, layout)
        reference.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
        with torch.inference_mode():
            if name == "trba":  # TRBA.forward: text = [B] (bos_id = chars + 1), max_length 25
                logits = reference.eval()(batch, 25, torch.full([1], chars + 1, dtype=torch.long))
            else:
                logits = reference.eval()(batch) if name == "crnn" else reference.eval()(batch, None)
        out[name] = {"layout": layout, "logits": logits}
        print(f"{name}: logits {tuple(logits.shape)}")
    torch.save(out, BASELINES_FIXTURE)
    print(f"wrote {BASELINES_FIXTURE}: {len(paths)} crops")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openocr", help="a checkout of github.com/Topdu/OpenOCR")
    parser.add_argument("--parseq", type=Path, help="a checkout of github.com/baudm/parseq")
    real = Path(__file__).resolve().parents[2] / "shared/data/real"
    parser.add_argument("--images", nargs="+", default=[str(real / "parseq_demo/images"), str(real / "dtrb_demo/images")])
    opt = parser.parse_args()
    if opt.parseq:
        write_parseq_baselines(opt.parseq, opt.images)
    if not opt.openocr:
        return
    sys.path.insert(0, opt.openocr)
    from openrec.modeling.base_recognizer import BaseRecognizer

    from dataset import AlignCollate, DataConfig, RawDataset
    from utils import SENSITIVE_CHARACTER

    reference = BaseRecognizer({"Encoder": dict(SVTR_TINY), "Decoder": {"name": "CTCDecoder",
                                                                       "out_channels": len(SENSITIVE_CHARACTER) + 1}})
    own = reference.state_dict()
    layout = {k: tuple(v.shape) for k, v in own.items()}
    weights = release_weights({k: s for k, s in layout.items() if not k.endswith(".mixer.mask")})
    reference.load_state_dict({**own, **weights})  # the masks stay the reference's own
    data = DataConfig(imgH=32, imgW=100, rgb=True, channel_order="BGR", resize="bilinear")
    items = [item for item in RawDataset(opt.images, data) if item is not None]
    images, paths = AlignCollate.for_data(data)(items)
    with torch.inference_mode():
        probs = reference.eval()(images)  # [B, 25, 95], softmax
    torch.save({"layout": layout, "seed": 0, "images": ((images + 1) / 2 * 255).round().to(torch.uint8),
                "names": [Path(p).name for p in paths], "probs": probs}, FIXTURE)
    print(f"wrote {FIXTURE}: {len(paths)} crops, probabilities {tuple(probs.shape)}")
    write_vitstr(opt.images)


if __name__ == "__main__":
    main()
