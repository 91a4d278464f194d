"""Tiny fixtures in each dataset's official on-disk format (docs/datasets.md §9), generated per test.

The ``fake_data`` fixture maps a format name to its maker, e.g. ``fake_data["cub"](tmp_path)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (24, 18), seed: int = 0, mode: str = "RGB") -> Path:
    """A small random image; the format follows the suffix (.jpg/.JPG/.png)."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


def make_cub(root: Path, n_classes: int = 4, per_class: int = 3) -> Path:
    """CUB_200_2011/ with images.txt, image_class_labels.txt, train_test_split.txt, classes.txt,
    bounding_boxes.txt and images/NNN.Name/Name_XXXX_NNNN.jpg; class c has ``per_class + c - 1``
    images so that every class has its own count."""
    cub = root / "CUB_200_2011"
    images, labels, split, classes, boxes = [], [], [], [], []
    image_id = 0
    for c in range(1, n_classes + 1):
        folder = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {folder}")
        for k in range(per_class + c - 1):
            image_id += 1
            rel = f"{folder}/Bird_{c}_{k + 1:04d}_{1000 + image_id}.jpg"
            write_image(cub / "images" / rel, seed=image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {k % 2}")
            boxes.append(f"{image_id} 1.0 2.0 10.0 8.0")
    for name, rows in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("classes.txt", classes),
        ("bounding_boxes.txt", boxes),
    ):
        (cub / name).write_text("\n".join(rows) + "\n")
    (root / "attributes.txt").write_text("1 has_bill_shape::curved\n")
    return cub


