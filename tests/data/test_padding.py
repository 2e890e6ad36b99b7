"""One padding rule for training and inference: after normalisation, image 0 (the mean colour), mask 255."""

import torch
from torchvision import tv_tensors

from encseg.config import DataConfig, DatasetConfig, ModelConfig
from encseg.data.transforms import eval_transforms, train_transforms
from encseg.models.heads import IGNORE_INDEX
from encseg.models.segmenter import build_segmenter

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_padded_training_sample_equals_padded_inference_input():
    """A 40 x 50 image in a 64 crop (no jitter, no flip, no colour): the training sample and what the model's
    encoder receives at inference are the same tensor, padding included; the masks pad alike too."""
    cfg = DataConfig(dataset=DatasetConfig(root="unused"), crop_size=64, base_size=40, scale_range=(1.0, 1.0),
                     photometric=False, flip=False, eval_size=None)
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(40, 50, dtype=torch.int64)
    mask[:, 25:] = 1
    raw = {"image": tv_tensors.Image(torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=g)),
           "mask": tv_tensors.Mask(mask), "path": "x.png", "index": 0}
    train = train_transforms(cfg, MEAN, STD)(dict(raw))
    infer = eval_transforms(cfg, MEAN, STD)(dict(raw))

    model = ModelConfig.model_validate({"encoder": {"name": "random_vitb16", "weights": "none",
                                                    "timm_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}},
                                        "head": {"type": "linear"}})
    seg = build_segmenter(model, num_classes=2, img_size=64).eval()
    seen = []
    seg.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        seg(infer["image"][None])
    assert seen[0].shape == train["image"][None].shape == (1, 3, 64, 64)
    assert torch.equal(seen[0][0], train["image"])
    assert (train["image"][:, 40:] == 0).all() and (train["image"][:, :, 50:] == 0).all()
    assert torch.equal(seg._pad(infer["mask"][None], IGNORE_INDEX)[0], train["mask"])
    assert (train["mask"][40:] == 255).all()
