"""Draws docs/img/attention-box.png: a running server's heat map and box on a real photograph.

    python docs/img/draw_box.py --url http://127.0.0.1:8000 --model vit_tiny

It calls the public API only: `/attention?format=png` for the heat map over the photograph, and
`/attention` (JSON) for the box, which it draws on top. The photograph is scikit-image's `chelsea`
unless `--image` names another file. `SIMPOOL_API_KEY` is sent when set.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import httpx
from PIL import Image, ImageDraw


def photograph(path: str | None) -> bytes:
    if path:
        return Path(path).read_bytes()
    import skimage.data

    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None)
    parser.add_argument("--image", default=None, help="a photograph (default: scikit-image's chelsea)")
    parser.add_argument("--box-mass", type=float, default=0.6)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("attention-box.png"))
    args = parser.parse_args()
    key = os.environ.get("SIMPOOL_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = photograph(args.image)
    fields = {"box_mass": str(args.box_mass), **({"model": args.model} if args.model else {})}
    with httpx.Client(base_url=args.url, headers=headers, timeout=120) as client:
        heat = client.post("/attention", params={"format": "png"}, files={"images": data}, data=fields)
        heat.raise_for_status()
        answer = client.post("/attention", files={"images": data}, data=fields)
        answer.raise_for_status()
    box = answer.json()["boxes"][0]
    picture = Image.open(io.BytesIO(heat.content)).convert("RGB")
    draw = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 120))
    draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(0, 0, 0), width=width + 2)
    draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 255, 255), width=width)
    picture.save(args.out, optimize=True)
    print(f"{args.out}: model {answer.json()['model']}, box {box} on {picture.size[0]}×{picture.size[1]}")


if __name__ == "__main__":
    main()
