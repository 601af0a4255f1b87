"""Inference on image files for every task: a JSON and a PNG per image."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .data import load_image, voc_palette
from .io import atomic_write_json
from .recipes import load_checkpoint_model
from .viz import draw_detections, overlay_segmentation, save_image

__all__ = ["predict_images"]


@torch.no_grad()
def predict_images(
    checkpoint: str | os.PathLike, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
    device: torch.device | str = "cpu", score_thresh: float = 0.3,
) -> list[Path]:
    """Run the checkpoint's model on ``images``; write ``OUT/<stem>.json`` and ``.png``.

    Detection JSON lists boxes (xyxy, original pixels), scores, labels, class
    names and the dataset's own category ids; segmentation writes the class map
    overlaid on the image in VOC colours (``<stem>.png``), the class map itself as
    a VOC palette PNG (``<stem>_mask.png``, pixel value = class index) and the
    pixel count per class; classification writes the top-5 classes (JSON only).
    """
    model, meta = load_checkpoint_model(checkpoint, device)
    task, names = meta["task"], list(meta.get("class_names", []))
    cat_ids = meta.get("cat_ids")
    out = Path(out_dir)
    written: list[Path] = []
    # Load every image first: a bad file fails before anything is written.
    loaded = [(Path(p), load_image(p)) for p in images]
    for path, img in loaded:
        x = img.to(device)
        record: dict[str, Any] = {"image": str(path), "height": img.shape[-2], "width": img.shape[-1], "task": task}
        if task in ("detection", "instance"):
            det = model([x])[0]
            keep = det["scores"] >= score_thresh
            det = {k: v[keep].cpu() for k, v in det.items()}
            labels = det["labels"].tolist()
            record["detections"] = [
                {
                    "box_xyxy": [round(float(c), 2) for c in b],
                    "score": round(float(s), 4),
                    "label": int(lab),
                    "class_name": names[lab - 1] if 0 < lab <= len(names) else str(lab),
                    **({"category_id": int(cat_ids[lab - 1])} if cat_ids else {}),
                }
                for b, s, lab in zip(det["boxes"].tolist(), det["scores"].tolist(), labels)
            ]
            pic = draw_detections(img, det["boxes"], det["labels"], det["scores"], names, det.get("masks"), score_thresh)
        elif task == "segmentation":
            pred = model(x[None])[0].argmax(0).cpu()
            counts = torch.bincount(pred.flatten(), minlength=len(names) or 1)
            record["pixels_per_class"] = {(names[i] if i < len(names) else str(i)): int(c) for i, c in enumerate(counts) if c}
            pic = overlay_segmentation(img, pred, max(len(names), int(pred.max()) + 1))
            mask_png = Image.fromarray(pred.to(torch.uint8).numpy())
            mask_png.putpalette(voc_palette())  # 'L' -> 'P': the VOC label PNG format
            record["mask_png"] = f"{path.stem}_mask.png"
            save_image(mask_png, out / record["mask_png"])
            written.append(out / record["mask_png"])
        else:
            from .data import classification_eval_transforms

            probs = model(classification_eval_transforms(int(meta.get("img_size", 224)))(img)[None].to(device)).softmax(-1)[0]
            top = probs.topk(min(5, probs.numel()))
            record["top5"] = [
                {"label": int(i), "class_name": names[i] if i < len(names) else str(i), "prob": round(float(p), 4)}
                for p, i in zip(top.values.tolist(), top.indices.tolist())
            ]
            pic = None
        json_path = out / f"{path.stem}.json"
        atomic_write_json(json_path, record)
        written.append(json_path)
        if pic is not None:
            save_image(pic, out / f"{path.stem}.png")
            written.append(out / f"{path.stem}.png")
    return written
