"""What a LLaVA-1.5 data root holds (`./playground/data` in LLaVA's scripts), where each piece comes from, and
what is known about it: record counts, published sizes, checksums. Pure data, read by `data check --layout
llava` and the paper recipe; nothing here downloads.

Sources: LLaVA's README ("Train": pretrain data, the 665K mixture and its five image sources) and
docs/Evaluation.md (eval.zip and each benchmark's own files), haotian-liu/LLaVA `c121f04`; sizes from the
Hugging Face file listings; eval.zip's question files as committed in LLaVA `refs/pull/1199/head`
(`32cebc38`, counts and sha256 computed from that commit); POPE's revisions from AoiDragon/POPE's history.

Published checksums: none exist for LLaVA's own downloads (the Hugging Face pages show each LFS file's
sha256, none could be read when this was written), nor for COCO, GQA, TextVQA, Visual Genome, MME, SEED or
MMBench. The md5 of COCO's train2017.zip that circulates in third-party download scripts is listed as such.
The sha256 pins below identify git-committed files (eval.zip's question files, POPE's revisions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

HF_DOWNLOAD = "hf download {repo} {files}--repo-type dataset --local-dir {dest}"


@dataclass(frozen=True)
class TrainingSet:
    """A training JSON and the image folders its records point into."""

    key: str
    path: str  # the JSON, relative to the data root
    image_folder: str  # what the records' image paths are relative to (relative to the data root)
    records: int  # LLaVA's file
    published_size: str
    download: tuple[str, ...]


@dataclass(frozen=True)
class ImageSource:
    """One folder of images under a training set's image folder (`coco/train2017`, ...)."""

    prefix: str  # path prefix of the records' `image` values
    name: str
    download: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class EvalPiece:
    """One benchmark's folder under `eval/` as LLaVA-1.5's docs/Evaluation.md lays it out.

    `data` is where the benchmark's original files are, what `eval --data` reads without eval.zip.
    `question_file` is LLaVA's prompt file from eval.zip (sha256 and line count of LLaVA's commit); when it is
    there, `eval --data <its folder>` takes the prompts from it (the ones LLaVA's numbers were measured with)
    and the labels from the original files: `eval_data` picks that folder."""

    benchmark: str
    data: str  # relative to the eval folder
    download: tuple[str, ...]
    question_file: str | None = None  # relative to the eval folder
    question_sha256: str | None = None
    question_count: int | None = None
    options: dict = field(default_factory=dict)

    def eval_data(self, eval_root: str | Path) -> str:
        """What `eval --data` gets, relative to the eval folder: eval.zip's folder when its question file is
        there, else the original files."""
        if self.question_file and (Path(eval_root) / self.question_file).is_file():
            return str(PurePosixPath(self.question_file).parent)
        return self.data


PRETRAIN = TrainingSet(
    key="pretrain", path="LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", image_folder="LLaVA-Pretrain/images",
    records=558_128, published_size="181 MB (images.zip 27.4 GB)",
    download=(HF_DOWNLOAD.format(repo="liuhaotian/LLaVA-Pretrain", files="blip_laion_cc_sbu_558k.json images.zip ",
                                 dest="{root}/LLaVA-Pretrain"),
              "unzip -q {root}/LLaVA-Pretrain/images.zip -d {root}/LLaVA-Pretrain/images"))
MIX665K = TrainingSet(
    key="mix665k", path="llava_v1_5_mix665k.json", image_folder=".", records=665_298, published_size="1.03 GB",
    download=(HF_DOWNLOAD.format(repo="liuhaotian/LLaVA-Instruct-150K", files="llava_v1_5_mix665k.json ",
                                 dest="{root}"),))
TRAINING_SETS = (PRETRAIN, MIX665K)

PRETRAIN_IMAGES = ImageSource("", "LLaVA-Pretrain images (LAION/CC/SBU)", PRETRAIN.download[1:])
MIX665K_SOURCES = (
    ImageSource("coco/train2017", "COCO train2017", (
        "wget -c http://images.cocodataset.org/zips/train2017.zip && unzip -q train2017.zip -d {root}/coco",),
        note="train2017.zip md5 cced6f7f71b7629ddf16f17bbcfab6b2 (from third-party download scripts; "
             "COCO publishes none)"),
    ImageSource("gqa/images", "GQA images", (
        "wget -c https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip && unzip -q images.zip -d {root}/gqa",)),
    ImageSource("ocr_vqa/images", "OCR-VQA images", (
        "LLaVA's OCR-VQA download script: https://drive.google.com/drive/folders/1_GYPY5UkUy7HIcR0zq3ZCFgeZN7BAfm_ "
        "(save every file as .jpg, as LLaVA did) into {root}/ocr_vqa/images",)),
    ImageSource("textvqa/train_images", "TextVQA train_val images", (
        "wget -c https://dl.fbaipublicfiles.com/textvqa/images/train_val_images.zip && "
        "unzip -q train_val_images.zip -d {root}/textvqa",)),
    ImageSource("vg/VG_100K_2", "Visual Genome part 2", (
        "wget -c https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip && unzip -q images2.zip -d {root}/vg",)),
    ImageSource("vg/VG_100K", "Visual Genome part 1", (
        "wget -c https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip && unzip -q images.zip -d {root}/vg",)),
)

