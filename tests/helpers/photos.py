"""Real photographs from scikit-image, written as files in the formats and sizes the tests send."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

COLOUR = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def write_photos(root: Path) -> dict[str, Path]:
    """JPEGs of the colour photographs, a grayscale PNG, an RGBA PNG, a WebP and the benchmark's size."""
    import skimage.data as data

    out: dict[str, Path] = {}
    for name in COLOUR:
        img = Image.fromarray(getattr(data, name)())
        out[f"{name}.jpg"] = root / f"{name}.jpg"
        img.save(out[f"{name}.jpg"], quality=92)
    Image.fromarray(data.camera()).save(root / "camera.png")  # grayscale
    out["camera.png"] = root / "camera.png"
    Image.fromarray(data.logo()).save(root / "logo.png")  # RGBA
    out["logo.png"] = root / "logo.png"
    Image.fromarray(data.coffee()).save(root / "coffee.webp")
    out["coffee.webp"] = root / "coffee.webp"
    # The benchmark's size: 500x375.
    Image.fromarray(data.chelsea()).resize((500, 375), Image.BICUBIC).save(root / "chelsea_500x375.jpg")
    out["chelsea_500x375.jpg"] = root / "chelsea_500x375.jpg"
    return out
