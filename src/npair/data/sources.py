"""Where each dataset comes from: mirror URLs, checksums, archive bounds, layout, manual steps.

Everything here is from docs/datasets.md (the project's dataset reference), which
cites the public sources for each URL and checksum. URLs are tried in order; a file is accepted
only if its size and MD5/SHA-256 match the values pinned here, so a dead mirror that serves an HTML
page, or a re-packed copy, is rejected rather than installed. Every entry carries such a checksum:
a file without a published one (e.g. the ``CARS196.zip`` of ftp.cs.stanford.edu) is not listed,
and the installer refuses an entry without one before fetching or opening anything.

Every archive also carries extraction bounds (member count, bytes), checked before and while it
is extracted (``archives.py``). They are not published anywhere; each is our bound (c): the
dataset's published image count plus its folders and metadata files, with a margin, and about
twice (or three times, for small archives) the archive's size in bytes, since JPEGs do not
compress. A genuine archive that exceeds one is a catalogue error: raise the bound here.
"""

from __future__ import annotations

from dataclasses import dataclass

from npair.data.archives import ExtractionLimits


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch.

    ``extract``: unpack the archive into the staging tree at ``dest``; otherwise the file is
    copied to ``dest`` (a relative path in the staging tree). ``max_members`` / ``max_bytes``:
    extraction bounds of an archive (required when ``extract``).
    """

    filename: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    extract: bool = True
    dest: str = "."
    max_members: int | None = None
    max_bytes: int | None = None

    @property
    def verifiable(self) -> bool:
        """True when a checksum is pinned (MD5 or SHA-256): the only files that are fetched or installed."""
        return bool(self.md5 or self.sha256)

    @property
    def limits(self) -> ExtractionLimits | None:
        """Extraction bounds, or ``None`` if the catalogue gives none (such an archive is not extracted)."""
        if self.max_members is None or self.max_bytes is None:
            return None
        return ExtractionLimits(self.max_members, self.max_bytes)


@dataclass(frozen=True)
class Variant:
    """A complete set of files that yields the dataset; ``subdir`` of the staging tree becomes the target."""

    label: str
    files: tuple[RemoteFile, ...]
    subdir: str = "."


@dataclass(frozen=True)
class DatasetSource:
    """How to obtain one dataset under ``--root``: ``<root>/<target>`` is what the config's root points at."""

    name: str
    target: str
    status: str  # "auto" | "manual" | "not public"
    required: tuple[str, ...]  # relative paths that must exist in a complete target
    variants: tuple[Variant, ...] = ()
    manual: str = ""  # what to do by hand (always printed for manual datasets, and when every mirror fails)
    notes: str = ""
    parts: tuple[str, ...] = ()  # a composite of other sources (webface_lfw)
    config: str = ""  # the dataset config that reads it


CUB = DatasetSource(
    name="cub200",
    target="CUB_200_2011",
    status="auto",
    required=("images.txt", "image_class_labels.txt", "images"),
    config="cub200",
    variants=(
        Variant(
            "CaltechDATA (official host)",
            (
                RemoteFile(
                    "CUB_200_2011.tgz",
                    (
                        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
                        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                        # TFDS's Google Drive copy; large-file quota pages are rejected as HTML.
                        (
                            "https://drive.usercontent.google.com/download?id=1hbzc_P1FuxMkcabkgn9ZKinBwW683j45"
                            "&export=download&confirm=t"
                        ),
                    ),
                    md5="97eceeb196236b17998738112f37df78",
                    sha256="0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081",
                    size=1_150_585_339,
                    # 11,788 images, 200 class folders, ~20 metadata files (docs/datasets.md §1)
                    max_members=20_000,
                    max_bytes=3_000_000_000,
                ),
            ),
            subdir="CUB_200_2011",
        ),
    ),
    notes="The old www.vision.caltech.edu URL now returns an HTML page and is not used.",
)

