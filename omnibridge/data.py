"""PAIRS.jsonl: one JSON object per line, {"image": path relative to the file, "caption": text, "id": optional}.

Several lines may name the same image (several captions). Bad lines raise `PairsError` naming the line,
or, with `skip_bad=True`, are counted and reported; nothing is dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError


class PairsError(ValueError):
    pass


@dataclass
class Pairs:
    images: list[Path]  # distinct images, in first-seen order
    image_ids: list[str]  # one id per distinct image
    captions: list[str]  # one per usable line
    caption_image: list[int]  # index into `images` for each caption
    skipped: list[str] = field(default_factory=list)  # "line N: reason" for each skipped line

    def load_image(self, i: int) -> Image.Image:
        try:
            with Image.open(self.images[i]) as im:
                im.load()
                return im.copy()
        except (OSError, Image.DecompressionBombError) as e:
            raise PairsError(f"cannot decode image {self.images[i]}: {e}") from e


def _check_image(path: Path) -> str | None:
    if not path.is_file():
        return f"image not found: {path}"
    try:
        with Image.open(path) as im:
            im.load()  # a full decode: catches truncated files that verify() lets through
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        return f"unreadable image {path}: {e}"
    return None


def read_pairs(path: str | Path, skip_bad: bool = False) -> Pairs:
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"pairs file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PairsError(f"{path} is not UTF-8 text ({e}); save it as UTF-8 JSON lines") from e
    root = path.parent
    out = Pairs([], [], [], [])
    index: dict[Path, int] = {}
    checked: dict[Path, str | None] = {}
    first_line: dict[Path, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        problem, image, caption, image_id = None, None, None, None
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            image, caption, image_id = row.get("image"), row.get("caption"), row.get("id")
            if not isinstance(image, str) or not image:
                problem = 'missing "image" (a path relative to the pairs file)'
            elif not isinstance(caption, str) or not caption.strip():
                problem = 'missing or empty "caption"'
        except ValueError as e:
            problem = f"not valid JSON ({e})"
        if problem is None:
            img_path = (root / image).resolve()
            if img_path not in checked:
                checked[img_path] = _check_image(img_path)
            problem = checked[img_path]
        if problem:
            msg = f"{path}:{n}: {problem}"
            if not skip_bad:
                raise PairsError(msg + " (fix the line, or pass --skip-bad to skip bad lines)")
            out.skipped.append(msg)
            continue
        if img_path not in index:
            index[img_path], first_line[img_path] = len(out.images), n
            out.images.append(img_path)
            out.image_ids.append(str(image_id) if image_id is not None else str(img_path))
        elif image_id is not None and str(image_id) != out.image_ids[index[img_path]]:
            raise PairsError(
                f"{path}:{n}: image {image!r} has id {image_id!r} here but "
                f"{out.image_ids[index[img_path]]!r} on line {first_line[img_path]}; give one image one id"
            )
        out.captions.append(caption.strip())
        out.caption_image.append(index[img_path])
    if not out.captions:
        raise PairsError(f"{path}: no usable pairs" + (f" ({len(out.skipped)} bad lines skipped)" if out.skipped else ""))
    return out
