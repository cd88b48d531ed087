"""Write tests/fixtures/openocr_svtr_release.pt and vitstr_release.pt once, from the references' own code (run by
hand, not by the tests).

    python scripts/make_release_fixtures.py --openocr /path/to/OpenOCR-checkout   # needs timm 0.9.16 too

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
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import _root  # noqa: F401  the repository root on sys.path

sys.path.insert(1, str(_root.ROOT / "tests"))
from helpers import SVTR_TINY, release_weights  # noqa: E402  (the test draws the same weights)

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "openocr_svtr_release.pt"
VITSTR_FIXTURE = FIXTURE.with_name("vitstr_release.pt")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openocr", required=True, help="a checkout of github.com/Topdu/OpenOCR")
    real = Path(__file__).resolve().parents[2] / "shared/data/real"
    parser.add_argument("--images", nargs="+", default=[str(real / "parseq_demo/images"), str(real / "dtrb_demo/images")])
    opt = parser.parse_args()
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