_CARS_ANNOS_MD5 = "b407c6086d669747186bd1d764ff9dbc"
CARS = DatasetSource(
    name="cars196",
    target="cars196",
    status="auto",
    required=("cars_annos.mat", "car_ims"),
    config="cars196",
    variants=(
        Variant(
            "car_ims.tgz + cars_annos.mat (Wayback Machine copies of imagenet.stanford.edu; not confirmed)",
            (
                RemoteFile(
                    "car_ims.tgz",
                    (
                        "https://web.archive.org/web/2020id_/http://imagenet.stanford.edu/internal/car196/car_ims.tgz",
                        "http://imagenet.stanford.edu/internal/car196/car_ims.tgz",
                    ),
                    md5="d5c8f0aa497503f355e17dc7886c3f14",
                    # 16,185 images in car_ims/, about 1.9 GB (size not confirmed; docs/datasets.md §2)
                    max_members=25_000,
                    max_bytes=4_000_000_000,
                ),
                RemoteFile(
                    "cars_annos.mat",
                    (
                        "https://web.archive.org/web/2020id_/http://imagenet.stanford.edu/internal/car196/cars_annos.mat",
                        "http://imagenet.stanford.edu/internal/car196/cars_annos.mat",
                    ),
                    md5=_CARS_ANNOS_MD5,
                    extract=False,
                    dest="cars_annos.mat",
                ),
            ),
        ),
    ),
    manual="""\
All Stanford URLs for Cars196 are dead (ai.stanford.edu/~jkrause since 2023, imagenet.stanford.edu since \
2021).
Get the two official files from any copy you trust:
  car_ims.tgz      MD5 d5c8f0aa497503f355e17dc7886c3f14   (16,185 JPEGs car_ims/000001.jpg ... 016185.jpg)
  cars_annos.mat   MD5 b407c6086d669747186bd1d764ff9dbc
put them in {downloads} and rerun `python -m npair.data.download cars196 --root {root}`: they are verified and
extracted to {target}. Kaggle's class-folder copies (jutrera/..., jessicali9530/...) use other layouts and \
are not read.
CARS196.zip (ftp.cs.stanford.edu) has no published checksum, so it is never fetched or extracted here.
Its CARS196/ folder has this dataset's layout: unpacking it into {target} yourself is at your own risk
(the tree is then not verified; cars_annos.mat should have the MD5 above).""",
)

SOP = DatasetSource(
    name="sop",
    target="Stanford_Online_Products",
    status="auto",
    required=("Ebay_train.txt", "Ebay_test.txt"),
    config="sop",
    variants=(
        Variant(
            "Stanford_Online_Products.zip (authors' Google Drive, Stanford FTP over HTTP)",
            (
                RemoteFile(
                    "Stanford_Online_Products.zip",
                    (
                        (
                            "https://drive.usercontent.google.com/download?id=1TclrpQOF_ullUP99wk_gjGN8pKvtErG8"
                            "&export=download&authuser=0&confirm=t"
                        ),
                        "http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
                    ),
                    md5="7f73d41a2f44250d4779881525aea32e",
                    sha256="b04fa78210e69fab050ce73939550e1cd0f96890bdd98ec9fee732c3b756ef48",
                    size=3_083_860_082,
                    # 120,053 images in 12 folders, ~20 metadata files (docs/datasets.md §3)
                    max_members=150_000,
                    max_bytes=6_500_000_000,
                ),
            ),
            subdir="Stanford_Online_Products",
        ),
    ),
    manual="""\
If Google Drive refuses (quota) and the FTP mirror is down, download Stanford_Online_Products.zip
(3,083,860,082 bytes, MD5 7f73d41a2f44250d4779881525aea32e) from the project page
https://cvgl.stanford.edu/projects/lifted_struct/ in a browser, put it in {downloads} and rerun
`python -m npair.data.download sop --root {root}`.""",
)

_FIGSHARE = "https://ndownloader.figshare.com/files/"
_UMASS = "http://vis-www.cs.umass.edu/lfw/"
LFW = DatasetSource(
    name="lfw",
    target="LFW",
    status="auto",
    required=("lfw", "pairs.txt"),
    config="webface_lfw",
    variants=(
        Variant(
            "figshare (byte-identical to the UMass originals)",
            (
                RemoteFile(
                    "lfw.tgz",
                    (_FIGSHARE + "5976018", _UMASS + "lfw.tgz"),
                    md5="a17d05bd522c52d84eca14327a23d494",
                    sha256="055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0",
                    size=180_566_744,
                    # 13,233 images in 5,749 folders (docs/datasets.md §4)
                    max_members=30_000,
                    max_bytes=600_000_000,
                ),
                RemoteFile(
                    "pairs.txt",
                    (_FIGSHARE + "5976006", _UMASS + "pairs.txt"),
                    md5="9f1ba174e4e1c508ff7cdf10ac338a7d",
                    sha256="ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592",
                    extract=False,
                    dest="pairs.txt",
                ),
                RemoteFile(
                    "pairsDevTrain.txt",
                    (_FIGSHARE + "5976012", _UMASS + "pairsDevTrain.txt"),
                    md5="4f27cbf15b2da4a85c1907eb4181ad21",
                    sha256="1d454dada7dfeca0e7eab6f65dc4e97a6312d44cf142207be28d688be92aabfa",
                    extract=False,
                    dest="pairsDevTrain.txt",
                ),
                RemoteFile(
                    "pairsDevTest.txt",
                    (_FIGSHARE + "5976009", _UMASS + "pairsDevTest.txt"),
                    md5="5132f7440eb68cf58910c8a45a2ac10b",
                    sha256="7cb06600ea8b2814ac26e946201cdb304296262aad67d046a16a7ec85d0ff87c",
                    extract=False,
                    dest="pairsDevTest.txt",
                ),
            ),
        ),
    ),
    manual="""\
The UMass host (vis-www.cs.umass.edu) no longer resolves; figshare holds byte-identical copies. Optional \
extras,
placed by hand into {target}:
  people.txt (MD5 450f0863dd89e85e73936a6d71a3474b): no known byte-identical mirror; enables a per-person \
count check
    (dataset.build.people_file=people.txt).
  BLUFR lists (Liao et al. 2014; list/lfw/gallery_set.txt, probe_set.txt, image_list.txt from BLUFR.zip, \
project page
    http://www.cbsr.ia.ac.cn/users/scliao/projects/blufr/ or a re-hosted copy) into {target}/blufr/ for the
    identification protocol (dataset.build.blufr_dir=blufr).""",
)