def make_cars(root: Path, classes: list[int] | None = None, shuffle: bool = True) -> Path:
    """cars196/ with car_ims/NNNNNN.jpg and cars_annos.mat in the official struct layout
    (fields relative_im_path, bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, test; class_names 1xC)."""
    from scipy.io import savemat

    cars = root / "cars196"
    classes = classes or [1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 4]
    order = np.random.default_rng(0).permutation(len(classes)) if shuffle else np.arange(len(classes))
    dtype = [
        ("relative_im_path", "O"),
        ("bbox_x1", "O"),
        ("bbox_y1", "O"),
        ("bbox_x2", "O"),
        ("bbox_y2", "O"),
        ("class", "O"),
        ("test", "O"),
    ]
    annotations = np.zeros((1, len(classes)), dtype=dtype)
    for slot, i in enumerate(order):
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_image(cars / rel, seed=100 + int(i))
        annotations[0, slot] = (
            np.array([rel]),
            np.array([[1]], dtype=np.uint8),
            np.array([[2]], dtype=np.uint8),
            np.array([[20]], dtype=np.uint8),
            np.array([[15]], dtype=np.uint8),
            np.array([[classes[i]]], dtype=np.uint8),
            np.array([[slot % 2]], dtype=np.uint8),
        )
    n_classes = max(classes)
    class_names = np.empty((1, n_classes), dtype=object)
    for c in range(n_classes):
        class_names[0, c] = np.array([f"Make Model {c + 1} 2012"])
    savemat(cars / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return cars


def make_sop(root: Path) -> Path:
    """Stanford_Online_Products/ with Ebay_{train,test,info}.txt (4-column header) and
    <super>_final/<pid>_<k>.JPG; test class ids continue after the train ids."""
    sop = root / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path"
    rows = {"train": [], "test": []}
    supers = ["bicycle_final", "chair_final"]
    image_id = 0
    spec = {"train": [(1, 2), (2, 3), (3, 2)], "test": [(4, 2), (5, 4)]}
    for split, items in spec.items():
        for class_id, n in items:
            super_id = 1 + class_id % 2
            for k in range(n):
                image_id += 1
                rel = f"{supers[super_id - 1]}/{110000 + class_id}_{k}.JPG"
                write_image(sop / rel, seed=image_id)
                rows[split].append(f"{image_id} {class_id} {super_id} {rel}")
    (sop / "Ebay_train.txt").write_text("\n".join([header, *rows["train"]]) + "\n")
    (sop / "Ebay_test.txt").write_text("\n".join([header, *rows["test"]]) + "\n")
    (sop / "Ebay_info.txt").write_text("\n".join([header, *rows["train"], *rows["test"]]) + "\n")
    return sop


LFW_PEOPLE = {"AJ_Cook": 2, "Aaron_Eckhart": 1, "Ai_Sugiyama": 3, "Aitor_Gonzalez": 2, "Zico": 2}


def make_lfw(root: Path) -> Path:
    """LFW/ with lfw/<Name>/<Name>_NNNN.jpg, pairs.txt ("2\\t2": 2 folds x (2 same + 2 different)),
    people.txt, lfw-names.txt and BLUFR lists (2 trials) in blufr/ ordered like BLUFR's
    image_list.txt (upper-cased sort, not Python's)."""
    lfw = root / "LFW"
    for person, n in LFW_PEOPLE.items():
        for k in range(1, n + 1):
            write_image(
                lfw / "lfw" / person / f"{person}_{k:04d}.jpg", size=(40, 40), seed=sum(map(ord, person)) + k
            )
    pairs = [
        "2\t2",
        # fold 1: 2 matched, 2 mismatched
        "Ai_Sugiyama\t1\t3",
        "AJ_Cook\t1\t2",
        "Aaron_Eckhart\t1\tZico\t2",
        "Aitor_Gonzalez\t2\tAi_Sugiyama\t2",
        # fold 2
        "Zico\t1\t2",
        "Aitor_Gonzalez\t1\t2",
        "AJ_Cook\t2\tAi_Sugiyama\t1",
        "Zico\t1\tAaron_Eckhart\t1",
    ]
    (lfw / "pairs.txt").write_text("\n".join(pairs) + "\n")
    (lfw / "people.txt").write_text(
        "2\n3\nAJ_Cook\t2\nAaron_Eckhart\t1\nAi_Sugiyama\t3\n2\nAitor_Gonzalez\t2\nZico\t2\n"
    )
    (lfw / "lfw-names.txt").write_text("".join(f"{p}\t{n}\n" for p, n in sorted(LFW_PEOPLE.items())))
    files = [f"{p}_{k:04d}.jpg" for p, n in LFW_PEOPLE.items() for k in range(1, n + 1)]
    files.sort(key=lambda f: f.upper())  # BLUFR's order: e.g. Aitor_Gonzalez before Ai_Sugiyama
    blufr = lfw / "blufr"
    blufr.mkdir()
    (blufr / "image_list.txt").write_text("\n".join(files) + "\n")
    index = {f: i + 1 for i, f in enumerate(files)}
    gallery = [["AJ_Cook_0001.jpg", "Ai_Sugiyama_0001.jpg"], ["Zico_0001.jpg"]]
    probe = [
        ["AJ_Cook_0002.jpg", "Ai_Sugiyama_0002.jpg", "Zico_0002.jpg"],
        ["Zico_0002.jpg", "Aitor_Gonzalez_0001.jpg"],
    ]
    for key, trials in (("gallery", gallery), ("probe", probe)):
        lines = [str(len(trials))]
        for trial in trials:
            lines.append(str(len(trial)))
            lines.extend(f"{index[f]}, {f}" for f in trial)
        (blufr / f"{key}_set.txt").write_text("\n".join(lines) + "\n")
    return lfw


def make_casia(root: Path, identities: dict[str, int] | None = None) -> Path:
    """CASIA-WebFace/<7-digit id>/<3-digit>.jpg."""
    casia = root / "CASIA-WebFace"
    identities = identities or {"0000045": 3, "0000099": 2, "0000102": 2}
    for ident, n in identities.items():
        for k in range(1, n + 1):
            write_image(casia / ident / f"{k:03d}.jpg", size=(40, 40), seed=int(ident) + k)
    return casia


def make_flowers102(root: Path, labels: list[int] | None = None) -> Path:
    """flowers-102/ with jpg/image_%05d.jpg, imagelabels.mat and setid.mat (1-based ids)."""
    from scipy.io import savemat

    flowers = root / "flowers-102"
    labels = labels or [1, 1, 1, 2, 2, 2, 3, 3, 3]
    for i in range(1, len(labels) + 1):
        write_image(flowers / "jpg" / f"image_{i:05d}.jpg", seed=i)
    savemat(flowers / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(
        flowers / "setid.mat",
        {
            "trnid": np.array([[1, 4, 7]], dtype=np.uint16),
            "valid": np.array([[2, 5, 8]], dtype=np.uint16),
            "tstid": np.array([[3, 6, 9]], dtype=np.uint16),
        },
    )
    return flowers


def make_folder_tree(root: Path, classes: dict[str, int], suffix: str = ".png") -> Path:
    """<root>/<class path>/<k><suffix> for each class (class paths may be nested)."""
    for c, (name, n) in enumerate(sorted(classes.items())):
        for k in range(n):
            write_image(root / name / f"img_{k}{suffix}", size=(32, 32), seed=17 * c + k)
    return root


@pytest.fixture
def tiny_paper_transform() -> dict:
    """The paper pipeline at 32x32 (resize 37), to keep image tests fast."""
    return {"kind": "paper", "image_size": 32, "resize": None}


@pytest.fixture
def fake_data() -> dict[str, Callable]:
    return {
        "cub": make_cub,
        "cars": make_cars,
        "sop": make_sop,
        "lfw": make_lfw,
        "casia": make_casia,
        "flowers102": make_flowers102,
        "folder": make_folder_tree,
        "image": write_image,
    }