EVAL_DIR = "eval"
EVAL_ZIP = ("eval.zip (LLaVA's question files, scripts and LLaVA-1.5's answers) from https://drive.google.com/file/d/"
            "1atZSBBrAX54yYpxtVVW33zFvcnaHeFPy (`pip install gdown && gdown 1atZSBBrAX54yYpxtVVW33zFvcnaHeFPy`); "
            "extract it so that its folders (pope/, MME/, ...) land in {eval}")
_POPE_RAW = "https://raw.githubusercontent.com/AoiDragon/POPE/e3e39262c85a6a83f26cf5094022a782cb0df58d/output/coco"
EVAL_PIECES = {p.benchmark: p for p in (
    EvalPiece("vqav2", "vqav2", (
        "v2_Questions_Test_mscoco.zip from https://visualqa.org/download.html, unzip into {eval}/vqav2",
        "wget -c http://images.cocodataset.org/zips/test2015.zip && unzip -q test2015.zip -d {eval}/vqav2"),
        "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl"),
    EvalPiece("gqa", "gqa/data", (
        "wget -c https://downloads.cs.stanford.edu/nlp/data/gqa/questions1.2.zip && "
        "unzip -q questions1.2.zip testdev_balanced_questions.json -d {eval}/gqa/data",
        "GQA images (as for training): unzip images.zip -d {eval}/gqa/data"),
        "gqa/llava_gqa_testdev_balanced.jsonl",
        "515aab3142889269480c71212d3b5b8118704d8da6637d767a0cb5bdf80a3d35", 12_578),
    EvalPiece("vizwiz", "vizwiz", (
        "wget -c https://vizwiz.cs.colorado.edu/VizWiz_final/vqa_data/Annotations.zip && "
        "unzip -q Annotations.zip -d {eval}/vizwiz",
        "wget -c https://vizwiz.cs.colorado.edu/VizWiz_final/images/test.zip && unzip -q test.zip -d {eval}/vizwiz"),
        "vizwiz/llava_test.jsonl", "25b71577dafc1e4049b1a273b8e58d0d8bca510510b512e4925730905c3eceac", 8_000),
    EvalPiece("textvqa", "textvqa", (
        "wget -c -P {eval}/textvqa https://dl.fbaipublicfiles.com/textvqa/data/TextVQA_0.5.1_val.json",
        "TextVQA train_val images (as for training): unzip train_val_images.zip -d {eval}/textvqa"),
        "textvqa/llava_textvqa_val_v051_ocr.jsonl",
        "9f60db6fb89e369263ed676dc26b48d00d4a462e73f0930c09d23394e9dcf3a3", 5_000),
    EvalPiece("pope", "pope", (
        f"for s in adversarial popular random; do wget -c -P {{eval}}/pope/coco {_POPE_RAW}/coco_pope_$s.json; done",
        "wget -c http://images.cocodataset.org/zips/val2014.zip && unzip -q val2014.zip -d {eval}/pope"),
        "pope/llava_pope_test.jsonl", "1d3b41f0dced74b4f361c659787ef673497cfac54a6be7bde00eb405bab03c70", 8_910),
    EvalPiece("mme", "MME/MME_Benchmark_release_version", (
        "MME_Benchmark_release_version and eval_tool: request them as https://github.com/BradyFU/"
        "Awesome-Multimodal-Large-Language-Models/tree/Evaluation says; put both under {eval}/MME",),
        "MME/llava_mme.jsonl", "9f67707cb72d2a71df955d0dce84337f2f22eafe2ed473ca3e148c187ac360c5", 2_374),
    EvalPiece("sqa", "scienceqa", (
        "problems.json, pid_splits.json from https://github.com/lupantech/ScienceQA/tree/main/data/scienceqa "
        "into {eval}/scienceqa",
        "wget -c https://scienceqa.s3.us-west-1.amazonaws.com/images/test.zip && "
        "unzip -q test.zip -d {eval}/scienceqa/images"),
        "scienceqa/llava_test_CQM-A.json", "a2dc5ea9fba561b0d0d8ecc80e688d3b0e1ff308e06c4f4f94cff86b20ec2f0a", 4_241),
    EvalPiece("mmbench", "mmbench/mmbench_dev_20230712.tsv", (
        "wget -c -P {eval}/mmbench "
        "https://download.openmmlab.com/mmclassification/datasets/mmbench/mmbench_dev_20230712.tsv",)),
    EvalPiece("mmbench_cn", "mmbench/mmbench_dev_cn_20231003.tsv", (
        "wget -c -P {eval}/mmbench "
        "https://download.openmmlab.com/mmclassification/datasets/mmbench/mmbench_dev_cn_20231003.tsv",)),
    EvalPiece("seed", "seed_bench", (
        "SEED-Bench.json, images and videos: https://github.com/AILab-CVC/SEED-Bench/blob/main/DATASET.md; images "
        "into {eval}/seed_bench/SEED-Bench-image, middle video frames (LLaVA's extract_video_frames.py) into "
        "{eval}/seed_bench/SEED-Bench-video-image",),
        "seed_bench/llava-seed-bench.jsonl"),
    EvalPiece("llavabench", "llava-bench-in-the-wild", (
        HF_DOWNLOAD.format(repo="liuhaotian/llava-bench-in-the-wild", files="",
                           dest="{eval}/llava-bench-in-the-wild"),)),
    EvalPiece("mmvet", "mm-vet", (
        "wget -c https://github.com/yuweihao/MM-Vet/releases/download/v1/mm-vet.zip && unzip -q mm-vet.zip -d {eval}",),
        "mm-vet/llava-mm-vet.jsonl", "ac90c438b58fa867f3e9ff5d1cb0c27be4dd35f167ea129ccceb246e913a65c6", 218),
)}


