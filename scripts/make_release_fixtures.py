"""Write tests/fixtures/openocr_svtr_release.pt once, from OpenOCR's own code (run by hand, not by the tests).

    python scripts/make_release_fixtures.py --openocr /path/to/OpenOCR-checkout

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


if __name__ == "__main__":
    main()