CASIA = DatasetSource(
    name="casia_webface",
    target="CASIA-WebFace",
    status="manual",
    required=(),
    config="webface_lfw",
    manual="""\
CASIA-WebFace is released only on a signed request (non-commercial research):
  1. Fill in the CASIA-WebFace release agreement (CBSR, Institute of Automation, Chinese Academy of Sciences;
     legacy page http://www.cbsr.ia.ac.cn/english/CASIA-WebFace-Database.html) and send it as the page \
instructs.
  2. Unpack what you receive so that there is one folder per identity:
       {target}/0000045/001.jpg
       {target}/0000045/002.jpg
       {target}/0000099/001.jpg   ... (10,575 identity folders, 494,414 images, 250x250 JPEG)
  3. Check it with `python -m npair.data.download casia_webface --root {root}`.
Unofficial copies circulate; redistribution is against the agreement and none is fetched here. The InsightFace
RecordIO pack (faces_webface_112x112) is another format and is not read. A cleaned copy has fewer images:
train with `dataset.verify_counts=false`.""",
)

WEBFACE_LFW = DatasetSource(
    name="webface_lfw",
    target="",
    status="manual",
    required=(),
    parts=("lfw", "casia_webface"),
    config="webface_lfw",
)

FLOWERS102 = DatasetSource(
    name="flowers102",
    target="flowers-102",
    status="auto",
    required=("jpg", "imagelabels.mat", "setid.mat"),
    config="flowers102",
    variants=(
        Variant(
            "Oxford VGG",
            (
                RemoteFile(
                    "102flowers.tgz",
                    ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",),
                    md5="52808999861908f626f3c1f4e79d11fa",
                    # 8,189 images in jpg/; the archive is about 330 MB (docs/datasets.md §8)
                    max_members=12_000,
                    max_bytes=1_000_000_000,
                ),
                RemoteFile(
                    "imagelabels.mat",
                    ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",),
                    md5="e0620be6f572b9609742df49c70aed4d",
                    extract=False,
                    dest="imagelabels.mat",
                ),
                RemoteFile(
                    "setid.mat",
                    ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat",),
                    md5="a5357ecc9cb78c4bef273ce3793fc85c",
                    extract=False,
                    dest="setid.mat",
                ),
            ),
        ),
    ),
    notes="Public stand-in for Flower-610.",
)

_LIST_FORMAT = """\
Describe the images with a list file, one image per line (see src/npair/data/listfile.py):
    <path relative to the root> <label> <split: train|test>
and place it as {target}/list.txt next to the images, e.g.
    {target}/list.txt
    {target}/images/000001.jpg ...
Then train with `dataset={config}` (or `dataset.root=/your/copy`)."""

CAR333 = DatasetSource(
    name="car333",
    target="car333",
    status="not public",
    required=("list.txt",),
    config="car333",
    manual="""\
Car-333 (Xie et al., CVPR 2015; 164,863 images of 333 car models, NEC Labs) has no public release; ask its \
authors.
"""
    + _LIST_FORMAT
    + """
Public stand-in for a fine-grained car experiment: cars196 (unseen-class protocol).""",
)

FLOWER610 = DatasetSource(
    name="flower610",
    target="flower610",
    status="not public",
    required=("list.txt",),
    config="flower610",
    manual="""\
Flower-610 (61,771 images of 610 species, as attributed to the N-pair paper; not confirmed) has no known \
public
origin; ask the paper's authors.
"""
    + _LIST_FORMAT
    + """
Public stand-in: `python -m npair.data.download flowers102 --root {root}` and `dataset=flowers102`.""",
)

SOURCES: dict[str, DatasetSource] = {
    s.name: s for s in (CUB, CARS, SOP, LFW, CASIA, WEBFACE_LFW, FLOWERS102, CAR333, FLOWER610)
}