@dataclass(frozen=True)
class PopeRevision:
    commit: str
    date: str
    random_questions: int
    sha256: dict  # split -> sha256 of output/coco/coco_pope_<split>.json


# AoiDragon/POPE output/coco, every revision; LLaVA-1.5 evaluated the 2023-08-10 one (docs/Evaluation.md links it)
POPE_LLAVA = PopeRevision("e3e39262c85a6a83f26cf5094022a782cb0df58d", "2023-08-10", 2_910, {
    "adversarial": "1d8f0906a9b50c05640f6f23abfac97523be2a1bed28f7eadc63b811699b2d26",
    "popular": "5b16653023bf4f64d57eb0d168259de6627f5cde7538b85ebed3cc33034aa6cc",
    "random": "c16b65d2df6d70bb0814c8a4375833d39cdb09928fd936d3fc546491efa37f35"})
POPE_OTHER_REVISIONS = (
    PopeRevision("7ef3026", "2023-08-04", 3_000, {
        "adversarial": "412efc6fe25eb2604f2386d536bcf713dc88327cb20c36489b1f689f89617d04",
        "popular": "eafca6ceff32c7bbb5b2845a00c6828ec8cbaf5e04f890d6902dc46b92f96076",
        "random": "cb8dec967727fbee4b9cfadf9ba1ea9968515b12063efd313d0cf8b2b4230c86"}),
    PopeRevision("edebdda", "2023-10-09", 3_000, {
        "adversarial": "207273ac3b7fdd04df206c6809b77a4e7f60360a730ade6b7e32804e8dd5602f",
        "popular": "72c1a8ad45d0c13514f5f22598261df41d3b533854d29682e924db50ed8aa753",
        "random": "ac25245170b975a5bdf9080b23fd431dfe6be458bc038259c1f4f09a6bef7994"}),
    PopeRevision("109985c", "2023-11-16", 3_000, {
        "adversarial": "420b3407db1fa9f1187a805dca41cb7b97fd91504e6c2179706188c107fb8ef8",
        "popular": "72c1a8ad45d0c13514f5f22598261df41d3b533854d29682e924db50ed8aa753",
        "random": "ac25245170b975a5bdf9080b23fd431dfe6be458bc038259c1f4f09a6bef7994"}),
)
POPE_SPLITS = ("adversarial", "popular", "random")


def commands(lines: tuple[str, ...], root: str) -> list[str]:
    """Download steps with the data root (and its eval folder) filled in."""
    eval_dir = f"{root.rstrip('/')}/{EVAL_DIR}"
    return [line.replace("{root}", root.rstrip("/")).replace("{eval}", eval_dir) for line in lines]
